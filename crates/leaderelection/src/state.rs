//! `LeaderState`: what the elector publishes, the `Term` that fences a leader's writes, and why a term
//! ended.

use std::any::Any;
use std::sync::Arc;

use jiff::Timestamp;
use tokio::time::Instant;

/// The error a term's leader-only work returns (any error, boxed).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One leadership term of this candidate: who, which term number, since when.
///
/// `transitions` is the Lease's `leaseTransitions` when this term began: it increases with every change of
/// holder, so downstream writes stamped with it can reject a stale leader (fencing). A process frozen past
/// the end of its term (GC pause, SIGSTOP, paused VM) cannot be stopped by any timer; its term number can
/// still be rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The holder: this candidate's identity.
    pub holder: String,
    /// `leaseTransitions` of the Lease for this term: the term number.
    pub transitions: i32,
    /// `acquireTime` written when this term began (wall clock, microseconds).
    pub acquire_time: Option<Timestamp>,
}

/// What this candidate knows of the election, published on every change through
/// [`crate::ElectorHandle::subscribe`].
///
/// Leadership is valid only until [`LeaderState::valid_until`]: consumers must re-check
/// [`LeaderState::is_leader`] on every pass rather than trust a value they read earlier. The elector also
/// publishes a new state at that instant, so a consumer looping on `changed()` hears of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// The Lease's `holderIdentity` as last observed (possibly us); `None` when nobody holds it or it was
    /// not read yet.
    pub leader: Option<String>,
    /// The Lease's `leaseTransitions` as last observed.
    pub lease_transitions: i32,
    /// Our current term, while we lead.
    pub term: Option<Term>,
    /// Monotonic deadline of our leadership: the send time of the last successful acquire or renew plus
    /// `renew_deadline`. `None` while leading means no deadline (election disabled).
    pub valid_until: Option<Instant>,
    /// Send time of the last successful acquire or renew request (for the healthz watchdog).
    pub renewed_at: Option<Instant>,
    /// Monotonic instant by which this candidate's leader-only work (a CLI child with its whole process
    /// group included) must be gone: `sent_at + lease_duration - takeover_margin` of the last successful
    /// acquire or renew ([`crate::Config::stop_window`] after `valid_until`), the earliest instant a
    /// follower may take over, less a margin. It moves with every renewal, also while the work drains
    /// after a graceful stop (the elector keeps renewing then). It becomes *now* when the Lease is known
    /// to be someone else's (taken, released or deleted by another): kill at once. `Some` from the start
    /// of a term until its work has stopped (which may be after `term` became `None`); `None` otherwise
    /// and for a standalone elector ([`crate::Elector::standalone`]).
    pub work_deadline: Option<Instant>,
}

// === impl LeaderState ===

impl LeaderState {
    /// Whether we lead now: we hold a term and its deadline has not passed.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.is_leader_at(Instant::now())
    }

    /// Whether we lead at `now` (monotonic).
    #[must_use]
    pub fn is_leader_at(&self, now: Instant) -> bool {
        self.term.is_some() && self.valid_until.is_none_or(|deadline| now < deadline)
    }

    /// Our term, if we lead now.
    #[must_use]
    pub fn current_term(&self) -> Option<&Term> {
        self.term.as_ref().filter(|_| self.is_leader())
    }
}

/// Why a term ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Another candidate holds the Lease (seen on a renew conflict).
    LeaseLost {
        /// The holder now.
        new_holder: String,
    },
    /// Another process wrote the Lease under this candidate's identity (a recreated pod with the same
    /// name, a copied `--identity`): a write naming us that this run did not make, seen by the leader's
    /// watch or after a renew conflict. The Lease is someone else's (`docs/design.md`, "An identity is not
    /// an incarnation"): the work stops at once, and the Lease is neither released nor taken back before it
    /// expires by our clock.
    IdentityInUse,
    /// No renew succeeded within `renew_deadline` (API unreachable, slow or failing; or this process was
    /// frozen past its deadline).
    RenewDeadlineExceeded,
    /// The Lease was released or deleted by someone else while we held it (e.g. `leader-elect release`).
    Released,
    /// `run` was shut down.
    Shutdown,
    /// The Lease's `preferredHolder` named another candidate: the term ended as on a graceful stop (work
    /// stopped while renewing, then released) so that it takes over at once.
    Yielded {
        /// The preferred holder.
        preferred_holder: String,
    },
    /// The term's leader-only work returned an error or panicked: the term ended so that another candidate
    /// can lead.
    WorkFailed {
        /// What the work failed with.
        error: WorkError,
    },
}

/// How a term's leader-only work failed ([`StopReason::WorkFailed`]). Cheap to clone: the error is shared.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WorkError {
    /// The work returned this error. Its `Display` and `source()` are the error's own, so its source
    /// chain is intact; match this variant to downcast it (`error.downcast_ref::<MyError>()`).
    #[error(transparent)]
    Failed(Arc<dyn std::error::Error + Send + Sync>),
    /// The work panicked with this message (`"a panic without a message"` when it had none).
    #[error("panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
}

// === impl WorkError ===

impl WorkError {
    /// The failure of work that panicked with `payload` (what `catch_unwind` or a `JoinError` gives).
    #[must_use]
    pub fn from_panic(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Self::Panicked { message }
    }
}

impl From<BoxError> for WorkError {
    /// The failure of work that returned `error`; a `WorkError` passed on (e.g. by a supervisor that ran
    /// the work) is kept as it is rather than wrapped again.
    fn from(error: BoxError) -> Self {
        match error.downcast::<Self>() {
            Ok(work) => *work,
            Err(error) => Self::Failed(Arc::from(error)),
        }
    }
}

impl PartialEq for WorkError {
    /// The same returned error (the same allocation), or panics with the same message.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Failed(a), Self::Failed(b)) => Arc::ptr_eq(a, b),
            (Self::Panicked { message: a }, Self::Panicked { message: b }) => a == b,
            _ => false,
        }
    }
}

impl Eq for WorkError {}

// === impl StopReason ===

impl StopReason {
    /// A stable snake_case name, for logs, events and metric labels.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::LeaseLost { .. } => "lease_lost",
            Self::IdentityInUse => "identity_in_use",
            Self::RenewDeadlineExceeded => "renew_deadline_exceeded",
            Self::Released => "released",
            Self::Shutdown => "shutdown",
            Self::Yielded { .. } => "yielded",
            Self::WorkFailed { .. } => "work_failed",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_its_deadline_without_anyone_publishing() {
        let now = Instant::now();
        let state = LeaderState {
            term: Some(Term {
                holder: "a".into(),
                transitions: 1,
                acquire_time: None,
            }),
            valid_until: Some(now + Duration::from_secs(10)),
            ..LeaderState::default()
        };
        assert!(state.is_leader());
        assert!(state.is_leader_at(now + Duration::from_millis(9_999)));
        assert!(!state.is_leader_at(now + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!state.is_leader());
        assert!(state.current_term().is_none());
        let disabled = LeaderState {
            valid_until: None,
            ..state
        };
        assert!(disabled.is_leader());
        assert!(!LeaderState::default().is_leader());
    }
}
