//! The term number at the top of its range: `leaseTransitions` is an int32 in the Lease API, so the term
//! after `i32::MAX` stays `i32::MAX` (`docs/design.md`, "Terms never go backwards").

use std::time::Duration;

use leaderelection::{Callbacks, Config, Elector, LeaderElectionRecord, MemoryLeaseStore};
use tokio_util::sync::CancellationToken;

/// The term `a` gets when it takes a released Lease whose `leaseTransitions` is `transitions`.
async fn next_term(transitions: i32) -> i32 {
    let store = MemoryLeaseStore::new();
    store.put(LeaderElectionRecord {
        lease_duration_seconds: 1,
        lease_transitions: transitions,
        ..LeaderElectionRecord::default()
    });
    let config = Config::new("a", "limit", "default")
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(Duration::from_millis(250));
    let a = Elector::new(config, store.lock("a"), Callbacks::new()).unwrap();
    let shutdown = CancellationToken::new();
    let mut state = a.handle().subscribe();
    let task = tokio::spawn(a.run(shutdown.clone()));
    let term = tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.is_leader()))
        .await
        .expect("a leads within 10 s")
        .unwrap()
        .term
        .as_ref()
        .expect("a leader has a term")
        .transitions;
    assert_eq!(
        store.lease().unwrap().record.lease_transitions,
        term,
        "the term is what the Lease says"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    term
}

#[tokio::test(start_paused = true)]
async fn the_term_after_i32_max_stays_i32_max() {
    assert_eq!(next_term(41).await, 42);
    assert_eq!(next_term(i32::MAX - 1).await, i32::MAX);
    assert_eq!(next_term(i32::MAX).await, i32::MAX);
}
