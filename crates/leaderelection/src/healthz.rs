//! `Watchdog`: a health check that fails when we believe we lead but have not renewed in time
//! (client-go's `HealthzAdaptor`).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ElectorHandle, LeaderState};

/// Health of the election loop, for `/healthz` (client-go's `HealthzAdaptor`, #70819).
///
/// The elector already stops believing it leads at its renew deadline; this check catches the case no
/// deadline can: an election loop that is wedged (stuck task, starved runtime) while its last published
/// state still says "leading". It fails when that state has a term and the last successful renew was sent
/// more than `lease_duration + tolerance` ago. Followers are always healthy. kube-scheduler and
/// kube-controller-manager use a 20 s tolerance.
#[derive(Clone, Debug)]
pub struct Watchdog {
    state: watch::Receiver<LeaderState>,
    lease_duration: Duration,
    tolerance: Duration,
    lease: String,
}

/// The check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "failed election to renew leadership on lease {lease}: last renewed {since:?} ago, more than lease_duration + tolerance ({limit:?})"
)]
pub struct Unhealthy {
    /// The Lease, `namespace/name`.
    pub lease: String,
    /// Time since the last successful renew was sent.
    pub since: Duration,
    /// `lease_duration + tolerance`.
    pub limit: Duration,
}

// === impl Watchdog ===

impl Watchdog {
    /// A watchdog on `elector` allowing `tolerance` beyond the lease duration.
    #[must_use]
    pub fn new(elector: &ElectorHandle, tolerance: Duration) -> Self {
        let config = elector.config();
        Self {
            state: elector.subscribe(),
            lease_duration: config.lease_duration,
            tolerance,
            lease: format!("{}/{}", config.lease_namespace, config.lease_name),
        }
    }

    /// `"leaderElection"`, client-go's check name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        "leaderElection"
    }

    /// Checks now.
    ///
    /// # Errors
    ///
    /// [`Unhealthy`] when we hold a term whose last renew is older than `lease_duration + tolerance`.
    pub fn check(&self) -> Result<(), Unhealthy> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Unhealthy> {
        let state = self.state.borrow();
        // No term: a follower. No deadline: election disabled, nothing to renew.
        let (Some(_), Some(_), Some(renewed_at)) =
            (&state.term, state.valid_until, state.renewed_at)
        else {
            return Ok(());
        };
        let since = now.saturating_duration_since(renewed_at);
        let limit = self.lease_duration + self.tolerance;
        if since > limit {
            return Err(Unhealthy {
                lease: self.lease.clone(),
                since,
                limit,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Callbacks, Config, Elector, MemoryLeaseStore, Term};

    fn watchdog() -> (watch::Sender<LeaderState>, Watchdog) {
        let store = MemoryLeaseStore::new();
        let elector = Elector::new(
            Config::new("a", "l", "default"),
            store.lock("a"),
            Callbacks::new(),
        )
        .unwrap();
        let (tx, rx) = watch::channel(LeaderState::default());
        let mut dog = Watchdog::new(&elector.handle(), Duration::from_secs(20));
        dog.state = rx;
        (tx, dog)
    }

    fn leading(renewed_at: Instant) -> LeaderState {
        LeaderState {
            leader: Some("a".into()),
            term: Some(Term {
                holder: "a".into(),
                transitions: 0,
                acquire_time: None,
            }),
            valid_until: Some(renewed_at + Duration::from_secs(10)),
            renewed_at: Some(renewed_at),
            ..LeaderState::default()
        }
    }

    /// client-go's healthzadaptor_test cases: no elector state, follower, fresh leader, leader at the
    /// limit, wedged leader.
    #[tokio::test(start_paused = true)]
    async fn unhealthy_only_when_a_leader_has_not_renewed_for_lease_duration_plus_tolerance() {
        let (tx, dog) = watchdog();
        let now = Instant::now();
        assert_eq!(dog.check_at(now), Ok(()), "no state yet");
        tx.send_replace(LeaderState {
            leader: Some("b".into()),
            ..LeaderState::default()
        });
        assert_eq!(
            dog.check_at(now + Duration::from_secs(3600)),
            Ok(()),
            "follower"
        );
        tx.send_replace(leading(now));
        assert_eq!(dog.check_at(now + Duration::from_secs(5)), Ok(()), "fresh");
        assert_eq!(
            dog.check_at(now + Duration::from_secs(35)),
            Ok(()),
            "at the limit"
        );
        let err = dog.check_at(now + Duration::from_secs(36)).unwrap_err();
        assert_eq!(err.limit, Duration::from_secs(35));
        assert_eq!(err.since, Duration::from_secs(36));
        assert!(
            err.to_string()
                .starts_with("failed election to renew leadership on lease default/l")
        );
        assert_eq!(dog.name(), "leaderElection");
        tx.send_replace(LeaderState {
            valid_until: None,
            ..leading(now)
        });
        assert_eq!(
            dog.check_at(now + Duration::from_secs(3600)),
            Ok(()),
            "election disabled"
        );
    }
}
