//! The checked-in CustomResourceDefinitions under `deploy/crds/` and the Helm chart's copy under
//! `deploy/helm/claim-coordinator/crds/` (which helm installs before the templates) are what
//! `claim-coordinator crds` writes from the current types.

use std::path::Path;

#[test]
fn checked_in_crds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["deploy/crds", "deploy/helm/claim-coordinator/crds"] {
        for (file, yaml) in claim_coordinator::resources::crd_files().unwrap() {
            let path = root.join(dir).join(file);
            let checked_in = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                checked_in == yaml,
                "{dir}/{file} is stale: run `cargo run -p claim-coordinator -- crds --dir {dir}` and commit \
                 the result"
            );
        }
    }
}

#[test]
fn crds_have_the_status_subresource_and_the_schema() {
    for (file, yaml) in claim_coordinator::resources::crd_files().unwrap() {
        let crd: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{file}");
        assert!(version["subresources"]["status"].is_object(), "{file}");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let expected = if file == "physicalhosts.yaml" {
            "consumerRef"
        } else {
            "requiredTags"
        };
        assert!(spec[expected].is_object(), "{file}: {spec}");
    }
}
