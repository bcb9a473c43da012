//! The event adapter and the metrics on the in-memory lock under tokio's paused clock: events are published
//! before each callback in a fixed order (also for a standalone election), `is_leader` is accurate, transitions
//! are counted, and time as leader grows while leading.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Callbacks, Config, LeaderElectionRecord, MemoryLeaseStore, StopReason, Term};
use leaderelection_controller::{
    Election, ElectionHandle, Event, EventBus, Metrics, Received, Subscription,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 10 minutes of (virtual) time, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .expect("not within 10 minutes of virtual time: a wait that never ends")
}

fn config(id: &str) -> Config {
    Config::new(id, "lease", "default")
        .with_lease_duration(Duration::from_secs(3))
        .with_renew_deadline(Duration::from_secs(2))
        .with_retry_period(Duration::from_millis(500))
}

fn name(event: &Event) -> String {
    match event {
        Event::LeaderElectionStarted { .. } => "event:started".into(),
        Event::BecameLeader { term, .. } => format!("event:became_leader({})", term.transitions),
        Event::LostLeadership { reason, .. } => format!("event:lost({reason})"),
        Event::NewLeaderObserved {
            new_leader_identity,
            is_self,
        } => {
            format!("event:new_leader({new_leader_identity},{is_self})")
        }
        // `Event` is `#[non_exhaustive]`: a later event is logged as it prints.
        other => format!("event:{other:?}"),
    }
}

/// Callbacks that first move every event already on the bus into the log, then log themselves: an event
/// published before its callback appears just before it.
fn logging_callbacks(log: Arc<Mutex<Vec<String>>>, sub: Arc<Mutex<Subscription>>) -> Callbacks {
    let drain = move |log: &Mutex<Vec<String>>, sub: &Mutex<Subscription>, entry: String| {
        let mut sub = sub.lock().unwrap();
        let mut log = log.lock().unwrap();
        while let Some(Received::Event(event)) = sub.try_recv() {
            log.push(name(&event));
        }
        log.push(entry);
    };
    let drain = Arc::new(drain);
    Callbacks::new()
        .on_started_leading({
            let (log, sub, drain) = (log.clone(), sub.clone(), drain.clone());
            move |term: Term, token: CancellationToken| {
                drain(
                    &log,
                    &sub,
                    format!("callback:started_leading({})", term.transitions),
                );
                async move {
                    token.cancelled().await;
                    Ok(())
                }
            }
        })
        .on_stopped_leading({
            let (log, sub, drain) = (log.clone(), sub.clone(), drain.clone());
            move |reason: StopReason| {
                drain(&log, &sub, format!("callback:stopped_leading({reason})"))
            }
        })
        .on_new_leader(move |id: &str| drain(&log, &sub, format!("callback:new_leader({id})")))
}

/// Runs `component` until the returned token is cancelled; its handle.
fn spawn_run(
    component: Election,
) -> (
    ElectionHandle,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), leaderelection::Error>>,
) {
    let handle = component.handle();
    let stop = CancellationToken::new();
    let run = tokio::spawn(component.run(stop.clone()));
    (handle, stop, run)
}

/// The log of one term of `id`, from start to shutdown: each event just before its callback.
fn one_term_until_shutdown(id: &str) -> Vec<String> {
    vec![
        "event:started".into(),
        format!("event:new_leader({id},true)"),
        format!("callback:new_leader({id})"),
        "event:became_leader(0)".into(),
        "callback:started_leading(0)".into(),
        "event:lost(shutdown)".into(),
        "callback:stopped_leading(shutdown)".into(),
    ]
}

#[tokio::test(start_paused = true)]
async fn events_precede_callbacks_in_a_fixed_order() {
    let store = MemoryLeaseStore::new();
    let bus = EventBus::default();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sub = Arc::new(Mutex::new(bus.subscribe()));
    let component = Election::builder(config("a"), store.lock("a"))
        .bus(bus.clone())
        .callbacks(logging_callbacks(log.clone(), sub.clone()))
        .build()
        .unwrap();
    let (component, stop, run) = spawn_run(component);
    let mut state = component.subscribe();
    bounded(state.wait_for(|s| s.is_leader())).await.unwrap();
    assert!(component.is_leader());
    assert_eq!(component.leader().as_deref(), Some("a"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(component.is_leader(), "renewing keeps it leader");
    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    assert!(!component.is_leader());
    let log = log.lock().unwrap().clone();
    assert_eq!(log, one_term_until_shutdown("a"));
}

#[tokio::test(start_paused = true)]
async fn a_standalone_election_publishes_the_events_of_one_term() {
    let bus = EventBus::default();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sub = Arc::new(Mutex::new(bus.subscribe()));
    let component = Election::standalone(config("solo"))
        .bus(bus.clone())
        .callbacks(logging_callbacks(log.clone(), sub))
        .build()
        .unwrap();
    let (component, stop, run) = spawn_run(component);
    bounded(component.subscribe().wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    assert!(component.is_standalone());
    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log, one_term_until_shutdown("solo"));
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_to_another_holder_is_published_with_its_reason() {
    let store = MemoryLeaseStore::new();
    let bus = EventBus::default();
    let mut sub = bus.subscribe();
    let component = Election::builder(config("a"), store.lock("a"))
        .bus(bus.clone())
        .callbacks(Callbacks::new())
        .build()
        .unwrap();
    let (component, stop, run) = spawn_run(component);
    bounded(component.subscribe().wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    // Another writer takes the Lease (as after a partition): the next renew conflicts and sees "b".
    let now = jiff::Timestamp::now();
    store.put(LeaderElectionRecord {
        holder_identity: "b".into(),
        lease_duration_seconds: 3,
        acquire_time: Some(now),
        renew_time: Some(now),
        lease_transitions: 1,
        ..LeaderElectionRecord::default()
    });
    bounded(component.subscribe().wait_for(|s| !s.is_leader()))
        .await
        .unwrap();
    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    let mut events = Vec::new();
    while let Some(Received::Event(e)) = sub.try_recv() {
        events.push((*e).clone());
    }
    assert!(
        events.contains(&Event::LostLeadership {
            identity: "a".into(),
            reason: StopReason::LeaseLost {
                new_holder: "b".into()
            },
        }),
        "{events:?}"
    );
    assert!(events.contains(&Event::NewLeaderObserved {
        new_leader_identity: "b".into(),
        is_self: false
    }));
}

fn became(transitions: i32) -> Event {
    Event::BecameLeader {
        identity: "a".into(),
        term: Term {
            holder: "a".into(),
            transitions,
            acquire_time: None,
        },
    }
}

fn lost() -> Event {
    Event::LostLeadership {
        identity: "a".into(),
        reason: StopReason::Released,
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_and_time_as_leader_are_tracked_while_leading() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, "lease");
    metrics.record(&became(4));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        metrics.time_as_leader(),
        Duration::from_secs(5),
        "counted while leading"
    );
    assert_eq!(
        metrics.current_term_duration(),
        Some(Duration::from_secs(5))
    );
    metrics.record(&lost());
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(
        metrics.time_as_leader(),
        Duration::from_secs(5),
        "not counted while following"
    );
    assert_eq!(metrics.current_term_duration(), None);
    metrics.record(&became(6));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(metrics.transitions(), 2);
    assert_eq!(metrics.time_as_leader(), Duration::from_secs(7));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("leader_election_is_leader"), 1.0);
    assert_eq!(value("leader_election_transitions_total"), 2.0);
    assert_eq!(value("leader_election_time_as_leader_seconds_total"), 7.0);
    assert_eq!(value("leader_election_master_status{name=\"lease\"}"), 1.0);
    assert_eq!(value("leader_election_lease_transitions"), 6.0);
    metrics.record(&lost());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("leader_election_is_leader 0\n"), "{text}");
    assert!(
        text.contains("leader_election_master_status{name=\"lease\"} 0\n"),
        "{text}"
    );
}

/// `leader_election_identity_in_use_total` counts what the elector reports when another live process
/// writes the Lease under this replica's identity (`docs/design.md`, "An identity is not an incarnation").
#[test]
fn identity_in_use_is_counted() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, "lease");
    leaderelection::Observer::on_identity_in_use(&metrics);
    leaderelection::Observer::on_identity_in_use(&metrics);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("leader_election_identity_in_use_total 2\n"),
        "{text}"
    );
}
