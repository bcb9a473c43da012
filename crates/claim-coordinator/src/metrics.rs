//! The coordinator's Prometheus metrics, with Beskar7's names (without its `beskar7_` prefix), registered
//! into the caller's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// `event_type`: `started_leading`, `stopped_leading`, `new_leader`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventType {
    event_type: &'static str,
}

/// `result_type`: `success`, `error`, `retry`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultType {
    result_type: &'static str,
}

/// `identity`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Identity {
    identity: String,
}

/// `outcome` (`success`, `conflict`, `no_hosts`, `error`) and `conflict_reason` (`optimistic_lock`,
/// `already_claimed`, `invalid_state`, `none`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    outcome: &'static str,
    conflict_reason: &'static str,
}

/// How one bind attempt ended, for `host_claim_attempts_total` and `claim_coordinator_results_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The claim is bound.
    Success,
    /// A conditional write lost (409 Conflict): someone wrote the host or the claim since we read it.
    ConflictOptimisticLock,
    /// The chosen host was taken by another claim meanwhile.
    ConflictAlreadyClaimed,
    /// The host or claim was in a state that does not allow the step (e.g. deleted, not ready).
    ConflictInvalidState,
    /// No host fits the claim now.
    NoHosts,
    /// Another API error.
    Error,
}

impl Outcome {
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::Success => ("success", "none"),
            Self::ConflictOptimisticLock => ("conflict", "optimistic_lock"),
            Self::ConflictAlreadyClaimed => ("conflict", "already_claimed"),
            Self::ConflictInvalidState => ("conflict", "invalid_state"),
            Self::NoHosts => ("no_hosts", "none"),
            Self::Error => ("error", "none"),
        }
    }

    /// `success` for a bind, `retry` for a conflict or no host (served again), `error` otherwise.
    fn result_type(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            _ => "retry",
        }
    }
}

/// The coordinator's metrics. Cheap to clone (the families are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    leader_election: Family<EventType, Counter>,
    results: Family<ResultType, Counter>,
    processing: Family<ResultType, Histogram>,
    leadership: Family<Identity, Gauge<f64, AtomicU64>>,
    attempts: Family<Attempt, Counter>,
    pending: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    batch_size: Histogram,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric into `registry`:
    /// `claim_coordinator_leader_election_total{event_type}`, `claim_coordinator_results_total{result_type}`,
    /// `claim_coordinator_processing_duration_seconds{result_type}` (one bind, histogram),
    /// `claim_coordinator_leadership_duration_seconds{identity}` (the current or last term, seconds),
    /// `host_claim_attempts_total{outcome,conflict_reason}`, `claim_coordinator_pending_claims`,
    /// `claim_coordinator_oldest_pending_age_seconds`, `claim_coordinator_batch_size` (claims per batch);
    /// each with the label `namespace` (the coordinator's namespace), as the original's metrics.
    #[must_use]
    pub fn for_namespace(registry: &mut Registry, namespace: &str) -> Self {
        Self::new(registry.sub_registry_with_label((
            std::borrow::Cow::Borrowed("namespace"),
            std::borrow::Cow::Owned(namespace.to_owned()),
        )))
    }

    /// As [`Metrics::for_namespace`], without the `namespace` label (for tests and embedders that label
    /// their registry themselves).
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            leader_election: Family::default(),
            results: Family::default(),
            processing: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            leadership: Family::default(),
            attempts: Family::default(),
            pending: Gauge::default(),
            oldest_pending: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        };
        registry.register(
            "claim_coordinator_leader_election",
            "Leader election events of the claim coordinator",
            metrics.leader_election.clone(),
        );
        registry.register(
            "claim_coordinator_results",
            "Results of serving one claim as leader",
            metrics.results.clone(),
        );
        registry.register(
            "claim_coordinator_processing_duration_seconds",
            "Time to serve one claim as leader, in seconds",
            metrics.processing.clone(),
        );
        registry.register(
            "claim_coordinator_leadership_duration_seconds",
            "Length of this replica's current or last term, in seconds",
            metrics.leadership.clone(),
        );
        registry.register(
            "host_claim_attempts",
            "Attempts to bind a claim to a host, by outcome",
            metrics.attempts.clone(),
        );
        registry.register(
            "claim_coordinator_pending_claims",
            "Pending claims seen by the leader's last batch",
            metrics.pending.clone(),
        );
        registry.register(
            "claim_coordinator_oldest_pending_age_seconds",
            "Age of the oldest pending claim at the leader's last batch, in seconds",
            metrics.oldest_pending.clone(),
        );
        registry.register(
            "claim_coordinator_batch_size",
            "Pending claims served per batch",
            metrics.batch_size.clone(),
        );
        metrics
    }

    /// Counts a leader election event: `started_leading`, `stopped_leading` or `new_leader`.
    pub fn leader_election_event(&self, event_type: &'static str) {
        self.leader_election
            .get_or_create(&EventType { event_type })
            .inc();
    }

    /// Sets the length of `identity`'s current (or just ended) term.
    pub fn leadership_duration(&self, identity: &str, seconds: f64) {
        self.leadership
            .get_or_create(&Identity {
                identity: identity.to_owned(),
            })
            .set(seconds);
    }

    /// Records one bind attempt (leader or optimistic).
    pub fn attempt(&self, outcome: Outcome) {
        let (outcome, conflict_reason) = outcome.labels();
        self.attempts
            .get_or_create(&Attempt {
                outcome,
                conflict_reason,
            })
            .inc();
    }

    /// Records how serving one claim as leader ended, and how long it took.
    pub fn result(&self, outcome: Outcome, seconds: f64) {
        let labels = ResultType {
            result_type: outcome.result_type(),
        };
        self.results.get_or_create(&labels).inc();
        self.processing.get_or_create(&labels).observe(seconds);
    }

    /// Records a batch: claims pending, the oldest one's age, and how many were served.
    pub fn batch(&self, pending: usize, oldest_age_seconds: f64, served: usize) {
        self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.oldest_pending.set(oldest_age_seconds);
        #[allow(clippy::cast_precision_loss)]
        self.batch_size.observe(served as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_metric_is_recorded() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.leader_election_event("started_leading");
        metrics.leadership_duration("pod-a", 1.5);
        metrics.attempt(Outcome::ConflictAlreadyClaimed);
        metrics.result(Outcome::Success, 0.01);
        metrics.batch(3, 42.0, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "claim_coordinator_leader_election_total{event_type=\"started_leading\"} 1",
            "claim_coordinator_results_total{result_type=\"success\"} 1",
            "claim_coordinator_processing_duration_seconds_count{result_type=\"success\"} 1",
            "claim_coordinator_leadership_duration_seconds{identity=\"pod-a\"} 1.5",
            "host_claim_attempts_total{outcome=\"conflict\",conflict_reason=\"already_claimed\"} 1",
            "claim_coordinator_pending_claims 3",
            "claim_coordinator_oldest_pending_age_seconds 42.0",
            "claim_coordinator_batch_size_count 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn every_metric_has_the_namespace_label() {
        let mut registry = Registry::default();
        let metrics = Metrics::for_namespace(&mut registry, "pool-a");
        metrics.leader_election_event("started_leading");
        metrics.leadership_duration("pod-a", 1.5);
        metrics.attempt(Outcome::Success);
        metrics.result(Outcome::Success, 0.01);
        metrics.batch(3, 42.0, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(samples.len() >= 8, "{text}");
        for sample in samples {
            assert!(sample.contains("namespace=\"pool-a\""), "{sample}");
        }
    }
}
