//! `leader-elect fencing-policy`: the YAML it prints is a ValidatingAdmissionPolicy and its binding that,
//! stored in the (fake) API server, refuse a write stamped with a stale term; bad input is one line naming
//! the flag, the value and the rule, with exit code 2.

use std::process::Output;

use fake_apiserver::{FakeApiServer, ResourceType};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::serde::Deserialize;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use leaderelection::fencing::{LEASE_ANNOTATION, Mode, TERM_ANNOTATION};
use serde_json::json;

fn leader_elect(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_leader-elect"))
        .args(args)
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn fencing_policy_prints_yaml_whose_policy_refuses_a_stale_term() {
    let out = leader_elect(&[
        "fencing-policy",
        "--lease-name",
        "my-controller",
        "--lease-namespace",
        "jobs",
        "--resource",
        "example.com/v1/widgets",
        "--strict",
    ]);
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let mut documents = serde_norway::Deserializer::from_str(&yaml);
    let policy = ValidatingAdmissionPolicy::deserialize(documents.next().unwrap()).unwrap();
    let binding = ValidatingAdmissionPolicyBinding::deserialize(documents.next().unwrap()).unwrap();
    assert!(documents.next().is_none(), "two documents: {yaml}");

    let server = FakeApiServer::builder()
        .custom_resource(ResourceType::custom(
            "example.com",
            "v1",
            "Widget",
            "widgets",
            true,
        ))
        .start()
        .await
        .unwrap();
    let client = leaderelection::KubeLeaseLock::client_for_url(&server.url()).unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "my-controller"},
        "spec": {"holderIdentity": "pod-b", "leaseTransitions": 4},
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), "jobs")
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let widgets = Api::<DynamicObject>::namespaced_with(
        client,
        "jobs",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.com", "v1", "Widget"),
            "widgets",
        ),
    );
    let stamped = |term: &str| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": format!("w{term}"), "annotations": {
                TERM_ANNOTATION: term, LEASE_ANNOTATION: "jobs/my-controller"}},
        }))
        .unwrap()
    };
    match widgets.create(&PostParams::default(), &stamped("3")).await {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 422
                && status
                    .message
                    .ends_with("stale term 3: Lease jobs/my-controller is at leaseTransitions 4"),
            "{status:?}"
        ),
        other => panic!("expected 422, got {other:?}"),
    }
    widgets
        .create(&PostParams::default(), &stamped("4"))
        .await
        .unwrap();
}

#[test]
fn fencing_policy_bad_input_names_the_flag_value_and_rule_and_exits_2() {
    for (args, expected) in [
        (
            &["--resource", "apps/v1/deployments/status"][..],
            "invalid --resource \"apps/v1/deployments/status\": subresources are not guarded",
        ),
        (
            &["--resource", "deployments"][..],
            "invalid --resource \"deployments\": must be group/version/resource",
        ),
        (
            &["--resource", "coordination.k8s.io/v1/leases"][..],
            "invalid --resource \"coordination.k8s.io/v1/leases\": Leases cannot be guarded",
        ),
        (
            &["--resource", "v1/configmaps", "--lease-namespace", "Team_A"][..],
            "invalid --lease-namespace \"Team_A\": must be a lowercase RFC 1123 label",
        ),
        (
            &["--resource", "v1/configmaps", "--guard-namespace", "a.b"][..],
            "invalid --guard-namespace \"a.b\": must be a lowercase RFC 1123 label",
        ),
    ] {
        let out =
            leader_elect(&[&["fencing-policy", "--lease-name", "my-controller"], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing printed");
        assert!(
            stderr.starts_with(&format!("leader-elect: error: {expected}")),
            "{args:?}: {stderr}"
        );
    }
    let out = leader_elect(&[
        "fencing-policy",
        "--lease-name",
        "Bad_Name",
        "--resource",
        "v1/configmaps",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("leader-elect: error: invalid --lease-name \"Bad_Name\": must be a lowercase RFC 1123 subdomain"),
        "{out:?}"
    );
}

/// The chart's copy of the policy's validations (`deploy/helm/leader-elect/files/fencing-validations.yaml`,
/// rendered by its `fencing` value) is what `leaderelection::fencing::validations` gives today.
#[test]
fn the_charts_fencing_validations_are_current() {
    const HEADER: &str = "\
# The fencing policy's CEL validations, per mode: leaderelection::fencing::validations
# (crates/leaderelection/src/fencing/policy.rs), rendered by templates/fencing.yaml. Generated: do not edit.
# Regenerate with: LEADER_ELECT_WRITE_CHART_FILES=1 cargo test -p leader-elect --test fencing_policy
";
    let modes: std::collections::BTreeMap<&str, _> = [
        (
            "lenient",
            leaderelection::fencing::validations(Mode::Lenient),
        ),
        ("strict", leaderelection::fencing::validations(Mode::Strict)),
    ]
    .into();
    let generated = format!("{HEADER}{}", serde_norway::to_string(&modes).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/helm/leader-elect/files/fencing-validations.yaml");
    if std::env::var_os("LEADER_ELECT_WRITE_CHART_FILES").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        checked_in == generated,
        "{} is stale: run LEADER_ELECT_WRITE_CHART_FILES=1 cargo test -p leader-elect --test fencing_policy \
         and commit the result",
        path.display()
    );
}
