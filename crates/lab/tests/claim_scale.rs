//! The binder's cache against the fake API server: a term reads the hosts and claims from its watches, so
//! what it reads can be stale. Its writes stay guarded by the resourceVersion: a stale host gets 409
//! Conflict and the bind succeeds once the watch has the newer version; its own writes, laid over the
//! cache, keep a bound claim bound while the watch still shows the host free; and a host bound to a claim
//! the claims' watch has not delivered yet is not released as if that claim were deleted.

use std::time::Duration;

use claim_coordinator::provider::{Claim as _, Host as _};
use claim_coordinator::resources::HostClaimSpec;
use claim_coordinator::{Binder, Metrics, Pool};
use fake_apiserver::Faults;
use kube::Api;
use kube::api::PostParams;
use leaderelection::Term;
use leaderelection_lab::claim_sim::{Cluster, HostPlan, NAMESPACE, current_term};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// How late the binder's watch of the hosts delivers each event: far longer than a batch takes.
const WATCH_DELAY: Duration = Duration::from_secs(5);

/// How long the test waits for a claim to be bound: generous, for a machine loaded by a parallel build.
const PATIENCE: Duration = Duration::from_secs(60);

fn plan(name: &str) -> HostPlan {
    HostPlan {
        name: name.into(),
        tags: std::collections::BTreeMap::new(),
        cpu_cores: 8,
        memory_gib: 64,
    }
}

fn simple() -> HostClaimSpec {
    HostClaimSpec {
        image_url: "http://images/os.iso".into(),
        ..HostClaimSpec::default()
    }
}

/// Waits until `claim` is bound, returning its host.
async fn bound(cluster: &Cluster, claim: &str) -> String {
    bound_checking(cluster, claim, async || {}).await
}

/// Waits until `claim` is bound, returning its host; `check` runs before every look, to assert what must
/// hold until then.
async fn bound_checking(cluster: &Cluster, claim: &str, mut check: impl AsyncFnMut()) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        check().await;
        let claim = cluster.claims().get(claim).await.unwrap();
        if let Some(host) = claim.host_ref() {
            return host.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not bound after {PATIENCE:?}",
            claim.metadata.name.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The PUTs on `resource` named `name` that came through the `listeners`, by status code.
fn updates(cluster: &Cluster, listeners: &[usize], resource: &str, name: &str) -> Vec<u16> {
    cluster
        .server
        .request_log()
        .into_iter()
        .filter(|r| listeners.contains(&r.listener))
        .filter(|r| r.verb == "update" && r.resource == resource)
        .filter(|r| r.name.as_deref() == Some(name))
        .filter_map(|r| r.code)
        .collect()
}

/// Runs a binder's term `transitions` (holder `leader`) in the background, its hosts read through
/// `hosts` and its claims through `claims`; cancel the token to end it.
fn run_term(
    hosts: &fake_apiserver::Listener,
    claims: &fake_apiserver::Listener,
    transitions: i32,
) -> (
    tokio::task::JoinHandle<Result<(), leaderelection_controller::BoxError>>,
    CancellationToken,
) {
    let mut pool = Pool::new(
        leaderelection::KubeLeaseLock::client_for_url(&hosts.url()).unwrap(),
        NAMESPACE,
        "leader",
    );
    pool.claims = Api::namespaced(
        leaderelection::KubeLeaseLock::client_for_url(&claims.url()).unwrap(),
        NAMESPACE,
    );
    let binder = Binder::new(
        pool,
        Metrics::new(&mut Registry::default()),
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let (fence, _state) = current_term(transitions);
    let claim_coordinator::Fence::Term { state, .. } = fence else {
        unreachable!("current_term gives a term's fence")
    };
    let token = CancellationToken::new();
    let term = tokio::spawn(binder.run_term(
        Term {
            holder: "leader".into(),
            transitions,
            acquire_time: None,
        },
        state,
        token.clone(),
    ));
    (term, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_host_gets_409_and_is_bound_once_the_watch_has_it_and_own_writes_are_not_undone() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-0")).await.unwrap();
    // The binder's hosts through a listener whose watches deliver every event WATCH_DELAY late; its
    // claims through one without delay.
    let slow = cluster.server.add_listener().await.unwrap();
    slow.set_faults(Faults {
        watch_delay: WATCH_DELAY,
        ..Faults::default()
    });
    let fast = cluster.server.add_listener().await.unwrap();
    let binder_listeners = [slow.id(), fast.id()];
    let (term, token) = run_term(&slow, &fast, 3);

    // A first claim, bound from the cache: the term's watches are running.
    cluster.add_claim("c-0", simple()).await.unwrap();
    assert_eq!(bound(&cluster, "c-0").await, "h-0");

    // A second host changes after the binder listed it (a label a host controller adds), then a claim
    // arrives: the binder learns of the claim at once but of the host's change WATCH_DELAY late.
    cluster.add_host(&plan("h-1")).await.unwrap();
    tokio::time::sleep(WATCH_DELAY + Duration::from_secs(1)).await;
    let mut h1 = cluster.hosts().get("h-1").await.unwrap();
    h1.metadata
        .labels
        .get_or_insert_default()
        .insert("inspected".into(), "true".into());
    cluster
        .hosts()
        .replace("h-1", &PostParams::default(), &h1)
        .await
        .unwrap();
    cluster.add_claim("c-1", simple()).await.unwrap();
    assert_eq!(bound(&cluster, "c-1").await, "h-1");
    token.cancel();
    term.await.unwrap().unwrap();

    // The stale read of h-1 was refused (409) and the bind tried again until it succeeded.
    let h1_writes = updates(&cluster, &binder_listeners, "physicalhosts", "h-1");
    assert!(h1_writes.contains(&409), "{h1_writes:?}");
    assert_eq!(h1_writes.last(), Some(&200), "{h1_writes:?}");
    // While the hosts' watch still showed h-0 free (for WATCH_DELAY after its bind; the test slept past
    // it above), the binder's own writes kept c-0 bound: one write of its status, none that undid it, and
    // h-0 written twice.
    let c0_writes = updates(&cluster, &binder_listeners, "hostclaims", "c-0");
    assert_eq!(c0_writes, [200], "{c0_writes:?}");
    assert_eq!(
        updates(&cluster, &binder_listeners, "physicalhosts", "h-0"),
        [200, 200]
    );
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(
        snapshot.violations().is_empty(),
        "{:?}",
        snapshot.violations()
    );
    cluster.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_bound_to_a_claim_the_cache_has_not_seen_is_not_released() {
    let cluster = Cluster::start().await.unwrap();
    cluster.add_host(&plan("h-0")).await.unwrap();
    cluster.add_host(&plan("h-1")).await.unwrap();
    // The binder's claims through a listener whose watches deliver every event WATCH_DELAY late; its
    // hosts through one without delay.
    let slow = cluster.server.add_listener().await.unwrap();
    slow.set_faults(Faults {
        watch_delay: WATCH_DELAY,
        ..Faults::default()
    });
    let fast = cluster.server.add_listener().await.unwrap();
    let (term, token) = run_term(&fast, &slow, 4);
    // A first claim, bound from the cache: the term's watches are running.
    cluster.add_claim("c-0", simple()).await.unwrap();
    let taken = bound(&cluster, "c-0").await;
    let free = if taken == "h-0" { "h-1" } else { "h-0" };

    // A consumer creates a claim and binds the free host to it, as the optimistic path does: the binder
    // sees the host at once and the claim WATCH_DELAY later.
    cluster.add_claim("c-x", simple()).await.unwrap();
    let claim = cluster.claims().get("c-x").await.unwrap();
    let uid = claim.metadata.uid.clone().unwrap();
    let mut host = cluster.hosts().get(free).await.unwrap();
    host.spec.consumer_ref = Some(claim.consumer_ref());
    cluster
        .hosts()
        .replace(free, &PostParams::default(), &host)
        .await
        .unwrap();
    // Until the binder has finished that bind (once the claim reaches its cache), the host keeps its
    // consumer: never released for a claim the cache does not have yet.
    let host = bound_checking(&cluster, "c-x", async || {
        let host = cluster.hosts().get(free).await.unwrap();
        assert_eq!(
            host.consumer().map(|c| c.uid),
            Some(uid.clone()),
            "{free} was released while c-x lives"
        );
    })
    .await;
    assert_eq!(host, free);
    token.cancel();
    term.await.unwrap().unwrap();
    let snapshot = cluster.snapshot().await.unwrap();
    assert!(
        snapshot.violations().is_empty(),
        "{:?}",
        snapshot.violations()
    );
    cluster.server.shutdown().await;
}
