//! `Elector`: client-go's leader-election algorithm over a [`LeaseLock`], with a watch, a monotonic
//! validity deadline, and work stopped before the Lease is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use rand::Rng;
use sync_wrapper::SyncWrapper;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::callbacks::{NoopObserver, Observer, Phase, Request};
use crate::config::JITTER_FACTOR;
use crate::lock::{LeaseEvent, LeaseEventStream};
use crate::record::truncate_to_micros;
use crate::{
    Callbacks, Config, ConfigError, LeaderElectionRecord, LeaderState, LeaseLock, LockError,
    ObservedLease, StopReason, Term,
};

/// A watch that ends sooner than this after it was opened is treated as failing, and reopened only
/// after a jittered retry period (no hot loop against a server that closes watches at once).
const MIN_HEALTHY_WATCH: Duration = Duration::from_secs(1);

/// One candidate in the election of one Lease.
///
/// Cheap to clone (all clones share one candidate). [`Elector::run`] drives the election; the other
/// methods read its state from any task. `Send + Sync`.
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
/// });
/// let elector = Elector::new(config, lock, callbacks)?;
/// let shutdown = CancellationToken::new();
/// tokio::spawn(elector.clone().run(shutdown.clone()));
/// # Ok(()) }
/// ```
///
/// ## RBAC
///
/// `coordination.k8s.io` `leases`: `get`, `create`, `update` (required), `list`, `watch` (to watch rather
/// than poll).
#[derive(Clone, Debug)]
pub struct Elector {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    lock: Box<dyn LeaseLock>,
    callbacks: Callbacks,
    observer: Arc<dyn Observer>,
    state: watch::Sender<LeaderState>,
    running: AtomicBool,
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

/// Why [`Elector::run`] returned an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `run` was called while another `run` of the same candidate is in progress.
    #[error("this elector is already running")]
    AlreadyRunning,
}

// === impl Elector ===

impl Elector {
    /// A candidate with `config`, reading and writing through `lock`, reacting through `callbacks`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`Config::validate`].
    pub fn new(
        config: Config,
        lock: impl LeaseLock,
        callbacks: Callbacks,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                lock: Box::new(lock),
                callbacks,
                observer: Arc::new(NoopObserver),
                state: watch::Sender::new(LeaderState::default()),
                running: AtomicBool::new(false),
            }),
        })
    }

    /// Reports every request and slow path to `observer` (for metrics). Call before the first clone.
    ///
    /// # Panics
    ///
    /// Never; if this elector was already cloned, the observer is ignored and a warning is logged.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.observer = observer,
            None => warn!("Elector::with_observer called on a shared elector; observer ignored"),
        }
        self
    }

    /// The configuration this candidate runs with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This candidate's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    /// Whether this candidate leads now: it holds a term whose deadline has not passed (seeds' `IsLeader`).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.inner.state.borrow().is_leader()
    }

    /// The holder of the Lease as last observed (possibly us), `None` when nobody holds it (seeds'
    /// `GetLeader`).
    #[must_use]
    pub fn leader(&self) -> Option<String> {
        self.inner.state.borrow().leader.clone()
    }

    /// The state now.
    #[must_use]
    pub fn state(&self) -> LeaderState {
        self.inner.state.borrow().clone()
    }

    /// A receiver of every state change. Re-check [`LeaderState::is_leader`] on each pass: leadership
    /// also ends by the clock.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.inner.state.subscribe()
    }

    /// Runs the election until `shutdown` is cancelled: acquire, renew, stop the work, release, repeat.
    ///
    /// Transient errors (timeouts, 429, 5xx, dropped watches) never end it: it retries forever with
    /// jittered backoff and logs. On shutdown while leading, the term's work is cancelled and awaited
    /// (bounded by `stop_timeout`), then the Lease is released if `release_on_cancel`, then
    /// `on_stopped_leading(Shutdown)` runs, then `run` returns `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] if this candidate is already running.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is not a clean stop: the work task is left to its token (cancelled when
    /// `shutdown` is) and the Lease is not released. Cancel `shutdown` and await `run` instead.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        let _running = RunningGuard(&self.inner.running);
        let inner = &*self.inner;
        info!(
            identity = %inner.config.identity,
            lease = %inner.lock.describe(),
            enabled = inner.config.enabled,
            "leader election started"
        );
        if inner.config.enabled {
            Runner::new(inner, shutdown).run().await;
        } else {
            run_disabled(inner, shutdown).await;
        }
        Ok(())
    }
}

struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Disabled mode: lead at once, make no API call, still publish the state and run the callbacks.
async fn run_disabled(inner: &Inner, shutdown: CancellationToken) {
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
    let work = Work::start(inner, term, &shutdown);
    shutdown.cancelled().await;
    inner.state.send_modify(|state| {
        state.term = None;
        state.leader = None;
    });
    work.stop(inner).await;
    inner.callbacks.stopped_leading(StopReason::Shutdown);
}

/// The leader-only work of one term: its task and the token that stops it.
struct Work {
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
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

    /// Cancels the term's token and awaits the work for `stop_timeout`, then aborts it and awaits that
    /// for as long again. `true` when the work is known to have stopped.
    async fn stop(self, inner: &Inner) -> bool {
        self.token.cancel();
        let Some(mut task) = self.task else {
            return true;
        };
        let stop_timeout = inner.config.effective_stop_timeout();
        match tokio::time::timeout(stop_timeout, &mut task).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                warn!(error = %err, "leader-only work panicked");
                true
            }
            Err(_) => {
                warn!(
                    stop_timeout = ?stop_timeout,
                    "leader-only work did not stop in time after its term ended; aborting it"
                );
                task.abort();
                tokio::time::timeout(stop_timeout, task).await.is_ok()
            }
        }
    }
}

/// What a follower knows of the Lease.
#[derive(Clone, Debug)]
enum Seen {
    /// Not read yet, or to be read again.
    Unknown,
    /// The Lease does not exist.
    Missing,
    /// The Lease as observed, and when we first saw this `resourceVersion` (our monotonic clock).
    Present {
        lease: ObservedLease,
        observed_at: Instant,
    },
}

/// What a follower should do now.
enum Decision {
    Create,
    /// Take the Lease over (free, expired, or already naming us), guarded by this version.
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

/// The state of one `run`.
struct Runner<'a> {
    inner: &'a Inner,
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
    /// A 410 Gone was logged (once per run: it recurs wherever the Lease outlives the watch history).
    gone_logged: bool,
}

// === impl Runner ===

impl<'a> Runner<'a> {
    fn new(inner: &'a Inner, shutdown: CancellationToken) -> Self {
        let watching = if inner.config.watch {
            Watching::Idle
        } else {
            Watching::Polling
        };
        Self {
            inner,
            shutdown,
            seen: Seen::Unknown,
            stale: true,
            watching,
            resume_from: None,
            reported_leader: None,
            gone_logged: false,
        }
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    async fn run(mut self) {
        loop {
            let Some((lease, sent_at)) = self.follow().await else {
                return;
            };
            if self.lead(lease, sent_at).await == StopReason::Shutdown {
                return;
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
            match self.decide(Instant::now()) {
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
                Decision::Wait(until) => self.wait(until).await?,
            }
        }
    }

    fn decide(&self, now: Instant) -> Decision {
        match &self.seen {
            Seen::Unknown | Seen::Missing => Decision::Create,
            Seen::Present { lease, observed_at } => {
                let record = &lease.record;
                if !record.is_held() || record.holder_identity == self.identity() {
                    return Decision::Take(lease.clone());
                }
                let expires_at = *observed_at + lease_duration(record);
                if now >= expires_at {
                    Decision::Take(lease.clone())
                } else {
                    Decision::Wait(expires_at)
                }
            }
        }
    }

    /// GETs the Lease. `false` on a transient error (already logged).
    async fn read(&mut self) -> bool {
        match self
            .request("get", Phase::Acquire, self.inner.lock.get())
            .await
        {
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

    /// Records what we saw; the expiry clock restarts whenever the `resourceVersion` changes.
    fn observe(&mut self, lease: ObservedLease) {
        let now = Instant::now();
        let observed_at = match &self.seen {
            Seen::Present {
                lease: previous,
                observed_at,
            } if previous.resource_version == lease.resource_version => *observed_at,
            _ => now,
        };
        self.resume_from = Some(lease.resource_version.clone());
        self.seen = Seen::Present { lease, observed_at };
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

    async fn create(&mut self) -> Result<(ObservedLease, Instant), Retry> {
        let desired = self.desired(None, 0);
        let sent_at = Instant::now();
        match self
            .request("create", Phase::Acquire, self.inner.lock.create(&desired))
            .await
        {
            Ok(lease) => Ok((lease, sent_at)),
            Err(LockError::AlreadyExists) => {
                debug!(identity = %self.identity(), "lost the race to create the lease");
                self.stale = true;
                Err(Retry::Now)
            }
            Err(err) => {
                self.log_transient("creating the lease", &err);
                self.stale = true;
                Err(Retry::Later)
            }
        }
    }

    /// Takes over `lease` (free, expired, or naming us) with a PUT guarded by its `resourceVersion`; a new
    /// term number (`leaseTransitions + 1`) and a new `acquireTime`, even when it already names us: the
    /// work restarts, so the fencing token must change.
    async fn take(&mut self, lease: ObservedLease) -> Result<(ObservedLease, Instant), Retry> {
        let desired = self.desired(None, lease.record.lease_transitions.saturating_add(1));
        let sent_at = Instant::now();
        match self
            .request(
                "update",
                Phase::Acquire,
                self.inner.lock.update(&desired, &lease.resource_version),
            )
            .await
        {
            Ok(lease) => Ok((lease, sent_at)),
            Err(LockError::Conflict | LockError::NotFound) => {
                debug!(identity = %self.identity(), "lease changed under us; reading it again");
                self.stale = true;
                Err(Retry::Now)
            }
            Err(err) => {
                self.log_transient("taking the lease", &err);
                self.stale = true;
                Err(Retry::Later)
            }
        }
    }

    /// Waits until `until` (the observed holder's expiry), a change seen by the watch, or — when
    /// polling — a jittered retry period. `None` on shutdown.
    async fn wait(&mut self, until: Instant) -> Option<()> {
        if matches!(self.watching, Watching::Idle) {
            self.open_watch().await;
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

    async fn open_watch(&mut self) {
        let Some(from) = self.resume_from.clone() else {
            return;
        };
        match self
            .request("watch", Phase::Watch, self.inner.lock.watch(&from))
            .await
        {
            Ok(events) => {
                self.watching = Watching::Open {
                    events: SyncWrapper::new(events),
                    opened_at: Instant::now(),
                    last_event: Instant::now(),
                };
            }
            Err(LockError::Forbidden(message)) => {
                warn!(
                    identity = %self.identity(),
                    lease = %self.inner.lock.describe(),
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
                lease = %self.inner.lock.describe(),
                "the lease's resourceVersion is too old to watch from (410 Gone: the API server keeps a \
                 short watch history, or restarted); resuming from a list's, after a retry period (logged \
                 once)"
            );
        }
        match self
            .request("list", Phase::Watch, self.inner.lock.list())
            .await
        {
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

    /// Leads one term, from a successful acquire sent at `sent_at`, until it ends; returns why.
    async fn lead(&mut self, lease: ObservedLease, sent_at: Instant) -> StopReason {
        self.watching = match self.watching {
            Watching::Polling => Watching::Polling,
            Watching::Idle | Watching::Open { .. } => Watching::Idle,
        };
        let term = Term {
            holder: self.identity().to_string(),
            transitions: lease.record.lease_transitions,
            acquire_time: lease.record.acquire_time,
        };
        info!(
            identity = %self.identity(),
            lease = %self.inner.lock.describe(),
            term = term.transitions,
            "became leader"
        );
        self.observe(lease.clone());
        self.publish_leading(&term, sent_at);
        let work = Work::start(self.inner, term.clone(), &self.shutdown);

        let reason = self.renew_until_lost(lease, sent_at).await;

        // Stop believing first (state and is_leader), then stop the work, then release.
        self.inner.state.send_modify(|state| {
            state.term = None;
            state.valid_until = None;
        });
        warn!(
            identity = %self.identity(),
            lease = %self.inner.lock.describe(),
            term = term.transitions,
            %reason,
            "stopped leading"
        );
        let stopped = work.stop(self.inner).await;
        let ours = matches!(
            reason,
            StopReason::Shutdown | StopReason::RenewDeadlineExceeded
        );
        if self.config().release_on_cancel && ours {
            if stopped {
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

    fn publish_leading(&self, term: &Term, sent_at: Instant) {
        let valid_until = sent_at + self.config().renew_deadline;
        self.inner.state.send_modify(|state| {
            state.term = Some(term.clone());
            state.valid_until = Some(valid_until);
            state.renewed_at = Some(sent_at);
            state.work_deadline = Some(valid_until + self.config().stop_window());
        });
    }

    /// Renews every retry period until the term ends. Leadership is valid until the send time of the last
    /// successful write plus `renew_deadline`; at that instant the term ends even while a request hangs.
    async fn renew_until_lost(&mut self, mut lease: ObservedLease, sent_at: Instant) -> StopReason {
        let renew_deadline = self.config().renew_deadline;
        let retry_period = self.config().retry_period;
        let mut valid_until = sent_at + renew_deadline;
        let mut next_renew = Instant::now() + retry_period;
        loop {
            let shutdown = self.shutdown.clone();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return StopReason::Shutdown,
                () = sleep_until(valid_until) => return StopReason::RenewDeadlineExceeded,
                () = sleep_until(next_renew) => {}
            }
            // A process frozen past its deadline resumes here: check the clock before any write.
            let sent_at = Instant::now();
            if sent_at >= valid_until {
                return StopReason::RenewDeadlineExceeded;
            }
            let desired = self.desired(lease.record.acquire_time, lease.record.lease_transitions);
            let renewed = tokio::select! {
                biased;
                () = shutdown.cancelled() => return StopReason::Shutdown,
                renewed = self.request_until(
                    "update",
                    Phase::Renew,
                    valid_until,
                    self.inner.lock.update(&desired, &lease.resource_version),
                ) => renewed,
            };
            match renewed {
                Ok(renewed) => {
                    valid_until = sent_at + renew_deadline;
                    next_renew = Instant::now() + retry_period;
                    lease = renewed;
                    self.observe(lease.clone());
                    self.inner.state.send_modify(|state| {
                        state.valid_until = Some(valid_until);
                        state.renewed_at = Some(sent_at);
                        state.work_deadline = Some(valid_until + self.inner.config.stop_window());
                    });
                }
                Err(LockError::Conflict) => {
                    self.inner.observer.on_slow_path();
                    match self.reread(valid_until, &shutdown).await {
                        Reread::Ours(fresh) => {
                            lease = fresh;
                            next_renew = Instant::now();
                        }
                        Reread::Lost(reason) => return reason,
                        Reread::Failed => next_renew = Instant::now() + retry_period,
                    }
                }
                Err(LockError::NotFound) => {
                    self.seen = Seen::Missing;
                    self.publish_observed();
                    return StopReason::Released;
                }
                Err(err) => {
                    self.log_transient("renewing the lease", &err);
                    next_renew = Instant::now() + retry_period;
                }
            }
        }
    }

    /// client-go's slow path: after a renew conflict, GET and see whether the Lease still names us.
    async fn reread(&mut self, valid_until: Instant, shutdown: &CancellationToken) -> Reread {
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Reread::Lost(StopReason::Shutdown),
            read = self.request_until("get", Phase::SlowPath, valid_until, self.inner.lock.get()) => read,
        };
        match read {
            Ok(Some(fresh)) => {
                let holder = fresh.record.holder_identity.clone();
                self.observe(fresh.clone());
                if holder == self.identity() {
                    Reread::Ours(fresh)
                } else if holder.is_empty() {
                    Reread::Lost(StopReason::Released)
                } else {
                    Reread::Lost(StopReason::LeaseLost { new_holder: holder })
                }
            }
            Ok(None) => {
                self.seen = Seen::Missing;
                self.publish_observed();
                Reread::Lost(StopReason::Released)
            }
            Err(err) => {
                self.log_transient("reading the lease after a renew conflict", &err);
                Reread::Failed
            }
        }
    }

    /// Releases the Lease if it still names us: fresh GET, then a PUT guarded by what was read, with
    /// holder `""`, `leaseDurationSeconds: 1` and the transitions kept; retried on conflict until
    /// `renew_deadline` has passed (client-go's `release`, fixed to check the fresh holder).
    async fn release(&mut self) -> bool {
        let deadline = Instant::now() + self.config().renew_deadline;
        while Instant::now() < deadline {
            let read = self
                .request_until("get", Phase::Release, deadline, self.inner.lock.get())
                .await;
            let fresh = match read {
                Ok(Some(fresh)) if fresh.record.holder_identity == self.identity() => fresh,
                Ok(Some(other)) => {
                    debug!(identity = %self.identity(), holder = %other.record.holder_identity,
                        "not releasing: the lease is no longer ours");
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
                    self.inner.lock.update(&released, &fresh.resource_version),
                )
                .await
            {
                Ok(lease) => {
                    info!(identity = %self.identity(), lease = %self.inner.lock.describe(), "released the lease");
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

    async fn sleep_until_or(&self, deadline: Instant, period: Duration) {
        sleep_until(deadline.min(Instant::now() + period)).await;
    }

    // --- requests ---

    /// Sends one request, bounded by the request timeout, and reports it to the observer.
    async fn request<T>(
        &self,
        verb: &'static str,
        phase: Phase,
        call: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(LockError::Timeout),
            result = self.request_until(verb, phase, Instant::now() + self.config().effective_request_timeout(), call) => result,
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
            lease = %self.inner.lock.describe(),
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

/// Outcome of the slow path.
enum Reread {
    Ours(ObservedLease),
    Lost(StopReason),
    Failed,
}

/// `leaseDurationSeconds` of the record, the holder's own duration (client-go PR #114872).
fn lease_duration(record: &LeaderElectionRecord) -> Duration {
    Duration::from_secs(u64::try_from(record.lease_duration_seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests;
