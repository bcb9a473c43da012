//! Server-side fencing: the `FencingPolicy` this crate generates, installed in the fake API server (which
//! enforces ValidatingAdmissionPolicies as kube-apiserver does), refuses stale terms where the writes land.
//! The Lease is at `leaseTransitions` 3 throughout; writes are stamped as a leader's write gate stamps them.

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use leaderelection::fencing::{LEASE_ANNOTATION, Mode, TERM_ANNOTATION};
use serde_json::json;

/// The Lease's term in every test.
const TERM: i32 = 3;
const LEASE: &str = "jobs/my-controller";

mod common;

use common::widget_resource;

/// A fake API server serving widgets, with the generated policy (guarding `example.com/v1/widgets`) and
/// its binding installed; the Lease `jobs/my-controller` at `leaseTransitions` [`TERM`] unless `lease` is
/// false. Returns the server and the widgets of namespace `jobs`.
async fn fenced(mode: Mode, lease: bool) -> (FakeApiServer, Api<DynamicObject>) {
    let (server, client) = common::with_policy("jobs", "my-controller", mode).await;
    if lease {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "my-controller", "namespace": "jobs"},
            "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15, "leaseTransitions": TERM},
        }))
        .unwrap();
        Api::<Lease>::namespaced(client.clone(), "jobs")
            .create(&PostParams::default(), &lease)
            .await
            .unwrap();
    }
    let widgets = Api::namespaced_with(client, "jobs", &widget_resource());
    (server, widgets)
}

/// A widget stamped with `term` and `lease` (each omitted when `None`).
fn widget(name: &str, term: Option<&str>, lease: Option<&str>) -> DynamicObject {
    let mut object =
        DynamicObject::new(name, &widget_resource()).data(json!({"spec": {"replicas": 1}}));
    let annotations = [(TERM_ANNOTATION, term), (LEASE_ANNOTATION, lease)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect::<std::collections::BTreeMap<_, _>>();
    if !annotations.is_empty() {
        object.metadata.annotations = Some(annotations);
    }
    object
}

/// The merge patch a write gate sends for `spec.replicas = replicas`, stamped with `term` (unstamped when
/// `None`).
fn stamped_patch(replicas: i64, term: Option<&str>) -> Patch<serde_json::Value> {
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some(term) = term {
        patch["metadata"] =
            json!({"annotations": {TERM_ANNOTATION: term, LEASE_ANNOTATION: LEASE}});
    }
    Patch::Merge(patch)
}

/// The (code, reason, message) of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason, status.message),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_write_stamped_with_an_older_term_is_refused_with_422_and_the_object_is_unchanged() {
    let (server, widgets) = fenced(Mode::Lenient, true).await;
    let stored = widgets
        .create(&PostParams::default(), &widget("w", Some("3"), Some(LEASE)))
        .await
        .unwrap();
    let before = server.resource_version();

    // The frozen leader of term 2 resumes: its patch, and a replace carrying its stamp, are refused.
    let (code, reason, message) = refusal(
        widgets
            .patch("w", &PatchParams::default(), &stamped_patch(5, Some("2")))
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        "widgets.example.com \"w\" is forbidden: ValidatingAdmissionPolicy \
         'my-controller.jobs.fencing.leaderelection.dev' with binding \
         'my-controller.jobs.fencing.leaderelection.dev' denied request: stale term 2: Lease \
         jobs/my-controller is at leaseTransitions 3"
    );
    let mut replaced = stored.clone();
    replaced.data["spec"]["replicas"] = json!(7);
    replaced.metadata.annotations = widget("w", Some("2"), Some(LEASE)).metadata.annotations;
    let (code, _, _) = refusal(
        widgets
            .replace("w", &PostParams::default(), &replaced)
            .await,
    );
    assert_eq!(code, 422);
    let (code, _, _) = refusal(
        widgets
            .create(
                &PostParams::default(),
                &widget("new", Some("0"), Some(LEASE)),
            )
            .await,
    );
    assert_eq!(code, 422);

    assert_eq!(server.resource_version(), before, "nothing was written");
    let now = widgets.get("w").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        stored.metadata.resource_version
    );
    assert_eq!(now.data["spec"]["replicas"], 1);
    assert_eq!(
        now.metadata.annotations.unwrap()[TERM_ANNOTATION],
        "3",
        "the stamp is the current term's"
    );
}

#[tokio::test]
async fn a_write_stamped_with_the_current_term_passes() {
    let (_server, widgets) = fenced(Mode::Strict, true).await;
    widgets
        .create(&PostParams::default(), &widget("w", Some("3"), Some(LEASE)))
        .await
        .unwrap();
    let patched = widgets
        .patch("w", &PatchParams::default(), &stamped_patch(5, Some("3")))
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["replicas"], 5);
}

#[tokio::test]
async fn an_unstamped_write_passes_in_lenient_mode() {
    let (_server, widgets) = fenced(Mode::Lenient, true).await;
    widgets
        .create(&PostParams::default(), &widget("w", None, None))
        .await
        .unwrap();
    let patched = widgets
        .patch("w", &PatchParams::default(), &stamped_patch(5, None))
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["replicas"], 5);
}

#[tokio::test]
async fn an_unstamped_write_is_refused_in_strict_mode() {
    let (server, widgets) = fenced(Mode::Strict, true).await;
    let before = server.resource_version();
    for (term, lease) in [(None, None), (Some("3"), None), (None, Some(LEASE))] {
        let (code, _, message) = refusal(
            widgets
                .create(&PostParams::default(), &widget("w", term, lease))
                .await,
        );
        assert_eq!(code, 422);
        assert!(
            message.ends_with(
                "denied request: unfenced write: strict fencing by Lease jobs/my-controller needs the \
                 leaderelection.dev/term and leaderelection.dev/lease annotations"
            ),
            "{message}"
        );
    }
    assert_eq!(server.resource_version(), before, "nothing was written");
}

#[tokio::test]
async fn a_write_naming_another_lease_is_refused() {
    let (_server, widgets) = fenced(Mode::Lenient, true).await;
    let (code, _, message) = refusal(
        widgets
            .create(
                &PostParams::default(),
                &widget("w", Some("9"), Some("jobs/other-controller")),
            )
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.ends_with(
            "denied request: write stamped for Lease jobs/other-controller, this object is fenced by Lease \
             jobs/my-controller"
        ),
        "{message}"
    );
    assert!(widgets.get_opt("w").await.unwrap().is_none());
}

#[tokio::test]
async fn a_term_that_is_not_a_decimal_is_refused() {
    let (_server, widgets) = fenced(Mode::Lenient, true).await;
    for term in ["three", "-1", "99999999999999999999", ""] {
        let (code, _, message) = refusal(
            widgets
                .create(
                    &PostParams::default(),
                    &widget("w", Some(term), Some(LEASE)),
                )
                .await,
        );
        assert_eq!(code, 422, "{term:?}");
        assert!(
            message.ends_with(&format!(
                "denied request: leaderelection.dev/term {term} is not a term: a decimal leaseTransitions \
                 of Lease jobs/my-controller"
            )),
            "{message}"
        );
    }
}

#[tokio::test]
async fn without_the_lease_strict_mode_refuses_and_lenient_mode_admits() {
    let (_server, strict) = fenced(Mode::Strict, false).await;
    let (code, _, message) = refusal(
        strict
            .create(&PostParams::default(), &widget("w", Some("3"), Some(LEASE)))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.ends_with(
            "failed to configure binding: no params found for policy binding with `Deny` \
             parameterNotFoundAction"
        ),
        "{message}"
    );
    let (_server, lenient) = fenced(Mode::Lenient, false).await;
    lenient
        .create(&PostParams::default(), &widget("w", Some("0"), Some(LEASE)))
        .await
        .unwrap();
}

/// Deletes are not guarded: a delete carries no stamp, and the stored object's is its last writer's.
#[tokio::test]
async fn a_delete_is_not_guarded() {
    let (_server, widgets) = fenced(Mode::Strict, true).await;
    widgets
        .create(&PostParams::default(), &widget("w", Some("3"), Some(LEASE)))
        .await
        .unwrap();
    widgets.delete("w", &DeleteParams::default()).await.unwrap();
    assert!(widgets.get_opt("w").await.unwrap().is_none());
}
