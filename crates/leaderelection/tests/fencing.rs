//! The write gate (`fencing::Fence`) over real HTTP against the fake API server: a leader's gated client
//! writes, stamped, while it leads; once another candidate took the Lease, its next write fails with the
//! typed error and never reaches the server; a write held by the server when the term ends is cancelled;
//! and with the generated admission policy installed, a stamped write of the old term held on the wire
//! until after the next leader's first write is refused by the server with 422.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use fake_apiserver::{FakeApiServer, Faults};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::client::Body;
use leaderelection::fencing::{
    Fence, FenceReason, Fenced, FencingPolicy, LEASE_ANNOTATION, TERM_ANNOTATION,
};
use leaderelection::{Callbacks, Config, Elector, ElectorHandle, KubeLeaseLock};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

mod common;

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

fn client(url: &str) -> kube::Client {
    KubeLeaseLock::client_for_url(url).unwrap()
}

/// Candidate "a" on Lease `default/ctl`, leading; timings long enough that only the test ends its term.
async fn leader(
    server: &FakeApiServer,
) -> (
    ElectorHandle,
    tokio::task::JoinHandle<Result<(), leaderelection::Error>>,
    CancellationToken,
) {
    let config = Config::new("a", "ctl", "default")
        .with_lease_duration(Duration::from_secs(300))
        .with_renew_deadline(Duration::from_secs(200))
        .with_retry_period(Duration::from_secs(100));
    let lock = KubeLeaseLock::new(client(&server.url()), "default", "ctl");
    let elector = Elector::new(config, lock, Callbacks::new()).unwrap();
    let handle = elector.handle();
    let stop = CancellationToken::new();
    let run = tokio::spawn(elector.run(stop.clone()));
    bounded(handle.subscribe().wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    (handle, run, stop)
}

/// The fence of the elector's current term.
fn fence(elector: &ElectorHandle) -> Fence {
    let state = elector.subscribe();
    let term = state.borrow().current_term().cloned().expect("leading");
    Fence::new(term, "default", "ctl", state)
}

/// Another candidate takes Lease `default/ctl` (a new term), written past the elector as a forced takeover.
async fn take_over(server: &FakeApiServer, elector: &ElectorHandle) {
    let leases: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let transitions = elector.subscribe().borrow().lease_transitions;
    let takeover = json!({"spec": {"holderIdentity": "b", "leaseTransitions": transitions + 1}});
    leases
        .patch("ctl", &PatchParams::default(), &Patch::Merge(takeover))
        .await
        .unwrap();
    bounded(elector.subscribe().wait_for(|s| s.term.is_none()))
        .await
        .unwrap();
}

/// Requests for Lease `default/guarded` that reached the server, as `verb`s.
fn guarded_requests(server: &FakeApiServer) -> Vec<String> {
    server
        .request_log()
        .into_iter()
        .filter(|r| r.resource == "leases" && r.name.as_deref() == Some("guarded"))
        .map(|r| r.verb)
        .collect()
}

fn annotations(lease: &Lease) -> Vec<(String, String)> {
    lease
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key.starts_with("leaderelection.dev/"))
        .collect()
}

fn guarded() -> Lease {
    serde_json::from_value(
        json!({"metadata": {"name": "guarded"}, "spec": {"holderIdentity": "x"}}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_client_writes_stamped_while_leading_and_nothing_reaches_the_server_after_a_takeover()
 {
    let server = FakeApiServer::start().await.unwrap();
    let (elector, run, stop) = leader(&server).await;
    let fence = fence(&elector);
    let term = fence.term().transitions;
    let gated: Api<Lease> = Api::namespaced(fence.client(&client(&server.url())), "default");
    let plain: Api<Lease> = Api::namespaced(client(&server.url()), "default");

    gated
        .create(&PostParams::default(), &guarded())
        .await
        .unwrap();
    let stamps = vec![
        (LEASE_ANNOTATION.to_owned(), "default/ctl".to_owned()),
        (TERM_ANNOTATION.to_owned(), term.to_string()),
    ];
    assert_eq!(annotations(&plain.get("guarded").await.unwrap()), stamps);
    let merge = Patch::Merge(json!({"spec": {"holderIdentity": "y"}}));
    let patched = gated
        .patch("guarded", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(annotations(&patched), stamps);

    take_over(&server, &elector).await;
    let before = guarded_requests(&server);
    let error = gated
        .patch("guarded", &PatchParams::default(), &merge)
        .await
        .expect_err("the old term's write is refused");
    let fenced = Fenced::find(&error).unwrap_or_else(|| panic!("not Fenced: {error:?}"));
    assert_eq!(
        fenced.reason,
        FenceReason::NewerTerm {
            transitions: term + 1
        }
    );
    assert!(!fenced.in_flight);
    gated.get("guarded").await.expect("reads still pass");
    let after = guarded_requests(&server);
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(
        after[before.len()..],
        ["get".to_owned()],
        "the PATCH never reached the server"
    );
    assert_eq!(
        plain
            .get("guarded")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("y")
    );

    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_by_the_server_when_the_lease_is_taken_over_is_cancelled() {
    let server = FakeApiServer::start().await.unwrap();
    let (elector, run, stop) = leader(&server).await;
    let plain: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    plain
        .create(&PostParams::default(), &guarded())
        .await
        .unwrap();
    // The gated client's own address, where every PATCH is accepted and never answered.
    let held = server.add_listener().await.unwrap();
    held.set_faults(Faults {
        black_hole: true,
        verbs: vec!["patch".into()],
        ..Faults::default()
    });
    let gated: Api<Lease> =
        Api::namespaced(fence(&elector).client(&client(&held.url())), "default");

    let write = tokio::spawn(async move {
        let merge = Patch::Merge(json!({"spec": {"holderIdentity": "late"}}));
        gated
            .patch("guarded", &PatchParams::default(), &merge)
            .await
    });
    bounded(async {
        while !guarded_requests(&server).contains(&"patch".to_owned()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    take_over(&server, &elector).await;
    let error = bounded(write).await.unwrap().expect_err("cancelled");
    let fenced = Fenced::find(&error).unwrap_or_else(|| panic!("not Fenced: {error:?}"));
    assert!(fenced.in_flight, "{fenced}");

    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    server.shutdown().await;
}

/// A client whose one request, once the gate let it out (stamped), is held "on the wire" until `release`
/// is notified, then sent whether or not the gate still waits for it (bytes already sent cannot be called
/// back); the server's status code goes to the returned receiver.
fn held_on_the_wire(
    fence: &Fence,
    client: &kube::Client,
) -> (
    kube::Client,
    Arc<tokio::sync::Notify>,
    tokio::sync::oneshot::Receiver<u16>,
) {
    let release = Arc::new(tokio::sync::Notify::new());
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let answer_tx = Arc::new(Mutex::new(Some(answer_tx)));
    let (wire_client, wire_release) = (client.clone(), release.clone());
    let wire = tower::service_fn(move |request: http::Request<Body>| {
        let (client, release, answer_tx) =
            (wire_client.clone(), wire_release.clone(), answer_tx.clone());
        tokio::spawn(async move {
            release.notified().await;
            let code = match client.send(request).await {
                Ok(response) => response.status().as_u16(),
                Err(err) => panic!("the held request was not answered: {err}"),
            };
            if let Some(tx) = answer_tx.lock().unwrap().take() {
                let _ = tx.send(code);
            }
        });
        std::future::pending::<Result<http::Response<Body>, kube::Error>>()
    });
    (
        kube::Client::new(fence.layer().layer(wire), "default"),
        release,
        answer_rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_policy_a_stale_write_held_on_the_wire_past_the_next_leaders_first_write_is_refused_with_422()
 {
    let policy =
        FencingPolicy::new("default", "ctl").resource("example.com/v1/widgets".parse().unwrap());
    let (server, plain_client) = common::with_policy(policy).await;
    let (elector, run, stop) = leader(&server).await;
    let fence = fence(&elector);
    let term = fence.term().transitions;
    let resource = common::widget_resource();
    let gated: Api<DynamicObject> =
        Api::namespaced_with(fence.client(&plain_client), "default", &resource);
    let widget = DynamicObject::new("w", &resource).data(json!({"spec": {"replicas": 1}}));
    gated.create(&PostParams::default(), &widget).await.unwrap();

    // The leader's write leaves the gate stamped with its term, and is held on the wire.
    let (held_client, release, answer) = held_on_the_wire(&fence, &plain_client);
    let held: Api<DynamicObject> = Api::namespaced_with(held_client, "default", &resource);
    let stale = tokio::spawn(async move {
        let patch = Patch::Merge(json!({"spec": {"replicas": 2}}));
        held.patch("w", &PatchParams::default(), &patch).await
    });
    // Another candidate takes the Lease: the gate drops the leader's wait for the held write...
    take_over(&server, &elector).await;
    let error = bounded(stale)
        .await
        .unwrap()
        .expect_err("cancelled in flight");
    assert!(
        Fenced::find(&error).is_some_and(|f| f.in_flight),
        "{error:?}"
    );
    // ...and the next leader writes, stamped with its term.
    let next = term + 1;
    let widgets: Api<DynamicObject> = Api::namespaced_with(plain_client, "default", &resource);
    let next_write = json!({"metadata": {"annotations": {TERM_ANNOTATION: next.to_string(),
        LEASE_ANNOTATION: "default/ctl"}}, "spec": {"replicas": 3}});
    widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(next_write))
        .await
        .unwrap();

    release.notify_one();
    assert_eq!(
        bounded(answer).await.unwrap(),
        422,
        "the server refused the stale write"
    );
    let stored = widgets.get("w").await.unwrap();
    assert_eq!(
        stored.data["spec"]["replicas"], 3,
        "unchanged since the next leader's write"
    );
    let annotations = stored.metadata.annotations.unwrap();
    assert_eq!(annotations[TERM_ANNOTATION], next.to_string());

    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    server.shutdown().await;
}
