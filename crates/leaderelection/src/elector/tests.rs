//! Tests of the elector on the in-memory lock, under tokio's paused clock: client-go's
//! `leaderelection_test.go` scenarios (exact API calls, records written, callbacks fired) and one test per
//! invariant of `docs/design.md` ("Rules that must hold").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::candidate::{CandidateStatus, Coordination};
use crate::{
    Callbacks, Config, Elector, ElectorHandle, Error, LeaderElectionRecord, LeaderState, LockFault,
    MemoryLeaseLock, MemoryLeaseStore, StopReason,
};

const LEASE: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

/// What the callbacks saw, in order: `new_leader:X`, `started:T`, `work_stopped:holder=H`, `stopped:R`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Candidate {
    elector: ElectorHandle,
    lock: MemoryLeaseLock,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
    log: Recorder,
}

impl Candidate {
    async fn stop(self) {
        self.shutdown.cancel();
        bounded(self.task).await.unwrap().unwrap();
    }
}

fn config(identity: &str) -> Config {
    Config::new(identity, "lease", "default")
        .with_lease_duration(LEASE)
        .with_renew_deadline(RENEW)
        .with_retry_period(RETRY)
}

/// Callbacks that record everything; the work records the Lease's holder at the moment it stops.
fn recording(log: &Recorder, store: &MemoryLeaseStore, work_stop_delay: Duration) -> Callbacks {
    let (started, stopped, new_leader) = (log.clone(), log.clone(), log.clone());
    let store = store.clone();
    Callbacks::new()
        .on_started_leading(move |term, token| {
            let log = started.clone();
            let store = store.clone();
            async move {
                log.push(format!("started:{}", term.transitions));
                token.cancelled().await;
                tokio::time::sleep(work_stop_delay).await;
                let holder = store
                    .lease()
                    .map(|l| l.record.holder_identity)
                    .unwrap_or_default();
                log.push(format!("work_stopped:holder={holder}"));
                Ok(())
            }
        })
        .on_stopped_leading(move |reason| stopped.push(format!("stopped:{reason}")))
        .on_new_leader(move |id| new_leader.push(format!("new_leader:{id}")))
}

fn spawn_with(store: &MemoryLeaseStore, config: Config, work_stop_delay: Duration) -> Candidate {
    let lock = store.lock(&config.identity);
    spawn_on(lock, store, config, work_stop_delay)
}

/// One process (an incarnation) of candidate `identity`, its calls logged as `process`'s: two processes
/// may share one identity.
fn spawn_process(store: &MemoryLeaseStore, identity: &str, process: &str) -> Candidate {
    spawn_on(store.lock(process), store, config(identity), Duration::ZERO)
}

fn spawn_on(
    lock: MemoryLeaseLock,
    store: &MemoryLeaseStore,
    config: Config,
    work_stop_delay: Duration,
) -> Candidate {
    let log = Recorder::default();
    let elector = Elector::new(
        config,
        lock.clone(),
        recording(&log, store, work_stop_delay),
    )
    .unwrap();
    start(elector, lock, log)
}

/// Runs `elector` until its candidate is stopped.
fn start(elector: Elector, lock: MemoryLeaseLock, log: Recorder) -> Candidate {
    let shutdown = CancellationToken::new();
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    Candidate {
        elector: handle,
        lock,
        shutdown,
        task,
        log,
    }
}

fn spawn(store: &MemoryLeaseStore, identity: &str) -> Candidate {
    spawn_with(store, config(identity), Duration::ZERO)
}

/// Waits (in virtual time, at most 10 minutes of it) for a state that satisfies `f`; when it came.
async fn until(candidate: &Candidate, f: impl Fn(&LeaderState) -> bool) -> Instant {
    let mut state = candidate.elector.subscribe();
    bounded(state.wait_for(|s| f(s))).await.unwrap();
    Instant::now()
}

/// Awaits `f` for at most 10 minutes of (virtual) time, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .expect("not within 10 minutes of virtual time: a wait that never ends")
}

async fn until_leader(candidate: &Candidate) -> Instant {
    until(candidate, LeaderState::is_leader).await
}

fn held_by(holder: &str, duration_seconds: i32, transitions: i32) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: duration_seconds,
        lease_transitions: transitions,
        ..LeaderElectionRecord::default()
    }
}

/// `record` as renewed by its holder: `renewTime` moved on by `seconds` (its wall clock, not ours).
fn renewed(mut record: LeaderElectionRecord, seconds: i64) -> LeaderElectionRecord {
    let base = record
        .renew_time
        .unwrap_or_else(|| "2001-01-01T00:00:00Z".parse().unwrap());
    record.renew_time = Some(base + jiff::SignedDuration::from_secs(seconds));
    record
}

/// RBAC without `watch`: the candidate polls as a follower and learns of takeovers only by renew
/// conflicts as a leader.
fn no_watch() -> LockFault {
    LockFault {
        forbid_watch: true,
        ..LockFault::default()
    }
}

/// A candidate whose work ignores its token; the returned slot gets the instant the work was dropped
/// (aborted) by the elector.
fn spawn_stubborn(
    store: &MemoryLeaseStore,
    config: Config,
) -> (Candidate, Arc<Mutex<Option<Instant>>>) {
    stubborn_on(store.lock(&config.identity), config)
}

/// [`spawn_stubborn`], reading and writing through `lock`.
fn stubborn_on(lock: MemoryLeaseLock, config: Config) -> (Candidate, Arc<Mutex<Option<Instant>>>) {
    struct Dropped(Arc<Mutex<Option<Instant>>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(Instant::now());
        }
    }
    let dropped = Arc::new(Mutex::new(None));
    let slot = dropped.clone();
    let elector = Elector::new(
        config,
        lock.clone(),
        Callbacks::new().on_started_leading(move |_, _| {
            let guard = Dropped(slot.clone());
            async move {
                let _guard = guard;
                futures::future::pending::<()>().await;
                Ok(())
            }
        }),
    )
    .unwrap();
    (start(elector, lock, Recorder::default()), dropped)
}

fn holder(store: &MemoryLeaseStore) -> String {
    store.lease().unwrap().record.holder_identity
}

// --- client-go's tryAcquireOrRenew scenarios ---

/// client-go "acquire from no object": get (404), create; transitions 0; on_new_leader(self), then the work.
#[tokio::test(start_paused = true)]
async fn acquires_from_no_object_with_get_then_create() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    let t0 = Instant::now();
    until_leader(&a).await;
    assert_eq!(Instant::now(), t0, "no waiting for a missing lease");
    // The new leader watches its own Lease (a takeover, release or deletion ends its term at once).
    assert_eq!(store.calls_of("a"), ["get:not_found", "create", "watch"]);
    let record = store.lease().unwrap().record;
    assert_eq!(record.holder_identity, "a");
    assert_eq!(record.lease_duration_seconds, 15);
    assert_eq!(record.lease_transitions, 0);
    assert!(record.acquire_time.is_some() && record.renew_time.is_some());
    tokio::task::yield_now().await;
    assert_eq!(a.log.entries(), ["new_leader:a", "started:0"]);
    assert_eq!(a.elector.leader().as_deref(), Some("a"));
    let term = a.elector.state().term.unwrap();
    assert_eq!((term.holder.as_str(), term.transitions), ("a", 0));
}

/// client-go "acquire from unled object" and "acquire from empty-holder object even while acked": a released
/// Lease is taken at once with get, update, and the transitions bumped.
#[tokio::test(start_paused = true)]
async fn takes_a_released_lease_at_once_and_bumps_transitions() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("", 1, 4));
    let a = spawn(&store, "a");
    let t0 = Instant::now();
    until_leader(&a).await;
    assert_eq!(Instant::now(), t0);
    assert_eq!(store.calls_of("a"), ["get", "update", "watch"]);
    assert_eq!(store.lease().unwrap().record.lease_transitions, 5);
    assert_eq!(a.elector.state().term.unwrap().transitions, 5);
}

/// client-go "acquire from led, unacked object" (observedTime long past): the follower takes the Lease once
/// it has been unchanged for the record's leaseDurationSeconds on its own clock, with get, watch, update.
#[tokio::test(start_paused = true)]
async fn takes_an_expired_lease_after_the_records_duration() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("b", 3, 0));
    let a = spawn(&store, "a");
    let t0 = Instant::now();
    let took = until_leader(&a).await;
    assert_eq!(took - t0, Duration::from_secs(3));
    // The follower's watch goes on as the leader's own: no second watch.
    assert_eq!(store.calls_of("a"), ["get", "watch", "update"]);
    assert_eq!(store.lease().unwrap().record.lease_transitions, 1);
    tokio::task::yield_now().await;
    assert_eq!(
        a.log.entries(),
        ["new_leader:b", "new_leader:a", "started:1"]
    );
}

/// client-go "don't acquire from led, acked object": while the holder keeps renewing, the follower never
/// writes, and (watching) sends no request at all after its first get and watch.
#[tokio::test(start_paused = true)]
async fn never_writes_while_the_holder_renews() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("b", 15, 2));
    let a = spawn(&store, "a");
    for renewal in 0..60 {
        tokio::time::sleep(RETRY).await;
        store.put(renewed(held_by("b", 15, 2), renewal));
    }
    assert!(!a.elector.is_leader());
    assert_eq!(store.calls_of("a"), ["get", "watch"]);
    assert_eq!(a.elector.leader().as_deref(), Some("b"));
    assert_eq!(holder(&store), "b");
    a.stop().await;
}

/// client-go "renew already acquired object" / `TestFastPathLeaderElection`: a leader renews with one
/// update per retry period and no get.
#[tokio::test(start_paused = true)]
async fn leader_renews_with_one_update_per_retry_period() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let first = store.lease().unwrap();
    tokio::time::sleep(RETRY * 5 + Duration::from_millis(1)).await;
    assert_eq!(
        store.calls_of("a"),
        [
            "get:not_found",
            "create",
            "watch",
            "update",
            "update",
            "update",
            "update",
            "update"
        ]
    );
    let renewed = store.lease().unwrap().record;
    assert_eq!(
        renewed.acquire_time, first.record.acquire_time,
        "acquireTime kept"
    );
    assert_eq!(renewed.lease_transitions, 0, "transitions kept");
    assert!(renewed.renew_time > first.record.renew_time);
    assert!(a.elector.is_leader());
}

/// `TestFastPathLeaderElection` with a conflict: update(409), get, update — the slow path — and
/// leadership continues when the Lease still holds our own write.
#[tokio::test(start_paused = true)]
async fn renew_conflict_takes_the_slow_path_and_keeps_leading_if_still_ours() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    // Not watching: a watch would hand over the new version before the renewal could conflict.
    a.lock.set_fault(no_watch());
    until_leader(&a).await;
    let ours = store.lease().unwrap().record;
    // Someone else wrote metadata only (a label edit): a new resourceVersion, the same election record.
    store.put(ours);
    tokio::time::sleep(RETRY + Duration::from_millis(1)).await;
    assert_eq!(
        store.calls_of("a"),
        [
            "get:not_found",
            "create",
            "watch:forbidden",
            "update:conflict",
            "get",
            "update"
        ]
    );
    assert!(a.elector.is_leader());
    assert_eq!(a.log.entries(), ["new_leader:a", "started:0"]);
}

/// A renew conflict that shows another holder ends the term with `LeaseLost` (here the leader may not
/// watch, so the conflict is how it learns), and the work is aborted at once: the new holder may run.
#[tokio::test(start_paused = true)]
async fn renew_conflict_with_another_holder_ends_the_term() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(no_watch());
    until_leader(&a).await;
    store.put(held_by("b", 15, 1));
    until(&a, |s| !s.is_leader()).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        a.log.entries(),
        [
            "new_leader:a",
            "started:0",
            "new_leader:b",
            "stopped:lease_lost"
        ]
    );
    assert_eq!(holder(&store), "b", "a must not release b's lease");
}

/// client-go `testReleaseLease` / `TestReleaseMethodCallsGet`: on shutdown the leader does a fresh get, then
/// writes holder "", leaseDurationSeconds 1, transitions kept.
#[tokio::test(start_paused = true)]
async fn release_on_shutdown_gets_then_writes_an_empty_holder() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("", 1, 6));
    let a = spawn(&store, "a");
    until_leader(&a).await;
    store.clear_calls();
    let log = a.log.clone();
    a.stop().await;
    assert_eq!(store.calls_of("a"), ["get", "update"]);
    let record = store.lease().unwrap().record;
    assert_eq!(record.holder_identity, "");
    assert_eq!(record.lease_duration_seconds, 1);
    assert_eq!(record.lease_transitions, 7);
    assert_eq!(
        log.entries(),
        [
            "new_leader:a",
            "started:7",
            "work_stopped:holder=a",
            "stopped:shutdown"
        ]
    );
}

/// Without release_on_cancel, shutdown leaves the Lease to expire.
#[tokio::test(start_paused = true)]
async fn no_release_without_release_on_cancel() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(
        &store,
        config("a").with_release_on_cancel(false),
        Duration::ZERO,
    );
    until_leader(&a).await;
    store.clear_calls();
    a.stop().await;
    assert!(store.calls_of("a").is_empty());
    assert_eq!(holder(&store), "a");
}

/// client-go's `OnStoppedLeading` fires for replicas that never led; ours does not.
#[tokio::test(start_paused = true)]
async fn stopped_leading_fires_only_after_having_led() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("b", 15, 0));
    let a = spawn(&store, "a");
    until(&a, |s| s.leader.is_some()).await;
    let log = a.log.clone();
    a.stop().await;
    assert_eq!(log.entries(), ["new_leader:b"]);
}

// --- the invariants (`docs/design.md`, "Rules that must hold") ---

/// Invariant 1: conditional writes only. Candidates racing for a missing Lease all create (POST); exactly
/// one wins, the others get AlreadyExists and follow; nobody overwrites the winner.
#[tokio::test(start_paused = true)]
async fn invariant_1_racing_creates_have_one_winner() {
    let store = MemoryLeaseStore::new();
    let candidates: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| spawn(&store, id))
        .collect();
    // The same latency for everyone, so that all read "not found" before anyone creates.
    for c in &candidates {
        c.lock.set_fault(LockFault {
            delay: Duration::from_millis(10),
            ..LockFault::default()
        });
    }
    tokio::time::sleep(RETRY * 10).await;
    let leaders: Vec<_> = candidates
        .iter()
        .filter(|c| c.elector.is_leader())
        .map(|c| c.elector.identity().to_string())
        .collect();
    assert_eq!(leaders, [holder(&store)]);
    let creates = store.calls().iter().filter(|c| c.verb == "create").count();
    let lost = store
        .calls()
        .iter()
        .filter(|c| c.outcome == "already_exists")
        .count();
    assert_eq!((creates, lost), (4, 3));
    for c in &candidates {
        assert_eq!(c.elector.leader(), Some(leaders[0].clone()));
    }
}

/// Invariant 2: expiry by our own clock, with the record's duration (7 s here, not our 15 s) counted from
/// when we first saw the current resourceVersion; every change restarts the count; server timestamps
/// (renewTime in the distant past) are ignored.
#[tokio::test(start_paused = true)]
async fn invariant_2_expiry_is_measured_on_our_clock_from_the_last_change() {
    let store = MemoryLeaseStore::new();
    let mut stale = held_by("b", 7, 0);
    stale.renew_time = Some("2001-01-01T00:00:00Z".parse().unwrap());
    store.put(stale.clone());
    let a = spawn(&store, "a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.put(renewed(stale, 5)); // b renews once, 5 s in (its renewTime still far in the past)
    let renewed_at = Instant::now();
    let took = until_leader(&a).await;
    assert_eq!(took - renewed_at, Duration::from_secs(7));
    // One read when the holder has been silent for three retry periods (is it gone, or is our watch
    // dead?); it finds the same version, so the expiry count goes on from the renew.
    assert_eq!(store.calls_of("a"), ["get", "watch", "get", "update"]);
}

/// Invariant 3: leadership is valid only until the last successful renew was sent plus renew_deadline. A
/// renew that hangs flips `is_leader()` (and the published state) to false at exactly that deadline, and
/// the work's token is cancelled.
#[tokio::test(start_paused = true)]
async fn invariant_3_a_hanging_renew_ends_leadership_at_the_deadline() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    let acquired = until_leader(&a).await;
    a.lock.set_fault(LockFault {
        hang: true,
        ..LockFault::default()
    });
    let mut state = a.elector.subscribe();
    let deadline = state.borrow().valid_until.unwrap();
    assert_eq!(deadline, acquired + RENEW);
    tokio::time::sleep_until(deadline - Duration::from_millis(1)).await;
    assert!(a.elector.is_leader());
    tokio::time::sleep_until(deadline).await;
    assert!(
        !a.elector.is_leader(),
        "by the clock, before anyone publishes"
    );
    let flipped = bounded(state.wait_for(|s| s.term.is_none())).await.unwrap();
    assert!(!flipped.is_leader());
    drop(flipped);
    assert_eq!(
        Instant::now(),
        deadline,
        "the state is published at the deadline"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        a.log
            .entries()
            .contains(&"work_stopped:holder=a".to_string())
    );
    // Nobody could have taken over yet: the lease is valid for 15 s after its last change.
    assert!(deadline < acquired + LEASE);
}

/// Invariant 3, renew failing rather than hanging: errors until the deadline end the term with
/// `RenewDeadlineExceeded`; the leader retried every retry period meanwhile.
#[tokio::test(start_paused = true)]
async fn invariant_3_failing_renews_end_leadership_at_the_deadline() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    let acquired = until_leader(&a).await;
    a.lock.set_fault(LockFault {
        fail: true,
        ..LockFault::default()
    });
    let lost = until(&a, |s| s.term.is_none()).await;
    assert_eq!(lost - acquired, RENEW);
    // The release is attempted (the API may still hold our lease) for at most renew_deadline.
    tokio::time::sleep(RENEW + Duration::from_millis(1)).await;
    assert!(
        a.log
            .entries()
            .contains(&"stopped:renew_deadline_exceeded".to_string())
    );
    let failed_renews = store
        .calls_of("a")
        .iter()
        .filter(|c| *c == "update:error")
        .count();
    assert_eq!(failed_renews, 4, "renews at 2, 4, 6, 8 s after acquiring");
}

/// Invariant 4: stop the work, then release. The work takes 3 s to stop; the Lease still names us when it
/// has stopped, and is released only afterwards.
#[tokio::test(start_paused = true)]
async fn invariant_4_work_is_awaited_before_release() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(&store, config("a"), Duration::from_secs(3));
    until_leader(&a).await;
    let log = a.log.clone();
    let t0 = Instant::now();
    a.stop().await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(
        log.entries(),
        [
            "new_leader:a",
            "started:0",
            "work_stopped:holder=a",
            "stopped:shutdown"
        ]
    );
    assert_eq!(holder(&store), "");
}

/// Invariant 4, work that ignores its token: aborted after stop_timeout; released after the abort.
#[tokio::test(start_paused = true)]
async fn invariant_4_work_that_does_not_stop_is_aborted_after_stop_timeout() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(
        &store,
        config("a").with_stop_timeout(Duration::from_secs(4)),
        Duration::from_secs(3600),
    );
    until_leader(&a).await;
    let log = a.log.clone();
    let t0 = Instant::now();
    a.stop().await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(4));
    assert!(!log.entries().iter().any(|e| e.starts_with("work_stopped")));
    assert_eq!(holder(&store), "");
}

/// Invariant 5: release only what we hold. A leader shut down just after another candidate took the Lease
/// reads it fresh and does not write.
#[tokio::test(start_paused = true)]
async fn invariant_5_release_never_overwrites_another_holder() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(no_watch()); // else its watch would tell it of b at once
    until_leader(&a).await;
    store.put(held_by("b", 15, 1));
    store.clear_calls();
    a.shutdown.cancel();
    bounded(a.task).await.unwrap().unwrap();
    assert_eq!(store.calls_of("a"), ["get"]);
    assert_eq!(holder(&store), "b");
    assert_eq!(store.lease().unwrap().record.lease_transitions, 1);
}

/// Invariant 6: never die of a transient error. 50 failed requests in a row do not end `run`; the
/// candidate leads once the API answers again.
#[tokio::test(start_paused = true)]
async fn invariant_6_fifty_errors_in_a_row_do_not_end_run() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(LockFault {
        fail: true,
        ..LockFault::default()
    });
    let bound = Instant::now() + Duration::from_secs(600);
    while store.calls_of("a").len() < 50 {
        assert!(Instant::now() < bound, "50 calls not within 10 minutes");
        tokio::time::sleep(RETRY).await;
        assert!(!a.task.is_finished());
    }
    assert!(store.calls_of("a").iter().all(|c| c.ends_with(":error")));
    a.lock.set_fault(LockFault::default());
    until_leader(&a).await;
    assert!(!a.task.is_finished());
}

/// Invariant 6, errors while following: the retries are jittered, client-go's [RP, 2.2 x RP).
#[tokio::test(start_paused = true)]
async fn invariant_6_follower_retries_are_jittered_like_client_go() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(LockFault {
        fail: true,
        ..LockFault::default()
    });
    let mut times = Vec::new();
    let mut seen = 0;
    let bound = Instant::now() + Duration::from_secs(600);
    while times.len() < 20 {
        assert!(Instant::now() < bound, "20 retries not within 10 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = store.calls_of("a").len();
        if n > seen {
            seen = n;
            times.push(Instant::now());
        }
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for gap in &gaps {
        assert!(
            *gap >= RETRY && *gap < RETRY.mul_f64(2.2) + Duration::from_millis(10),
            "{gap:?}"
        );
    }
    // Jittered, not a fixed period: the 19 gaps spread over [RP, 2.2 x RP) at 10 ms resolution, so
    // fewer than 5 distinct values would need a near-impossible draw; a fixed period gives one.
    let mut distinct = gaps.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 5, "retries are not jittered: {gaps:?}");
    a.stop().await;
}

/// Invariant 7: a watching follower takes a released Lease at once, without waiting for a poll.
#[tokio::test(start_paused = true)]
async fn invariant_7_watching_follower_takes_a_released_lease_at_once() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let b = spawn(&store, "b");
    until(&b, |s| s.leader.as_deref() == Some("a")).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!b.elector.is_leader());
    let released_at = Instant::now();
    a.stop().await;
    let took = until_leader(&b).await;
    assert_eq!(
        took, released_at,
        "no virtual time passes: no poll, no timer"
    );
    assert_eq!(store.calls_of("b"), ["get", "watch", "update"]);
    assert_eq!(store.lease().unwrap().record.lease_transitions, 1);
}

/// Invariant 7, fallback: where watching is forbidden (RBAC) the follower polls every jittered retry period
/// and still takes a released Lease within 2.2 x RP.
#[tokio::test(start_paused = true)]
async fn invariant_7_polls_when_watch_is_forbidden() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let b = spawn(&store, "b");
    b.lock.set_fault(LockFault {
        forbid_watch: true,
        ..LockFault::default()
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    let gets = store.calls_of("b").iter().filter(|c| *c == "get").count();
    assert!(
        (30 / 5..=30 / 2 + 1).contains(&gets),
        "{gets} polls in 30 s"
    );
    assert_eq!(
        store
            .calls_of("b")
            .iter()
            .filter(|c| c.starts_with("watch"))
            .count(),
        1,
        "watch tried once, then polling"
    );
    let released_at = Instant::now();
    a.stop().await;
    let took = until_leader(&b).await;
    assert!(
        took - released_at < RETRY.mul_f64(2.2),
        "{:?}",
        took - released_at
    );
}

/// Every call of `candidate` takes 1 ms, as a request to a nearby API server does: a loop of calls then
/// shows as calls per virtual second, instead of a spin that never lets the paused clock advance.
fn one_ms_per_call(candidate: &Candidate) {
    candidate.lock.set_fault(LockFault {
        delay: Duration::from_millis(1),
        ..LockFault::default()
    });
}

/// A 410 Gone must not turn a follower into a hot loop. A dead holder's Lease outlives the API server's
/// watch history (the server restarts 5 s in), so a watch from its version answers Gone, and so would one
/// from any version a GET gives back. The follower lists for the collection's version and resumes from it:
/// a handful of calls in 15 s (7.5 retry periods), and the Lease is still taken at its expiry counted from
/// when it was first seen, not from the list.
#[tokio::test(start_paused = true)]
async fn gone_costs_a_few_calls_and_keeps_the_expiry_clock() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("dead", 15, 0));
    let t0 = Instant::now();
    let b = spawn(&store, "b");
    one_ms_per_call(&b);
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.restart_api_server();
    let took = until_leader(&b).await;
    assert!(
        took - t0 >= LEASE && took - t0 < LEASE + Duration::from_millis(10),
        "taken {:?} after the lease was first seen",
        took - t0
    );
    let calls = store.calls_of("b");
    assert!(calls.len() <= 7, "{} calls: {calls:?}", calls.len());
    assert_eq!(calls[..5], ["get", "watch", "watch:gone", "list", "watch"]);
    assert_eq!(calls.last().map(String::as_str), Some("update"));
}

/// Invariant 7 holds through a 410 Gone: after an API server restart a follower resumes its watch from the
/// version a list gives, and takes a released Lease at once through it.
#[tokio::test(start_paused = true)]
async fn after_gone_the_resumed_watch_takes_a_released_lease_at_once() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let b = spawn(&store, "b");
    one_ms_per_call(&b);
    until(&b, |s| s.leader.as_deref() == Some("a")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.restart_api_server();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        store.calls_of("b"),
        ["get", "watch", "watch:gone", "list", "watch"]
    );
    let released_at = Instant::now();
    a.stop().await;
    let took = until_leader(&b).await;
    assert!(
        took - released_at < Duration::from_millis(10),
        "{:?}: only the update's own 1 ms",
        took - released_at
    );
    assert_eq!(
        store.calls_of("b").last().map(String::as_str),
        Some("update")
    );
}

/// Invariant 8: the term is the fencing token. Each change of holder increases leaseTransitions, and the
/// leader's published term carries it.
#[tokio::test(start_paused = true)]
async fn invariant_8_terms_increase_with_every_change_of_holder() {
    let store = MemoryLeaseStore::new();
    let mut terms = Vec::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    terms.push(a.elector.state().term.unwrap().transitions);
    let b = spawn(&store, "b");
    until(&b, |s| s.leader.is_some()).await;
    a.stop().await;
    until_leader(&b).await;
    terms.push(b.elector.state().term.unwrap().transitions);
    let a = spawn(&store, "a");
    until(&a, |s| s.leader.is_some()).await;
    b.stop().await;
    until_leader(&a).await;
    let term = a.elector.state().term.unwrap();
    terms.push(term.transitions);
    assert_eq!(terms, [0, 1, 2]);
    assert_eq!(term.holder, "a");
    assert_eq!(store.lease().unwrap().record.lease_transitions, 2);
}

/// Invariant 8, a frozen leader that resumes: modelled by a renew that returns only after the deadline
/// (the runtime cannot be frozen from inside). When it resumes, the term is over: it writes nothing on
/// the strength of its old view, re-reads, and follows the new holder.
#[tokio::test(start_paused = true)]
async fn invariant_8_a_leader_resuming_after_its_deadline_does_not_renew() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    a.lock.set_fault(LockFault {
        delay: LEASE * 2,
        ..LockFault::default()
    });
    let b = spawn(&store, "b");
    until_leader(&b).await;
    a.lock.set_fault(LockFault::default());
    tokio::time::sleep(LEASE * 3).await;
    assert!(!a.elector.is_leader());
    assert!(b.elector.is_leader());
    assert_eq!(holder(&store), "b");
    let a_writes_after_b: Vec<_> = store
        .calls()
        .iter()
        .skip_while(|c| !(c.client == "b" && c.verb == "update" && c.outcome == "ok"))
        .filter(|c| c.client == "a" && c.outcome == "ok" && c.verb != "get" && c.verb != "watch")
        .cloned()
        .collect();
    assert!(a_writes_after_b.is_empty(), "{a_writes_after_b:?}");
}

/// A standalone elector leads at once, makes no API call, publishes its state, and stops on shutdown.
#[tokio::test(start_paused = true)]
async fn a_standalone_elector_leads_at_once_without_api_calls() {
    let store = MemoryLeaseStore::new();
    let log = Recorder::default();
    let elector = Elector::standalone(config("a"))
        .callbacks(recording(&log, &store, Duration::ZERO))
        .build()
        .unwrap();
    assert!(elector.handle().is_standalone());
    let a = start(elector, store.lock("a"), log);
    until_leader(&a).await;
    let state = a.elector.state();
    assert_eq!(state.valid_until, None);
    assert_eq!(state.leader.as_deref(), Some("a"));
    tokio::time::sleep(LEASE * 10).await;
    assert!(a.elector.is_leader());
    let log = a.log.clone();
    let elector = a.elector.clone();
    a.stop().await;
    assert!(!elector.is_leader());
    assert!(store.calls().is_empty());
    assert_eq!(
        log.entries(),
        [
            "new_leader:a",
            "started:0",
            "work_stopped:holder=",
            "stopped:shutdown"
        ]
    );
}

/// The handle outlives the run: it reads the state `run` published last, and a handle taken before
/// `run` sees every change `run` makes (the elector runs once; there is no second run to refuse).
#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_run_follows_it_and_outlives_it() {
    let store = MemoryLeaseStore::new();
    let elector = Elector::new(config("a"), store.lock("a"), Callbacks::new()).unwrap();
    let handle = elector.handle();
    let other = handle.clone();
    assert!(!handle.is_leader());
    assert_eq!(handle.identity(), "a");
    assert_eq!(handle.config().lease_name, "lease");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(elector.run(shutdown.clone()));
    bounded(other.subscribe().wait_for(LeaderState::is_leader))
        .await
        .unwrap();
    assert_eq!(handle.leader().as_deref(), Some("a"));
    shutdown.cancel();
    bounded(run).await.unwrap().unwrap();
    assert!(!handle.is_leader());
    assert_eq!(handle.state().term, None);
}

#[test]
fn elector_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Elector>();
    check::<LeaderState>();
    check::<StopReason>();
}

#[test]
fn new_validates_the_config() {
    let store = MemoryLeaseStore::new();
    let err = Elector::new(
        config("a").with_renew_deadline(LEASE),
        store.lock("a"),
        Callbacks::new(),
    )
    .unwrap_err();
    assert_eq!(err.field, "lease_duration");
}

// --- a term's work never outlives the term (rule 10), terms never go backwards (rule 11) ---

/// Rule 10: work that ignores its token after its term ended at the renew deadline is aborted by the work
/// deadline (`sent_at + lease_duration - margin`, 14 s after the last renew here), before any follower may
/// take over (15 s), not after a stop timeout counted from the end of the term (it was 10 + 10 = 20 s).
#[tokio::test(start_paused = true)]
async fn rule_10_work_is_aborted_by_the_work_deadline_after_the_renew_deadline() {
    let store = MemoryLeaseStore::new();
    let (a, dropped) = spawn_stubborn(&store, config("a"));
    let acquired = until_leader(&a).await;
    let deadline = a.elector.state().work_deadline.unwrap();
    assert_eq!(deadline, acquired + LEASE - Duration::from_secs(1));
    a.lock.set_fault(LockFault {
        fail: true,
        ..LockFault::default()
    });
    until(&a, |s| s.term.is_none() && s.work_deadline.is_none()).await;
    assert_eq!(*dropped.lock().unwrap(), Some(deadline));
    assert!(deadline < acquired + LEASE, "before the earliest takeover");
}

/// Rule 10: a stop timeout (or grace period) that does not fit between the renew deadline and the earliest
/// takeover is refused, naming the window.
#[test]
fn rule_10_a_stop_timeout_beyond_the_window_is_refused() {
    let err = config("a")
        .with_stop_timeout(Duration::from_secs(5))
        .validate()
        .unwrap_err();
    assert_eq!(err.field, "stop_timeout");
    assert!(err.rule.contains("15s - 10s - 1s = 4s"), "{err}");
    assert!(
        config("a")
            .with_stop_timeout(Duration::from_secs(4))
            .validate()
            .is_ok()
    );
}

/// Rule 10: a graceful stop keeps renewing while the work drains, so the Lease stays ours (no follower
/// starts) until the work has stopped; then it is released and the follower takes it at once.
#[tokio::test(start_paused = true)]
async fn rule_10_a_graceful_stop_keeps_renewing_while_the_work_drains() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(&store, config("a"), Duration::from_millis(3_900));
    until_leader(&a).await;
    let b = spawn(&store, "b");
    until(&b, |s| s.leader.as_deref() == Some("a")).await;
    // Shut down just before a renewal is due, so the drain spans two renewals.
    tokio::time::sleep(RETRY - Duration::from_millis(100)).await;
    store.clear_calls();
    let mut state = a.elector.subscribe();
    let log = a.log.clone();
    let stopping = Instant::now();
    a.shutdown.cancel();
    let draining = bounded(state.wait_for(|s| s.term.is_none()))
        .await
        .unwrap()
        .work_deadline;
    assert!(
        draining.is_some(),
        "the work deadline stays while the work drains"
    );
    bounded(a.task).await.unwrap().unwrap();
    assert_eq!(Instant::now() - stopping, Duration::from_millis(3_900));
    assert_eq!(
        store.calls_of("a"),
        ["update", "update", "get", "update"],
        "two renewals, then the release"
    );
    assert_eq!(
        log.entries(),
        [
            "new_leader:a",
            "started:0",
            "work_stopped:holder=a",
            "stopped:shutdown"
        ]
    );
    until_leader(&b).await;
    assert_eq!(Instant::now() - stopping, Duration::from_millis(3_900));
}

/// Rules 4 and 10: a leader watches its own Lease; when someone else takes, releases or deletes it, the term
/// ends at that instant (not at the next renewal) and the work is aborted at once: the new holder may
/// already run.
#[tokio::test(start_paused = true)]
async fn rule_10_a_lease_taken_released_or_deleted_ends_the_term_and_its_work_at_once() {
    for case in ["taken", "released", "deleted"] {
        let store = MemoryLeaseStore::new();
        let (a, dropped) = spawn_stubborn(&store, config("a"));
        until_leader(&a).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let at = Instant::now();
        match case {
            "taken" => drop(store.put(held_by("b", 15, 1))),
            "released" => drop(store.put(held_by("", 1, 0))),
            _ => store.delete(),
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *dropped.lock().unwrap(),
            Some(at),
            "{case}: work aborted at once"
        );
        assert!(
            !store.calls_of("a").contains(&"update:conflict".to_string()),
            "{case}: learnt from the watch, not from a renew conflict"
        );
        // A free or missing Lease is taken again, with a new term; a taken one is followed.
        let next = until(&a, |s| s.term.is_none() == (case == "taken")).await;
        assert_eq!(next, at, "{case}");
        let term = a.elector.state().term.map(|t| t.transitions);
        assert_eq!(term, (case != "taken").then_some(1), "{case}");
        a.stop().await;
    }
}

/// Rule 11: terms never go backwards. A leader of term 3 whose Lease is deleted creates it again with
/// term 4, not 0: a downstream fence that rejects lower terms keeps accepting the legitimate leader.
#[tokio::test(start_paused = true)]
async fn rule_11_a_deleted_lease_is_created_again_with_a_higher_term() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("", 1, 2));
    let a = spawn(&store, "a");
    until_leader(&a).await;
    assert_eq!(a.elector.state().term.unwrap().transitions, 3);
    store.delete();
    until(&a, |s| s.term.as_ref().is_some_and(|t| t.transitions != 3)).await;
    assert_eq!(a.elector.state().term.unwrap().transitions, 4);
    assert_eq!(store.lease().unwrap().record.lease_transitions, 4);
    assert_eq!(
        a.log.entries(),
        ["new_leader:a", "started:3", "stopped:released", "started:4"],
        "the work of term 3 was aborted at once; a never stopped being the observed holder"
    );
}

/// Rule 11 for a leader that polls (no watch of its own Lease): it learns of the deletion from its
/// renewal's 404, ends the term as `released` (not `shutdown`, which would make `run` leave the election)
/// and creates the Lease again with the next term.
#[tokio::test(start_paused = true)]
async fn rule_11_a_polling_leader_learns_of_the_deletion_from_its_renewal() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("", 1, 2));
    let mut polling = config("a");
    polling.watch = false;
    let a = spawn_with(&store, polling, Duration::ZERO);
    until_leader(&a).await;
    store.delete();
    until(&a, |s| s.term.as_ref().is_some_and(|t| t.transitions != 3)).await;
    assert_eq!(a.elector.state().term.unwrap().transitions, 4);
    assert_eq!(
        a.log.entries(),
        ["new_leader:a", "started:3", "stopped:released", "started:4"]
    );
    let calls = store.calls_of("a");
    assert!(
        !calls.iter().any(|c| c.starts_with("watch")),
        "learnt from the renewal, not a watch: {calls:?}"
    );
    a.stop().await;
}

/// Rule 2: a write that changes only metadata (an annotation, a label) is not a renewal. A dead holder's
/// Lease patched every 5 s is taken after its leaseDurationSeconds, as client-go's record comparison does,
/// not postponed for as long as the patches go on.
#[tokio::test(start_paused = true)]
async fn rule_2_metadata_only_writes_do_not_postpone_takeover() {
    let store = MemoryLeaseStore::new();
    let dead = held_by("b", 15, 0);
    store.put(dead.clone());
    let a = spawn(&store, "a");
    let t0 = Instant::now();
    let patches = tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                store.put(dead.clone()); // same record, new resourceVersion
            }
        }
    });
    let took = until_leader(&a).await;
    patches.abort();
    assert_eq!(took - t0, LEASE);
}

/// Rule 5: a request timeout must be below the renew deadline: an acquire or renew answered after the
/// deadline can neither start nor extend a term.
#[test]
fn rule_5_a_request_timeout_at_or_above_the_renew_deadline_is_refused() {
    for timeout in [RENEW, LEASE * 2] {
        let err = config("a")
            .with_request_timeout(timeout)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "request_timeout");
        assert!(err.rule.contains("less than renewDeadline (10s)"), "{err}");
    }
    assert!(
        config("a")
            .with_request_timeout(RENEW / 2)
            .validate()
            .is_ok()
    );
}

// --- when leader work fails ---

/// Counts what the elector reports to its observer: work failures, and that another live process writes
/// the Lease under our identity (each with an ERROR line, itself checked with real processes in
/// `crates/leader-elect/tests/processes.rs`).
#[derive(Default)]
struct Reports {
    work_failures: std::sync::atomic::AtomicUsize,
    identity_alarms: std::sync::atomic::AtomicUsize,
}

impl Reports {
    fn work_failures(&self) -> usize {
        self.work_failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn identity_alarms(&self) -> usize {
        self.identity_alarms
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl crate::Observer for Reports {
    fn on_work_failure(&self) {
        self.work_failures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn on_identity_in_use(&self) {
        self.identity_alarms
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A panic in the `on_started_leading` task ends the term at once (a replica must not renew while doing
/// nothing), is counted, releases the Lease so a follower takes over at once, and the candidate contends
/// again after a jittered retry period: alone, it leads again with a new term.
#[tokio::test(start_paused = true)]
async fn a_panicking_on_started_leading_ends_the_term_releases_and_leads_again_later() {
    let store = MemoryLeaseStore::new();
    let panics = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(Reports::default());
    let log = Recorder::default();
    let stopped = log.clone();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let callbacks = Callbacks::new()
        .on_started_leading({
            let panics = panics.clone();
            move |term, token| {
                let first = panics.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    assert!(!first, "reconciler failed in term {}", term.transitions);
                    token.cancelled().await;
                    Ok(())
                }
            }
        })
        .on_stopped_leading({
            let reasons = reasons.clone();
            move |reason| {
                stopped.push(format!("stopped:{reason}"));
                reasons.lock().unwrap().push(reason);
            }
        });
    let lock = store.lock("a");
    let elector = Elector::builder(config("a"), lock.clone())
        .callbacks(callbacks)
        .observer(failures.clone())
        .build()
        .unwrap();
    let a = start(elector, lock, log.clone());
    let first = until_leader(&a).await;
    let b = spawn(&store, "b");
    until(&b, |s| s.leader.as_deref() == Some("a")).await;
    let took = until_leader(&b).await;
    assert_eq!(
        took - first,
        Duration::from_secs(1),
        "b took the released Lease at once"
    );
    assert_eq!(failures.work_failures(), 1);
    assert!(
        log.entries()[0].starts_with("stopped:work_failed"),
        "{:?}",
        log.entries()
    );
    assert_eq!(
        *reasons.lock().unwrap(),
        [StopReason::WorkFailed {
            error: crate::WorkError::Panicked {
                message: "reconciler failed in term 0".into()
            }
        }],
        "the panic's message is kept"
    );
    assert!(!a.elector.is_leader());
    // Alone again, a contends after a jittered retry period and leads a new term.
    b.stop().await;
    let again = until_leader(&a).await;
    assert_eq!(a.elector.state().term.unwrap().transitions, 2);
    assert!(
        again - took < RETRY.mul_f64(2.2) + Duration::from_secs(1),
        "{:?}",
        again - took
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        a.elector.is_leader(),
        "the second term's work does not fail"
    );
    a.stop().await;
}

/// The error that leader work below returns, caused by [`Cause`].
#[derive(Debug, thiserror::Error)]
#[error("cannot reconcile")]
struct Reconcile(#[source] Cause);

#[derive(Debug, thiserror::Error)]
#[error("the database is unreachable")]
struct Cause;

/// An `Err` returned by the `on_started_leading` work ends the term at once as a panic does: it is counted,
/// the Lease is released (a follower takes it at once), and `on_stopped_leading` gets the error itself,
/// its source chain intact (no message flattened into a string).
#[tokio::test(start_paused = true)]
async fn an_error_from_on_started_leading_ends_the_term_as_work_failed_with_its_source() {
    let store = MemoryLeaseStore::new();
    let failures = Arc::new(Reports::default());
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let callbacks = Callbacks::new()
        .on_started_leading(|_term, _token| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(Reconcile(Cause).into())
        })
        .on_stopped_leading({
            let reasons = reasons.clone();
            move |reason| reasons.lock().unwrap().push(reason)
        });
    let lock = store.lock("a");
    let elector = Elector::builder(config("a"), lock.clone())
        .callbacks(callbacks)
        .observer(failures.clone())
        .build()
        .unwrap();
    let a = start(elector, lock, Recorder::default());
    let first = until_leader(&a).await;
    let b = spawn(&store, "b");
    let took = until_leader(&b).await;
    assert_eq!(
        took - first,
        Duration::from_secs(1),
        "b took the released Lease at once"
    );
    assert_eq!(failures.work_failures(), 1);
    let reason = reasons.lock().unwrap()[0].clone();
    let StopReason::WorkFailed { error } = &reason else {
        panic!("the term ended as {reason:?}, not WorkFailed");
    };
    assert_eq!(error.to_string(), "cannot reconcile");
    let crate::WorkError::Failed(returned) = error else {
        panic!("{error:?} is not the returned error");
    };
    assert!(
        returned.downcast_ref::<Reconcile>().is_some(),
        "{returned:?}"
    );
    let source = std::error::Error::source(error).expect("the error's source is kept");
    assert!(source.downcast_ref::<Cause>().is_some(), "{source:?}");
    b.stop().await;
    a.stop().await;
}

/// A normal return of the `on_started_leading` task keeps leadership (client-go's semantics: the work may
/// be a one-shot job); the term goes on renewing.
#[tokio::test(start_paused = true)]
async fn an_on_started_leading_that_returns_keeps_leadership() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(&store, config("a"), Duration::ZERO);
    let lock = store.lock("one-shot");
    let elector = Elector::new(
        config("one-shot"),
        lock,
        Callbacks::new().on_started_leading(|_, _| async { Ok(()) }),
    )
    .unwrap();
    a.stop().await;
    let shutdown = CancellationToken::new();
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    bounded(handle.subscribe().wait_for(LeaderState::is_leader))
        .await
        .unwrap();
    tokio::time::sleep(LEASE * 4).await;
    assert!(handle.is_leader());
    assert_eq!(holder(&store), "one-shot");
    shutdown.cancel();
    bounded(task).await.unwrap().unwrap();
}

// --- a preferred holder (coordinated leader election, KEP-4355) ---

/// `record` asking its holder to yield to `preferred`, as kube-apiserver's election controller (or an
/// operator) writes it.
fn preferring(preferred: &str, store: &MemoryLeaseStore) -> LeaderElectionRecord {
    LeaderElectionRecord {
        preferred_holder: Some(preferred.into()),
        ..store.lease().unwrap().record
    }
}

/// A leader whose Lease names another `preferredHolder` ends its term as on a graceful stop: it keeps
/// renewing (and keeps `preferredHolder`) while its work drains, releases with `preferredHolder` kept, and
/// the preferred candidate, watching, takes over at once; another follower does not race it.
#[tokio::test(start_paused = true)]
async fn a_leader_yields_to_the_preferred_holder_which_takes_over_at_once() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(&store, config("a"), Duration::from_millis(1_500));
    until_leader(&a).await;
    let (b, c) = (spawn(&store, "b"), spawn(&store, "c"));
    until(&b, |s| s.leader.as_deref() == Some("a")).await;
    until(&c, |s| s.leader.as_deref() == Some("a")).await;
    tokio::time::sleep(RETRY / 2).await;
    store.clear_calls();
    let asked = Instant::now();
    store.put(preferring("b", &store));
    let took = until_leader(&b).await;
    assert_eq!(
        took - asked,
        Duration::from_millis(1_500),
        "once a's work has stopped"
    );
    assert!(
        a.log.entries().contains(&"stopped:yielded".to_string()),
        "{:?}",
        a.log.entries()
    );
    assert!(
        a.log
            .entries()
            .contains(&"work_stopped:holder=a".to_string()),
        "drained while a held it"
    );
    assert!(
        store.calls_of("a").contains(&"update".to_string()),
        "a renewed while draining"
    );
    assert!(
        !store
            .calls_of("c")
            .iter()
            .any(|call| call.starts_with("update")),
        "c left the released Lease to b: {:?}",
        store.calls_of("c")
    );
    let record = store.lease().unwrap().record;
    assert_eq!(record.holder_identity, "b");
    assert_eq!(record.preferred_holder, None, "satisfied once b holds it");
    tokio::time::sleep(LEASE * 2).await;
    assert!(b.elector.is_leader() && !a.elector.is_leader() && !c.elector.is_leader());
}

/// A preferred holder that never comes (gone, or never existed): the leader that released the Lease for
/// it takes it back after the released record's leaseDurationSeconds (1 s), before any other candidate,
/// which waits one lease duration: a yield to nobody does not hand the work to whoever is fastest.
#[tokio::test(start_paused = true)]
async fn a_leader_that_yielded_to_a_missing_preferred_holder_leads_again_before_the_others() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let term = store.lease().unwrap().record.lease_transitions;
    let c = spawn(&store, "c");
    until(&c, |s| s.leader.as_deref() == Some("a")).await;
    store.put(preferring("ghost", &store));
    until(&a, |s| s.term.is_none()).await;
    let released = Instant::now();
    let led_again = until_leader(&a).await;
    assert_eq!(led_again - released, Duration::from_secs(1));
    let record = store.lease().unwrap().record;
    assert_eq!(
        (record.holder_identity.as_str(), record.preferred_holder),
        ("a", None)
    );
    assert!(record.lease_transitions > term, "a new term");
    assert!(
        !store
            .calls_of("c")
            .iter()
            .any(|call| call.starts_with("update")),
        "c left it to a: {:?}",
        store.calls_of("c")
    );
}

/// When the candidate that released the Lease for a missing preferred holder is gone too, another takes
/// it one lease duration after the release: never longer without a leader than a crashed leader costs.
#[tokio::test(start_paused = true)]
async fn when_the_yielding_leader_is_gone_too_another_takes_over_after_one_lease_duration() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let c = spawn(&store, "c");
    until(&c, |s| s.leader.as_deref() == Some("a")).await;
    // What a leaves behind when it yields to "ghost" and then dies (SIGKILL: no more writes).
    a.task.abort();
    let released = LeaderElectionRecord {
        preferred_holder: Some("ghost".into()),
        strategy: Some(crate::OLDEST_EMULATION_VERSION.into()),
        ..store
            .lease()
            .unwrap()
            .record
            .released(jiff::Timestamp::now())
    };
    let seen = Instant::now();
    store.put(released);
    let led = until_leader(&c).await;
    let waited = led - seen;
    assert!(
        waited >= LEASE && waited <= LEASE + RETRY,
        "one lease duration, give or take the stagger: {waited:?}"
    );
}

// --- coordinated leader election (KEP-4355) ---

/// A standalone elector makes no API call, so it cannot register a LeaseCandidate: a coordination given
/// to one is a configuration error naming the field, not a silently ignored setting.
#[test]
fn a_standalone_elector_rejects_coordination() {
    let (_tx, coordination) = Coordination::channel();
    let err = Elector::standalone(config("a"))
        .coordination(coordination)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "coordination");
}

/// The registration side of a coordinated candidate, played by a test.
struct Registration {
    status: tokio::sync::watch::Sender<CandidateStatus>,
    coordination: Coordination,
}

/// A candidate under coordinated election, its registration played through the returned [`Registration`].
fn spawn_coordinated(
    store: &MemoryLeaseStore,
    identity: &str,
    status: CandidateStatus,
) -> (Candidate, Registration) {
    let log = Recorder::default();
    let lock = store.lock(identity);
    let (tx, coordination) = Coordination::channel();
    tx.send_replace(status);
    let elector = Elector::builder(config(identity), lock.clone())
        .callbacks(recording(&log, store, Duration::ZERO))
        .coordination(coordination.clone())
        .build()
        .unwrap();
    let registration = Registration {
        status: tx,
        coordination,
    };
    (start(elector, lock, log), registration)
}

fn coordinated(record: LeaderElectionRecord) -> LeaderElectionRecord {
    LeaderElectionRecord {
        strategy: Some("OldestEmulationVersion".into()),
        ..record
    }
}

fn writes(store: &MemoryLeaseStore, identity: &str) -> Vec<String> {
    store
        .calls_of(identity)
        .into_iter()
        .filter(|call| call.starts_with("create") || call.starts_with("update"))
        .collect()
}

/// Under coordination a candidate never creates the Lease, and never takes a coordinated one on its own,
/// not even long after it expired (client-go `tryCoordinatedRenew`); it takes it, at once and keeping the
/// strategy, when the election controller names it the holder.
#[tokio::test(start_paused = true)]
async fn a_coordinated_candidate_leads_only_when_the_controller_names_it() {
    let store = MemoryLeaseStore::new();
    let (a, _registration) = spawn_coordinated(&store, "a", CandidateStatus::Registered);
    tokio::time::sleep(LEASE * 10).await;
    assert!(store.lease().is_none(), "a created the Lease");
    assert_eq!(writes(&store, "a"), Vec::<String>::new());

    // The controller creates the Lease for another candidate, which dies at once.
    store.put(coordinated(held_by("x", 5, 3)));
    tokio::time::sleep(LEASE * 10).await;
    assert!(!a.elector.is_leader());
    assert_eq!(
        writes(&store, "a"),
        Vec::<String>::new(),
        "a took an expired coordinated Lease"
    );
    assert_eq!(a.elector.leader().as_deref(), Some("x"));

    // The controller assigns the expired Lease to a.
    let assigned = Instant::now();
    store.put(coordinated(held_by("a", 5, 3)));
    let led = until_leader(&a).await;
    assert!(
        led - assigned < Duration::from_millis(10),
        "{:?}",
        led - assigned
    );
    let record = store.lease().unwrap().record;
    assert_eq!(record.holder_identity, "a");
    assert_eq!(record.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(record.lease_transitions, 4, "a new term");
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        store.lease().unwrap().record.strategy.as_deref(),
        Some("OldestEmulationVersion"),
        "renewals keep the strategy"
    );
    a.stop().await;
}

/// A coordinated candidate watches for the Lease the election controller creates (it cannot watch from the
/// missing Lease's own version, so it watches from the collection's): it leads as soon as the Lease is
/// created naming it, not at its next poll.
#[tokio::test(start_paused = true)]
async fn a_coordinated_candidate_takes_a_lease_created_for_it_at_once() {
    let store = MemoryLeaseStore::new();
    let (a, _registration) = spawn_coordinated(&store, "a", CandidateStatus::Registered);
    tokio::time::sleep(LEASE * 3 + Duration::from_millis(700)).await;
    assert!(store.lease().is_none());
    let created = Instant::now();
    store.put(coordinated(held_by("a", 5, 0)));
    let led = until_leader(&a).await;
    assert!(
        led - created < Duration::from_millis(10),
        "{:?}",
        led - created
    );
    a.stop().await;
}

/// A Lease without a strategy is an ordinary election, even for a coordinated candidate: it is taken
/// once expired (a migration from uncoordinated replicas never strands the Lease).
#[tokio::test(start_paused = true)]
async fn a_coordinated_candidate_takes_an_expired_uncoordinated_lease() {
    let store = MemoryLeaseStore::new();
    store.put(held_by("x", 15, 0));
    let (a, _registration) = spawn_coordinated(&store, "a", CandidateStatus::Registered);
    let led = until_leader(&a).await;
    assert!(led.elapsed() < LEASE * 2);
    assert_eq!(store.lease().unwrap().record.strategy, None);
    a.stop().await;
}

/// Until the registration knows whether LeaseCandidates are served the candidate waits; when they are
/// not, it runs an ordinary election (creates the Lease).
#[tokio::test(start_paused = true)]
async fn a_candidate_waits_for_its_registration_then_falls_back_when_unsupported() {
    let store = MemoryLeaseStore::new();
    let (a, registration) = spawn_coordinated(&store, "a", CandidateStatus::Pending);
    tokio::time::sleep(LEASE * 4).await;
    assert_eq!(
        store.calls_of("a"),
        Vec::<String>::new(),
        "no request while pending"
    );
    registration
        .status
        .send_replace(CandidateStatus::Unsupported);
    until_leader(&a).await;
    let record = store.lease().unwrap().record;
    assert_eq!(
        (record.holder_identity.as_str(), record.strategy),
        ("a", None)
    );
    a.stop().await;
}

/// On shutdown a coordinated leader asks for its LeaseCandidate to be deleted and releases the Lease only
/// once it is, so the controller cannot assign the released Lease to it again; a registration that never
/// says so delays the release by one request timeout at most.
#[tokio::test(start_paused = true)]
async fn a_coordinated_leader_releases_after_its_candidate_is_withdrawn() {
    let store = MemoryLeaseStore::new();
    store.put(coordinated(held_by("a", 5, 0)));
    let (a, registration) = spawn_coordinated(&store, "a", CandidateStatus::Registered);
    until_leader(&a).await;
    assert!(!registration.coordination.withdrawal_requested());
    a.shutdown.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(registration.coordination.withdrawal_requested());
    assert_eq!(
        store.lease().unwrap().record.holder_identity,
        "a",
        "released before withdrawn"
    );
    registration.status.send_replace(CandidateStatus::Withdrawn);
    bounded(a.task).await.unwrap().unwrap();
    let record = store.lease().unwrap().record;
    assert_eq!(record.holder_identity, "", "released once withdrawn");
    assert_eq!(record.strategy.as_deref(), Some("OldestEmulationVersion"));

    let store = MemoryLeaseStore::new();
    store.put(coordinated(held_by("b", 5, 0)));
    let (b, _registration) = spawn_coordinated(&store, "b", CandidateStatus::Registered);
    until_leader(&b).await;
    let stopping = Instant::now();
    b.stop().await;
    assert_eq!(store.lease().unwrap().record.holder_identity, "");
    assert_eq!(stopping.elapsed(), config("b").effective_request_timeout());
}

// --- many candidates on one Lease ---

/// Starts a leader `a`, then `followers` watching followers `f0`.. (every call 1 ms), and waits until each
/// has seen `a` lead.
async fn leader_and_followers(store: &MemoryLeaseStore, followers: usize) -> Vec<Candidate> {
    let a = spawn(store, "a");
    until_leader(&a).await;
    let mut all = vec![a];
    for i in 0..followers {
        let f = spawn(store, &format!("f{i}"));
        one_ms_per_call(&f);
        until(&f, |s| s.leader.as_deref() == Some("a")).await;
        all.push(f);
    }
    // Every follower has opened its watch.
    tokio::time::sleep(RETRY).await;
    all
}

/// The calls of every client other than `except` since the store's log was last cleared, by client.
fn calls_by_client(store: &MemoryLeaseStore, except: &str) -> Vec<(String, Vec<String>)> {
    let mut clients: Vec<String> = store.calls().into_iter().map(|c| c.client).collect();
    clients.sort();
    clients.dedup();
    clients
        .into_iter()
        .filter(|c| c != except)
        .map(|c| {
            let calls = store.calls_of(&c);
            (c, calls)
        })
        .collect()
}

/// A candidate that loses the race for a released Lease makes no further request before the next event:
/// its watch delivers the winner's write, so it neither reads the Lease again nor opens a new watch (each
/// loser of a handover among N followers used to cost a conflict, a GET and a watch). Four fresh followers
/// all see the release at the same instant and all write (none has lost a race yet, so none staggers);
/// over the next 10 s (the new leader renews 5 times) each loser made exactly its one conflicting write.
#[tokio::test(start_paused = true)]
async fn losers_of_a_race_make_no_request_before_the_next_event() {
    let store = MemoryLeaseStore::new();
    let mut all = leader_and_followers(&store, 4).await;
    let a = all.remove(0);
    store.clear_calls();
    a.stop().await;
    tokio::time::sleep(5 * RETRY).await;
    let leaders: Vec<_> = all.iter().filter(|c| c.elector.is_leader()).collect();
    assert_eq!(leaders.len(), 1);
    let winner = leaders[0].elector.identity().to_owned();
    for (client, calls) in calls_by_client(&store, "a") {
        if client == winner {
            assert_eq!(calls[0], "update", "{client}: {calls:?}");
        } else {
            assert_eq!(calls, ["update:conflict"], "{client}");
            let state = all
                .iter()
                .find(|c| c.elector.identity() == client)
                .unwrap()
                .elector
                .state();
            assert_eq!(
                state.leader.as_deref(),
                Some(winner.as_str()),
                "{client} learnt the winner from its watch"
            );
        }
    }
    for c in all {
        c.stop().await;
    }
}

/// Followers stagger their takeover once they have lost races: over 12 handovers among 30 followers (no
/// restarts), the conflicting writes per handover fall from 29 (all write at once) to a few (the last four
/// handovers together cost fewer than the first), and every handover still completes (one new holder each
/// time).
#[tokio::test(start_paused = true)]
async fn staggered_takeover_makes_conflicts_rare_after_a_few_handovers() {
    let store = MemoryLeaseStore::new();
    let mut all = leader_and_followers(&store, 30).await;
    let mut conflicts = Vec::new();
    for _ in 0..12 {
        let leader = all.iter().position(|c| c.elector.is_leader()).unwrap();
        let old = all.remove(leader);
        let old_id = old.elector.identity().to_owned();
        store.clear_calls();
        old.stop().await;
        tokio::time::sleep(RETRY).await;
        let leaders = all.iter().filter(|c| c.elector.is_leader()).count();
        assert_eq!(leaders, 1, "one new holder");
        assert_ne!(holder(&store), old_id);
        conflicts.push(
            store
                .calls()
                .iter()
                .filter(|c| c.outcome == "conflict")
                .count(),
        );
    }
    assert_eq!(
        conflicts[0], 29,
        "the first handover: every follower writes"
    );
    let late: usize = conflicts[8..].iter().sum();
    assert!(late < conflicts[0], "conflicts per handover: {conflicts:?}");
    for c in all {
        c.stop().await;
    }
}

/// A lock whose shared watch saw the Lease's record at `seen_at` (as a `ShardSet`'s list+watch does).
#[derive(Debug)]
struct SeenBefore {
    lock: MemoryLeaseLock,
    record: LeaderElectionRecord,
    seen_at: Instant,
}

impl crate::LeaseLock for SeenBefore {
    fn get(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<crate::ObservedLease>, crate::LockError>>
    {
        self.lock.get()
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.lock.create(record)
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.lock.update(record, resource_version)
    }

    fn list(&self) -> futures::future::BoxFuture<'_, Result<crate::ListedLease, crate::LockError>> {
        self.lock.list()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::LeaseEventStream, crate::LockError>> {
        self.lock.watch(resource_version)
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    fn first_seen(&self, lease: &crate::ObservedLease) -> Option<Instant> {
        (lease.record == self.record).then_some(self.seen_at)
    }
}

/// Rule 2 with a shared watch: when the lock says this process first saw the record earlier (a
/// `ShardSet`'s list+watch, before the shard's elector started), the expiry clock starts there, so the
/// Lease is taken its leaseDurationSeconds after that sighting, not after the elector's own first read.
#[tokio::test(start_paused = true)]
async fn rule_2_the_expiry_clock_starts_when_the_process_first_saw_the_record() {
    let store = MemoryLeaseStore::new();
    let dead = store.put(held_by("b", 15, 0)).record;
    let seen_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lock = SeenBefore {
        lock: store.lock("a"),
        record: dead,
        seen_at,
    };
    let elector = Elector::new(config("a"), lock, Callbacks::new()).unwrap();
    let shutdown = CancellationToken::new();
    let mut state = elector.handle().subscribe();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(60),
        state.wait_for(LeaderState::is_leader),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        Instant::now() - seen_at,
        LEASE,
        "15 s after the first sighting, not 25 s"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Rule 10 during a graceful stop: when the Lease is taken by another while the work drains, the
/// published work deadline becomes the instant the elector learnt it (a CLI SIGKILLs its child by it),
/// not the end of the drain's window.
#[tokio::test(start_paused = true)]
async fn rule_10_a_lease_taken_while_the_work_drains_moves_the_work_deadline_to_now() {
    let store = MemoryLeaseStore::new();
    let a = spawn_with(&store, config("a"), Duration::from_secs(60));
    until_leader(&a).await;
    let mut state = a.elector.subscribe();
    a.shutdown.cancel();
    bounded(state.wait_for(|s| s.term.is_none())).await.unwrap();
    let draining_until = state
        .borrow()
        .work_deadline
        .expect("a work deadline while draining");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every work deadline published from now on.
    let published = Arc::new(Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let published = published.clone();
        async move {
            while state.changed().await.is_ok() {
                let deadline = state.borrow_and_update().work_deadline;
                published.lock().unwrap().push(deadline);
            }
        }
    });
    let taken = Instant::now();
    drop(store.put(held_by("b", 15, 1)));
    bounded(a.task).await.unwrap().unwrap();
    recorder.abort();
    let published = published.lock().unwrap().clone();
    assert!(taken < draining_until);
    assert!(
        published.contains(&Some(taken)),
        "the work deadline did not become now ({taken:?}) when the Lease was taken: {published:?}"
    );
}

/// Invariant 3, then the release: a term ended by its renew deadline while the API failed is still
/// released once the API answers again (the Lease may still name us), so that a follower need not wait
/// out the lease duration. Seen from a watch of the Lease: a write with an empty holder.
#[tokio::test(start_paused = true)]
async fn a_term_ended_by_its_renew_deadline_is_released_once_the_api_answers() {
    use crate::{LeaseEvent, LeaseLock};
    use futures::StreamExt;
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    a.lock.set_fault(LockFault {
        fail: true,
        ..LockFault::default()
    });
    until(&a, |s| s.term.is_none()).await;
    let observer = store.lock("observer");
    let from = store.lease().unwrap().resource_version;
    let mut events = observer.watch(&from).await.unwrap();
    a.lock.set_fault(LockFault::default());
    // The release is retried for a renew deadline after the term's end.
    let released = tokio::time::timeout(2 * RENEW, async {
        while let Some(event) = events.next().await {
            if let Ok(LeaseEvent::Applied(lease)) = event
                && lease.record.holder_identity.is_empty()
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        released,
        "not released after the deadline; calls: {:?}",
        store.calls_of("a")
    );
    a.stop().await;
}

// --- rule 12: an identity is not an incarnation ---

/// The record another process with our identity writes when it takes the Lease over from `ours`: the
/// same holder, its own acquireTime and renewTime (its wall clock), the next term.
fn taken_under_our_identity(ours: &LeaderElectionRecord) -> LeaderElectionRecord {
    let theirs = renewed(ours.clone(), 1);
    LeaderElectionRecord {
        acquire_time: theirs.renew_time,
        lease_transitions: ours.lease_transitions + 1,
        ..theirs
    }
}

/// Rule 12, a StatefulSet pod force-deleted on an unreachable node: its replacement has the same identity
/// and finds the Lease naming it, but holding a record it did not write. It waits for that Lease to expire
/// by its own clock, as any holder's (with a WARN, not an ERROR: nothing shows that the old one still
/// runs); the old incarnation's work (which ignores cancellation) is gone before the new one's starts, and
/// the new one leads in a new term.
#[tokio::test(start_paused = true)]
async fn rule_12_a_reused_identity_waits_for_the_old_incarnations_lease_to_expire() {
    let store = MemoryLeaseStore::new();
    let (old, old_work_gone) = stubborn_on(store.lock("a#1"), config("a"));
    until_leader(&old).await;
    let term = store.lease().unwrap().record.lease_transitions;
    old.lock.set_fault(LockFault {
        hang: true,
        ..LockFault::default()
    });
    let cut_off = Instant::now();
    let alarms = Arc::new(Reports::default());
    let new = {
        let lock = store.lock("a#2");
        let elector = Elector::builder(config("a"), lock.clone())
            .observer(alarms.clone())
            .build()
            .unwrap();
        start(elector, lock, Recorder::default())
    };
    let led = until_leader(&new).await;
    assert!(
        led - cut_off >= LEASE,
        "the new incarnation led {:?} after the old one was cut off",
        led - cut_off
    );
    let gone = old_work_gone
        .lock()
        .unwrap()
        .expect("the old incarnation's work was aborted");
    assert!(
        gone < led,
        "the old work was aborted {:?} after the new term began",
        gone - led
    );
    assert_eq!(store.lease().unwrap().record.lease_transitions, term + 1);
    assert_eq!(writes(&store, "a#2"), ["update"], "one take, no storm");
    assert_eq!(alarms.identity_alarms(), 0, "no ERROR");
}

/// Rule 12, two live processes with one identity (a copied `--identity`): one leads, the other waits on
/// its watch and writes nothing, the term does not move, and the waiting one says at ERROR, once per
/// lease duration, that another process holds the Lease under its identity (at WARN for the first record,
/// which might have been an earlier run's).
#[tokio::test(start_paused = true)]
async fn rule_12_two_live_processes_with_one_identity_one_leads_and_the_other_waits() {
    let alarms = Arc::new(Reports::default());
    let store = MemoryLeaseStore::new();
    let first = spawn_process(&store, "a", "a#1");
    until_leader(&first).await;
    let term = store.lease().unwrap().record.lease_transitions;
    // A budget of calls: a Lease fought over in a loop stops the clock (the runtime is never idle), so
    // the loop must end for the test to fail rather than hang.
    let second = {
        let lock = store.lock("a#2");
        let log = Recorder::default();
        let budgeted = Budgeted::new(lock.clone(), 100);
        let callbacks = recording(&log, &store, Duration::ZERO);
        let elector = Elector::builder(config("a"), budgeted)
            .callbacks(callbacks)
            .observer(alarms.clone())
            .build()
            .unwrap();
        start(elector, lock, log)
    };
    tokio::time::sleep(LEASE * 4).await;
    assert!(first.elector.is_leader());
    assert!(!second.elector.is_leader());
    assert_eq!(
        store.calls_of("a#2"),
        ["get", "watch"],
        "no write, no re-read"
    );
    assert_eq!(store.lease().unwrap().record.lease_transitions, term);
    assert_eq!(first.log.entries(), ["new_leader:a", "started:0"]);
    // The first record at WARN (it might have been an earlier run's), then one ERROR per lease duration
    // as the first process's renewals keep coming: at 2 s, 18 s, 34 s and 50 s.
    assert!(
        (4..=5).contains(&alarms.identity_alarms()),
        "{} ERRORs in four lease durations",
        alarms.identity_alarms()
    );
    first.stop().await;
    second.stop().await;
}

/// Another process with `a`'s identity takes the Lease over from leader `a`: returns when it wrote, and
/// when `a`'s term ended. Asserts the rest of rule 12 for that term: it ended as `identity_in_use`, its
/// work aborted at once (never getting to log its own stop); the Lease was not released, and not taken back
/// before it expired by `a`'s clock, then in a new term.
async fn taken_over_under_our_identity(
    a: &Candidate,
    store: &MemoryLeaseStore,
) -> (Instant, Instant) {
    let theirs = taken_under_our_identity(&store.lease().unwrap().record);
    let written = Instant::now();
    store.put(theirs.clone());
    let ended = until(a, |s| s.term.is_none()).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        a.log.entries(),
        ["new_leader:a", "started:0", "stopped:identity_in_use"]
    );
    assert_eq!(store.lease().unwrap().record, theirs, "not released");
    let retaken = until_leader(a).await;
    assert!(
        retaken >= ended + LEASE,
        "taken back {:?} after the term ended",
        retaken - ended
    );
    assert_eq!(
        store.lease().unwrap().record.lease_transitions,
        theirs.lease_transitions + 1
    );
    (written, ended)
}

/// Rule 12 through the leader's own watch: a write naming us that this run did not make (another process
/// under our identity took the Lease) ends the term at once as `identity_in_use`, with its work; the
/// Lease is not released, and not taken back before it expires by our clock (then in a new term).
#[tokio::test(start_paused = true)]
async fn rule_12_the_leaders_watch_ends_the_term_on_a_write_naming_us_that_it_did_not_make() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    until_leader(&a).await;
    let (written, ended) = taken_over_under_our_identity(&a, &store).await;
    assert_eq!(ended, written, "the term ends at once");
    a.stop().await;
}

/// Rule 12 on the slow path (client-go adopts any Lease naming it): after a renew conflict the leader
/// adopts only a record it wrote. One naming it that another process wrote ends the term as
/// `identity_in_use`, and the Lease is left to expire.
#[tokio::test(start_paused = true)]
async fn rule_12_after_a_renew_conflict_only_our_own_record_is_adopted() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(no_watch());
    until_leader(&a).await;
    let (written, ended) = taken_over_under_our_identity(&a, &store).await;
    assert!(ended - written <= RETRY, "at the next renewal");
    let calls = store.calls_of("a");
    assert!(
        calls.windows(2).any(|w| w == ["update:conflict", "get"]),
        "{calls:?}"
    );
    a.stop().await;
}

/// Rule 12 with a lost answer: a renewal that was stored but whose answer was lost (commit then drop) is
/// still this run's write. The next renewal conflicts with it, the re-read finds it, and the term goes
/// on.
#[tokio::test(start_paused = true)]
async fn rule_12_a_renewal_whose_answer_was_lost_is_still_ours() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(no_watch());
    until_leader(&a).await;
    a.lock.set_fault(LockFault {
        commit_then_fail: true,
        ..no_watch()
    });
    tokio::time::sleep(RETRY + Duration::from_millis(1)).await;
    a.lock.set_fault(no_watch());
    tokio::time::sleep(RETRY * 3).await;
    assert!(a.elector.is_leader());
    assert_eq!(a.elector.state().term.unwrap().transitions, 0);
    assert_eq!(a.log.entries(), ["new_leader:a", "started:0"]);
    let calls = store.calls_of("a");
    assert!(
        calls
            .windows(3)
            .any(|w| w == ["update:conflict", "get", "update"]),
        "{calls:?}"
    );
    a.stop().await;
}

/// Rules 12 and 5: an old incarnation shutting down never releases the Lease that a new incarnation with
/// the same identity took (here the old one does not watch, so it learns of it only by its fresh GET).
#[tokio::test(start_paused = true)]
async fn rule_12_release_leaves_another_incarnations_lease_alone() {
    let store = MemoryLeaseStore::new();
    let old = spawn_process(&store, "a", "a#1");
    old.lock.set_fault(no_watch());
    until_leader(&old).await;
    let theirs = store.put(taken_under_our_identity(&store.lease().unwrap().record));
    store.clear_calls();
    old.stop().await;
    assert_eq!(store.calls_of("a#1"), ["get"], "read, and did not write");
    assert_eq!(store.lease().unwrap(), theirs);
}

/// A create answered 404 Not Found (the Lease's namespace does not exist) is not a lost race: a polling
/// follower retries it after a jittered retry period, not in a loop of reads and creates.
#[tokio::test(start_paused = true)]
async fn a_create_answered_not_found_is_retried_after_a_retry_period() {
    let lock = NoNamespace::default();
    let calls = lock.calls.clone();
    let elector = Elector::new(config("a"), Budgeted::new(lock, 1_000), Callbacks::new()).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    let run = Duration::from_secs(60);
    tokio::time::sleep(run).await;
    shutdown.cancel();
    bounded(task).await.unwrap().unwrap();
    let creates = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| **c == "create")
        .count();
    let per_retry_period = usize::try_from(run.as_secs() / RETRY.as_secs()).unwrap();
    assert!(
        (per_retry_period / 3..=per_retry_period + 1).contains(&creates),
        "{creates} creates in {run:?}, one per jittered retry period expected"
    );
}

/// A lock that stops answering after a budget of calls: under tokio's paused clock, a loop of requests
/// that are answered at once keeps the runtime busy and the clock still, so without a budget a test of
/// "no request loop" would hang instead of failing.
#[derive(Debug)]
struct Budgeted<L> {
    lock: L,
    left: std::sync::atomic::AtomicUsize,
}

impl<L> Budgeted<L> {
    fn new(lock: L, calls: usize) -> Self {
        Self {
            lock,
            left: calls.into(),
        }
    }

    fn spend<'a, T: Send + 'a>(
        &self,
        call: futures::future::BoxFuture<'a, Result<T, crate::LockError>>,
    ) -> futures::future::BoxFuture<'a, Result<T, crate::LockError>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            call
        } else {
            Box::pin(futures::future::pending())
        }
    }
}

impl<L: crate::LeaseLock> crate::LeaseLock for Budgeted<L> {
    fn get(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<crate::ObservedLease>, crate::LockError>>
    {
        self.spend(self.lock.get())
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.spend(self.lock.create(record))
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.spend(self.lock.update(record, resource_version))
    }

    fn list(&self) -> futures::future::BoxFuture<'_, Result<crate::ListedLease, crate::LockError>> {
        self.spend(self.lock.list())
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::LeaseEventStream, crate::LockError>> {
        self.spend(self.lock.watch(resource_version))
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }
}

/// A Lease store whose namespace does not exist: the Lease is not found, and creating it answers 404
/// (kube-apiserver's NamespaceLifecycle admission); watching is forbidden (a polling follower).
#[derive(Debug, Default)]
struct NoNamespace {
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl NoNamespace {
    fn call<T: Send + 'static>(
        &self,
        verb: &'static str,
        answer: Result<T, crate::LockError>,
    ) -> futures::future::BoxFuture<'static, Result<T, crate::LockError>> {
        self.calls.lock().unwrap().push(verb);
        Box::pin(std::future::ready(answer))
    }
}

impl crate::LeaseLock for NoNamespace {
    fn get(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<Option<crate::ObservedLease>, crate::LockError>>
    {
        self.call("get", Ok(None))
    }

    fn create<'a>(
        &'a self,
        _: &'a LeaderElectionRecord,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.call("create", Err(crate::LockError::NotFound))
    }

    fn update<'a>(
        &'a self,
        _: &'a LeaderElectionRecord,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::ObservedLease, crate::LockError>> {
        self.call("update", Err(crate::LockError::NotFound))
    }

    fn list(&self) -> futures::future::BoxFuture<'_, Result<crate::ListedLease, crate::LockError>> {
        self.call(
            "list",
            Ok(crate::ListedLease {
                lease: None,
                resource_version: "1".into(),
            }),
        )
    }

    fn watch<'a>(
        &'a self,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<crate::LeaseEventStream, crate::LockError>> {
        self.call(
            "watch",
            Err(crate::LockError::Forbidden("cannot watch".into())),
        )
    }

    fn describe(&self) -> String {
        "memory/no-namespace".into()
    }
}

/// Coordinated election under rule 12: the election controller judges a holder's expiry by its renewTime
/// against the server's clock, so a holder whose clock runs behind is replaced early. The candidate it
/// assigns takes the Lease only once the replaced holder's record, as this candidate observed it, has
/// expired by its own clock (an assignment after a released or missing Lease is taken at once:
/// `a_coordinated_candidate_takes_a_lease_created_for_it_at_once`).
#[tokio::test(start_paused = true)]
async fn a_coordinated_assignment_waits_for_the_replaced_holders_lease_to_expire_by_our_clock() {
    let store = MemoryLeaseStore::new();
    store.put(coordinated(renewed(held_by("x", 15, 3), 0)));
    let (a, _registration) = spawn_coordinated(&store, "a", CandidateStatus::Registered);
    until(&a, |s| s.leader.as_deref() == Some("x")).await;
    let seen = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    store.put(coordinated(held_by("a", 5, 3)));
    let led = until_leader(&a).await;
    assert_eq!(
        led - seen,
        Duration::from_secs(15),
        "x's leaseDurationSeconds"
    );
    assert_eq!(store.lease().unwrap().record.lease_transitions, 4);
    a.stop().await;
}

/// Rule 5 on shutdown: a follower shut down after a create whose answer was lost (it landed) releases the
/// Lease that holds its write, instead of leaving it held, with no work, until it expires.
#[tokio::test(start_paused = true)]
async fn a_shutdown_after_a_write_whose_answer_was_lost_releases_it() {
    let store = MemoryLeaseStore::new();
    let a = spawn(&store, "a");
    a.lock.set_fault(LockFault {
        commit_then_fail: true,
        ..no_watch()
    });
    bounded(async {
        while store.lease().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(
        holder(&store),
        "a",
        "the create landed; its answer was lost"
    );
    a.lock.set_fault(no_watch());
    let log = a.log.clone();
    a.stop().await;
    assert_eq!(holder(&store), "", "released on shutdown");
    assert!(
        !log.entries().iter().any(|e| e.starts_with("started")),
        "{:?}",
        log.entries()
    );
}
