//! `Elector`: client-go's leader-election algorithm over a [`LeaseLock`], with a watch, a monotonic
//! validity deadline, and work stopped before the Lease is released.

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
        }
    }

    fn config(&self) -> &Config {
        &self.inner.config
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
            let (lease, sent_at) = self.follow().await?;
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

    // --- following ---

    /// Waits for the Lease to be free, expired or ours, and takes it. `None` on shutdown.
    async fn follow(&mut self) -> Option<(ObservedLease, Instant)> {
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if self.stale && !self.read().await {
                self.pause().await?;
                continue;
            }
            self.settle_lost_race();
            let decision = self.decide(Instant::now());
            match self.hold_back(&decision) {
                Hold::Act => {}
                Hold::Until(until) => {
                    self.wait(until).await?;
                    continue;
                }
                Hold::Reread => {
                    self.stale = true;
                    continue;
                }
            }
            match decision {
                Decision::Create => match self.create().await {
                    Ok(taken) => return Some(taken),
                    Err(Retry::Now) => {}
                    Err(Retry::Later) => self.pause().await?,
                },
                Decision::Take(lease) => match self.take(lease).await {
                    Ok(taken) => return Some(taken),
                    Err(Retry::Now) => {}
                    Err(Retry::Later) => self.pause().await?,
                },
                Decision::Wait(until) => {
                    self.report_identity_in_use();
                    self.wait(until).await?;
                }
            }
        }
    }

    /// Says that the Lease we wait for names our identity but holds a record this run did not write: at
    /// WARN for the first such record (an earlier run of this candidate may have written it and be gone,
    /// as after a restart), at ERROR once such records keep coming (another live process writes under our
    /// identity), at most once per lease duration.
    fn report_identity_in_use(&mut self) {
        let Seen::Present { lease, .. } = &self.seen else {
            return;
        };
        let record = &lease.record;
        if record.holder_identity != self.identity()
            || self.own.wrote(record)
            || self.assigned_to_us(record)
        {
            return;
        }
        let Some(first) = &self.foreign_seen else {
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                term = record.lease_transitions,
                "the lease names this candidate's identity but another process wrote it (an earlier run \
                 of this candidate, or another process with the same identity); not taking it until it \
                 expires by our clock"
            );
            self.foreign_seen = Some(record.clone());
            return;
        };
        if same_write(first, record) {
            return;
        }
        let now = Instant::now();
        if self
            .identity_alarm
            .is_some_and(|at| now < at + self.config().lease_duration)
        {
            return;
        }
        self.identity_alarm = Some(now);
        error!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = record.lease_transitions,
            "another process holds the lease under this candidate's identity {} and renews it: two \
             processes share one identity (a pod recreated with the same name while the old one still \
             runs, or a copied --identity); not taking it until it expires by our clock; give every \
             process its own identity (logged at most once per lease duration)",
            self.identity()
        );
        self.inner.observer.on_identity_in_use();
    }

    /// Whether `record` is an election controller's assignment of the Lease to us (coordinated election:
    /// `strategy` set, naming us, no `acquireTime`, which every elector writes when its term starts and
    /// the controller never does; `docs/design.md`, "An identity is not an incarnation").
    fn assigned_to_us(&self, record: &LeaderElectionRecord) -> bool {
        self.coordinated()
            && record.strategy.is_some()
            && record.acquire_time.is_none()
            && record.holder_identity == self.identity()
    }

    /// When the holder of `record`, first seen at `observed_at`, is gone by our clock; `None` when nobody
    /// else holds it (free, or a record this run wrote).
    fn foreign_expiry(
        &self,
        record: &LeaderElectionRecord,
        observed_at: Instant,
    ) -> Option<Instant> {
        (record.is_held() && !self.own.wrote(record)).then(|| observed_at + lease_duration(record))
    }

    fn decide(&self, now: Instant) -> Decision {
        let coordinated = self.coordinated();
        match &self.seen {
            // The election controller creates a coordinated Lease; the watch tells us when.
            Seen::Unknown | Seen::Missing if coordinated => {
                Decision::Wait(now + self.config().lease_duration)
            }
            Seen::Unknown | Seen::Missing => Decision::Create,
            Seen::Present { lease, .. }
                if coordinated
                    && lease.record.strategy.is_some()
                    && lease.record.holder_identity != self.identity() =>
            {
                // Taken only once the election controller names us (client-go `tryCoordinatedRenew`).
                Decision::Wait(now + self.config().lease_duration)
            }
            Seen::Present {
                lease,
                observed_at,
                prior_expiry,
            } => {
                let record = &lease.record;
                if !record.is_held() && record.preferred_other_than(self.identity()).is_some() {
                    // Released for a preferred holder: it takes the Lease first; if it does not within
                    // the record's duration (it is gone), anyone may.
                    let deferred_until = *observed_at + lease_duration(record);
                    return if now >= deferred_until {
                        Decision::Take(lease.clone())
                    } else {
                        Decision::Wait(deferred_until)
                    };
                }
                if !record.is_held() || self.own.wrote(record) {
                    return Decision::Take(lease.clone());
                }
                // Held by another process, possibly under our identity: taken once it expired by our
                // clock. An election controller's assignment to us, once the holder before it has (the
                // controller judged that one's expiry by the server's clock).
                let expires_at = if self.assigned_to_us(record) {
                    prior_expiry.unwrap_or(now)
                } else {
                    *observed_at + lease_duration(record)
                };
                if now >= expires_at {
                    Decision::Take(lease.clone())
                } else {
                    Decision::Wait(expires_at)
                }
            }
        }
    }

    /// Whether a watching follower writes `decision` now. A free or expired Lease is taken after a
    /// staggered delay ([`Contention`]), unless it holds our own last write, is assigned to us or prefers
    /// us (then at once); a version we lost a race on is left alone until the watch shows the winner's
    /// write.
    fn hold_back(&mut self, decision: &Decision) -> Hold {
        let (version, record) = match decision {
            Decision::Wait(_) => return Hold::Act,
            Decision::Create => (None, None),
            Decision::Take(lease) => {
                let record = &lease.record;
                if self.own.wrote(record)
                    || self.assigned_to_us(record)
                    || record.preferred_holder.as_deref() == Some(self.identity())
                {
                    return Hold::Act;
                }
                (Some(lease.resource_version.as_str()), Some(record))
            }
        };
        let now = Instant::now();
        if let Some(holdoff) = &self.holdoff
            && holdoff.version.as_deref() == version
        {
            return if now < holdoff.until {
                Hold::Until(holdoff.until)
            } else if holdoff.lost {
                self.holdoff = None;
                Hold::Reread
            } else {
                Hold::Act
            };
        }
        self.holdoff = None;
        if !matches!(self.watching, Watching::Open { .. }) {
            // Not watching: nothing tells us of a winner, and polls are already spread in time.
            return Hold::Act;
        }
        let delay = self.contention.delay(self.config().retry_period);
        if delay.is_zero() {
            return Hold::Act;
        }
        let until = now + delay;
        self.holdoff = Some(Holdoff {
            version: version.map(str::to_owned),
            record: record.cloned(),
            until,
            lost: false,
        });
        Hold::Until(until)
    }

    /// After a race we lost, once a newer version of the Lease is seen: count it as lost to another
    /// candidate when that version names a new holder or term ([`Contention`]).
    fn settle_lost_race(&mut self) {
        let Some(holdoff) = self.holdoff.as_ref().filter(|h| h.lost) else {
            return;
        };
        let (version, record) = match &self.seen {
            Seen::Present { lease, .. } => (Some(&lease.resource_version), Some(&lease.record)),
            Seen::Missing => (None, None),
            Seen::Unknown => return,
        };
        if holdoff.version.as_ref() == version {
            return;
        }
        let taken = match (&holdoff.record, record) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(before), Some(now)) => {
                now.is_held()
                    && (now.holder_identity != before.holder_identity
                        || now.lease_transitions != before.lease_transitions)
            }
        };
        if taken {
            self.contention.lost();
        }
        self.holdoff = None;
    }

    /// GETs the Lease. `false` on a transient error (already logged).
    async fn read(&mut self) -> bool {
        match self.request("get", Phase::Acquire, self.lock.get()).await {
            Ok(Some(lease)) => {
                self.drop_watch_if_it_missed(Some(&lease.resource_version));
                self.observe(lease);
                self.stale = false;
                true
            }
            Ok(None) => {
                self.drop_watch_if_it_missed(None);
                self.seen = Seen::Missing;
                self.stale = false;
                self.publish_observed();
                true
            }
            Err(err) => {
                self.log_transient("reading the lease", &err);
                false
            }
        }
    }

    /// A read found the Lease changed while the watch delivered nothing of it: the watch is dead (a stalled
    /// connection can stay open and silent). Drop it; the next wait opens a new one from what was read.
    fn drop_watch_if_it_missed(&mut self, read: Option<&str>) {
        let seen = match &self.seen {
            Seen::Present { lease, .. } => Some(lease.resource_version.as_str()),
            Seen::Missing => None,
            Seen::Unknown => return,
        };
        if seen != read && matches!(self.watching, Watching::Open { .. }) {
            debug!(identity = %self.identity(), "the watch missed a change; opening a new one");
            self.watching = Watching::Idle;
        }
    }

    /// Records what we saw. The expiry clock restarts only when the election record changes (holder,
    /// renewTime, acquireTime, leaseTransitions, leaseDurationSeconds...): a write that changes only
    /// metadata (a label, an annotation) is not a renewal, as in client-go's record comparison. The
    /// `resourceVersion` is always kept, to guard the next write.
    fn observe(&mut self, lease: ObservedLease) {
        let now = Instant::now();
        let first_seen = || {
            self.lock
                .first_seen(&lease)
                .filter(|seen| *seen <= now)
                .unwrap_or(now)
        };
        let (observed_at, prior_expiry) = match &self.seen {
            Seen::Present {
                lease: previous,
                observed_at,
                prior_expiry,
            } if previous.record == lease.record => (*observed_at, *prior_expiry),
            Seen::Present {
                lease: previous,
                observed_at,
                prior_expiry,
            } => {
                let previous_expiry = self.foreign_expiry(&previous.record, *observed_at);
                // An assignment replacing an assignment keeps the wait for the holder before both.
                let inherited = (previous.record.holder_identity == self.identity()
                    && !self.own.wrote(&previous.record))
                .then_some(*prior_expiry)
                .flatten();
                (first_seen(), previous_expiry.max(inherited))
            }
            Seen::Missing => (first_seen(), None),
            // The first record of this run: who held the Lease before it is unknown, so a record assigned
            // to us waits out its own duration.
            Seen::Unknown => {
                let observed_at = first_seen();
                (observed_at, self.foreign_expiry(&lease.record, observed_at))
            }
        };
        self.highest_term = self.highest_term.max(Some(lease.record.lease_transitions));
        let same_version = matches!(&self.seen, Seen::Present { lease: previous, .. }
            if previous.resource_version == lease.resource_version);
        if !same_version || self.resume_from.is_none() {
            // A re-read of the same version keeps a newer place to resume the watch from (a list's or a
            // bookmark's): the Lease's own version may be older than the watch history.
            self.resume_from = Some(lease.resource_version.clone());
        }
        self.seen = Seen::Present {
            lease,
            observed_at,
            prior_expiry,
        };
        self.publish_observed();
    }

    /// Publishes the observed holder and reports a new one.
    fn publish_observed(&mut self) {
        let (leader, transitions) = match &self.seen {
            Seen::Present { lease, .. } if lease.record.is_held() => (
                Some(lease.record.holder_identity.clone()),
                lease.record.lease_transitions,
            ),
            Seen::Present { lease, .. } => (None, lease.record.lease_transitions),
            Seen::Unknown | Seen::Missing => (None, 0),
        };
        self.inner.state.send_if_modified(|state| {
            let changed = state.leader != leader || state.lease_transitions != transitions;
            state.leader.clone_from(&leader);
            state.lease_transitions = transitions;
            changed
        });
        if let Some(leader) = leader
            && self.reported_leader.as_ref() != Some(&leader)
        {
            info!(identity = %self.identity(), new_leader = %leader, "new leader observed");
            self.inner.callbacks.new_leader(&leader);
            self.reported_leader = Some(leader);
        }
    }

    fn desired(&self, acquire_time: Option<Timestamp>, transitions: i32) -> LeaderElectionRecord {
        let now = truncate_to_micros(Timestamp::now());
        LeaderElectionRecord {
            holder_identity: self.identity().to_string(),
            lease_duration_seconds: self.config().lease_duration_seconds(),
            acquire_time: Some(acquire_time.unwrap_or(now)),
            renew_time: Some(now),
            lease_transitions: transitions,
            strategy: None,
            preferred_holder: None,
        }
    }

    /// Creates the Lease (POST). Its term is above any we have seen: after a deletion the term number does
    /// not go back to 0. A fresh candidate that never saw the Lease writes 0, as client-go does.
    async fn create(&mut self) -> Result<(ObservedLease, Instant), Retry> {
        self.acquire(None).await
    }

    /// Takes over `lease` (free, expired, assigned to us, or holding our own last write) with a PUT guarded
    /// by its `resourceVersion`; a new term number (above any seen) and a new `acquireTime`, even when it
    /// already names us: the work restarts, so the fencing token must change.
    async fn take(&mut self, lease: ObservedLease) -> Result<(ObservedLease, Instant), Retry> {
        self.acquire(Some(&lease)).await
    }

    /// One acquire attempt: create (`guard` `None`) or an update guarded by the `resourceVersion` of
    /// `guard`. Bounded by `sent_at + renew_deadline`, and refused when the answer comes after it: a term
    /// whose deadline has passed never starts (the Lease, which may name us, is read again and taken with
    /// a new term).
    async fn acquire(
        &mut self,
        guard: Option<&ObservedLease>,
    ) -> Result<(ObservedLease, Instant), Retry> {
        // A coordinated Lease stays coordinated under its assigned holder.
        let strategy = guard
            .and_then(|lease| lease.record.strategy.clone())
            .filter(|_| self.coordinated());
        let desired = LeaderElectionRecord {
            strategy,
            ..self.desired(None, self.highest_term.map_or(0, |t| t.saturating_add(1)))
        };
        let sent_at = Instant::now();
        let valid_until = sent_at + self.config().renew_deadline;
        self.own.sending(&desired, self.config().lease_duration);
        let (verb, call) = match guard {
            None => ("create", self.lock.create(&desired)),
            Some(lease) => (
                "update",
                self.lock.update(&desired, &lease.resource_version),
            ),
        };
        let result = self
            .request_by(verb, Phase::Acquire, valid_until, call)
            .await;
        match &result {
            Ok(stored) => self.own.stored(&desired, &stored.record),
            Err(LockError::AlreadyExists | LockError::Conflict | LockError::NotFound) => {
                self.own.refused(&desired);
            }
            Err(_) => {}
        }
        if Instant::now() >= valid_until
            && let Ok(late) = &result
        {
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                term = late.record.lease_transitions,
                "the acquire was answered after its renew deadline (a slow API server or a frozen \
                 process); not starting that term"
            );
            self.stale = true;
            return Err(Retry::Later);
        }
        match result {
            Ok(lease) => {
                self.contention.won();
                Ok((lease, sent_at))
            }
            Err(LockError::NotFound) if guard.is_none() => {
                // A POST to the collection cannot miss the object it creates: the namespace or the
                // resource is missing (`KubeLeaseLock` reports kube-apiserver's NamespaceLifecycle 404 as
                // an API error already; another lock, or a proxy, may not). No race was lost: reading and
                // creating again at once would loop without a pause, so retry after a retry period.
                warn!(
                    identity = %self.identity(),
                    lease = %self.lock.describe(),
                    "creating the lease answered 404 Not Found (its namespace does not exist, or leases \
                     are not served there); retrying after a retry period"
                );
                self.stale = true;
                Err(Retry::Later)
            }
            Err(LockError::AlreadyExists | LockError::Conflict | LockError::NotFound) => {
                if matches!(self.watching, Watching::Open { .. }) {
                    // The winner's write (or the deletion) is on its way through our watch: wait for it
                    // instead of reading and re-watching, for at most a retry period.
                    debug!(identity = %self.identity(), "lost the race for the lease; waiting for the winner's write");
                    self.holdoff = Some(Holdoff {
                        version: guard.map(|l| l.resource_version.clone()),
                        record: guard.map(|l| l.record.clone()),
                        until: Instant::now() + self.jittered_retry_period(),
                        lost: true,
                    });
                } else {
                    self.contention.lost();
                    debug!(identity = %self.identity(), "lost the race for the lease; reading it again");
                    self.stale = true;
                }
                Err(Retry::Now)
            }
            Err(err) => {
                self.log_transient("acquiring the lease", &err);
                self.stale = true;
                Err(Retry::Later)
            }
        }
    }

    /// Waits until `until` (the observed holder's expiry), a change seen by the watch, or — when
    /// polling — a jittered retry period. `None` on shutdown.
    async fn wait(&mut self, until: Instant) -> Option<()> {
        if matches!(self.watching, Watching::Idle) && self.open_watch().await {
            // The Lease was found while opening the watch: decide on it first.
            return Some(());
        }
        let shutdown = self.shutdown.clone();
        match &mut self.watching {
            Watching::Open {
                events,
                opened_at,
                last_event,
            } => {
                let opened_at = *opened_at;
                // A held Lease changes every retry period while its holder renews. Silence for three of
                // them means the holder stopped (then a read keeps the expiry clock) or the watch died
                // (then a read finds the change and the watch is replaced): read to know which.
                let check_at = *last_event + 3 * self.inner.config.retry_period;
                let event = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = sleep_until(until) => return Some(()),
                    event = events.get_mut().next() => event,
                    () = sleep_until(check_at) => {
                        *last_event = Instant::now();
                        self.stale = true;
                        return Some(());
                    }
                };
                *last_event = Instant::now();
                self.on_watch_event(event, opened_at).await
            }
            Watching::Idle | Watching::Polling => {
                let poll_at = Instant::now() + self.jittered_retry_period();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = sleep_until(until) => {}
                    () = sleep_until(poll_at) => self.stale = true,
                }
                Some(())
            }
        }
    }

    /// Opens the follower's watch from where it should resume. `true` when the Lease was found instead (a
    /// coordinated candidate listing for a missing Lease): decide on it before waiting.
    async fn open_watch(&mut self) -> bool {
        let from = match self.resume_from.clone() {
            Some(from) => Ok(from),
            // Under coordination a missing Lease is created by the election controller: watch for it from
            // the collection's version (a forbidden list is a forbidden watch, below).
            None if self.coordinated() => {
                match self.request("list", Phase::Watch, self.lock.list()).await {
                    Ok(ListedLease {
                        lease: Some(lease), ..
                    }) => {
                        self.observe(lease);
                        return true;
                    }
                    Ok(listed) => Ok(listed.resource_version),
                    Err(err) => Err(err),
                }
            }
            None => return false,
        };
        let opened = match from {
            Ok(from) => {
                self.request("watch", Phase::Watch, self.lock.watch(&from))
                    .await
            }
            Err(err) => Err(err),
        };
        match opened {
            Ok(events) => {
                self.watching = Watching::open(events);
            }
            Err(LockError::Forbidden(message)) => {
                warn!(
                    identity = %self.identity(),
                    lease = %self.lock.describe(),
                    %message,
                    "watching the lease is forbidden; polling every jittered retry period instead \
                     (grant list and watch on leases for instant takeover)"
                );
                self.watching = Watching::Polling;
            }
            // Handled as the one ERROR event with which kube-apiserver answers a version too old to
            // watch from.
            Err(LockError::Gone) => {
                let now = Instant::now();
                let gone = futures::stream::iter([Err(LockError::Gone)]).boxed();
                self.watching = Watching::Open {
                    events: SyncWrapper::new(gone),
                    opened_at: now,
                    last_event: now,
                };
            }
            Err(err) => self.log_transient("opening a watch", &err),
        }
        false
    }

    async fn on_watch_event(
        &mut self,
        event: Option<Result<LeaseEvent, LockError>>,
        opened_at: Instant,
    ) -> Option<()> {
        match event {
            Some(Ok(LeaseEvent::Applied(lease))) => self.observe(lease),
            Some(Ok(LeaseEvent::Deleted(rv))) => {
                self.seen = Seen::Missing;
                self.resume_from = Some(rv);
                self.publish_observed();
            }
            Some(Ok(LeaseEvent::Bookmark(rv))) => self.resume_from = Some(rv),
            Some(Err(LockError::Gone)) => self.resume_after_gone().await?,
            Some(Err(err)) => {
                self.log_transient("watching the lease", &err);
                self.watching = Watching::Idle;
                self.stale = true;
                self.pause().await?;
            }
            None => {
                self.watching = Watching::Idle;
                if opened_at.elapsed() < MIN_HEALTHY_WATCH {
                    self.stale = true;
                    self.pause().await?;
                }
            }
        }
        Some(())
    }

    /// After a 410 Gone: the version the watch resumes from is older than the server's watch history
    /// (kube-apiserver keeps about 75 s of it, and none from before its last restart), and reading the Lease
    /// gives back a version as old when nobody has written it since (a dead holder). So list it for the
    /// collection's current version and resume from that, as client-go's reflector relists after an expired
    /// watch (client-go `tools/cache/reflector.go`); an unchanged Lease keeps its expiry clock (`observe`).
    /// Then pause a jittered retry period, or until the holder's expiry if that is sooner, so that a server
    /// answering Gone again costs a few requests per retry period, not a hot loop. `None` on shutdown.
    async fn resume_after_gone(&mut self) -> Option<()> {
        self.watching = Watching::Idle;
        if !self.gone_logged {
            self.gone_logged = true;
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                "the lease's resourceVersion is too old to watch from (410 Gone: the API server keeps a \
                 short watch history, or restarted); resuming from a list's, after a retry period (logged \
                 once)"
            );
        }
        match self.request("list", Phase::Watch, self.lock.list()).await {
            Ok(listed) => {
                match listed.lease {
                    Some(lease) => self.observe(lease),
                    None => {
                        self.seen = Seen::Missing;
                        self.publish_observed();
                    }
                }
                self.resume_from = Some(listed.resource_version);
                self.stale = false;
            }
            Err(err) => {
                self.log_transient("listing the lease", &err);
                self.stale = true;
            }
        }
        let now = Instant::now();
        let resume_at = match self.decide(now) {
            Decision::Wait(expiry) => expiry.min(now + self.jittered_retry_period()),
            Decision::Create | Decision::Take(_) => return Some(()),
        };
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            () = sleep_until(resume_at) => Some(()),
        }
    }

    /// Sleeps a jittered retry period. `None` on shutdown.
    async fn pause(&self) -> Option<()> {
        let period = self.jittered_retry_period();
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            () = tokio::time::sleep(period) => Some(()),
        }
    }

    /// client-go's `wait.Jitter(RetryPeriod, 1.2)`: uniform in `[RP, 2.2 x RP)`.
    fn jittered_retry_period(&self) -> Duration {
        let rp = self.config().retry_period;
        rp + rp.mul_f64(rand::rng().random_range(0.0..JITTER_FACTOR))
    }

    // --- leading ---

    /// Leads one term, from a successful acquire sent at `sent_at`, until it ends and its work is gone;
    /// returns why it ended.
    ///
    /// The work must be gone by the term's work deadline (`sent_at + lease_duration - margin` of the last
    /// successful write): after the renew deadline it gets the rest of that window (bounded by the stop
    /// timeout); when the Lease is known to be someone else's it is aborted at once; on shutdown the Lease
    /// keeps being renewed while the work drains, and is released after it has stopped.
    async fn lead(&mut self, lease: ObservedLease, sent_at: Instant) -> StopReason {
        // A follower's open watch goes on as the leader's own: nothing was written between the version we
        // took over and our write (it was guarded by that version), so its next event is our write. One
        // request fewer per handover; a watch that fails is reopened from our last write.
        let term = Term {
            holder: self.identity().to_string(),
            transitions: lease.record.lease_transitions,
            acquire_time: lease.record.acquire_time,
        };
        info!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = term.transitions,
            "became leader"
        );
        self.observe(lease.clone());
        let mut tenure = Tenure {
            lease,
            valid_until: sent_at + self.config().renew_deadline,
            next_renew: Instant::now() + self.config().retry_period,
            may_watch: true,
            yielding: false,
        };
        self.inner.state.send_modify(|state| {
            state.term = Some(term.clone());
            tenure.publish(state, self.config());
        });
        let mut work = Work::start(self.inner, term.clone(), &self.shutdown);

        let shutdown = self.shutdown.clone();
        let reason = loop {
            let ended = async {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    joined = work.ended() => Some(joined),
                }
            };
            match self.renew_while(&mut tenure, ended).await {
                Err(reason) => break reason,
                Ok(None) => break StopReason::Shutdown,
                // A normal return keeps leadership (client-go): the work may be a one-shot job.
                Ok(Some(Ok(()))) => work.task = None,
                Ok(Some(Err(error))) => {
                    work.task = None;
                    error!(
                        identity = %self.identity(),
                        lease = %self.lock.describe(),
                        term = term.transitions,
                        %error,
                        "leader-only work failed (it returned an error or panicked); ending the term so \
                         that another candidate can lead"
                    );
                    self.inner.observer.on_work_failure();
                    break StopReason::WorkFailed { error };
                }
            }
        };

        // Stop believing first (state and is_leader), then stop the work, then release. When the Lease is
        // someone else's, its new holder may already run: the work must go at once.
        let now = Instant::now();
        let kill_now = matches!(
            reason,
            StopReason::LeaseLost { .. } | StopReason::IdentityInUse | StopReason::Released
        );
        self.inner.state.send_modify(|state| {
            state.term = None;
            state.valid_until = None;
            if kill_now {
                state.work_deadline = Some(now);
            }
        });
        warn!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = term.transitions,
            %reason,
            "stopped leading"
        );
        work.token.cancel();
        let (stopped, ours) = match &reason {
            StopReason::Shutdown | StopReason::Yielded { .. } => {
                tenure.yielding = true;
                self.drain(&mut work, &mut tenure).await
            }
            StopReason::WorkFailed { .. } => (true, true),
            other => (self.stop_after(other, &mut work, &tenure).await, false),
        };
        let ours = ours || reason == StopReason::RenewDeadlineExceeded;
        self.inner
            .state
            .send_modify(|state| state.work_deadline = None);
        if !matches!(self.watching, Watching::Polling) {
            self.watching = Watching::Idle;
        }
        if self.config().release_on_cancel && ours {
            if stopped {
                self.await_withdrawn().await;
                self.release().await;
            } else {
                warn!(
                    identity = %self.identity(),
                    "leader-only work did not stop; not releasing the lease, it will expire instead"
                );
            }
        }
        self.inner.callbacks.stopped_leading(reason.clone());
        reason
    }

    /// Graceful stop: keeps renewing while the work drains (for at most the stop timeout), so no follower
    /// takes over while it runs. Returns whether the work stopped and whether the Lease is still ours.
    async fn drain(&mut self, work: &mut Work, tenure: &mut Tenure) -> (bool, bool) {
        let Some(task) = work.task.as_mut() else {
            return (true, true);
        };
        let stop_by = Instant::now() + self.config().effective_stop_timeout();
        match self.renew_while(tenure, timeout_at(stop_by, task)).await {
            Ok(Ok(joined)) => {
                work.task = None;
                report_stopped(outcome(joined));
                (true, true)
            }
            Ok(Err(_)) => (work.stop_by(Instant::now(), self.config()).await, true),
            Err(lost) => {
                warn!(
                    identity = %self.identity(),
                    reason = %lost,
                    "the term ended while its work was draining"
                );
                (
                    self.stop_after(&lost, work, tenure).await,
                    lost == StopReason::RenewDeadlineExceeded,
                )
            }
        }
    }

    /// Stops the work of a term that ended for `reason` (not a graceful stop): at once when the Lease is
    /// someone else's, else by the work deadline. Whether the work stopped.
    async fn stop_after(&mut self, reason: &StopReason, work: &mut Work, tenure: &Tenure) -> bool {
        let deadline = match reason {
            StopReason::RenewDeadlineExceeded
            | StopReason::Shutdown
            | StopReason::Yielded { .. }
            | StopReason::WorkFailed { .. } => {
                let by_timeout = Instant::now() + self.config().effective_stop_timeout();
                by_timeout.min(tenure.work_deadline(self.config()))
            }
            StopReason::LeaseLost { .. } | StopReason::IdentityInUse | StopReason::Released => {
                let now = Instant::now();
                self.inner.state.send_if_modified(|state| {
                    let later = state.work_deadline.is_none_or(|d| d > now);
                    if later {
                        state.work_deadline = Some(now);
                    }
                    later
                });
                now
            }
        };
        work.stop_by(deadline, self.config()).await
    }

    /// Renews every retry period, and watches our own Lease, until `until` completes (`Ok` with its
    /// output) or the term ends (`Err` with why). Leadership is valid until the send time of the last
    /// successful write plus `renew_deadline`; at that instant the term ends even while a request hangs.
    async fn renew_while<F: Future>(
        &mut self,
        tenure: &mut Tenure,
        until: F,
    ) -> Result<F::Output, StopReason> {
        tokio::pin!(until);
        loop {
            if tenure.may_watch && matches!(self.watching, Watching::Idle) {
                let by = tenure.next_renew.min(tenure.valid_until);
                let resume_from = tenure.lease.resource_version.clone();
                tokio::select! {
                    biased;
                    output = &mut until => return Ok(output),
                    opened = self.open_own_watch(&resume_from, by) => tenure.may_watch = opened,
                }
            }
            let event = match &mut self.watching {
                Watching::Open { events, .. } => {
                    tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        () = sleep_until(tenure.valid_until) => return Err(StopReason::RenewDeadlineExceeded),
                        () = sleep_until(tenure.next_renew) => None,
                        event = events.get_mut().next() => Some(event),
                    }
                }
                Watching::Idle | Watching::Polling => {
                    tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        () = sleep_until(tenure.valid_until) => return Err(StopReason::RenewDeadlineExceeded),
                        () = sleep_until(tenure.next_renew) => None,
                    }
                }
            };
            if let Some(event) = event {
                self.on_own_watch_event(event, tenure)?;
                continue;
            }
            // A process frozen past its deadline resumes here: check the clock before any write.
            let sent_at = Instant::now();
            if sent_at >= tenure.valid_until {
                return Err(StopReason::RenewDeadlineExceeded);
            }
            // A renewal keeps what others wrote into the election record: `strategy` (coordinated election)
            // and `preferredHolder` (we were asked to yield, and do so once our work has stopped).
            let desired = LeaderElectionRecord {
                strategy: tenure.lease.record.strategy.clone(),
                preferred_holder: tenure.lease.record.preferred_holder.clone(),
                ..self.desired(
                    tenure.lease.record.acquire_time,
                    tenure.lease.record.lease_transitions,
                )
            };
            self.own.sending(&desired, self.config().lease_duration);
            let renewed = tokio::select! {
                biased;
                output = &mut until => return Ok(output),
                renewed = self.request_until(
                    "update",
                    Phase::Renew,
                    tenure.valid_until,
                    self.lock.update(&desired, &tenure.lease.resource_version),
                ) => renewed,
            };
            match &renewed {
                Ok(stored) => self.own.stored(&desired, &stored.record),
                Err(LockError::Conflict | LockError::NotFound) => self.own.refused(&desired),
                Err(_) => {}
            }
            match renewed {
                Ok(renewed) => {
                    tenure.lease = renewed.clone();
                    tenure.valid_until = sent_at + self.config().renew_deadline;
                    tenure.next_renew = Instant::now() + self.config().retry_period;
                    tenure.may_watch = true;
                    self.observe(renewed);
                    self.inner
                        .state
                        .send_modify(|state| tenure.publish(state, self.config()));
                    tenure.check_preference(self.identity())?;
                }
                Err(LockError::Conflict) => {
                    self.inner.observer.on_slow_path();
                    let read = tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        read = self.reread(tenure.valid_until) => read,
                    };
                    match read? {
                        Some(fresh) => {
                            tenure.lease = fresh;
                            tenure.next_renew = Instant::now();
                            tenure.check_preference(self.identity())?;
                        }
                        None => tenure.next_renew = Instant::now() + self.config().retry_period,
                    }
                }
                Err(LockError::NotFound) => {
                    self.seen = Seen::Missing;
                    self.publish_observed();
                    return Err(StopReason::Released);
                }
                Err(err) => {
                    self.log_transient("renewing the lease", &err);
                    tenure.next_renew = Instant::now() + self.config().retry_period;
                }
            }
        }
    }

    /// Opens the leader's watch of its own Lease from `resume_from` (our last write), bounded by `by`.
    /// `false` when it failed: not tried again before the next renewal. A forbidden watch is not tried
    /// again in this run.
    async fn open_own_watch(&mut self, resume_from: &str, by: Instant) -> bool {
        match self
            .request_until("watch", Phase::Watch, by, self.lock.watch(resume_from))
            .await
        {
            Ok(events) => {
                self.watching = Watching::open(events);
                true
            }
            Err(LockError::Forbidden(message)) => {
                debug!(identity = %self.identity(), %message,
                    "watching our own lease is forbidden; renew conflicts will tell us of a takeover");
                self.watching = Watching::Polling;
                true
            }
            Err(err) => {
                debug!(identity = %self.identity(), error = %err, "could not watch our own lease");
                false
            }
        }
    }

    /// What the leader's watch of its own Lease says: the term ends at once when the Lease was taken,
    /// released or deleted by someone else, also by another process under our identity (a write naming
    /// us that this run did not make).
    fn on_own_watch_event(
        &mut self,
        event: Option<Result<LeaseEvent, LockError>>,
        tenure: &mut Tenure,
    ) -> Result<(), StopReason> {
        match event {
            Some(Ok(LeaseEvent::Applied(lease))) => {
                if same_write(&lease.record, &tenure.lease.record) {
                    // Our own last write, or a write over it of metadata or of a request to yield: guard
                    // the next renewal with the newest version instead of running into a conflict.
                    tenure.lease = lease.clone();
                    self.observe(lease);
                    tenure.check_preference(self.identity())?;
                } else if !self.own.wrote(&lease.record) {
                    let reason = self.lost_to(&lease.record);
                    self.observe(lease);
                    return Err(reason);
                }
                // Else an earlier write of ours delivered late, or one whose answer was lost: the next
                // renewal (or its conflict) settles which version is current.
            }
            Some(Ok(LeaseEvent::Deleted(rv))) => {
                self.seen = Seen::Missing;
                self.resume_from = Some(rv);
                self.publish_observed();
                return Err(StopReason::Released);
            }
            Some(Ok(LeaseEvent::Bookmark(_))) => {}
            Some(Err(err)) => {
                debug!(identity = %self.identity(), error = %err, "the watch of our own lease failed");
                self.watching = Watching::Idle;
                tenure.may_watch = false;
            }
            None => {
                self.watching = Watching::Idle;
                tenure.may_watch = false;
            }
        }
        Ok(())
    }

    /// Why the term ends when the Lease holds `record`, a record this run did not write.
    fn lost_to(&self, record: &LeaderElectionRecord) -> StopReason {
        if record.holder_identity.is_empty() {
            StopReason::Released
        } else if record.holder_identity == self.identity() {
            StopReason::IdentityInUse
        } else {
            StopReason::LeaseLost {
                new_holder: record.holder_identity.clone(),
            }
        }
    }

    /// client-go's slow path: after a renew conflict, GET and see whether the Lease still holds our own
    /// write (client-go only checks that it names us): `Ok(Some)` ours, `Ok(None)` the read failed
    /// (retry), `Err` the term ended.
    async fn reread(&mut self, valid_until: Instant) -> Result<Option<ObservedLease>, StopReason> {
        let read = self
            .request_until("get", Phase::SlowPath, valid_until, self.lock.get())
            .await;
        match read {
            Ok(Some(fresh)) => {
                let ours = self.own.wrote(&fresh.record);
                let reason = self.lost_to(&fresh.record);
                self.observe(fresh.clone());
                if ours { Ok(Some(fresh)) } else { Err(reason) }
            }
            Ok(None) => {
                self.seen = Seen::Missing;
                self.publish_observed();
                Err(StopReason::Released)
            }
            Err(err) => {
                self.log_transient("reading the lease after a renew conflict", &err);
                Ok(None)
            }
        }
    }

    /// Releases the Lease if it still holds our own write: fresh GET, then a PUT guarded by what was read,
    /// with holder `""`, `leaseDurationSeconds: 1` and the transitions kept; retried on conflict until
    /// `renew_deadline` has passed (client-go's `release`, fixed to check the fresh record). A Lease naming
    /// us that another process wrote (a new incarnation) is not ours to release.
    async fn release(&mut self) -> bool {
        let deadline = Instant::now() + self.config().renew_deadline;
        while Instant::now() < deadline {
            let read = self
                .request_until("get", Phase::Release, deadline, self.lock.get())
                .await;
            let fresh = match read {
                Ok(Some(fresh)) if self.own.wrote(&fresh.record) => fresh,
                Ok(Some(other)) => {
                    debug!(identity = %self.identity(), holder = %other.record.holder_identity,
                        "not releasing: the lease no longer holds our write");
                    self.observe(other);
                    return false;
                }
                Ok(None) => return false,
                Err(err) => {
                    self.log_transient("reading the lease to release it", &err);
                    self.sleep_until_or(deadline, self.jittered_retry_period())
                        .await;
                    continue;
                }
            };
            let released = fresh.record.released(Timestamp::now());
            match self
                .request_until(
                    "update",
                    Phase::Release,
                    deadline,
                    self.lock.update(&released, &fresh.resource_version),
                )
                .await
            {
                Ok(lease) => {
                    info!(identity = %self.identity(), lease = %self.lock.describe(), "released the lease");
                    self.observe(lease);
                    return true;
                }
                Err(LockError::Conflict) => {}
                Err(err) => {
                    self.log_transient("releasing the lease", &err);
                    self.sleep_until_or(deadline, self.jittered_retry_period())
                        .await;
                }
            }
        }
        warn!(identity = %self.identity(), "could not release the lease in time; it will expire instead");
        false
    }

    /// On shutdown under coordinated election: has our LeaseCandidate deleted, waiting for it at most a
    /// request timeout, so that the controller does not assign the released Lease to us again.
    async fn await_withdrawn(&self) {
        if let Some(coordination) = &self.inner.coordination
            && self.shutdown.is_cancelled()
        {
            coordination
                .withdraw(self.config().effective_request_timeout())
                .await;
        }
    }

    async fn sleep_until_or(&self, deadline: Instant, period: Duration) {
        sleep_until(deadline.min(Instant::now() + period)).await;
    }

    // --- requests ---

    /// Sends one request, bounded by the request timeout, and reports it to the observer; abandoned on
    /// shutdown.
    async fn request<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let deadline = Instant::now() + self.config().effective_request_timeout();
        self.request_by(verb, phase, deadline, call).await
    }

    /// As [`Runner::request_until`], abandoned on shutdown.
    async fn request_by<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        deadline: Instant,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(LockError::Timeout),
            result = self.request_until(verb, phase, deadline, call) => result,
        }
    }

    /// Sends one request, bounded by the request timeout and by `deadline`, and reports it.
    async fn request_until<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        deadline: Instant,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let sent_at = Instant::now();
        let deadline = deadline.min(sent_at + self.config().effective_request_timeout());
        let result = match timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(LockError::Timeout),
        };
        self.inner.observer.on_request(&Request {
            verb,
            phase,
            latency: sent_at.elapsed(),
            error: result.as_ref().err(),
        });
        result
    }

    fn log_transient(&self, what: &str, err: &LockError) {
        if self.shutdown.is_cancelled() && matches!(err, LockError::Timeout) {
            // Abandoned because we are stopping (a release that fails says so on its own).
            return;
        }
        warn!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            error = %err,
            "error {what}; retrying"
        );
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

#[cfg(test)]
mod tests;
