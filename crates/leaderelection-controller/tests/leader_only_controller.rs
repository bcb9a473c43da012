//! The `leader_only_controller` example on fake-apiserver: two replicas, each a [`Runtime`] running the
//! example's `Greeting` controller as a leader-only component and reaching the API through its own
//! listener. Only the leader reconciles; once the leader is cut off from the API, the other replica leads
//! and its controller reconciles, stamping its higher term; a replica that leads again runs its
//! controller again.

#[allow(dead_code)] // the example's `main` and signal handler are not used here
#[path = "../examples/leader_only_controller.rs"]
pub mod example;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use example::{Greeting, GreetingSpec, GreetingStatus};
use fake_apiserver::{FakeApiServer, Faults, Listener, ResourceType};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::Resource;
use leaderelection::{Config, LeaderState};
use leaderelection_controller::{LeaderContext, Runtime, RuntimeError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous, for a loaded machine; the waits end as soon as the fact holds.
const BOUND: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "default";

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

/// One replica: a runtime whose only component is the example's controller.
struct Replica {
    identity: &'static str,
    listener: Listener,
    state: watch::Receiver<LeaderState>,
    /// Whether the example's controller is running (from its start until it returns).
    controller: watch::Receiver<bool>,
    shutdown: CancellationToken,
    run: JoinHandle<Result<(), RuntimeError>>,
}

impl Replica {
    fn start(identity: &'static str, listener: Listener) -> Self {
        let client = client(&listener.url());
        let config = Config::new(identity, "greeting-controller", NAMESPACE)
            .with_lease_duration(Duration::from_secs(2))
            .with_renew_deadline(Duration::from_secs(1))
            .with_retry_period(Duration::from_millis(250));
        let (running, controller) = watch::channel(false);
        let running = Arc::new(running);
        let runtime = Runtime::builder(client.clone(), config)
            .leader_only(
                "greeting-controller",
                move |LeaderContext { term, token, .. }| {
                    let (client, running) = (client.clone(), running.clone());
                    async move {
                        running.send_replace(true);
                        let result = example::controller(client, term, token).await;
                        running.send_replace(false);
                        result
                    }
                },
            )
            .build()
            .unwrap();
        let state = runtime.handle().subscribe();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(runtime.run(shutdown.clone()));
        Self {
            identity,
            listener,
            state,
            controller,
            shutdown,
            run,
        }
    }

    /// The term this replica leads in, once it leads.
    async fn term(&mut self) -> i32 {
        let state = bounded(
            "leading",
            self.state.wait_for(|s| s.is_leader() && s.term.is_some()),
        )
        .await
        .unwrap();
        state.term.as_ref().unwrap().transitions
    }

    async fn stop(self) {
        self.shutdown.cancel();
        bounded("run returns", self.run).await.unwrap().unwrap();
    }
}

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("not {what} within {BOUND:?}"))
}

/// Polls the Greeting until its status satisfies `done`, and returns that status.
async fn status_when(
    api: &Api<Greeting>,
    what: &str,
    done: impl Fn(&GreetingStatus) -> bool,
) -> GreetingStatus {
    bounded(what, async {
        loop {
            if let Some(status) = api.get("world").await.unwrap().status
                && done(&status)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Requests for Greetings that reached `listener` (any verb: list, watch, update).
fn greeting_requests(server: &FakeApiServer, listener: &Listener) -> u64 {
    server
        .counts()
        .iter()
        .filter(|c| c.listener == listener.id() && c.resource == Greeting::plural(&()))
        .map(|c| c.count)
        .sum()
}

/// Only the leader's controller reconciles (the follower's never even lists Greetings); after the leader
/// is cut off from the API, its controller stops, the other replica leads and its controller writes its
/// higher term into the status and follows spec changes; when that one shuts down, the first replica
/// leads again and its controller runs again, in a newer term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_next_leader_takes_over() {
    let server = FakeApiServer::builder()
        .custom_resource(ResourceType::custom(
            &Greeting::group(&()),
            &Greeting::version(&()),
            &Greeting::kind(&()),
            &Greeting::plural(&()),
            true,
        ))
        .start()
        .await
        .unwrap();
    let mut a = Replica::start("replica-a", server.add_listener().await.unwrap());
    let a_term = a.term().await;
    let mut b = Replica::start("replica-b", server.add_listener().await.unwrap());
    bounded(
        "b sees a lead",
        b.state
            .wait_for(|s| s.leader.as_deref() == Some(a.identity)),
    )
    .await
    .unwrap();

    let api: Api<Greeting> = Api::namespaced(client(&server.url()), NAMESPACE);
    let spec = GreetingSpec {
        name: "World".into(),
    };
    api.create(&PostParams::default(), &Greeting::new("world", spec))
        .await
        .unwrap();
    let status = status_when(&api, "reconciled", |_| true).await;
    assert_eq!(
        status,
        GreetingStatus {
            reply: "Hello, World!".into(),
            observed_generation: 1,
            observed_term: a_term,
            reconciled_by: a.identity.into(),
        }
    );
    assert!(greeting_requests(&server, &a.listener) > 0);
    assert_eq!(
        greeting_requests(&server, &b.listener),
        0,
        "the follower's controller does not run"
    );
    assert!(!b.state.borrow().is_leader());
    assert!(*a.controller.borrow());
    assert!(!*b.controller.borrow());

    a.listener.set_faults(Faults::partition());
    let b_term = b.term().await;
    assert!(b_term > a_term, "term {b_term} after {a_term}");
    let status = status_when(&api, "reconciled by b", |s| s.observed_term == b_term).await;
    assert_eq!(status.reconciled_by, b.identity);
    assert_eq!(status.reply, "Hello, World!");

    let patch = serde_json::json!({"spec": {"name": "Leader"}});
    api.patch("world", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let status = status_when(&api, "spec change reconciled", |s| {
        s.observed_generation == 2
    })
    .await;
    assert_eq!(
        status,
        GreetingStatus {
            reply: "Hello, Leader!".into(),
            observed_generation: 2,
            observed_term: b_term,
            reconciled_by: b.identity.into(),
        }
    );
    bounded("a knows it lost", a.state.wait_for(|s| !s.is_leader()))
        .await
        .unwrap();
    bounded("a's controller stops", a.controller.wait_for(|r| !r))
        .await
        .unwrap();

    // a reaches the API again; b shuts down and releases the Lease: a leads again, and its controller
    // runs again, in a new term.
    a.listener.clear_faults();
    b.stop().await;
    let a_next = a.term().await;
    assert!(a_next > b_term, "term {a_next} after {b_term}");
    let status = status_when(&api, "reconciled by a again", |s| s.observed_term == a_next).await;
    assert_eq!(status.reconciled_by, a.identity);
    assert_eq!(status.reply, "Hello, Leader!");
    a.stop().await;
    server.shutdown().await;
}
