//! What kube-apiserver 1.36 refuses (or warns about) and the fake once accepted silently, each seen on the
//! real server (issue 22): a PUT with the uid of a deleted object, a write over etcd's request limit, a
//! LeaseCandidate named after a unicode identity, a create in a terminating namespace, a request to the
//! deprecated LeaseCandidate v1beta1.

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;
use support::{api_error, lease};

mod support;

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

/// A PUT of a Lease read before it was deleted carries the old uid: kube-apiserver makes it a precondition,
/// so the write is refused (409) whether the Lease is gone or recreated under the same name, where the fake
/// created it (201) or replaced the new one.
#[tokio::test]
async fn an_update_carrying_the_uid_of_a_deleted_lease_conflicts() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let old = api
        .create(&PostParams::default(), &lease("l", "a"))
        .await
        .unwrap();
    let old_uid = old.metadata.uid.clone().unwrap();
    api.delete("l", &DeleteParams::default()).await.unwrap();

    let mut stale = old.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let (code, reason, message) = api_error(api.replace("l", &PostParams::default(), &stale).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": StorageError: invalid \
             object, Code: 4, Key: /registry/leases/default/l, ResourceVersion: 0, AdditionalErrorMsg: \
             Precondition failed: UID in precondition: {old_uid}, UID in object meta: "
        )
    );
    assert!(api.get_opt("l").await.unwrap().is_none(), "nothing created");

    let new = api
        .create(&PostParams::default(), &lease("l", "c"))
        .await
        .unwrap();
    let new_uid = new.metadata.uid.clone().unwrap();
    stale.metadata.resource_version = new.metadata.resource_version.clone();
    let (code, _, message) = api_error(api.replace("l", &PostParams::default(), &stale).await);
    assert_eq!(code, 409);
    assert!(
        message.ends_with(&format!(
            "UID in precondition: {old_uid}, UID in object meta: {new_uid}"
        )),
        "{message}"
    );
    let kept = api.get("l").await.unwrap();
    assert_eq!(kept.spec.unwrap().holder_identity.as_deref(), Some("c"));
    // Without a uid, the Lease strategy's create-on-update still applies.
    let mut fresh = lease("m", "a");
    fresh.metadata.resource_version = Some("1".into());
    api.replace("m", &PostParams::default(), &fresh)
        .await
        .unwrap();
    server.shutdown().await;
}

/// etcd refuses a request over 1.5 MiB (`--max-request-bytes`), and kube-apiserver passes its error on as a
/// 500 without a reason; up to 3 MiB the body itself is accepted (413 above that).
#[tokio::test]
async fn a_lease_over_etcds_request_limit_is_refused_with_etcds_error() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let huge = "x".repeat(2_000_000);
    let (code, reason, message) = api_error(
        api.create(&PostParams::default(), &lease("big", &huge))
            .await,
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (500, "", "etcdserver: request is too large")
    );
    assert!(api.get_opt("big").await.unwrap().is_none());
    // Under the limit: stored.
    let large = "x".repeat(1_000_000);
    api.create(&PostParams::default(), &lease("large", &large))
        .await
        .unwrap();
    // Over the body limit: 413 as before.
    let (code, _, _) = api_error(
        api.create(
            &PostParams::default(),
            &lease("huge", &"x".repeat(3_200_000)),
        )
        .await,
    );
    assert_eq!(code, 413);
    server.shutdown().await;
}

/// A LeaseCandidate's name is a DNS-1123 subdomain: one named after a unicode identity is 422 `Invalid`, as
/// kube-apiserver's `ValidateLeaseCandidate` (`pkg/apis/coordination/validation/validation.go`) refuses it.
#[tokio::test]
async fn a_lease_candidate_named_after_a_unicode_identity_is_invalid() {
    let server = FakeApiServer::start().await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("coordination.k8s.io", "v1beta1", "LeaseCandidate"),
        "leasecandidates",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client(&server.url()), "default", &ar);
    let candidate = DynamicObject::new("pod-ü", &ar).data(json!({"spec": {
        "leaseName": "l", "binaryVersion": "1.36.0", "strategy": "OldestEmulationVersion"}}));
    let (code, reason, message) = api_error(api.create(&PostParams::default(), &candidate).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.starts_with(
            "LeaseCandidate.coordination.k8s.io \"pod-ü\" is invalid: metadata.name: Invalid value: \"pod-ü\""
        ),
        "{message}"
    );
    server.shutdown().await;
}

/// `NamespaceLifecycle` admission: nothing is created in a namespace being deleted (403, kube-apiserver's
/// message), whether by a create, a Lease update that would create, or an apply; what it holds is still
/// served. A namespace that does not exist is 404.
#[tokio::test]
async fn a_create_in_a_terminating_namespace_is_forbidden() {
    let server = FakeApiServer::builder()
        .existing_namespaces(["default", "doomed"])
        .start()
        .await
        .unwrap();
    let c = client(&server.url());
    let doomed: Api<Lease> = Api::namespaced(c.clone(), "doomed");
    let held = doomed
        .create(&PostParams::default(), &lease("held", "a"))
        .await
        .unwrap();
    server.terminate_namespace("doomed");

    let forbidden = "leases.coordination.k8s.io \"new\" is forbidden: unable to create new content in \
                     namespace doomed because it is being terminated";
    let (code, reason, message) = api_error(
        doomed
            .create(&PostParams::default(), &lease("new", "a"))
            .await,
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (403, "Forbidden", forbidden)
    );
    let (code, _, message) = api_error(
        doomed
            .replace("new", &PostParams::default(), &lease("new", "a"))
            .await,
    );
    assert_eq!((code, message.as_str()), (403, forbidden));
    let (code, _, message) = api_error(
        doomed
            .patch(
                "new",
                &kube::api::PatchParams::apply("kubert"),
                &kube::api::Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease", "spec": {"holderIdentity": "a"}})),
            )
            .await,
    );
    assert_eq!((code, message.as_str()), (403, forbidden));

    // What it holds is served and can be written.
    let mut renewed = held.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    doomed
        .replace("held", &PostParams::default(), &renewed)
        .await
        .unwrap();
    let namespace: serde_json::Value = c
        .request(
            http::Request::get("/api/v1/namespaces/doomed")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(namespace["status"]["phase"], "Terminating");

    let missing: Api<Lease> = Api::namespaced(c, "missing");
    let (code, _, message) = api_error(
        missing
            .create(&PostParams::default(), &lease("new", "a"))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (404, "namespaces \"missing\" not found")
    );
    server.shutdown().await;
}

/// kube-apiserver 1.36 answers every request to `coordination.k8s.io/v1beta1` LeaseCandidates with a
/// deprecation warning (`Warning: 299 - "..."`); Leases get none.
#[tokio::test]
async fn lease_candidates_v1beta1_answer_a_deprecation_warning() {
    let server = FakeApiServer::start().await.unwrap();
    let c = client(&server.url());
    let warnings = |resp: &http::Response<kube::client::Body>| -> Vec<String> {
        resp.headers()
            .get_all(http::header::WARNING)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let candidates = c
        .send(
            http::Request::get(
                "/apis/coordination.k8s.io/v1beta1/namespaces/default/leasecandidates",
            )
            .body(kube::client::Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(candidates.status(), 200);
    assert_eq!(
        warnings(&candidates),
        [
            "299 - \"coordination.k8s.io/v1beta1 LeaseCandidate is deprecated in v1.36+, unavailable in \
             v1.39+\""
        ]
    );
    let leases = c
        .send(
            http::Request::get("/apis/coordination.k8s.io/v1/namespaces/default/leases")
                .body(kube::client::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(warnings(&leases).is_empty());
    server.shutdown().await;
}
