//! A leader-only component's gated client (`LeaderContext::fenced_client`) against the fake API server:
//! its writes are stamped with the term while the replica leads, and refused, without reaching the
//! server, once another candidate took the Lease.

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use leaderelection::fencing::{FenceReason, Fenced, LEASE_ANNOTATION, TERM_ANNOTATION};
use leaderelection::{Config, KubeLeaseLock};
use leaderelection_controller::{LeaderContext, Runtime};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_only_components_fenced_client_is_stamped_then_refused_once_the_term_ended() {
    let server = FakeApiServer::start().await.unwrap();
    let client = KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let config = Config::new("a", "ctl", "default")
        .with_lease_duration(Duration::from_secs(300))
        .with_renew_deadline(Duration::from_secs(200))
        .with_retry_period(Duration::from_secs(100));
    let (gated_tx, mut gated_rx) = tokio::sync::mpsc::unbounded_channel();
    let component_client = client.clone();
    let runtime =
        Runtime::builder_with_lock(KubeLeaseLock::new(client.clone(), "default", "ctl"), config)
            .leader_only("writer", move |lead: LeaderContext| {
                let gated = (lead.term.transitions, lead.fenced_client(&component_client));
                let sent = gated_tx.send(gated);
                async move {
                    sent.map_err(|_| "the test stopped listening")?;
                    lead.token.cancelled().await;
                    Ok(())
                }
            })
            .build()
            .unwrap();
    let handle = runtime.handle();
    let stop = CancellationToken::new();
    let run = tokio::spawn(runtime.run(stop.clone()));
    let (term, gated) = bounded(gated_rx.recv()).await.unwrap();
    let gated: Api<Lease> = Api::namespaced(gated, "default");
    let plain: Api<Lease> = Api::namespaced(client.clone(), "default");

    let written = gated
        .create(&PostParams::default(), &lease("guarded"))
        .await
        .unwrap();
    let annotations = written.metadata.annotations.unwrap();
    assert_eq!(annotations[TERM_ANNOTATION], term.to_string());
    assert_eq!(annotations[LEASE_ANNOTATION], "default/ctl");

    let takeover = json!({"spec": {"holderIdentity": "b", "leaseTransitions": term + 1}});
    plain
        .patch("ctl", &PatchParams::default(), &Patch::Merge(takeover))
        .await
        .unwrap();
    bounded(handle.subscribe().wait_for(|s| s.term.is_none()))
        .await
        .unwrap();
    let error = gated
        .create(&PostParams::default(), &lease("late"))
        .await
        .expect_err("the ended term's write is refused");
    let fenced = Fenced::find(&error).unwrap_or_else(|| panic!("not Fenced: {error:?}"));
    assert_eq!(
        fenced.reason,
        FenceReason::NewerTerm {
            transitions: term + 1
        }
    );
    assert!(
        plain.get_opt("late").await.unwrap().is_none(),
        "nothing was written"
    );
    assert!(
        !server
            .request_log()
            .iter()
            .any(|r| r.verb == "create" && r.resource == "leases" && r.code != Some(201)),
        "no refused create reached the server"
    );

    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    server.shutdown().await;
}
