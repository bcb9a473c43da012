//! `Elector`: client-go's leader-election algorithm over a [`LeaseLock`], with a watch, a monotonic
//! validity deadline, and work stopped before the Lease is released.
//!
//! This file holds the public face (builder, elector, handle), the standalone run, the state one run keeps,
//! and [`Runner`]'s main loop; the `impl Runner` blocks live beside it: `follow.rs` (wait for the Lease
//! and acquire it), `lead.rs` (one term, from the first renewal to the release), `requests.rs` (each API
//! request, bounded and reported).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use rand::Rng;
use sync_wrapper::SyncWrapper;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::callbacks::{NoopObserver, Observer, Phase, Request};
use crate::candidate::{CandidateStatus, Coordination};
use crate::config::JITTER_FACTOR;
use crate::lock::{LeaseEvent, LeaseEventStream};
use crate::record::truncate_to_micros;
use crate::{
    BoxError, Callbacks, Config, ConfigError, LeaderElectionRecord, LeaderState, LeaseLock,
    ListedLease, LockError, ObservedLease, StopReason, Term, WorkError,
};

/// A watch that ends sooner than this after it was opened is treated as failing, and reopened only
/// after a jittered retry period (no hot loop against a server that closes watches at once).
const MIN_HEALTHY_WATCH: Duration = Duration::from_secs(1);

/// The spread of a watching follower's takeover delay per other candidate it estimates
/// ([`Contention`]): the first of N staggered followers writes after about this long, whatever N.
const STAGGER_STEP: Duration = Duration::from_millis(2);

/// The highest estimate of contenders ([`Contention`]): bounds the takeover delay to
/// `STAGGER_STEP x (MAX_CONTENDERS - 1)`, about two seconds, and never more than a retry period.
const MAX_CONTENDERS: u32 = 1024;

/// The most election records a run remembers as its own writes ([`OwnWrites`]): reached only by a run
/// whose writes keep losing their answers (each may have landed), and then the newest are kept.
const MAX_OWN_WRITES: usize = 64;

/// One candidate in the election of one Lease: the driver.
///
/// Built once by [`Elector::builder`] (or [`Elector::new`]) with everything it uses: the Lease lock, the
/// callbacks, the [`Observer`], the coordination. [`Elector::run`] drives the election and consumes the
/// elector, so it runs once; what other tasks need (`is_leader`, `state`, `subscribe`, `config`) comes
/// from the cloneable [`ElectorHandle`] of [`Elector::handle`], taken before `run`. `Send + Sync`.
///
/// # Examples
///
/// ```no_run
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use leaderelection::{Callbacks, Config, Elector, KubeLeaseLock};
/// use tokio_util::sync::CancellationToken;
///
/// let config = Config::new("pod-a", "my-controller", "default");
/// let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
/// let callbacks = Callbacks::new().on_started_leading(|term, token| async move {
///     // leader-only work, fenced by term.transitions, until the term ends:
///     token.cancelled().await;
///     Ok(())
/// });
/// let elector = Elector::builder(config, lock).callbacks(callbacks).build()?;
/// let handle = elector.handle(); // for readiness checks, metrics, other tasks
/// let shutdown = CancellationToken::new();
/// let election = tokio::spawn(elector.run(shutdown.clone()));
/// # let _ = handle.is_leader();
/// # shutdown.cancel();
/// # election.await??;
/// # Ok(()) }
/// ```
///
/// A driver runs once: `Elector` is not `Clone`, so no second `run` and no setter on a copy can exist.
///
/// ```compile_fail
/// fn clone<T: Clone>() {}
/// clone::<leaderelection::Elector>();
/// ```
///
/// ## RBAC
///
/// `coordination.k8s.io` `leases`: `get`, `create`, `update` (required), `list`, `watch` (to watch rather
/// than poll).
#[derive(Debug)]
pub struct Elector {
    inner: Inner,
}

/// What [`Elector::builder`] collects; [`ElectorBuilder::build`] makes the [`Elector`].
pub struct ElectorBuilder {
    config: Config,
    /// `None`: standalone ([`Elector::standalone`]).
    lock: Option<Box<dyn LeaseLock>>,
    callbacks: Callbacks,
    observer: Arc<dyn Observer>,
    coordination: Option<Coordination>,
}

impl std::fmt::Debug for ElectorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectorBuilder")
            .field("config", &self.config)
            .field("lock", &self.lock)
            .field("callbacks", &self.callbacks)
            .field("coordination", &self.coordination.is_some())
            .finish_non_exhaustive()
    }
}

/// A cloneable view of one [`Elector`]: its configuration and the state it publishes, from any task,
/// before, during and after [`Elector::run`].
#[derive(Clone, Debug)]
pub struct ElectorHandle {
    config: Arc<Config>,
    standalone: bool,
    state: watch::Sender<LeaderState>,
}

struct Inner {
    config: Arc<Config>,
    /// `None`: standalone ([`Elector::standalone`]): leads at once, no API call.
    lock: Option<Box<dyn LeaseLock>>,
    callbacks: Callbacks,
    observer: Arc<dyn Observer>,
    state: watch::Sender<LeaderState>,
    /// Coordinated leader election (see [`ElectorBuilder::coordination`]).
    coordination: Option<Coordination>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .field("lock", &self.lock)
            .field("callbacks", &self.callbacks)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Why [`Elector::run`] returned an error. No error ends it today (it retries every transient failure
/// forever); the type is there so that one can be added without changing `run`'s signature.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {}

impl std::fmt::Display for Error {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for Error {}

// === impl ElectorBuilder ===

impl ElectorBuilder {
    /// The reactions to leadership changes (none by default).
    #[must_use]
    pub fn callbacks(mut self, callbacks: Callbacks) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// Reports every request, slow path and work failure to `observer` (for metrics; none by default).
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Takes part in coordinated leader election (KEP-4355) through `coordination`, the handle of a
    /// [`crate::Candidate`] that the caller runs beside [`Elector::run`]: until the candidate knows whether
    /// the API server serves LeaseCandidates, the elector waits; then, unless they are not served (ordinary
    /// election), it never creates the Lease and never takes a coordinated one (`strategy` set) on its own:
    /// it leads only once the election controller names it `holderIdentity`, keeps `strategy` when it
    /// takes and renews, and yields to a `preferredHolder` as always (client-go `tryCoordinatedRenew`). A
    /// Lease without `strategy` (an ordinary election, e.g. during a migration) is elected for by the
    /// ordinary rules. When `run` is stopped, the elector has the candidate delete its LeaseCandidate and
    /// releases the Lease only after that (or after a request timeout), so the controller does not elect
    /// us again.
    #[must_use]
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.coordination = Some(coordination);
        self
    }

    /// The elector.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration breaks a rule of [`Config::validate`], or (field
    /// `coordination`) when a standalone elector ([`Elector::standalone`]) is given a coordination: it
    /// makes no API call, so it can register no LeaseCandidate.
    pub fn build(self) -> Result<Elector, ConfigError> {
        let Self {
            config,
            lock,
            callbacks,
            observer,
            coordination,
        } = self;
        config.validate()?;
        if lock.is_none() && coordination.is_some() {
            return Err(ConfigError::new(
                "coordination",
                "set".to_string(),
                "a standalone elector makes no API call, so it cannot take part in coordinated \
                 leader election: build it with Elector::builder",
            ));
        }
        let state = watch::Sender::new(LeaderState::default());
        if let Some(coordination) = &coordination {
            // The candidate tells from our state whether the Lease has a leader.
            coordination.observe(state.subscribe());
        }
        Ok(Elector {
            inner: Inner {
                config: Arc::new(config),
                lock,
                callbacks,
                observer,
                state,
                coordination,
            },
        })
    }
}

// === impl Elector ===

impl Elector {
    /// A builder for a candidate with `config`, reading and writing through `lock`.
    #[must_use]
    pub fn builder(config: Config, lock: impl LeaseLock) -> ElectorBuilder {
        ElectorBuilder {
            config,
            lock: Some(Box::new(lock)),
            callbacks: Callbacks::new(),
            observer: Arc::new(NoopObserver),
            coordination: None,
        }
    }

    /// A builder for a candidate that runs alone (single-replica installs, or election switched off in
    /// the settings): [`Elector::run`] makes it leader at once, with term 0 and no deadline, makes no
    /// API call, takes no Lock, and still publishes its state and runs the callbacks; on shutdown it stops
    /// the work within [`Config::effective_stop_timeout`] and reports
    /// [`StopReason::Shutdown`].
    ///
    /// `config` is validated as for an election (so that switching election on later cannot fail), and
    /// its identity, Lease name and namespace still name the candidate in logs, metrics and state. It
    /// cannot be given a coordination ([`ElectorBuilder::build`] rejects one).
    #[must_use]
    pub fn standalone(config: Config) -> ElectorBuilder {
        ElectorBuilder {
            config,
            lock: None,
            callbacks: Callbacks::new(),
            observer: Arc::new(NoopObserver),
            coordination: None,
        }
    }

    /// A candidate with `config`, reading and writing through `lock`, reacting through `callbacks`: the
    /// same as `Elector::builder(config, lock).callbacks(callbacks).build()`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`Config::validate`].
    pub fn new(
        config: Config,
        lock: impl LeaseLock,
        callbacks: Callbacks,
    ) -> Result<Self, ConfigError> {
        Self::builder(config, lock).callbacks(callbacks).build()
    }

    /// A cloneable handle on this candidate's configuration and state.
    #[must_use]
    pub fn handle(&self) -> ElectorHandle {
        ElectorHandle {
            config: self.inner.config.clone(),
            standalone: self.inner.lock.is_none(),
            state: self.inner.state.clone(),
        }
    }

    /// Runs the election until `shutdown` is cancelled: acquire, renew, stop the work, release, repeat.
    ///
    /// Transient errors (timeouts, 429, 5xx, dropped watches) never end it: it retries forever with
    /// jittered backoff and logs. On shutdown while leading, the term's work is cancelled and awaited
    /// (bounded by `stop_timeout`) while the Lease keeps being renewed, then the Lease is released if
    /// `release_on_cancel`, then `on_stopped_leading(Shutdown)` runs, then `run` returns `Ok(())`. A term
    /// that ends otherwise has its work aborted by the work deadline (see
    /// [`LeaderState::work_deadline`]), at once when the Lease was taken, released or deleted by another.
    ///
    /// # Errors
    ///
    /// None today: [`Error`] has no variant.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is not a clean stop: the work task is left to its token (cancelled when
    /// `shutdown` is) and the Lease is not released. Cancel `shutdown` and await `run` instead.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.drive(shutdown).await;
        Ok(())
    }

    /// One run of the election, for [`crate::ShardSet`], which runs a shard's elector again each time it
    /// contends for the shard: never two at once (each run's task is awaited before the next starts).
    pub(crate) async fn drive(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let config = &inner.config;
        let lease = match &inner.lock {
            Some(lock) => lock.describe(),
            None => format!("{}/{}", config.lease_namespace, config.lease_name),
        };
        info!(
            identity = %config.identity,
            lease = %lease,
            standalone = inner.lock.is_none(),
            "leader election started"
        );
        match &inner.lock {
            Some(lock) => {
                Runner::new(inner, lock.as_ref(), shutdown).run().await;
            }
            None => run_standalone(inner, shutdown).await,
        }
    }
}

// === impl ElectorHandle ===

impl ElectorHandle {
    /// The configuration the candidate runs with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The candidate's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Whether the candidate was built by [`Elector::standalone`] (leads alone, no election).
    #[must_use]
    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    /// Whether the candidate leads now: it holds a term whose deadline has not passed (client-go's
    /// `LeaderElector.IsLeader` in `tools/leaderelection/leaderelection.go`).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.state.borrow().is_leader()
    }

    /// The holder of the Lease as last observed (possibly us), `None` when nobody holds it
    /// (client-go's `LeaderElector.GetLeader`).
    #[must_use]
    pub fn leader(&self) -> Option<String> {
        self.state.borrow().leader.clone()
    }

    /// The state now.
    #[must_use]
    pub fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    /// A receiver of every state change. Re-check [`LeaderState::is_leader`] on each pass: leadership
    /// also ends by the clock.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }
}

/// A standalone elector's run ([`Elector::standalone`]): lead at once, make no API call, still publish
/// the state and run the callbacks.
async fn run_standalone(inner: &Inner, shutdown: CancellationToken) {
    let identity = inner.config.identity.clone();
    let term = Term {
        holder: identity.clone(),
        transitions: 0,
        acquire_time: Some(truncate_to_micros(Timestamp::now())),
    };
    inner.state.send_replace(LeaderState {
        leader: Some(identity.clone()),
        lease_transitions: 0,
        term: Some(term.clone()),
        valid_until: None,
        renewed_at: Some(Instant::now()),
        work_deadline: None,
    });
    inner.callbacks.new_leader(&identity);
    let mut work = Work::start(inner, term, &shutdown);
    shutdown.cancelled().await;
    inner.state.send_modify(|state| {
        state.term = None;
        state.leader = None;
    });
    let stop_by = Instant::now() + inner.config.effective_stop_timeout();
    work.stop_by(stop_by, &inner.config).await;
    inner.callbacks.stopped_leading(StopReason::Shutdown);
}

/// The leader-only work of one term: its task and the token that stops it.
struct Work {
    token: CancellationToken,
    task: Option<JoinHandle<Result<(), BoxError>>>,
}

// === impl Work ===

impl Work {
    fn start(inner: &Inner, term: Term, shutdown: &CancellationToken) -> Self {
        let token = shutdown.child_token();
        let task = inner
            .callbacks
            .started_leading(term, token.clone())
            .map(tokio::spawn);
        Self { token, task }
    }

    /// Completes when the work task ends: `Err` with how it failed (an error returned, or a panic);
    /// never when there is none.
    async fn ended(&mut self) -> Result<(), WorkError> {
        match self.task.as_mut() {
            Some(task) => outcome(task.await),
            None => std::future::pending().await,
        }
    }

    /// Cancels the term's token and awaits the work until `deadline`; then aborts it and awaits the abort
    /// for at most the takeover margin (an abort lands at the task's next `.await`; a task blocking its
    /// thread cannot be stopped). `true` when the work is known to have stopped.
    async fn stop_by(&mut self, deadline: Instant, config: &Config) -> bool {
        self.token.cancel();
        let Some(mut task) = self.task.take() else {
            return true;
        };
        if let Ok(joined) = timeout_at(deadline, &mut task).await {
            report_stopped(outcome(joined));
            return true;
        }
        warn!(
            "leader-only work did not stop by its deadline (the earliest takeover, or the stop \
             timeout); aborting it"
        );
        task.abort();
        tokio::time::timeout(config.takeover_margin(), task)
            .await
            .is_ok()
    }
}

/// What the work's task came to: its own result, or its panic.
fn outcome(joined: Result<Result<(), BoxError>, tokio::task::JoinError>) -> Result<(), WorkError> {
    match joined {
        Ok(result) => result.map_err(WorkError::from),
        Err(err) => Err(match err.try_into_panic() {
            Ok(payload) => WorkError::from_panic(&*payload),
            Err(err) => WorkError::Failed(Arc::new(err)),
        }),
    }
}

/// Logs a failure of work that was being stopped (its end is what the caller waited for either way).
fn report_stopped(outcome: Result<(), WorkError>) {
    if let Err(error) = outcome {
        warn!(%error, "leader-only work failed while stopping");
    }
}

/// What the leader knows of its term while it renews.
struct Tenure {
    /// The Lease as we last wrote (or read) it: its `resourceVersion` guards the next renewal.
    lease: ObservedLease,
    /// `sent_at + renew_deadline` of the last successful write.
    valid_until: Instant,
    next_renew: Instant,
    /// Whether to (re)open the watch of our own Lease; off after a failure until the next renewal.
    may_watch: bool,
    /// The term is ending (graceful stop or yield): a `preferredHolder` no longer ends it again.
    yielding: bool,
}

// === impl Tenure ===

impl Tenure {
    /// The term's work deadline: the earliest instant a follower may take over, less the margin.
    fn work_deadline(&self, config: &Config) -> Instant {
        self.valid_until + config.stop_window()
    }

    /// `Err(Yielded)` when the Lease asks us (through `preferredHolder`) to yield to another candidate,
    /// unless the term is already ending.
    fn check_preference(&self, identity: &str) -> Result<(), StopReason> {
        match self.lease.record.preferred_other_than(identity) {
            Some(preferred) if !self.yielding => Err(StopReason::Yielded {
                preferred_holder: preferred.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn publish(&self, state: &mut LeaderState, config: &Config) {
        state.valid_until = Some(self.valid_until);
        state.renewed_at = Some(self.valid_until - config.renew_deadline);
        state.work_deadline = Some(self.work_deadline(config));
    }
}

/// What a follower knows of the Lease.
#[derive(Clone, Debug)]
enum Seen {
    /// Not read yet, or to be read again.
    Unknown,
    /// The Lease does not exist.
    Missing,
    /// The Lease as observed, and when we first saw its election record (our monotonic clock).
    Present {
        lease: ObservedLease,
        observed_at: Instant,
        /// When the holder seen before this record is gone by our clock: `None` when nobody else held it
        /// (free, missing, or written by this run). An election controller's assignment naming us is
        /// taken only then ([`Runner::decide`]).
        prior_expiry: Option<Instant>,
    },
}

/// What a follower should do now.
enum Decision {
    Create,
    /// Take the Lease over (free, expired, or holding our own last write), guarded by this version.
    Take(ObservedLease),
    /// Someone else holds it until this instant, by our clock.
    Wait(Instant),
}

/// The follower's watch on the Lease.
enum Watching {
    /// Open a watch when next waiting.
    Idle,
    Open {
        /// `SyncWrapper`: the stream is only polled through `&mut`, so the runner stays `Sync` (and
        /// `run`'s future `Send`) whatever the lock's stream is.
        events: SyncWrapper<LeaseEventStream>,
        opened_at: Instant,
        /// When the watch last delivered something (or we last checked on it).
        last_event: Instant,
    },
    /// Watching is not allowed (RBAC) or disabled: poll.
    Polling,
}

/// A watching follower's estimate of how many candidates race for a released or expired Lease, learnt from
/// the races it loses.
///
/// Every watching follower sees a release (or reaches an expiry it observed at the same instant as the
/// others) at once; if all wrote at once, a handover would cost a conflicting write per candidate. So a
/// follower delays its takeover by a random time in `[0, STAGGER_STEP x (estimate - 1))`, and drops it as
/// soon as its watch shows a new holder. Followers cannot see one another (only holders are written into
/// the Lease), so the estimate comes from conflicts, as in Ethernet's exponential backoff: it starts at 1
/// (no delay: a handover among a few candidates stays as fast as without staggering), is multiplied by 8
/// with every race lost to another candidate (the write that beat ours names a new holder or term; a
/// metadata-only write does not count), up to [`MAX_CONTENDERS`], and halves with every race won. The
/// first of N staggered followers writes after about `spread / (N + 1)`, a few `STAGGER_STEP`s once the
/// estimates have grown to N or more, and the others see its write before their own delay is up: the
/// handover latency and the number of conflicting writes no longer grow with N.
#[derive(Debug)]
struct Contention {
    estimate: u32,
}

// === impl Contention ===

impl Contention {
    fn lost(&mut self) {
        // By 8 rather than 2: three lost races, not ten, reach an estimate of several hundred. An estimate
        // too high by up to 8 delays a handover only while no candidate with a low estimate (a recent
        // winner, a new candidate) is among the followers.
        self.estimate = self.estimate.saturating_mul(8).min(MAX_CONTENDERS);
    }

    fn won(&mut self) {
        self.estimate = (self.estimate / 2).max(1);
    }

    /// A random takeover delay, under `STAGGER_STEP x (estimate - 1)` and under `cap`.
    fn delay(&self, cap: Duration) -> Duration {
        let spread = (STAGGER_STEP * (self.estimate - 1)).min(cap);
        if spread.is_zero() {
            return Duration::ZERO;
        }
        spread.mul_f64(rand::rng().random_range(0.0..1.0))
    }
}

/// The election records this run wrote (`docs/design.md`, "An identity is not an incarnation").
///
/// A Lease naming our identity is ours only if its election record is one of these: another process with
/// the same identity (a recreated pod with the same `POD_NAME`, a copied `--identity`) writes records with
/// its own `renewTime` (microseconds), which ours never equal. A record is remembered from the moment its
/// write is sent, since a write whose answer is lost (a timeout, commit-then-drop) may have landed; it is
/// forgotten when refused (409, 404), or once it is older than the horizon (a lease duration) and a later
/// write of ours was answered: it can then only come back through a watch lagging by more than that.
#[derive(Debug, Default)]
struct OwnWrites {
    /// Oldest first.
    writes: VecDeque<OwnWrite>,
}

#[derive(Debug)]
struct OwnWrite {
    record: LeaderElectionRecord,
    sent_at: Instant,
    /// The API server answered that it stored this record.
    answered: bool,
}

// === impl OwnWrites ===

impl OwnWrites {
    /// A write of `record` is about to be sent: from now on it may be in the Lease.
    fn sending(&mut self, record: &LeaderElectionRecord, horizon: Duration) {
        let now = Instant::now();
        self.prune(now, horizon);
        self.writes.push_back(OwnWrite {
            record: record.clone(),
            sent_at: now,
            answered: false,
        });
    }

    /// The write of `sent` was answered with `stored` (the record as the API server stored it).
    fn stored(&mut self, sent: &LeaderElectionRecord, stored: &LeaderElectionRecord) {
        if let Some(write) = self.find(sent) {
            write.record = stored.clone();
            write.answered = true;
        }
    }

    /// The write of `sent` was refused (409 Conflict or AlreadyExists, 404): it never landed.
    fn refused(&mut self, sent: &LeaderElectionRecord) {
        if let Some(index) = self
            .writes
            .iter()
            .rposition(|w| same_write(&w.record, sent))
        {
            self.writes.remove(index);
        }
    }

    /// Whether this run wrote `record` (metadata and `preferredHolder` or `strategy` written over it by
    /// others aside).
    fn wrote(&self, record: &LeaderElectionRecord) -> bool {
        self.writes.iter().any(|w| same_write(&w.record, record))
    }

    /// Whether a write of ours was sent and never answered (a timeout, a lost answer, a shutdown while it
    /// was on the wire): it may be in the Lease.
    fn unanswered(&self) -> bool {
        self.writes.iter().any(|w| !w.answered)
    }

    fn find(&mut self, sent: &LeaderElectionRecord) -> Option<&mut OwnWrite> {
        self.writes
            .iter_mut()
            .rev()
            .find(|w| same_write(&w.record, sent))
    }

    /// Forgets what no read can return any more: writes sent before the last answered one (the Lease moved
    /// past them) and older than `horizon`; then all but the newest [`MAX_OWN_WRITES`].
    fn prune(&mut self, now: Instant, horizon: Duration) {
        let last_answered = self.writes.iter().rposition(|w| w.answered).unwrap_or(0);
        let mut index = 0;
        self.writes.retain(|w| {
            let keep = index >= last_answered || now < w.sent_at + horizon;
            index += 1;
            keep
        });
        let excess = self.writes.len().saturating_sub(MAX_OWN_WRITES);
        self.writes.drain(..excess);
    }
}

/// Whether `a` and `b` are the same write of an election record: holder, renewTime, acquireTime,
/// leaseTransitions and leaseDurationSeconds equal. `preferredHolder` and `strategy` are left out: others
/// write them over a holder's record (`leader-elect yield`, the election controller) without making it
/// theirs.
fn same_write(a: &LeaderElectionRecord, b: &LeaderElectionRecord) -> bool {
    a.holder_identity == b.holder_identity
        && a.renew_time == b.renew_time
        && a.acquire_time == b.acquire_time
        && a.lease_transitions == b.lease_transitions
        && a.lease_duration_seconds == b.lease_duration_seconds
}

/// A takeable Lease (free, expired, missing) that a watching follower holds back from, by version.
#[derive(Debug)]
struct Holdoff {
    /// The `resourceVersion` of the Lease held back from; `None` when it is missing (a create).
    version: Option<String>,
    /// Its election record (`None` when missing): a race is lost to a candidate when the next one names
    /// another holder or term.
    record: Option<LeaderElectionRecord>,
    /// Until when.
    until: Instant,
    /// We lost a race on this version: the watch will deliver the winner's write, so wait for it rather
    /// than read again; read only if it has not come by `until`.
    lost: bool,
}

/// What a watching follower does with a takeable Lease.
enum Hold {
    /// Write now.
    Act,
    /// Wait (for the watch) until this instant, then decide again.
    Until(Instant),
    /// Read the Lease again first (the watch did not show who won a race we lost).
    Reread,
}

/// The state of one `run`.
struct Runner<'a> {
    inner: &'a Inner,
    /// The Lease lock of an elected [`Inner`] (a standalone one has none and never runs a `Runner`).
    lock: &'a dyn LeaseLock,
    shutdown: CancellationToken,
    seen: Seen,
    /// `seen` must be read again before deciding. What was seen is kept, so that a re-read finding the
    /// same `resourceVersion` keeps the time it was first seen (a polling follower's expiry clock must
    /// not restart at every poll).
    stale: bool,
    watching: Watching,
    /// `resourceVersion` to resume the watch from.
    resume_from: Option<String>,
    reported_leader: Option<String>,
    /// The highest `leaseTransitions` seen in this run: a Lease we create or take gets a higher term, so
    /// terms never go backwards, even after the Lease was deleted.
    highest_term: Option<i32>,
    /// A 410 Gone was logged (once per run: it recurs wherever the Lease outlives the watch history).
    gone_logged: bool,
    /// How many candidates race for a released Lease, as far as we can tell.
    contention: Contention,
    /// A takeable Lease we hold back from (staggered takeover, or a race lost on it).
    holdoff: Option<Holdoff>,
    /// The election records this run wrote: a Lease naming us is ours only if it holds one of them.
    own: OwnWrites,
    /// The first record naming us that another process wrote, as this run saw it: said at WARN (it may be
    /// an earlier run of this candidate, gone).
    foreign_seen: Option<LeaderElectionRecord>,
    /// When we last said at ERROR that another process writes the Lease under our identity.
    identity_alarm: Option<Instant>,
    /// The released record of our last release, as stored: released for a preferred holder that does not
    /// take it, the Lease is ours to take back first.
    last_release: Option<LeaderElectionRecord>,
}

// === impl Watching ===

impl Watching {
    /// A watch opened now.
    fn open(events: LeaseEventStream) -> Self {
        Self::Open {
            events: SyncWrapper::new(events),
            opened_at: Instant::now(),
            last_event: Instant::now(),
        }
    }
}

// === impl Runner ===

impl<'a> Runner<'a> {
    fn new(inner: &'a Inner, lock: &'a dyn LeaseLock, shutdown: CancellationToken) -> Self {
        let watching = if inner.config.watch {
            Watching::Idle
        } else {
            Watching::Polling
        };
        Self {
            inner,
            lock,
            shutdown,
            seen: Seen::Unknown,
            stale: true,
            watching,
            resume_from: None,
            reported_leader: None,
            highest_term: None,
            gone_logged: false,
            contention: Contention { estimate: 1 },
            holdoff: None,
            own: OwnWrites::default(),
            foreign_seen: None,
            identity_alarm: None,
            last_release: None,
        }
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether `record` is the released record of our last release.
    fn released_by_us(&self, record: &LeaderElectionRecord) -> bool {
        self.last_release
            .as_ref()
            .is_some_and(|released| same_write(released, record))
    }

    fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    /// Whether the election is coordinated (a candidate registered, or not known yet to be unsupported).
    fn coordinated(&self) -> bool {
        self.inner
            .coordination
            .as_ref()
            .is_some_and(Coordination::is_coordinated)
    }

    async fn run(mut self) -> Option<()> {
        if let Some(coordination) = &self.inner.coordination {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = coordination.wait_for(|s| s != CandidateStatus::Pending) => {}
            }
        }
        loop {
            let Some((lease, sent_at)) = self.follow().await else {
                self.release_abandoned().await;
                return None;
            };
            match self.lead(lease, sent_at).await {
                StopReason::Shutdown => return None,
                // Give the others a turn: they take the released Lease at once.
                StopReason::WorkFailed { .. } => self.pause().await?,
                // A candidate that yielded follows: it leaves the released Lease to the preferred holder.
                StopReason::LeaseLost { .. }
                | StopReason::IdentityInUse
                | StopReason::RenewDeadlineExceeded
                | StopReason::Released
                | StopReason::Yielded { .. } => {}
            }
            // A term ended: read afresh before anything else (a frozen process learns here that
            // someone else took over, and never writes on the strength of what it saw before).
            self.stale = true;
        }
    }
}

// === impl Runner (shutdown while following) ===

impl Runner<'_> {
    /// Shut down while following, after a take or create whose answer never came: it may have landed and
    /// left the Lease ours with no work started. Release it if it holds our write (rule 5), so that another
    /// candidate need not wait for it to expire.
    async fn release_abandoned(&mut self) {
        if self.config().release_on_cancel && self.own.unanswered() {
            self.await_withdrawn().await;
            self.release().await;
        }
    }
}

/// When a follower retries after a failed attempt.
enum Retry {
    /// At once (a lost race: read and decide again).
    Now,
    /// After a jittered retry period (a transient error).
    Later,
}

/// `leaseDurationSeconds` of the record, the holder's own duration (client-go PR #114872).
fn lease_duration(record: &LeaderElectionRecord) -> Duration {
    Duration::from_secs(u64::try_from(record.lease_duration_seconds).unwrap_or(0))
}

mod follow;
mod lead;
mod requests;
#[cfg(test)]
mod tests;
