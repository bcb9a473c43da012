//! `Callbacks`: what the caller runs when leadership starts, stops and changes hands; `Observer`: what it
//! measures.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{BoxError, LockError, StopReason, Term};

type StartedFn =
    dyn Fn(Term, CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;
type StoppedFn = dyn Fn(StopReason) + Send + Sync;
type NewLeaderFn = dyn Fn(&str) + Send + Sync;

/// The caller's reactions to leadership changes (client-go's `LeaderCallbacks`), all optional.
///
/// - `on_started_leading(term, token)`: spawned as a task when a term begins. `token` is cancelled when the
///   term ends (lost, deadline passed, or shutdown). The task must then return: it is aborted at the
///   term's work deadline ([`crate::LeaderState::work_deadline`]: before any follower may take over,
///   bounded by `stop_timeout`), and at once when the Lease is known to be someone else's. On shutdown the
///   elector keeps renewing while the task drains. The Lease is released only after the task ended.
///   If the task **returns an error** or **panics**, the term ends at once (ERROR log with the error,
///   [`Observer::on_work_failure`], `on_stopped_leading(WorkFailed { error })` with the error itself, its
///   source chain kept, as [`crate::WorkError`]), the Lease is released so that another candidate can
///   try, and this one contends again after a jittered retry period: a replica must not hold the Lease
///   while doing nothing (linkerd2#15506). If it **returns `Ok(())`**, leadership continues until the
///   term ends (client-go's semantics: the work may be a one-shot job).
/// - `on_stopped_leading(reason)`: called once per term, after its work has stopped and the Lease was
///   released (when configured). Unlike client-go it is **not** called for a replica that never led.
/// - `on_new_leader(identity)`: called on every change of holder, including to ourselves; never with an
///   empty identity (a released Lease has no leader to report).
///
/// `on_stopped_leading` and `on_new_leader` run on the elector's task: keep them short.
///
/// # Examples
///
/// ```
/// use leaderelection::Callbacks;
///
/// let callbacks = Callbacks::new()
///     .on_started_leading(|term, token| async move {
///         println!("leading in term {}", term.transitions);
///         token.cancelled().await; // do the leader-only work until the term ends
///         Ok(())
///     })
///     .on_new_leader(|identity| println!("{identity} leads"));
/// ```
#[derive(Clone, Default)]
pub struct Callbacks {
    started: Option<Arc<StartedFn>>,
    stopped: Option<Arc<StoppedFn>>,
    new_leader: Option<Arc<NewLeaderFn>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_started_leading", &self.started.is_some())
            .field("on_stopped_leading", &self.stopped.is_some())
            .field("on_new_leader", &self.new_leader.is_some())
            .finish()
    }
}

// === impl Callbacks ===

impl Callbacks {
    /// No callbacks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the leader-only work, run once per term until its token is cancelled; an `Err` ends the term
    /// as [`StopReason::WorkFailed`].
    #[must_use]
    pub fn on_started_leading<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Term, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.started = Some(Arc::new(move |term, token| f(term, token).boxed()));
        self
    }

    /// Sets the reaction to the end of a term.
    #[must_use]
    pub fn on_stopped_leading(mut self, f: impl Fn(StopReason) + Send + Sync + 'static) -> Self {
        self.stopped = Some(Arc::new(f));
        self
    }

    /// Sets the reaction to a new holder.
    #[must_use]
    pub fn on_new_leader(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.new_leader = Some(Arc::new(f));
        self
    }

    /// Invokes `on_started_leading`: the term's work, `None` if unset. For adapters that wrap callbacks.
    #[must_use]
    pub fn started_leading(
        &self,
        term: Term,
        token: CancellationToken,
    ) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        self.started.as_ref().map(|f| f(term, token))
    }

    /// Invokes `on_stopped_leading`, if set.
    pub fn stopped_leading(&self, reason: StopReason) {
        if let Some(f) = &self.stopped {
            f(reason);
        }
    }

    /// Invokes `on_new_leader`, if set.
    pub fn new_leader(&self, identity: &str) {
        if let Some(f) = &self.new_leader {
            f(identity);
        }
    }
}

/// What a request to the Lease store was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// A follower reading or taking the Lease.
    Acquire,
    /// The leader renewing (the fast path: one PUT).
    Renew,
    /// The leader re-reading after a renew conflict (client-go's slow path).
    SlowPath,
    /// Releasing the Lease.
    Release,
    /// Opening a watch, or listing for a version to resume it from after a 410 Gone.
    Watch,
}

// === impl Phase ===

impl Phase {
    /// A stable snake_case name, for metric labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acquire => "acquire",
            Self::Renew => "renew",
            Self::SlowPath => "slow_path",
            Self::Release => "release",
            Self::Watch => "watch",
        }
    }
}

/// One request the elector made, as reported to an [`Observer`].
#[derive(Debug)]
pub struct Request<'a> {
    /// `get`, `list`, `create`, `update` or `watch`.
    pub verb: &'static str,
    /// What it was for.
    pub phase: Phase,
    /// From send to answer (or to the timeout).
    pub latency: Duration,
    /// The error, if it failed (conflicts and 404s included: they are outcomes of the protocol).
    pub error: Option<&'a LockError>,
}

/// Receives measurements from the elector, for metrics (client-go's `MetricsProvider`). All methods have
/// empty defaults; they run on the elector's task and must not block.
pub trait Observer: Send + Sync + 'static {
    /// A request to the Lease store completed or timed out.
    fn on_request(&self, request: &Request<'_>) {
        let _ = request;
    }

    /// The leader's renew conflicted and it had to re-read the Lease (client-go's
    /// `leader_election_slowpath_total`).
    fn on_slow_path(&self) {}

    /// The term's leader-only work (the `on_started_leading` task) returned an error or panicked; the term
    /// ends at once (`leader_election_work_failures_total`).
    fn on_work_failure(&self) {}

    /// Another live process keeps writing the Lease under this candidate's identity (two processes share
    /// it, `docs/design.md`, "An identity is not an incarnation"): reported with each ERROR that says so,
    /// at most once per lease duration.
    fn on_identity_in_use(&self) {}
}

/// The [`Observer`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
