//! Prometheus metrics of the election, fed from the [`EventBus`] and the
//! elector's [`Observer`] hook, registered into the caller's [`Registry`].
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `leader_election_is_leader` | gauge | 1 while this replica leads; 0 on every way of stopping |
//! | `leader_election_transitions_total` | counter | terms this replica started |
//! | `leader_election_time_as_leader_seconds_total` | counter | seconds led, including the running term |
//! | `leader_election_master_status{name}` | gauge | client-go's name for `is_leader` |
//! | `leader_election_slowpath_total{name}` | counter | client-go's renew-conflict slow path |
//! | `leader_election_renew_duration_seconds` | histogram | latency of successful renews |
//! | `leader_election_api_errors_total{verb,reason}` | counter | failed Lease requests |
//! | `leader_election_lease_transitions` | gauge | the Lease's current term (`leaseTransitions`) |
//! | `leader_election_work_failures_total` | counter | terms ended because their leader-only work failed |
//! | `leader_election_identity_in_use_total` | counter | times another live process was seen writing the Lease under this replica's identity |
//! | `leader_election_component_failures_total{component}` | counter | failures of a supervised component (error, panic or early return) |
//! | `leader_election_component_budget_exhausted_total{component}` | counter | failures the [`crate::Supervisor`] no longer restarted: the component stepped down or failed the process |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use leaderelection::{LeaderState, LockError, Observer, Phase, Request};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Received, Subscription};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

/// One supervised component's failures, for `/debug/vars`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ComponentFailures {
    pub(crate) failures: u64,
    pub(crate) budget_exhausted: u64,
    pub(crate) last_error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    verb: String,
    reason: String,
}

/// Seconds led: the closed terms plus the running one, computed at each scrape.
#[derive(Debug, Default)]
struct TimeAsLeader {
    state: Mutex<(Duration, Option<Instant>)>,
}

impl TimeAsLeader {
    fn start(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.get_or_insert_with(Instant::now);
    }

    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = state.1.take() {
            state.0 += since.elapsed();
        }
    }

    fn total(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 + state.1.map_or(Duration::ZERO, |since| since.elapsed())
    }

    fn current(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.map(|since| since.elapsed())
    }
}

impl Collector for TimeAsLeader {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metric = encoder.encode_descriptor(
            "leader_election_time_as_leader_seconds",
            "Seconds this replica has led, including the running term.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(self.total().as_secs_f64()).encode(metric)
    }
}

/// The election's metrics. Cheap to clone; pass it to [`crate::ElectionBuilder::observer`] and run
/// [`Metrics::run`] beside the election (the [`crate::Runtime`] does both).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lease_name: String,
    is_leader: Gauge,
    transitions: Counter,
    transitions_seen: AtomicU64,
    time_as_leader: Arc<TimeAsLeader>,
    master_status: Family<NameLabel, Gauge>,
    slowpath: Family<NameLabel, Counter>,
    renew_duration: Histogram,
    api_errors: Family<ErrorLabels, Counter>,
    lease_transitions: Gauge,
    work_failures: Counter,
    identity_in_use: Counter,
    component_failures: Family<ComponentLabel, Counter>,
    component_budget_exhausted: Family<ComponentLabel, Counter>,
    components: Mutex<BTreeMap<String, ComponentFailures>>,
}

impl Metrics {
    /// Registers the metrics into `registry`; `lease_name` is the `name` label of the client-go metrics.
    pub fn new(registry: &mut Registry, lease_name: &str) -> Self {
        let inner = Inner {
            lease_name: lease_name.to_owned(),
            is_leader: Gauge::default(),
            transitions: Counter::default(),
            transitions_seen: AtomicU64::new(0),
            time_as_leader: Arc::default(),
            master_status: Family::default(),
            slowpath: Family::default(),
            renew_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            api_errors: Family::default(),
            lease_transitions: Gauge::default(),
            work_failures: Counter::default(),
            identity_in_use: Counter::default(),
            component_failures: Family::default(),
            component_budget_exhausted: Family::default(),
            components: Mutex::default(),
        };
        registry.register(
            "leader_election_is_leader",
            "1 while this replica leads, else 0.",
            inner.is_leader.clone(),
        );
        registry.register(
            "leader_election_transitions",
            "Terms this replica has started.",
            inner.transitions.clone(),
        );
        registry.register_collector(Box::new(inner.time_as_leader.clone()));
        registry.register(
            "leader_election_master_status",
            "client-go compatible: 1 while this replica leads the named lease.",
            inner.master_status.clone(),
        );
        registry.register(
            "leader_election_slowpath",
            "client-go compatible: renews that conflicted and re-read the lease.",
            inner.slowpath.clone(),
        );
        registry.register(
            "leader_election_renew_duration_seconds",
            "Latency of successful lease renewals, in seconds.",
            inner.renew_duration.clone(),
        );
        registry.register(
            "leader_election_api_errors",
            "Lease requests that failed, by verb and Status reason.",
            inner.api_errors.clone(),
        );
        registry.register(
            "leader_election_lease_transitions",
            "The lease's current term (leaseTransitions) as last observed.",
            inner.lease_transitions.clone(),
        );
        registry.register(
            "leader_election_work_failures",
            "Terms ended because their leader-only work panicked.",
            inner.work_failures.clone(),
        );
        registry.register(
            "leader_election_identity_in_use",
            "Times another live process was seen writing the lease under this replica's identity (at most \
             once per lease duration).",
            inner.identity_in_use.clone(),
        );
        registry.register(
            "leader_election_component_failures",
            "Failures of a supervised component: an error, a panic, or a return before it was stopped.",
            inner.component_failures.clone(),
        );
        registry.register(
            "leader_election_component_budget_exhausted",
            "Election failures no longer restarted: the component stepped down or failed the process.",
            inner.component_budget_exhausted.clone(),
        );
        let metrics = Self {
            inner: Arc::new(inner),
        };
        metrics.set_leading(false);
        metrics
    }

    fn set_leading(&self, leading: bool) {
        let value = i64::from(leading);
        self.inner.is_leader.set(value);
        self.inner
            .master_status
            .get_or_create(&NameLabel {
                name: self.inner.lease_name.clone(),
            })
            .set(value);
        if leading {
            self.inner.time_as_leader.start();
        } else {
            self.inner.time_as_leader.stop();
        }
    }

    /// Applies one event.
    pub fn record(&self, event: &Event) {
        match event {
            Event::BecameLeader { term, .. } => {
                self.inner.transitions.inc();
                self.inner.transitions_seen.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .lease_transitions
                    .set(i64::from(term.transitions));
                self.set_leading(true);
            }
            Event::LostLeadership { .. } => self.set_leading(false),
            Event::LeaderElectionStarted { .. } | Event::NewLeaderObserved { .. } => {}
        }
    }

    /// Feeds the metrics from an election's `events` and `state` (the gauge drops to 0 as soon as the
    /// state says the term ended, before the release and [`Event::LostLeadership`]) until `stop` is
    /// cancelled or both sources are closed; on lag, re-reads the state. Sets `is_leader` to 0 when it
    /// ends. [`crate::Runtime`] runs it; wire it yourself only without the runtime.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; cancel `stop` (or drop it) to stop.
    pub async fn run(
        self,
        mut events: Subscription,
        mut state: watch::Receiver<LeaderState>,
        stop: CancellationToken,
    ) {
        let (mut events_open, mut state_open) = (true, true);
        while events_open || state_open {
            tokio::select! {
                () = stop.cancelled() => break,
                received = events.recv(), if events_open => match received {
                    Some(Received::Event(event)) => self.record(&event),
                    Some(Received::Lagged(_)) => self.set_leading(state.borrow().is_leader()),
                    None => events_open = false,
                },
                changed = state.changed(), if state_open => {
                    if changed.is_err() {
                        state_open = false;
                        continue;
                    }
                    let (transitions, leading) = {
                        let state = state.borrow_and_update();
                        (state.lease_transitions, state.is_leader())
                    };
                    self.inner.lease_transitions.set(i64::from(transitions));
                    // The term ended (its state says so before the release and LostLeadership).
                    if !leading {
                        self.set_leading(false);
                    }
                }
            }
        }
        self.set_leading(false);
    }

    /// Seconds led in the running term, `None` when not leading.
    pub fn current_term_duration(&self) -> Option<Duration> {
        self.inner.time_as_leader.current()
    }

    /// Total time led, including the running term.
    pub fn time_as_leader(&self) -> Duration {
        self.inner.time_as_leader.total()
    }

    /// Terms started by this replica.
    pub fn transitions(&self) -> u64 {
        self.inner.transitions_seen.load(Ordering::Relaxed)
    }

    /// Counts a failure of the supervised component `name`.
    pub(crate) fn component_failed(&self, name: &str, error: &str) {
        self.inner
            .component_failures
            .get_or_create(&ComponentLabel {
                component: name.to_owned(),
            })
            .inc();
        let mut components = self
            .inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = components.entry(name.to_owned()).or_default();
        entry.failures += 1;
        error.clone_into(&mut entry.last_error);
    }

    /// Counts a failure of `name` that the supervisor no longer restarted.
    pub(crate) fn component_budget_exhausted(&self, name: &str) {
        self.inner
            .component_budget_exhausted
            .get_or_create(&ComponentLabel {
                component: name.to_owned(),
            })
            .inc();
        self.inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .budget_exhausted += 1;
    }

    /// The failures of each supervised component that failed at least once, by name (`/debug/vars`).
    #[cfg(feature = "admin")]
    pub(crate) fn component_failures(&self) -> BTreeMap<String, ComponentFailures> {
        self.inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Observer for Metrics {
    fn on_request(&self, request: &Request<'_>) {
        match request.error {
            None if request.phase == Phase::Renew => {
                self.inner
                    .renew_duration
                    .observe(request.latency.as_secs_f64());
            }
            None | Some(LockError::NotFound | LockError::AlreadyExists | LockError::Conflict) => {}
            Some(error) => {
                let reason = match error {
                    LockError::Api { reason, .. } => reason.clone(),
                    LockError::Gone => "Expired".into(),
                    LockError::Forbidden(_) => "Forbidden".into(),
                    LockError::Timeout => "Timeout".into(),
                    _ => "Transport".into(),
                };
                self.inner
                    .api_errors
                    .get_or_create(&ErrorLabels {
                        verb: request.verb.into(),
                        reason,
                    })
                    .inc();
            }
        }
    }

    fn on_slow_path(&self) {
        self.inner
            .slowpath
            .get_or_create(&NameLabel {
                name: self.inner.lease_name.clone(),
            })
            .inc();
    }

    fn on_work_failure(&self) {
        self.inner.work_failures.inc();
    }

    fn on_identity_in_use(&self) {
        self.inner.identity_in_use.inc();
    }
}
