//! The supervisor: all-replica components run on every replica from the start (hot standby); leader-only
//! components run only during this replica's terms, each with the term's cancellation token, and are
//! stopped and awaited before the Lease is released. Each component runs in a task of its own; a failure
//! (an error, a panic, or a return before its token was cancelled) is restarted, ends the term, or ends
//! the process, as its [`Policy`] says.
//!
//! | failure of | [`Policy::Restart`], budget left | budget spent, or [`Policy::StepDown`] | [`Policy::FailProcess`] |
//! |---|---|---|---|
//! | a leader-only component | restarted after a backoff, same term | the term's other work is stopped and awaited (the Lease is still renewed; aborted after the elector's stop timeout), then the term ends as [`StopReason::WorkFailed`]: the Lease is released, this replica contends again after a retry period | everything stops, the Lease is released, [`Supervised::run`] returns the failure |
//! | an all-replica component | restarted after a backoff | as [`Policy::FailProcess`] (stepping down would not stop it) | as for a leader-only one |
//! | the user's `on_started_leading` work | an `Err` or a panic ends the term as with the raw elector ([`Callbacks`]); `Ok(())` keeps leadership | | |
//!
//! [`StopReason::WorkFailed`]: leaderelection::StopReason::WorkFailed

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leaderelection::fencing::Fence;
use leaderelection::{Callbacks, LeaderState, Term, WorkError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::election::Election;
use crate::metrics::Metrics;

/// The error a component returns (the core's [`leaderelection::BoxError`]).
pub use leaderelection::BoxError;

type AllReplicaFn =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type LeaderOnlyFn =
    Arc<dyn Fn(LeaderContext) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// What the supervisor does when a component fails: returns an error, panics, or returns before its token
/// was cancelled (a component never ends silently). See the table in this module's documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// Restart it after a delay that doubles from `initial_backoff` up to `max_backoff` (and starts again
    /// from `initial_backoff` after the component ran longer than `max_backoff`), until its failure budget
    /// is spent: the `max_failures`-th failure within `window` is not restarted. Then a leader-only
    /// component steps down (as [`Policy::StepDown`]) and an all-replica one fails the process (as
    /// [`Policy::FailProcess`]). A leader-only component's budget starts afresh with each term.
    Restart {
        /// First delay.
        initial_backoff: Duration,
        /// Largest delay; an `initial_backoff` above it is lowered to it.
        max_backoff: Duration,
        /// Failures within `window` that spend the budget (1: never restart).
        max_failures: NonZeroU32,
        /// The sliding window the failures are counted in; `Duration::ZERO` never spends the budget
        /// (restart forever, as before failure budgets existed).
        window: Duration,
    },
    /// Leader-only: end the term at once. The term's other work is stopped and awaited while the Lease is
    /// still renewed, then the term ends as `WorkFailed`: the Lease is released so that another replica
    /// leads, and this one contends again after a retry period. An all-replica component cannot step down:
    /// its failure fails the process.
    StepDown,
    /// Stop everything (leader-only work, then the Lease is released) and make [`Supervised::run`] return
    /// the failure, so the process exits and its orchestrator restarts it.
    FailProcess,
}

impl Default for Policy {
    /// Restart from 500 ms, doubling to 30 s; the 5th failure within 5 minutes steps down (leader-only) or
    /// fails the process (all-replica). With the shortest delays, 5 failures in a row take about 7.5 s:
    /// a broken component gives the Lease up within seconds, a flaky one keeps it.
    fn default() -> Self {
        Self::Restart {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_failures: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            window: Duration::from_secs(5 * 60),
        }
    }
}

/// A component failure that ended a term or the process: the component's last failure, its cause kept.
///
/// Its `Display` is `component {component} failed: {error}`, with ` ({n} failures within {window})` when a
/// [`Policy::Restart`] budget was spent; its `source()` is `error` (whose own chain follows).
#[derive(Clone, Debug, thiserror::Error)]
#[error("component {component} failed: {error}{}", .budget.as_ref().map(ToString::to_string).unwrap_or_default())]
pub struct Failure {
    /// The component's name.
    pub component: String,
    /// What happened: the error it returned ([`WorkError::Failed`], the error itself), its panic
    /// ([`WorkError::Panicked`]), or a return before its token was cancelled (`Failed` with an error
    /// saying `exited unexpectedly`).
    #[source]
    pub error: WorkError,
    /// The failures that spent its [`Policy::Restart`] budget, if that is why it was no longer
    /// restarted.
    pub budget: Option<BudgetSpent>,
}

/// A [`Policy::Restart`] budget spent: `failures` failures within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(" ({failures} failures within {})", humantime::format_duration(*.window))]
pub struct BudgetSpent {
    /// How many failures fell within `window` (at least the policy's `max_failures`).
    pub failures: usize,
    /// The policy's window.
    pub window: Duration,
}

/// A component that returned before its token was cancelled: a component never ends silently.
#[derive(Debug, thiserror::Error)]
#[error("exited unexpectedly")]
struct ExitedUnexpectedly;

/// Why [`Supervised::run`] returned an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A component failed under [`Policy::FailProcess`] (or an all-replica component gave up).
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The elector ended with an error ([`leaderelection::Error`]; none today).
    #[error(transparent)]
    Elector(#[from] leaderelection::Error),
}

/// Registers components, then [`Supervisor::bind`] turns them into the elector's [`Callbacks`] and the
/// [`Supervised`] driver that runs the rest. Built by value: what is registered is fixed when it is bound,
/// and nothing can be added after (no shared, mutable registry).
pub struct Supervisor {
    policy: Policy,
    all_replica: Vec<Registered<AllReplicaFn>>,
    leader_only: Vec<Registered<LeaderOnlyFn>>,
    metrics: Option<Metrics>,
}

/// The leader-only work of one term, as each leader-only component gets it: everything it may need, so
/// that every component is registered before the election is built.
#[derive(Clone, Debug)]
pub struct LeaderContext {
    /// The term: its `transitions` fence the component's writes.
    pub term: Term,
    /// Cancelled when the term ends (or the component must stop); the component must then return.
    pub token: CancellationToken,
    /// The election's state, to re-check [`LeaderState::is_leader`] before each write (leadership also
    /// ends by the clock, before `token` is cancelled).
    pub state: watch::Receiver<LeaderState>,
    /// The term's write gate: [`LeaderContext::fenced_client`] gives a client gated by it.
    pub fence: Fence,
}

// === impl LeaderContext ===

impl LeaderContext {
    /// `client` gated by this term's [`Fence`]: reads pass; writes (create, update, patch, delete, with
    /// subresources) go through only while the term is valid, are cancelled if still in flight when it
    /// ends, and stamp the objects they write with the term and the Lease (`leaderelection::fencing`).
    /// A refused write is a `kube::Error::Service` holding a [`leaderelection::fencing::Fenced`]
    /// (`Fenced::find`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use leaderelection_controller::LeaderContext;
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # async fn work(lead: LeaderContext, client: kube::Client) -> Result<(), kube::Error> {
    /// let configmaps: kube::Api<ConfigMap> = kube::Api::default_namespaced(lead.fenced_client(&client));
    /// let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "state"}})).unwrap();
    /// configmaps.create(&Default::default(), &cm).await?; // stamped with the term; refused once it ended
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn fenced_client(&self, client: &kube::Client) -> kube::Client {
        self.fence.client(client)
    }
}

/// The registered components once bound to an election ([`Supervisor::bind`]): runs the all-replica ones
/// beside the election. Not `Clone`: it runs once.
pub struct Supervised {
    shared: Arc<Shared>,
}

struct Registered<F> {
    name: String,
    /// `None`: the supervisor's own policy.
    policy: Option<Policy>,
    start: F,
}

impl<F: Clone> Clone for Registered<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            policy: self.policy.clone(),
            start: self.start.clone(),
        }
    }
}

struct Shared {
    policy: Policy,
    all_replica: Vec<Registered<AllReplicaFn>>,
    leader_only: Vec<Registered<LeaderOnlyFn>>,
    metrics: Option<Metrics>,
    /// What the term's work needs of the election, known once [`Supervised::run`] started.
    election: OnceLock<Bound>,
    fatal: CancellationToken,
    failure: Mutex<Option<Failure>>,
}

/// What the term's work needs of the election it is bound to.
struct Bound {
    /// The elector's stop timeout.
    stop_timeout: Duration,
    state: watch::Receiver<LeaderState>,
    lease_namespace: String,
    lease_name: String,
}

/// What a supervised component's failures came to once they were no longer restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    StepDown,
    FailProcess,
}

fn names<F>(registered: &[Registered<F>]) -> Vec<&str> {
    registered.iter().map(|c| c.name.as_str()).collect()
}

// === impl Supervisor ===

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("policy", &self.policy)
            .field("all_replica", &names(&self.all_replica))
            .field("leader_only", &names(&self.leader_only))
            .finish()
    }
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("policy", &self.shared.policy)
            .field("all_replica", &names(&self.shared.all_replica))
            .field("leader_only", &names(&self.shared.leader_only))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor applying `policy` to the components registered without one of their own.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            all_replica: Vec::new(),
            leader_only: Vec::new(),
            metrics: None,
        }
    }

    /// Applies `policy` to the components registered without one of their own, whether registered
    /// before or after this call.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Counts component failures and spent budgets in `metrics`
    /// (`leader_election_component_failures_total{component}`,
    /// `leader_election_component_budget_exhausted_total{component}`, and `/debug/vars`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Registers a component that runs on every replica until shutdown, under the supervisor's policy.
    /// `start(token)` must return when `token` is cancelled.
    #[must_use]
    pub fn all_replica<F, Fut>(self, name: &str, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.register_all_replica(name, None, start)
    }

    /// As [`Supervisor::all_replica`], under `policy` ([`Policy::StepDown`] acts as
    /// [`Policy::FailProcess`] here).
    #[must_use]
    pub fn all_replica_with_policy<F, Fut>(self, name: &str, policy: Policy, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.register_all_replica(name, Some(policy), start)
    }

    fn register_all_replica<F, Fut>(mut self, name: &str, policy: Option<Policy>, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.all_replica.push(Registered {
            name: name.into(),
            policy,
            start: Arc::new(move |t| start(t).boxed()),
        });
        self
    }

    /// Registers a component that runs only while this replica leads, under the supervisor's policy.
    /// `start(context)` is called at the start of each term (and at each restart) with the term, its
    /// token and the election's state ([`LeaderContext`]), and must return when `context.token` is
    /// cancelled (the term ended); it is awaited, up to the elector's `stop_timeout`, before the Lease is
    /// released.
    #[must_use]
    pub fn leader_only<F, Fut>(self, name: &str, start: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.register_leader_only(name, None, start)
    }

    /// As [`Supervisor::leader_only`], under `policy`.
    #[must_use]
    pub fn leader_only_with_policy<F, Fut>(self, name: &str, policy: Policy, start: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.register_leader_only(name, Some(policy), start)
    }

    fn register_leader_only<F, Fut>(mut self, name: &str, policy: Option<Policy>, start: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.leader_only.push(Registered {
            name: name.into(),
            policy,
            start: Arc::new(move |context| start(context).boxed()),
        });
        self
    }

    /// Fixes the registered components and returns the elector's callbacks (to build the [`Election`]
    /// with) and the driver of the all-replica components (to run with that election).
    ///
    /// The callbacks: `on_started_leading` runs each leader-only component in a task of its own, and
    /// `user`'s `on_started_leading` in another, all with a child of the term's token; `user`'s
    /// `on_stopped_leading` and `on_new_leader` are called as they are, once per event.
    ///
    /// A component whose failures end the term stops the others, awaits them (the elector keeps renewing
    /// the Lease meanwhile, so no one else leads while they run) for at most the elector's stop timeout
    /// ([`leaderelection::Config::effective_stop_timeout`]), aborts what is left, then returns the
    /// [`Failure`] as the term's work result: the elector reports `StopReason::WorkFailed` with it,
    /// releases the Lease and contends again after a retry period. An `Err` or a panic of `user`'s work
    /// ends the term the same way, with that error or panic.
    pub fn bind(self, user: Callbacks) -> (Callbacks, Supervised) {
        let Self {
            policy,
            all_replica,
            leader_only,
            metrics,
        } = self;
        let shared = Arc::new(Shared {
            policy,
            all_replica,
            leader_only,
            metrics,
            election: OnceLock::new(),
            fatal: CancellationToken::new(),
            failure: Mutex::default(),
        });
        let user = Arc::new(user);
        let callbacks = Callbacks::new()
            .on_started_leading({
                let (shared, user) = (shared.clone(), user.clone());
                move |term: Term, token: CancellationToken| {
                    let stop = token.child_token();
                    let user_work = user.started_leading(term.clone(), stop.clone());
                    lead(shared.clone(), term, stop, user_work)
                }
            })
            .on_stopped_leading({
                let user = user.clone();
                move |reason| user.stopped_leading(reason)
            })
            .on_new_leader(move |identity| user.new_leader(identity));
        (callbacks, Supervised { shared })
    }
}

// === impl Supervised ===

impl Supervised {
    /// Runs the all-replica components and `election` (built with this supervisor's callbacks) until
    /// `shutdown` is cancelled or a component fails the process; then stops the election (leader-only
    /// work stopped, Lease released) and the all-replica components, and waits for them.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Failed`] after a failure under [`Policy::FailProcess`], or an all-replica
    /// component that spent its budget.
    ///
    /// # Cancel safety
    ///
    /// Cancel `shutdown` and await, rather than dropping the future.
    pub async fn run(
        self,
        election: Election,
        shutdown: CancellationToken,
    ) -> Result<(), SupervisorError> {
        let handle = election.handle();
        let config = handle.config();
        let _ = self.shared.election.set(Bound {
            stop_timeout: config.effective_stop_timeout(),
            state: handle.subscribe(),
            lease_namespace: config.lease_namespace.clone(),
            lease_name: config.lease_name.clone(),
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        for registered in self.shared.all_replica.iter().cloned() {
            let shared = self.shared.clone();
            let token = stop.child_token();
            tracker.spawn(async move {
                let start = registered.start.clone();
                if let Some((failure, _)) =
                    supervise(&shared, &registered, token, |t| start(t)).await
                {
                    shared.fail_process(failure);
                }
            });
        }
        tracker.close();
        let elector_stop = CancellationToken::new();
        let election = election.run(elector_stop.clone());
        tokio::pin!(election);
        let result = tokio::select! {
            result = &mut election => result,
            () = async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.shared.fatal.cancelled() => {}
                }
            } => {
                elector_stop.cancel();
                election.await
            }
        };
        stop.cancel();
        tracker.wait().await;
        result?;
        match lock(&self.shared.failure).take() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Keeps the first failure for [`Supervised::run`] and stops everything.
    fn fail_process(&self, failure: Failure) {
        tracing::error!(%failure, "stopping: the process fails");
        lock(&self.failure).get_or_insert(failure);
        self.fatal.cancel();
    }
}

/// One term's work: every leader-only component and the user's work, each in its own task, until `stop`
/// (a child of the term's token) is cancelled; if a component steps down (or the user's work fails),
/// stops the rest, awaits it, and returns the first failure so that the elector ends the term as
/// `WorkFailed` with it.
async fn lead(
    shared: Arc<Shared>,
    term: Term,
    stop: CancellationToken,
    user_work: Option<BoxFuture<'static, Result<(), BoxError>>>,
) -> Result<(), BoxError> {
    // Dropped (when the elector aborts this task), the set aborts every component's task.
    let mut tasks = JoinSet::new();
    let components: Vec<_> = match shared.election.get() {
        Some(bound) => shared
            .leader_only
            .iter()
            .map(|registered| {
                let fence = Fence::new(
                    term.clone(),
                    &bound.lease_namespace,
                    &bound.lease_name,
                    bound.state.clone(),
                );
                (registered.clone(), bound.state.clone(), fence)
            })
            .collect(),
        None if shared.leader_only.is_empty() => Vec::new(),
        // The callbacks were given to an election that `Supervised::run` does not drive: the
        // components could not have their context. The term ends rather than lead without them.
        None => {
            return Err(
                "the supervisor's callbacks ran outside Supervised::run: its leader-only components \
                 cannot start"
                    .into(),
            );
        }
    };
    for (registered, state, fence) in components {
        let (shared, term, token) = (shared.clone(), term.clone(), stop.clone());
        tasks.spawn(async move {
            let start = registered.start.clone();
            let context = |token| LeaderContext {
                term: term.clone(),
                token,
                state: state.clone(),
                fence: fence.clone(),
            };
            match supervise(&shared, &registered, token, |t| start(context(t))).await {
                Some((failure, GiveUp::StepDown)) => Some(WorkError::Failed(Arc::new(failure))),
                Some((failure, GiveUp::FailProcess)) => {
                    shared.fail_process(failure);
                    None
                }
                None => None,
            }
        });
    }
    if let Some(work) = user_work {
        tasks.spawn(work.map(|result| result.err().map(WorkError::from)));
    }
    let mut step_down: Option<WorkError> = None;
    let mut stop_by: Option<Instant> = None;
    loop {
        let next = match stop_by {
            None => tasks.join_next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(next) => next,
                Err(_elapsed) => {
                    tracing::warn!(
                        term = term.transitions,
                        "leader-only work did not stop by the stop timeout; aborting it"
                    );
                    tasks.abort_all();
                    stop_by = None;
                    continue;
                }
            },
        };
        let Some(joined) = next else { break };
        let cause = match joined {
            Ok(None) => continue,
            Ok(Some(failure)) => failure,
            Err(err) => match err.try_into_panic() {
                Ok(panic) => WorkError::from_panic(&*panic),
                Err(_) => continue,
            },
        };
        if step_down.is_none() {
            tracing::error!(
                term = term.transitions,
                "leader-only work failed; stopping the term's other work before stepping down"
            );
            stop.cancel();
            stop_by = shared
                .election
                .get()
                .map(|bound| Instant::now() + bound.stop_timeout);
            step_down = Some(cause);
        }
    }
    match step_down {
        Some(cause) => Err(Box::new(cause)),
        None => Ok(()),
    }
}

/// Runs one component until `token` is cancelled (`None`), restarting it as its policy says; `Some` when
/// its failures are no longer restarted, with what they come to.
async fn supervise<F, Fut>(
    shared: &Shared,
    component: &Registered<F>,
    token: CancellationToken,
    start: impl Fn(CancellationToken) -> Fut,
) -> Option<(Failure, GiveUp)>
where
    Fut: Future<Output = Result<(), BoxError>>,
{
    let name = &component.name;
    let mut backoff: Option<Duration> = None;
    let mut failures: VecDeque<Instant> = VecDeque::new();
    loop {
        let started = Instant::now();
        let attempt = AssertUnwindSafe(async { start(token.clone()).await });
        let outcome = attempt.catch_unwind().await;
        let result = match outcome {
            Ok(result) => result.map_err(WorkError::from),
            Err(panic) => Err(WorkError::from_panic(&*panic)),
        };
        if token.is_cancelled() {
            if let Err(error) = result {
                tracing::warn!(component = %name, %error, "component failed while stopping");
            }
            return None;
        }
        let error = match result {
            Ok(()) => WorkError::Failed(Arc::new(ExitedUnexpectedly)),
            Err(error) => error,
        };
        tracing::error!(component = %name, %error, "component failed");
        let metrics = shared.metrics.as_ref();
        if let Some(metrics) = &metrics {
            metrics.component_failed(name, &error.to_string());
        }
        let give_up = |error: WorkError, budget: Option<BudgetSpent>, action: GiveUp| {
            if let Some(metrics) = &metrics {
                metrics.component_budget_exhausted(name);
            }
            let failure = Failure {
                component: name.clone(),
                error,
                budget,
            };
            Some((failure, action))
        };
        let (initial_backoff, max_backoff) =
            match component.policy.as_ref().unwrap_or(&shared.policy) {
                Policy::StepDown => return give_up(error, None, GiveUp::StepDown),
                Policy::FailProcess => return give_up(error, None, GiveUp::FailProcess),
                Policy::Restart {
                    initial_backoff,
                    max_backoff,
                    max_failures,
                    window,
                } => {
                    let now = Instant::now();
                    failures.push_back(now);
                    while failures
                        .front()
                        .is_some_and(|at| now.duration_since(*at) >= *window)
                    {
                        failures.pop_front();
                    }
                    if u32::try_from(failures.len()).unwrap_or(u32::MAX) >= max_failures.get() {
                        let budget = BudgetSpent {
                            failures: failures.len(),
                            window: *window,
                        };
                        return give_up(error, Some(budget), GiveUp::StepDown);
                    }
                    (*initial_backoff, *max_backoff)
                }
            };
        let delay = match backoff {
            Some(previous) if started.elapsed() < max_backoff => (previous * 2).min(max_backoff),
            _ => initial_backoff.min(max_backoff),
        };
        backoff = Some(delay);
        tracing::info!(component = %name, delay = ?delay, "restarting component");
        tokio::select! {
            () = token.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
