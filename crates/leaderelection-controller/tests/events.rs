//! Kubernetes Events on the Lease (`Builder::events`), end to end: the real kube client, kube-runtime's
//! event recorder and the fake API server.

use std::future::Future;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Faults};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use leaderelection::Config;
use leaderelection_controller::Runtime;
use leaderelection_controller::recorder::REASON;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous, for a loaded machine; the waits end as soon as the fact holds.
const BOUND: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "ns1";
const LEASE: &str = "events-test";

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

fn config(identity: &str) -> Config {
    let mut config = Config::new(identity, LEASE, NAMESPACE);
    config.retry_period = Duration::from_millis(200);
    config
}

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("not {what} within {BOUND:?}"))
}

async fn events(client: &kube::Client) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn with_note<'a>(events: &'a [Event], note: &str) -> Option<&'a Event> {
    events.iter().find(|e| e.note.as_deref() == Some(note))
}

#[tokio::test]
async fn a_term_is_recorded_as_events_regarding_the_lease() {
    let server = FakeApiServer::start().await.unwrap();
    let client = client(&server.url());
    let runtime = Runtime::builder(client.clone(), config("pod-a"))
        .events(client.clone(), "my-controller")
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(runtime.run(shutdown.clone()));

    let became = bounded("recorded \"pod-a became leader\"", async {
        loop {
            if let Some(event) = with_note(&events(&client).await, "pod-a became leader") {
                return event.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(LEASE)
        .await
        .unwrap();
    assert_eq!(became.reason.as_deref(), Some(REASON));
    assert_eq!(became.type_.as_deref(), Some("Normal"));
    assert_eq!(became.action.as_deref(), Some("BecameLeader"));
    assert_eq!(
        became.reporting_controller.as_deref(),
        Some("my-controller")
    );
    assert_eq!(became.reporting_instance.as_deref(), Some("pod-a"));
    let regarding = became.regarding.as_ref().expect("regarding");
    assert_eq!(
        regarding.api_version.as_deref(),
        Some("coordination.k8s.io/v1")
    );
    assert_eq!(regarding.kind.as_deref(), Some("Lease"));
    assert_eq!(regarding.name.as_deref(), Some(LEASE));
    assert_eq!(regarding.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(regarding.uid, lease.metadata.uid);
    assert!(regarding.uid.is_some());

    // `run` records what is waiting before it returns: the release's "stopped leading" is there at once.
    shutdown.cancel();
    bounded("stopped", run).await.unwrap().unwrap();
    let stopped = events(&client).await;
    let stopped =
        with_note(&stopped, "pod-a stopped leading").expect("a \"stopped leading\" Event");
    assert_eq!(stopped.action.as_deref(), Some("StoppedLeading"));
    assert_eq!(
        stopped.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some(LEASE)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_failure_to_record_never_affects_the_election() {
    let server = FakeApiServer::start().await.unwrap();
    let refused = server.add_listener().await.unwrap();
    refused.set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        ..Faults::default()
    });
    let client = client(&server.url());
    let runtime = Runtime::builder(client.clone(), config("pod-a"))
        .events(self::client(&refused.url()), "my-controller")
        .build()
        .unwrap();
    let election = runtime.handle();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(runtime.run(shutdown.clone()));
    let mut state = election.subscribe();
    bounded("leading", state.wait_for(|_| election.is_leader()))
        .await
        .unwrap();

    shutdown.cancel();
    bounded("stopped", run).await.unwrap().unwrap();
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(LEASE)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(""),
        "released as usual"
    );
    assert!(events(&client).await.is_empty(), "every Event was refused");
    server.shutdown().await;
}
