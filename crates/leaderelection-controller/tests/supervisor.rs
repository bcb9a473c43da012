//! The supervisor on the in-memory lock under tokio's paused clock: each component runs in a task of its
//! own, a panic is a failure like an error, failures are restarted within a budget and then step down (the
//! Lease is released: another replica leads at once) or fail the process, and the user's callbacks are
//! all called.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Callbacks, Config, MemoryLeaseStore, StopReason, Term, WorkError};
use leaderelection_controller::{
    Admin, BudgetSpent, Election, ElectionHandle, Event, EventBus, Failure, LeaderContext, Metrics,
    Policy, Received, Subscription, Supervisor, SupervisorError,
};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longer than any test here needs; a test that would wait for it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(120);

fn config(id: &str) -> Config {
    Config::new(id, "lease", "default")
        .with_lease_duration(Duration::from_secs(3))
        .with_renew_deadline(Duration::from_secs(2))
        .with_retry_period(Duration::from_millis(500))
}

struct Replica {
    component: ElectionHandle,
    events: Subscription,
    stop: CancellationToken,
    run: JoinHandle<Result<(), SupervisorError>>,
}

impl Replica {
    fn start(store: &MemoryLeaseStore, id: &str, supervisor: Supervisor, user: Callbacks) -> Self {
        let bus = EventBus::default();
        let events = bus.subscribe();
        let (callbacks, supervised) = supervisor.bind(user);
        let election = Election::builder(config(id), store.lock(id))
            .bus(bus)
            .callbacks(callbacks)
            .build()
            .unwrap();
        let component = election.handle();
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let stop = stop.clone();
            async move { supervised.run(election, stop).await }
        });
        Self {
            component,
            events,
            stop,
            run,
        }
    }

    async fn leads(&self) -> Instant {
        let mut state = self.component.subscribe();
        tokio::time::timeout(PATIENCE, state.wait_for(|s| s.is_leader()))
            .await
            .expect("never led")
            .unwrap();
        Instant::now()
    }

    async fn stops_leading(&self) -> Instant {
        let mut state = self.component.subscribe();
        tokio::time::timeout(PATIENCE, state.wait_for(|s| !s.is_leader()))
            .await
            .expect("never stopped leading")
            .unwrap();
        Instant::now()
    }

    /// The stop reasons published so far.
    fn stop_reasons(&mut self) -> Vec<StopReason> {
        let mut reasons = Vec::new();
        while let Some(received) = self.events.try_recv() {
            if let Received::Event(event) = received
                && let Event::LostLeadership { reason, .. } = &*event
            {
                reasons.push(reason.clone());
            }
        }
        reasons
    }

    async fn shut_down(self) -> Result<(), SupervisorError> {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.run)
            .await
            .expect("run did not end")
            .unwrap()
    }
}

/// A leader-only component that fails at once, every time, counting its starts.
fn broken(starts: Arc<AtomicUsize>) -> Supervisor {
    Supervisor::new(Policy::default()).leader_only("broken", move |_| {
        starts.fetch_add(1, Ordering::SeqCst);
        async { Err("broken".into()) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_panicking_leader_only_component_is_restarted_in_the_same_term() {
    let store = MemoryLeaseStore::new();
    let terms = Arc::new(Mutex::new(Vec::new()));
    let supervisor = Supervisor::new(Policy::default()).leader_only("flaky", {
        let terms = terms.clone();
        move |LeaderContext { term, token, .. }| {
            let first = {
                let mut terms = terms.lock().unwrap();
                terms.push(term.transitions);
                terms.len() == 1
            };
            async move {
                assert!(!first, "flaky's first start panics");
                token.cancelled().await;
                Ok(())
            }
        }
    });
    let mut a = Replica::start(&store, "a", supervisor, Callbacks::new());
    a.leads().await;
    tokio::time::timeout(PATIENCE, async {
        while terms.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("flaky was not restarted");
    assert!(a.component.is_leader(), "the panic did not end the term");
    assert_eq!(*terms.lock().unwrap(), vec![0, 0], "restarted in term 0");
    assert_eq!(a.stop_reasons(), vec![], "no term ended");
    a.shut_down().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_component_that_spends_its_budget_steps_down_and_another_replica_leads_within_milliseconds()
 {
    let store = MemoryLeaseStore::new();
    let starts = Arc::new(AtomicUsize::new(0));
    let mut a = Replica::start(&store, "a", broken(starts.clone()), Callbacks::new());
    let started = a.leads().await;
    let steady = Supervisor::new(Policy::default()).leader_only(
        "steady",
        |LeaderContext { token, .. }| async move {
            token.cancelled().await;
            Ok(())
        },
    );
    let b = Replica::start(&store, "b", steady, Callbacks::new());
    let (a_stopped, b_leads) = tokio::join!(a.stops_leading(), b.leads());
    assert_eq!(
        starts.load(Ordering::SeqCst),
        5,
        "the default budget: the 5th failure steps down"
    );
    assert!(
        a_stopped - started < Duration::from_secs(10),
        "backoffs of 0.5 + 1 + 2 + 4 s: {:?}",
        a_stopped - started
    );
    assert!(
        b_leads - a_stopped < Duration::from_millis(100),
        "b leads {:?} after a stopped: the Lease was released, not left to expire (3 s)",
        b_leads - a_stopped
    );
    assert_eq!(store.lease().unwrap().record.holder_identity, "b");
    match a.stop_reasons().as_slice() {
        [StopReason::WorkFailed { error }] => {
            assert_eq!(
                error.to_string(),
                "component broken failed: broken (5 failures within 5m)"
            );
            // The failure travels as a value, not as a message: the Failure, then the component's error.
            let WorkError::Failed(failure) = error else {
                panic!("{error:?} is not the supervisor's Failure");
            };
            let failure = failure.downcast_ref::<Failure>().expect("a Failure");
            assert_eq!(failure.component, "broken");
            assert_eq!(
                failure.budget,
                Some(BudgetSpent {
                    failures: 5,
                    window: Duration::from_secs(300)
                })
            );
            let cause = std::error::Error::source(failure).expect("the component's error is kept");
            assert_eq!(cause.to_string(), "broken");
        }
        other => panic!("a's terms ended for {other:?}"),
    }
    b.shut_down().await.unwrap();
    a.shut_down().await.unwrap();
}

/// The user's `on_started_leading` work run by the supervisor beside its components: an `Err` it returns
/// ends the term as `WorkFailed` with that very error (the supervisor passes it on, unwrapped), and the
/// components of the term are stopped first.
#[tokio::test(start_paused = true)]
async fn an_error_from_the_users_work_ends_the_term_as_work_failed_with_that_error() {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot reconcile")]
    struct Reconcile(#[source] std::io::Error);

    let store = MemoryLeaseStore::new();
    let stopped = Arc::new(AtomicUsize::new(0));
    let steady = Supervisor::new(Policy::default()).leader_only("steady", {
        let stopped = stopped.clone();
        move |LeaderContext { token, .. }| {
            let stopped = stopped.clone();
            async move {
                token.cancelled().await;
                stopped.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    });
    let user = Callbacks::new().on_started_leading(|_term, _token| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Err(Reconcile(std::io::Error::other("the database is unreachable")).into())
    });
    let mut a = Replica::start(&store, "a", steady, user);
    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Received::Event(event)) = a.events.recv().await
                && let Event::LostLeadership { reason, .. } = &*event
            {
                return reason.clone();
            }
        }
    })
    .await
    .expect("the term never ended");
    match [reason].as_slice() {
        [StopReason::WorkFailed { error }] => {
            let WorkError::Failed(returned) = error else {
                panic!("{error:?} is not the returned error");
            };
            assert!(
                returned.downcast_ref::<Reconcile>().is_some(),
                "{returned:?}"
            );
            let cause = std::error::Error::source(error).expect("its source is kept");
            assert_eq!(cause.to_string(), "the database is unreachable");
        }
        other => panic!("a's term ended for {other:?}"),
    }
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        1,
        "the component was stopped"
    );
    a.shut_down().await.unwrap();
}

/// Callbacks of a bound supervisor given to an election that `Supervised::run` does not drive cannot give
/// its leader-only components their context: the term ends as `WorkFailed` saying so, rather than lead
/// with the components silently missing.
#[tokio::test(start_paused = true)]
async fn leader_only_components_outside_supervised_run_end_the_term_loudly() {
    let store = MemoryLeaseStore::new();
    let started = Arc::new(AtomicUsize::new(0));
    let supervisor = Supervisor::new(Policy::default()).leader_only("steady", {
        let started = started.clone();
        move |LeaderContext { token, .. }| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                token.cancelled().await;
                Ok(())
            }
        }
    });
    let (callbacks, _supervised) = supervisor.bind(Callbacks::new());
    let bus = EventBus::default();
    let mut events = bus.subscribe();
    let election = Election::builder(config("a"), store.lock("a"))
        .bus(bus)
        .callbacks(callbacks)
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(election.run(stop.clone()));
    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Received::Event(event)) = events.recv().await
                && let Event::LostLeadership { reason, .. } = &*event
            {
                return reason.clone();
            }
        }
    })
    .await
    .expect("the term never ended");
    let StopReason::WorkFailed { error } = &reason else {
        panic!("the term ended for {reason:?}");
    };
    assert!(
        error.to_string().contains("outside Supervised::run"),
        "{error}"
    );
    assert_eq!(started.load(Ordering::SeqCst), 0);
    stop.cancel();
    tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_all_replica_component_is_restarted() {
    let store = MemoryLeaseStore::new();
    let starts = Arc::new(AtomicUsize::new(0));
    let supervisor = Supervisor::new(Policy::default()).all_replica("watcher", {
        let starts = starts.clone();
        move |token: CancellationToken| {
            let first = starts.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                assert!(!first, "the watcher's first start panics");
                token.cancelled().await;
                Ok(())
            }
        }
    });
    let a = Replica::start(&store, "a", supervisor, Callbacks::new());
    tokio::time::timeout(PATIENCE, async {
        while starts.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watcher was not restarted");
    assert!(!a.run.is_finished(), "run goes on");
    a.shut_down().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_user_callbacks_are_called_once_per_event() {
    let store = MemoryLeaseStore::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let user = Callbacks::new()
        .on_started_leading({
            let log = log.clone();
            move |term: Term, token: CancellationToken| {
                log.lock()
                    .unwrap()
                    .push(format!("started({})", term.transitions));
                async move {
                    token.cancelled().await;
                    Ok(())
                }
            }
        })
        .on_stopped_leading({
            let log = log.clone();
            move |reason| log.lock().unwrap().push(format!("stopped({reason})"))
        })
        .on_new_leader({
            let log = log.clone();
            move |identity| log.lock().unwrap().push(format!("new_leader({identity})"))
        });
    let a = Replica::start(&store, "a", Supervisor::new(Policy::default()), user);
    a.leads().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.shut_down().await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec!["new_leader(a)", "started(0)", "stopped(shutdown)"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_to_stop_component_keeps_the_lease_named_for_its_holder_until_it_exits_and_the_next_leaders_starts_after()
 {
    let store = MemoryLeaseStore::new();
    // (what, when, the Lease's holder then)
    let log: Arc<Mutex<Vec<(String, Instant, String)>>> = Arc::default();
    let slow = |id: &'static str, supervisor: Supervisor| {
        let (store, log) = (store.clone(), log.clone());
        supervisor.leader_only("slow", move |LeaderContext { token, .. }| {
            let (store, log) = (store.clone(), log.clone());
            async move {
                let holder = || store.lease().unwrap().record.holder_identity;
                log.lock()
                    .unwrap()
                    .push((format!("{id} started"), Instant::now(), holder()));
                token.cancelled().await;
                // Within the stop timeout (800 ms here).
                tokio::time::sleep(Duration::from_millis(600)).await;
                log.lock()
                    .unwrap()
                    .push((format!("{id} exited"), Instant::now(), holder()));
                Ok(())
            }
        })
    };
    let a = Replica::start(
        &store,
        "a",
        slow("a", broken(Arc::default())),
        Callbacks::new(),
    );
    a.leads().await;
    let b = Replica::start(
        &store,
        "b",
        slow("b", Supervisor::new(Policy::default())),
        Callbacks::new(),
    );
    b.leads().await;
    let log = log.lock().unwrap().clone();
    let names: Vec<&str> = log.iter().map(|(what, ..)| what.as_str()).collect();
    assert_eq!(names, ["a started", "a exited", "b started"]);
    assert_eq!(log[1].2, "a", "the Lease still names a when its work exits");
    assert!(log[1].1 <= log[2].1, "b's work starts after a's exited");
    b.shut_down().await.unwrap();
    a.shut_down().await.unwrap();
}

/// Records when it is dropped, and who held the Lease then.
struct DropGuard {
    store: MemoryLeaseStore,
    dropped: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let holder = self.store.lease().unwrap().record.holder_identity;
        *self.dropped.lock().unwrap() = Some((Instant::now(), holder));
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_down_aborts_work_that_ignores_its_token_after_the_stop_timeout_then_releases() {
    let store = MemoryLeaseStore::new();
    let dropped: Arc<Mutex<Option<(Instant, String)>>> = Arc::default();
    let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let supervisor = Supervisor::new(Policy::default())
        .leader_only("stubborn", {
            let (store, dropped) = (store.clone(), dropped.clone());
            move |_| {
                let guard = DropGuard {
                    store: store.clone(),
                    dropped: dropped.clone(),
                };
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }
        })
        .leader_only_with_policy("broken", Policy::StepDown, {
            let failed_at = failed_at.clone();
            move |_| {
                let failed_at = failed_at.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    *failed_at.lock().unwrap() = Some(Instant::now());
                    Err("broken".into())
                }
            }
        });
    let a = Replica::start(&store, "a", supervisor, Callbacks::new());
    a.leads().await;
    let steady = Supervisor::new(Policy::default());
    let b = Replica::start(&store, "b", steady, Callbacks::new());
    let b_leads = b.leads().await;
    let failed_at = failed_at.lock().unwrap().expect("broken failed");
    let (dropped_at, holder) = dropped
        .lock()
        .unwrap()
        .clone()
        .expect("stubborn was aborted");
    // lease 3 s - renew deadline 2 s - takeover margin 200 ms
    let stop_timeout = config("a").effective_stop_timeout();
    assert_eq!(stop_timeout, Duration::from_millis(800));
    assert_eq!(
        dropped_at - failed_at,
        stop_timeout,
        "aborted at the stop timeout"
    );
    assert_eq!(
        holder, "a",
        "the Lease still names a while its work is aborted"
    );
    assert!(
        b_leads - dropped_at < Duration::from_millis(100),
        "released after the abort: b leads {:?} later",
        b_leads - dropped_at
    );
    b.shut_down().await.unwrap();
    a.shut_down().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_fail_process_failure_ends_run_with_the_failure() {
    let store = MemoryLeaseStore::new();
    let supervisor = Supervisor::new(Policy::FailProcess).leader_only("panicky", |_| async {
        panic!("boom");
    });
    let a = Replica::start(&store, "a", supervisor, Callbacks::new());
    let result = tokio::time::timeout(PATIENCE, a.run)
        .await
        .expect("run did not end")
        .unwrap();
    match result {
        Err(SupervisorError::Failed(failure)) => {
            assert_eq!(failure.component, "panicky");
            assert_eq!(
                failure.error,
                WorkError::Panicked {
                    message: "boom".into()
                }
            );
            assert_eq!(
                failure.to_string(),
                "component panicky failed: panicked: boom"
            );
        }
        other => panic!("run ended with {other:?}"),
    }
    assert_eq!(
        store.lease().unwrap().record.holder_identity,
        "",
        "released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_is_counted_in_metrics_and_debug_vars() {
    let store = MemoryLeaseStore::new();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, "lease");
    let supervisor = broken(Arc::default()).with_metrics(metrics.clone());
    let a = Replica::start(&store, "a", supervisor, Callbacks::new());
    a.leads().await;
    a.stops_leading().await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("leader_election_component_failures_total{component=\"broken\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains("leader_election_component_budget_exhausted_total{component=\"broken\"} 1\n"),
        "{text}"
    );
    let admin = Admin::new(
        a.component.clone(),
        Duration::from_secs(5),
        Registry::default(),
        metrics,
    );
    assert_eq!(
        admin.debug_vars()["leader_election"]["component_failures"],
        serde_json::json!({
            "broken": {
                "failures": 5,
                "budget_exhausted": 1,
                "last_error": "broken",
            }
        })
    );
    a.shut_down().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_zero_window_never_spends_the_budget() {
    let store = MemoryLeaseStore::new();
    let starts = Arc::new(AtomicUsize::new(0));
    let policy = Policy::Restart {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        max_failures: std::num::NonZeroU32::MIN,
        window: Duration::ZERO,
    };
    let supervisor = Supervisor::new(policy).leader_only("broken", {
        let starts = starts.clone();
        move |_| {
            starts.fetch_add(1, Ordering::SeqCst);
            async { Err("broken".into()) }
        }
    });
    let mut a = Replica::start(&store, "a", supervisor, Callbacks::new());
    a.leads().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(starts.load(Ordering::SeqCst) >= 50, "restarted every 10 ms");
    assert!(a.component.is_leader());
    assert_eq!(a.stop_reasons(), vec![], "no term ended");
    a.shut_down().await.unwrap();
}
