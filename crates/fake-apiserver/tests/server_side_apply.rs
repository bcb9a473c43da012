//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) as kube-apiserver serves it, through the
//! real kube 5 client: how kubert and kube-lease-manager take a Lease. The fake answered 415 before.

use fake_apiserver::{FakeApiServer, ResourceType};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use support::api_error;

mod support;

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

fn leases(server: &FakeApiServer) -> Api<Lease> {
    Api::namespaced(client(&server.url()), "default")
}

/// What kubert's `LeaseManager::acquire` applies (`kubert/src/lease.rs`), for `holder`.
fn claim(holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {
            "acquireTime": "2026-12-07T05:00:00.000000Z",
            "renewTime": "2026-12-07T05:00:00.000000Z",
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
        },
    })
}

/// Applies `config` to Lease "l" as `manager`, forcing conflicts when `force`.
async fn apply(api: &Api<Lease>, manager: &str, force: bool, config: Value) -> kube::Result<Lease> {
    let mut params = PatchParams::apply(manager);
    params.force = force;
    api.patch("l", &params, &Patch::Apply(config)).await
}

/// The managedFields entries of `lease` as (manager, operation, fieldsV1).
fn managed(lease: &Lease) -> Vec<(String, String, Value)> {
    lease
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.fields_v1
                    .as_ref()
                    .map(|f| f.0.clone())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn server_side_apply_creates_a_lease_and_records_the_appliers_fields() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    let applied = apply(&api, "kubert", false, claim("a")).await.unwrap();
    let spec = applied.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(
        managed(&applied),
        [(
            "kubert".to_owned(),
            "Apply".to_owned(),
            json!({"f:spec": {"f:acquireTime": {}, "f:holderIdentity": {},
                "f:leaseDurationSeconds": {}, "f:renewTime": {}}})
        )]
    );
    assert_eq!(
        api.get("l").await.unwrap().metadata.managed_fields,
        applied.metadata.managed_fields
    );
    // The same configuration again changes nothing: no new resourceVersion.
    let again = apply(&api, "kubert", false, claim("a")).await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        applied.metadata.resource_version
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_conflicts_on_a_field_another_manager_owns_unless_forced() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    apply(&api, "candidate-a", false, claim("a")).await.unwrap();
    // kube-lease-manager applies without force: another holder is a conflict, nothing written.
    let rv = server.resource_version();
    let (code, reason, message) = api_error(apply(&api, "candidate-b", false, claim("b")).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Apply failed with 1 conflict: conflict with \"candidate-a\": .spec.holderIdentity"
    );
    assert_eq!(server.resource_version(), rv);
    // Applying the values already stored is no conflict: the fields are shared.
    let mut same = claim("a");
    same["spec"] = json!({"holderIdentity": "a"});
    apply(&api, "observer", false, same).await.unwrap();

    // kubert applies with force: it takes the field from both.
    let forced = apply(&api, "candidate-b", true, claim("b")).await.unwrap();
    assert_eq!(
        forced.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("b")
    );
    let entries = managed(&forced);
    let owners: Vec<&str> = entries
        .iter()
        .filter(|(_, _, f)| f.pointer("/f:spec/f:holderIdentity").is_some())
        .map(|(m, _, _)| m.as_str())
        .collect();
    assert_eq!(owners, ["candidate-b"]);
    // candidate-a still owns the fields whose values did not change (shared with candidate-b).
    let a = entries.iter().find(|(m, _, _)| m == "candidate-a").unwrap();
    assert!(
        a.2.pointer("/f:spec/f:leaseDurationSeconds").is_some(),
        "{entries:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_conflicts_with_an_updater_naming_its_api_version() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    let mut lease: Lease = serde_json::from_value(claim("a")).unwrap();
    lease.metadata.name = Some("l".into());
    let params = PostParams {
        field_manager: Some("leader-elect".into()),
        ..PostParams::default()
    };
    let created = api.create(&params, &lease).await.unwrap();
    assert_eq!(managed(&created)[0].0, "leader-elect");
    assert_eq!(managed(&created)[0].1, "Update");
    let (code, _, message) = api_error(apply(&api, "candidate-b", false, claim("b")).await);
    assert_eq!(code, 409);
    // acquireTime and renewTime carry the same values: only holderIdentity conflicts.
    assert_eq!(
        message,
        "Apply failed with 1 conflict: conflict with \"leader-elect\" using coordination.k8s.io/v1: \
         .spec.holderIdentity"
    );
    // Two fields, two conflicts, grouped by manager.
    let mut both = claim("b");
    both["spec"]["leaseDurationSeconds"] = json!(30);
    let (_, _, message) = api_error(apply(&api, "candidate-b", false, both).await);
    assert_eq!(
        message,
        "Apply failed with 2 conflicts: conflicts with \"leader-elect\" using coordination.k8s.io/v1:\n\
         - .spec.holderIdentity\n- .spec.leaseDurationSeconds"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_needs_a_field_manager_and_honours_a_resource_version() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    let (code, reason, message) = api_error(
        api.patch("l", &PatchParams::default(), &Patch::Apply(claim("a")))
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    let created = apply(&api, "kubert", false, claim("a")).await.unwrap();
    // kubert puts the version it read in the body: a stale one is a 409, as any precondition.
    let mut renewed = claim("a");
    renewed["spec"]["renewTime"] = json!("2026-12-07T05:00:10.000000Z");
    renewed["metadata"] = json!({"resourceVersion": created.metadata.resource_version});
    apply(&api, "kubert", true, renewed).await.unwrap();
    let mut stale = claim("a");
    stale["metadata"] = json!({"resourceVersion": created.metadata.resource_version});
    let (code, reason, _) = api_error(apply(&api, "kubert", true, stale).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_removes_the_fields_a_manager_stops_applying() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    let mut labelled = claim("a");
    labelled["metadata"] = json!({"labels": {"keep": "1", "drop": "2"}});
    apply(&api, "kubert", false, labelled).await.unwrap();
    let mut fewer = claim("a");
    fewer["metadata"] = json!({"labels": {"keep": "1"}});
    let applied = apply(&api, "kubert", false, fewer).await.unwrap();
    let labels = applied.metadata.labels.unwrap();
    assert_eq!(labels.get("keep").map(String::as_str), Some("1"));
    assert!(!labels.contains_key("drop"), "{labels:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_serves_lease_candidates_and_custom_resources() {
    let claims = ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true);
    let server = FakeApiServer::builder()
        .custom_resource(claims.clone())
        .start()
        .await
        .unwrap();
    for (gvk, plural, spec) in [
        (
            GroupVersionKind::gvk("coordination.k8s.io", "v1beta1", "LeaseCandidate"),
            "leasecandidates",
            json!({"leaseName": "l", "binaryVersion": "1.36.0", "strategy": "OldestEmulationVersion"}),
        ),
        (
            GroupVersionKind::gvk(&claims.group, &claims.version, &claims.kind),
            claims.plural.as_str(),
            json!({"size": 1}),
        ),
    ] {
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client(&server.url()), "default", &ar);
        let config = json!({"apiVersion": ar.api_version, "kind": ar.kind, "spec": spec});
        let applied = api
            .patch("x", &PatchParams::apply("mgr"), &Patch::Apply(&config))
            .await
            .unwrap();
        assert_eq!(applied.data["spec"], spec, "{plural}");
        let entries = applied.metadata.managed_fields.unwrap();
        assert_eq!(entries[0].manager.as_deref(), Some("mgr"), "{plural}");
        assert_eq!(entries[0].operation.as_deref(), Some("Apply"), "{plural}");
    }
    server.shutdown().await;
}

/// kube-lease-manager's cycle (`src/state.rs`): a candidate takes a free Lease by apply without force, renews
/// and releases it by strategic merge patches under the same field manager; the next candidate's apply,
/// without force, then finds the fields owned by nobody and takes the Lease. An update that removes fields
/// removes them from every manager's entry.
#[tokio::test]
async fn server_side_apply_takes_a_released_lease_without_force() {
    let server = FakeApiServer::start().await.unwrap();
    let api = leases(&server);
    apply(&api, "a", false, claim("a")).await.unwrap();
    // `force` belongs to apply only (kube refuses to send it otherwise: a raw request).
    let forced = http::Request::patch(
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/l?fieldManager=a&force=true",
    )
    .header("content-type", "application/merge-patch+json")
    .body(b"{}".to_vec())
    .unwrap();
    let (code, _, message) = api_error(client(&server.url()).request::<Value>(forced).await);
    assert_eq!(
        (code, message.as_str()),
        (
            422,
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for \
             non-apply patch"
        )
    );
    let by_a = PatchParams {
        field_manager: Some("a".into()),
        ..PatchParams::default()
    };
    let renewed = api
        .patch(
            "l",
            &by_a,
            &Patch::Strategic(json!({"spec": {"renewTime": "2026-12-07T05:00:05.000000Z"}})),
        )
        .await
        .unwrap();
    let entries = managed(&renewed);
    let update = entries
        .iter()
        .find(|(m, op, _)| m == "a" && op == "Update")
        .unwrap();
    assert_eq!(update.2, json!({"f:spec": {"f:renewTime": {}}}));
    let released = api
        .patch(
            "l",
            &by_a,
            &Patch::Strategic(json!({"spec": {"holderIdentity": null, "renewTime": null,
                "acquireTime": null, "leaseDurationSeconds": null}})),
        )
        .await
        .unwrap();
    assert!(managed(&released).is_empty(), "{:?}", managed(&released));

    let taken = apply(&api, "b", false, claim("b")).await.unwrap();
    assert_eq!(taken.spec.unwrap().holder_identity.as_deref(), Some("b"));
    server.shutdown().await;
}
