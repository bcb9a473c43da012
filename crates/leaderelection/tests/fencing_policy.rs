//! Server-side fencing: the `FencingPolicy` this crate generates, installed in the fake API server (which
//! enforces ValidatingAdmissionPolicies as kube-apiserver does), refuses stale terms where the writes land.
//! The Lease is at `leaseTransitions` 3 unless electors run on it; writes are stamped as a leader's write
//! gate stamps them.

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use leaderelection::fencing::{FencingPolicy, LEASE_ANNOTATION, Mode, TERM_ANNOTATION};
use leaderelection::{Callbacks, Config, Elector, KubeLeaseLock};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The Lease's term in every test.
const TERM: i32 = 3;
const LEASE: &str = "jobs/my-controller";

mod common;

use common::widget_resource;

/// The policy of the Lease `jobs/my-controller` guarding `example.com/v1/widgets`.
fn widgets_policy(mode: Mode) -> FencingPolicy {
    FencingPolicy::new("jobs", "my-controller")
        .resource("example.com/v1/widgets".parse().unwrap())
        .mode(mode)
}

/// A fake API server serving widgets, with [`widgets_policy`] and its binding installed; the Lease
/// `jobs/my-controller` at `leaseTransitions` [`TERM`] unless `lease` is false. Returns the server and the
/// widgets of namespace `jobs`.
async fn fenced(mode: Mode, lease: bool) -> (FakeApiServer, Api<DynamicObject>) {
    fenced_by(widgets_policy(mode), lease).await
}

/// As [`fenced`], with `policy` installed.
async fn fenced_by(policy: FencingPolicy, lease: bool) -> (FakeApiServer, Api<DynamicObject>) {
    let (server, client) = common::with_policy(policy).await;
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

#[tokio::test]
async fn only_the_listed_namespaces_are_guarded() {
    let (server, jobs) = fenced_by(widgets_policy(Mode::Strict).namespaces(["jobs"]), true).await;
    let (code, _, _) = refusal(
        jobs.create(&PostParams::default(), &widget("w", None, None))
            .await,
    );
    assert_eq!(code, 422);
    let client = KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let elsewhere = Api::<DynamicObject>::namespaced_with(client, "other", &widget_resource());
    elsewhere
        .create(&PostParams::default(), &widget("w", None, None))
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

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

/// With electors on the Lease: after a handover, a write stamped with the first leader's term (a frozen
/// writer resuming, or a request that was on the wire) is refused; the second leader's term passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_handover_the_old_leaders_term_is_refused_and_the_new_one_passes() {
    let (server, widgets) = fenced(Mode::Strict, false).await;
    let candidate = |id: &str| {
        let config = Config::new(id, "my-controller", "jobs")
            .with_lease_duration(std::time::Duration::from_secs(300))
            .with_renew_deadline(std::time::Duration::from_secs(200))
            .with_retry_period(std::time::Duration::from_secs(100));
        let client = KubeLeaseLock::client_for_url(&server.url()).unwrap();
        let lock = KubeLeaseLock::new(client, "jobs", "my-controller");
        Elector::new(config, lock, Callbacks::new()).unwrap()
    };
    let first = candidate("first");
    let first_stop = CancellationToken::new();
    let (first, first_driver) = (first.handle(), first);
    let first_run = tokio::spawn(first_driver.run(first_stop.clone()));
    let mut first_state = first.subscribe();
    bounded(first_state.wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    let old = first_state
        .borrow()
        .current_term()
        .unwrap()
        .transitions
        .to_string();
    let written = widgets
        .create(
            &PostParams::default(),
            &widget("w", Some(&old), Some(LEASE)),
        )
        .await
        .unwrap();

    let second = candidate("second");
    let second_stop = CancellationToken::new();
    let (second, second_driver) = (second.handle(), second);
    let second_run = tokio::spawn(second_driver.run(second_stop.clone()));
    let mut second_state = second.subscribe();
    bounded(second_state.wait_for(|s| s.leader.as_deref() == Some("first")))
        .await
        .unwrap();
    first_stop.cancel();
    bounded(first_run).await.unwrap().unwrap();
    bounded(second_state.wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    let new = second_state
        .borrow()
        .current_term()
        .unwrap()
        .transitions
        .to_string();
    assert_ne!(new, old);

    let (code, _, message) = refusal(
        widgets
            .patch("w", &PatchParams::default(), &stamped_patch(9, Some(&old)))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains(&format!("stale term {old}: ")),
        "{message}"
    );
    assert_eq!(
        widgets.get("w").await.unwrap().metadata.resource_version,
        written.metadata.resource_version
    );
    let patched = widgets
        .patch("w", &PatchParams::default(), &stamped_patch(9, Some(&new)))
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["replicas"], 9);
    second_stop.cancel();
    bounded(second_run).await.unwrap().unwrap();
    server.shutdown().await;
}
