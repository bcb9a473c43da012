//! The composition root: a leader-elected process built in a few lines, over the in-memory lock and
//! tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use leaderelection::{Config, MemoryLeaseStore};
use leaderelection_controller::{LeaderContext, Policy, Runtime, RuntimeError, SupervisorError};
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 10 minutes of (virtual) time, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .expect("not within 10 minutes of virtual time: a wait that never ends")
}

fn config(identity: &str) -> Config {
    Config::new(identity, "runtime", "default")
}

/// Counts the leader-only component's running instances, per replica.
fn replica(
    store: &MemoryLeaseStore,
    identity: &str,
    running: Arc<AtomicUsize>,
) -> (Runtime, CancellationToken) {
    let runtime = Runtime::builder_with_lock(store.lock(identity), config(identity))
        .all_replica("informers", |token| async move {
            token.cancelled().await;
            Ok(())
        })
        .leader_only("reconciler", move |LeaderContext { token, .. }| {
            let running = running.clone();
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                token.cancelled().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .build()
        .unwrap();
    (runtime, CancellationToken::new())
}

/// Two replicas: only the leader runs its leader-only component; shutting the leader down stops that
/// component, releases the Lease, `run` returns `Ok`, and the other replica's component runs at once.
#[tokio::test(start_paused = true)]
async fn only_the_leader_runs_its_leader_only_component_and_shutdown_hands_over() {
    let store = MemoryLeaseStore::new();
    let (a_running, b_running) = (Arc::default(), Arc::default());
    let (a, a_stop) = replica(&store, "a", Arc::clone(&a_running));
    let mut a_state = a.handle().subscribe();
    let a_task = tokio::spawn(a.run(a_stop.clone()));
    bounded(a_state.wait_for(|s| s.is_leader())).await.unwrap();
    let (b, b_stop) = replica(&store, "b", Arc::clone(&b_running));
    let mut b_state = b.handle().subscribe();
    let b_task = tokio::spawn(b.run(b_stop.clone()));
    bounded(b_state.wait_for(|s| s.leader.as_deref() == Some("a")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(a_running.load(Ordering::SeqCst), 1);
    assert_eq!(b_running.load(Ordering::SeqCst), 0);

    let stopped_at = tokio::time::Instant::now();
    a_stop.cancel();
    bounded(a_task).await.unwrap().unwrap();
    assert_eq!(a_running.load(Ordering::SeqCst), 0);
    bounded(b_state.wait_for(|s| s.is_leader())).await.unwrap();
    assert_eq!(
        tokio::time::Instant::now(),
        stopped_at,
        "taken over at once"
    );
    tokio::task::yield_now().await;
    assert_eq!(b_running.load(Ordering::SeqCst), 1);
    b_stop.cancel();
    bounded(b_task).await.unwrap().unwrap();
    assert_eq!(store.lease().unwrap().record.holder_identity, "");
}

/// A component failure under `Policy::FailProcess` stops the election (the Lease is released) and ends
/// `run` with the failure.
#[tokio::test(start_paused = true)]
///
/// The policy is set after the component was registered: `Builder::policy` applies to every component
/// registered without its own, before or after it (nothing registered is dropped or left on another
/// policy).
async fn a_fail_process_failure_ends_run_with_it() {
    let store = MemoryLeaseStore::new();
    let runtime = Runtime::builder_with_lock(store.lock("a"), config("a"))
        .leader_only("reconciler", |_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err("cannot reach the database".into())
        })
        .policy(Policy::FailProcess)
        .build()
        .unwrap();
    let err = bounded(runtime.run(CancellationToken::new()))
        .await
        .unwrap_err();
    match err {
        RuntimeError::Supervisor(SupervisorError::Failed(failure)) => {
            assert_eq!(failure.component, "reconciler");
            assert_eq!(failure.error.to_string(), "cannot reach the database");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(store.lease().unwrap().record.holder_identity, "");
}

/// An admin address that cannot be bound fails `run` before anything starts (no API call), naming it.
#[tokio::test]
async fn an_admin_address_in_use_fails_run_before_the_election() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let store = MemoryLeaseStore::new();
    let runtime = Runtime::builder_with_lock(store.lock("a"), config("a"))
        .admin(addr)
        .build()
        .unwrap();
    let err = runtime.run(CancellationToken::new()).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::AdminBind { addr: a, .. } if a == addr),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()));
    assert!(store.calls().is_empty());
}

/// An invalid configuration is refused by `build`, naming the field.
#[test]
fn build_validates_the_config() {
    let store = MemoryLeaseStore::new();
    let err = Runtime::builder_with_lock(
        store.lock("a"),
        config("a").with_renew_deadline(Duration::from_secs(20)),
    )
    .build()
    .unwrap_err();
    assert_eq!(err.field, "lease_duration");
}

/// A standalone runtime leads at once, with no lock and no client: its leader-only component starts
/// without any election, and stops on shutdown.
#[tokio::test(start_paused = true)]
async fn a_standalone_runtime_runs_its_leader_only_components_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let runtime = Runtime::standalone(config("solo"))
        .leader_only("reconciler", {
            let running = running.clone();
            move |LeaderContext { token, .. }| {
                let running = running.clone();
                async move {
                    running.fetch_add(1, Ordering::SeqCst);
                    token.cancelled().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        })
        .build()
        .unwrap();
    let handle = runtime.handle();
    assert!(handle.is_standalone());
    let stop = CancellationToken::new();
    let run = tokio::spawn(runtime.run(stop.clone()));
    bounded(handle.subscribe().wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    bounded(async {
        while running.load(Ordering::SeqCst) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    assert_eq!(running.load(Ordering::SeqCst), 0);
    assert!(!handle.is_leader());
}

/// A standalone runtime makes no API call, so it cannot register a LeaseCandidate: `coordinated` on it
/// fails `build`, naming the field, instead of being ignored.
#[tokio::test]
async fn a_standalone_runtime_refuses_coordination() {
    let client = leaderelection::KubeLeaseLock::client_for_url("http://127.0.0.1:9").unwrap();
    let err = Runtime::standalone(config("solo"))
        .coordinated(client, leaderelection::CandidateConfig::new("1.34.0"))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "coordination", "{err}");
}
