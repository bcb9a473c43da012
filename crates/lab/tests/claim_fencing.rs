//! Issue 20 item 5: the late write the claim coordinator's documentation described ("a request sent in the
//! last moment of a term that lands after the next leader has read the hosts can still give a claim a
//! second host"), made deterministic, without and with the fencing policy.
//!
//! The old leader's binder (through its term's write gate, as `coordinator::replica` runs it) sends the
//! bind of claim `c-1` to host `h-big`; the request leaves the gate stamped with term 1 and is held on the
//! wire. The Lease is taken over (term 2): the gate cancels the old leader's wait, but the bytes are gone.
//! A smaller host joins, and the new leader binds `c-1` to it (its best fit); `h-big` is untouched, so its
//! resourceVersion still matches the held write. Then the held write reaches the server: without the policy
//! it lands and `c-1` has two hosts; with the policy it is refused with 422 and `h-big` stays free.

use std::time::Duration;

use claim_coordinator::provider::Host as _;
use claim_coordinator::resources::{HostClaimSpec, TERM_ANNOTATION};
use claim_coordinator::steps::{self, StepError};
use claim_coordinator::{Binder, Metrics, Pool};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::client::Body;
use leaderelection::fencing::{self, LEASE_ANNOTATION};
use leaderelection::{LeaderState, Term};
use leaderelection_lab::claim_sim::{Cluster, HostPlan, NAMESPACE, Replica};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// The coordinator Lease (the settings' default name).
const LEASE: &str = "claim-coordinator-leader";

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

fn host(name: &str, cpu_cores: u32) -> HostPlan {
    HostPlan {
        name: name.into(),
        tags: Default::default(),
        cpu_cores,
        memory_gib: 64,
    }
}

/// The elector's state while `holder` leads term `transitions`, with no validity deadline: only the test
/// ends the term.
fn leading(holder: &str, transitions: i32) -> LeaderState {
    LeaderState {
        leader: Some(holder.into()),
        lease_transitions: transitions,
        term: Some(Term {
            holder: holder.into(),
            transitions,
            acquire_time: None,
        }),
        ..LeaderState::default()
    }
}

/// A binder of `client` as `holder`, leading term `transitions` of [`LEASE`]: its pool gated by the term's
/// write gate, the binder's own check on the same state, and the sender that ends the term.
fn leader(
    client: kube::Client,
    holder: &str,
    transitions: i32,
) -> (Binder, steps::Fence, watch::Sender<LeaderState>) {
    let state = leading(holder, transitions);
    let term = state.term.clone().unwrap();
    let (tx, rx) = watch::channel(state);
    let gate = fencing::Fence::new(term, NAMESPACE, LEASE, rx.clone());
    let binder = Binder::new(
        Pool::new(client, NAMESPACE, holder),
        Metrics::new(&mut Registry::default()),
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .gated(&gate);
    let fence = steps::Fence::Term {
        transitions,
        state: rx,
    };
    (binder, fence, tx)
}

/// `client` with its first update of a host's spec held "on the wire": the request (as the gate let it
/// out, stamped) goes to the receiver and its answer never comes; everything else is sent.
fn holding_the_first_host_update(
    client: &kube::Client,
) -> (kube::Client, mpsc::UnboundedReceiver<http::Request<Body>>) {
    let (held_tx, held_rx) = mpsc::unbounded_channel();
    let inner = client.clone();
    let wire = tower::service_fn(move |request: http::Request<Body>| {
        let (inner, held_tx) = (inner.clone(), held_tx.clone());
        async move {
            let path = request.uri().path();
            let host_update = request.method() == http::Method::PUT
                && path.contains("/physicalhosts/")
                && !path.ends_with("/status");
            if host_update && !held_tx.is_closed() {
                let _ = held_tx.send(request);
                // One request is held; the next host update goes through.
                return std::future::pending().await;
            }
            inner.send(request).await
        }
    });
    (kube::Client::new(wire, NAMESPACE), held_rx)
}

/// What happened to the old leader's held bind, and the pool afterwards.
struct Outcome {
    /// The server's answer to the held write.
    code: u16,
    /// Claims with two hosts at the end.
    claims_with_two_hosts: Vec<String>,
    /// The consumer of `h-big` at the end.
    big_consumer: Option<String>,
    /// `h-big`'s term annotation at the end.
    big_term: Option<String>,
}

async fn late_bind(policy: bool) -> Outcome {
    let cluster = Cluster::start().await.unwrap();
    if policy {
        cluster.install_fencing(LEASE).await.unwrap();
    }
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": LEASE},
        "spec": {"holderIdentity": "old", "leaseTransitions": 1}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    cluster.add_host(&host("h-big", 64)).await.unwrap();
    let spec = HostClaimSpec {
        image_url: "http://images.example/os.iso".into(),
        ..HostClaimSpec::default()
    };
    cluster.add_claim("c-1", spec).await.unwrap();

    // The old leader's bind leaves its gate and is held on the wire.
    let (wire, mut held) = holding_the_first_host_update(&cluster.client);
    let (old, old_fence, old_state) = leader(wire, "old", 1);
    let batch = tokio::spawn(async move { old.batch(&old_fence).await });
    let request = bounded(held.recv()).await.unwrap();
    drop(held);

    // The takeover: the Lease at term 2, and the old elector sees it. The gate cancels the wait.
    let takeover = json!({"spec": {"holderIdentity": "new", "leaseTransitions": 2}});
    leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(takeover))
        .await
        .unwrap();
    old_state.send_replace(LeaderState {
        leader: Some("new".into()),
        lease_transitions: 2,
        ..LeaderState::default()
    });
    let ended = bounded(batch).await.unwrap();
    assert!(
        matches!(ended, Err(StepError::Fenced)),
        "the gate cancels the old term's bind in flight: {ended:?}"
    );

    // A better fit joins; the new leader binds c-1 to it, leaving h-big as it was.
    cluster.add_host(&host("h-small", 8)).await.unwrap();
    let (new, new_fence, _new_state) = leader(cluster.client.clone(), "new", 2);
    assert_eq!(new.batch(&new_fence).await.unwrap().bound, 1);
    let claim = cluster.claims().get("c-1").await.unwrap();
    assert_eq!(
        claim.status.as_ref().and_then(|s| s.host_ref.as_deref()),
        Some("h-small")
    );
    let small = cluster.hosts().get("h-small").await.unwrap();
    assert_eq!(small.annotations()[TERM_ANNOTATION], "2");
    assert_eq!(
        small.annotations()[LEASE_ANNOTATION],
        format!("{NAMESPACE}/{LEASE}")
    );

    // The old leader's bind reaches the server.
    let code = bounded(cluster.client.send(request))
        .await
        .unwrap()
        .status()
        .as_u16();
    let snapshot = cluster.snapshot().await.unwrap();
    let big = cluster.hosts().get("h-big").await.unwrap();
    cluster.server.shutdown().await;
    Outcome {
        code,
        claims_with_two_hosts: snapshot
            .violations()
            .claims_with_two_hosts
            .into_iter()
            .collect(),
        big_consumer: big.consumer().map(|c| c.name),
        big_term: big.annotations().get(TERM_ANNOTATION).cloned(),
    }
}

/// The baseline: without the policy the old term's bind lands after the new leader's, and the claim has two
/// hosts (the binder's next batch would release one; the invariant is broken until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_policy_a_bind_held_on_the_wire_across_a_takeover_gives_the_claim_a_second_host()
 {
    let outcome = late_bind(false).await;
    assert_eq!(outcome.code, 200, "the stale write landed");
    assert_eq!(outcome.claims_with_two_hosts, ["c-1"]);
    assert_eq!(outcome.big_consumer.as_deref(), Some("c-1"));
    assert_eq!(outcome.big_term.as_deref(), Some("1"));
}

/// With the policy of `leader-elect fencing-policy --resource claims.leaderelection.dev/v1alpha1/physicalhosts`
/// installed, the same write, stamped with term 1, is refused by the server: no claim has two hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_policy_a_bind_held_on_the_wire_across_a_takeover_is_refused_with_422() {
    let outcome = late_bind(true).await;
    assert_eq!(outcome.code, 422, "the server refused the stale write");
    assert!(
        outcome.claims_with_two_hosts.is_empty(),
        "{:?}",
        outcome.claims_with_two_hosts
    );
    assert_eq!(outcome.big_consumer, None, "h-big unchanged");
}

/// `coordinator::replica` runs the binder through its term's gate: a host it binds carries the Lease's
/// stamp, which only the gate writes (the binder itself writes the term alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_binds_hosts_through_its_terms_gate() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&host("h-1", 8)).await.unwrap();
    let (events, _bound) = mpsc::unbounded_channel();
    let settings = leaderelection_lab::claim_sim::fast_settings();
    let mut replica = Replica::start(&cluster, "replica-0", &settings, events)
        .await
        .unwrap();
    let spec = HostClaimSpec {
        image_url: "http://images.example/os.iso".into(),
        ..HostClaimSpec::default()
    };
    cluster.add_claim("c-1", spec).await.unwrap();
    let host = bounded(async {
        loop {
            let host = cluster.hosts().get("h-1").await.unwrap();
            if host.consumer().is_some() {
                break host;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    replica.stop().await;
    let lease: Lease = Api::namespaced(cluster.client.clone(), NAMESPACE)
        .get(LEASE)
        .await
        .unwrap();
    let transitions = lease.spec.unwrap().lease_transitions.unwrap_or_default();
    assert_eq!(
        host.annotations().get(LEASE_ANNOTATION).map(String::as_str),
        Some(format!("{NAMESPACE}/{LEASE}").as_str())
    );
    assert_eq!(host.annotations()[TERM_ANNOTATION], transitions.to_string());
    cluster.server.shutdown().await;
}
