//! The composition root: one builder wires the election, the event bus, metrics, structured logs, the admin
//! server and the supervised components; [`Runtime::run`] owns every one of their tasks and fails loudly
//! if one ends early (linkerd2 `runtime/src/args.rs`, kubert `runtime::Builder`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leaderelection::{
    Callbacks, Candidate, CandidateConfig, CandidateError, Config, ConfigError, KubeLeaseLock,
    LeaseLock, ShardSet,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::election::{Election, ElectionBuilder, ElectionHandle};
use crate::metrics::Metrics;
use crate::recorder::LeaseEventRecorder;
use crate::supervisor::{BoxError, LeaderContext, Policy, Supervised, Supervisor, SupervisorError};

/// How long past the lease duration `/healthz` tolerates a leader that cannot renew.
const HEALTHZ_TOLERANCE: Duration = Duration::from_secs(5);

/// A leader-elected controller process, built by [`Runtime::builder`], run by [`Runtime::run`].
///
/// # Examples
///
/// A leader-only reconciler with metrics, logs and admin endpoints:
///
/// ```no_run
/// use leaderelection::Config;
/// use leaderelection_controller::Runtime;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new(std::env::var("POD_NAME")?, "my-controller", "default");
/// Runtime::builder(client, config)
///     .all_replica("informers", |token| async move { token.cancelled().await; Ok(()) })
///     .leader_only("reconciler", |lead| async move {
///         // reconcile, fencing writes with lead.term.transitions and re-checking
///         // lead.state.borrow().is_leader(), until the term ends
///         lead.token.cancelled().await;
///         Ok(())
///     })
///     .admin("0.0.0.0:8080".parse()?)
///     .build()?
///     .run(CancellationToken::new()) // cancel it (e.g. on SIGTERM) to stop the work and release
///     .await?;
/// # Ok(()) }
/// ```
///
/// ## RBAC
///
/// `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch`; with [`Builder::events`],
/// also `events.k8s.io` `events`: `create`, `patch`; with [`Builder::coordinated`], also
/// `coordination.k8s.io` `leasecandidates`: `get`, `create`, `update`, `delete`, `list`, `watch`.
#[derive(Debug)]
pub struct Runtime {
    election: Election,
    handle: ElectionHandle,
    candidate: Option<Candidate>,
    supervised: Supervised,
    metrics: Metrics,
    recorder: Option<LeaseEventRecorder>,
    registry: Registry,
    admin: Option<SocketAddr>,
    preflight: Option<Preflight>,
    shards: Option<ShardSet>,
}

/// A check awaited before the election starts (see [`Builder::preflight`]).
struct Preflight(BoxFuture<'static, Result<(), BoxError>>);

impl std::fmt::Debug for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Preflight")
    }
}

/// Collects what a [`Runtime`] runs. From [`Runtime::builder`], [`Runtime::builder_with_lock`] or
/// [`Runtime::standalone`].
#[derive(Debug)]
pub struct Builder {
    config: Config,
    /// The election, its lock (or none, standalone) chosen by the constructor.
    election: ElectionBuilder,
    supervisor: Supervisor,
    callbacks: Callbacks,
    registry: Registry,
    admin: Option<SocketAddr>,
    preflight: Option<Preflight>,
    recorder: Option<LeaseEventRecorder>,
    candidate: Option<Coordinated>,
    shards: Option<ShardSet>,
}

/// What [`Builder::coordinated`] was given.
struct Coordinated(kube::Client, CandidateConfig);

impl std::fmt::Debug for Coordinated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Coordinated").field(&self.1).finish()
    }
}

/// Why [`Runtime::run`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The admin address could not be bound.
    #[error("binding the admin server to {addr}: {source}")]
    AdminBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The admin server stopped before shutdown (with its I/O error, if any).
    #[error("the admin server stopped unexpectedly{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    AdminStopped(Option<std::io::Error>),
    /// A task that must run until shutdown ended early.
    #[error("the {0} ended unexpectedly")]
    TaskEnded(&'static str),
    /// The check given to [`Builder::preflight`] failed; the election never started.
    #[error(transparent)]
    Preflight(BoxError),
    /// The LeaseCandidate of [`Builder::coordinated`] can never be registered (RBAC refuses it); the
    /// election was stopped.
    #[error(transparent)]
    Candidate(#[from] CandidateError),
    /// The election or a component failed (see [`SupervisorError`]).
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

// === impl Runtime ===

impl Runtime {
    /// A builder for the election of the Lease `config.lease_namespace/config.lease_name` through `client`:
    /// the Lease is named once, by `config`, and everything that reports it reads it from there.
    #[must_use]
    pub fn builder(client: kube::Client, config: Config) -> Builder {
        let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
        Builder::new(config, lock)
    }

    /// A builder over any [`LeaseLock`] (e.g. `leaderelection::MemoryLeaseLock` in tests, feature
    /// `test-util`). The lock must be for the Lease that `config` names.
    #[must_use]
    pub fn builder_with_lock(lock: impl LeaseLock, config: Config) -> Builder {
        Builder::new(config, lock)
    }

    /// A builder for a replica that runs alone (election switched off in its settings, e.g.
    /// `enabled: false`): it leads at once for as long as it runs, makes no API call and needs no
    /// client (see [`leaderelection::Elector::standalone`]). `config` still gives the identity and the
    /// Lease name and namespace its metrics and state are labelled with, and the stop timeout its
    /// leader-only components get on shutdown. [`Builder::coordinated`] is refused by [`Builder::build`];
    /// do not give it [`Builder::events`] or [`Builder::preflight`], which make API calls of their own.
    #[must_use]
    pub fn standalone(config: Config) -> Builder {
        let election = Election::standalone(config.clone());
        Builder::with_election(config, election)
    }

    /// A handle on the election, for its state ([`ElectionHandle::is_leader`],
    /// [`ElectionHandle::subscribe`]), configuration and bus, from any task.
    #[must_use]
    pub fn handle(&self) -> ElectionHandle {
        self.handle.clone()
    }

    /// Runs everything until `shutdown` is cancelled or something fails: the election with its leader-only
    /// components, the all-replica components, the metrics and log feeds, and the admin server. Every task
    /// is owned here; none is detached. If a task that must run until shutdown ends early, the election is
    /// stopped (leader-only work stopped, then the Lease released) and `run` returns why.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::AdminBind`] before anything starts; [`RuntimeError::Supervisor`] when a component
    /// fails under [`Policy::FailProcess`]; [`RuntimeError::AdminStopped`]
    /// and [`RuntimeError::TaskEnded`] when a part ended early; [`RuntimeError::Candidate`] when RBAC refuses
    /// the LeaseCandidate of [`Builder::coordinated`] (the election is stopped: it could never lead).
    ///
    /// # Cancel safety
    ///
    /// Cancel `shutdown` and await, rather than dropping the future: dropping it neither stops the work
    /// gracefully nor releases the Lease.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RuntimeError> {
        let Self {
            election,
            handle,
            candidate,
            supervised,
            metrics,
            recorder,
            registry,
            admin,
            preflight,
            shards,
        } = self;
        let listener = match admin {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| RuntimeError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        if let Some(bound) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!(address = %bound, "admin endpoints: /healthz /readyz /metrics /debug/vars");
        }
        let admin_state = Admin::new(handle.clone(), HEALTHZ_TOLERANCE, registry, metrics.clone());

        // The feeds stop after the election, so the last events (LostLeadership) are still logged.
        let feeds_stop = CancellationToken::new();
        let election_stop = shutdown.child_token();
        let commentator = crate::commentator::run(handle.bus().subscribe(), feeds_stop.clone());
        let admin_server = serve_admin(listener, admin_state, feeds_stop.clone());
        let metrics_feed = metrics.run(
            handle.bus().subscribe(),
            handle.subscribe(),
            feeds_stop.clone(),
        );
        let recorder_feed = record_events(recorder, handle.bus().subscribe(), feeds_stop.clone());
        // The shard set runs beside the election, and stops with it (each shard's work stopped, then its
        // Lease released).
        let shard_set = async {
            match shards {
                Some(set) => set.run(election_stop.clone()).await,
                None => election_stop.cancelled().await,
            }
        };
        let election = async {
            // The admin endpoints already answer while the preflight waits (liveness stays green).
            if let Some(Preflight(check)) = preflight {
                tokio::select! {
                    checked = check => checked.map_err(RuntimeError::Preflight)?,
                    () = election_stop.cancelled() => return Ok(()),
                }
            }
            // The candidate stops with the election: the elector, when it stops (shutdown or a step-down),
            // has its LeaseCandidate deleted before it releases the Lease; and whatever ends the election
            // ends the candidate.
            let candidate_stop = election_stop.child_token();
            let (result, candidacy) = tokio::join!(
                async {
                    let result = supervised.run(election, election_stop.clone()).await;
                    candidate_stop.cancel();
                    result
                },
                async {
                    let Some(candidate) = candidate else {
                        return Ok(());
                    };
                    let candidacy = candidate.run(candidate_stop.clone()).await;
                    // A candidate that can never register stops the election with it.
                    if candidacy.is_err() {
                        election_stop.cancel();
                    }
                    candidacy
                },
            );
            candidacy?;
            result.map_err(RuntimeError::from)
        };
        tokio::pin!(
            commentator,
            admin_server,
            metrics_feed,
            recorder_feed,
            election,
            shard_set
        );

        // The shard set also ends when shutdown stops the election: only before that is it an early end.
        let mut shard_set_done = false;
        let early = loop {
            tokio::select! {
                result = &mut election => {
                    election_stop.cancel();
                    if !shard_set_done {
                        shard_set.await;
                    }
                    feeds_stop.cancel();
                    commentator.await;
                    metrics_feed.await;
                    recorder_feed.await;
                    let _ = admin_server.await;
                    return result;
                }
                () = &mut shard_set, if !shard_set_done => {
                    shard_set_done = true;
                    if !election_stop.is_cancelled() {
                        break RuntimeError::TaskEnded("shard set");
                    }
                }
                () = &mut commentator => break RuntimeError::TaskEnded("log feed (commentator)"),
                result = &mut admin_server => break RuntimeError::AdminStopped(result.err()),
                () = &mut metrics_feed => break RuntimeError::TaskEnded("metrics feed"),
                () = &mut recorder_feed => break RuntimeError::TaskEnded("event recorder feed"),
            }
        };
        tracing::error!(error = %early, "stopping the election");
        election_stop.cancel();
        let stopped = election.await;
        if !shard_set_done {
            shard_set.await;
        }
        feeds_stop.cancel();
        if let Err(err) = stopped {
            tracing::error!(error = %err, "the election also failed while stopping");
        }
        Err(early)
    }
}

/// Records the Lease's Events from `events` until `stop`; without a recorder, waits for `stop`.
async fn record_events(
    recorder: Option<LeaseEventRecorder>,
    events: crate::events::Subscription,
    stop: CancellationToken,
) {
    match recorder {
        Some(recorder) => recorder.run(events, stop).await,
        None => stop.cancelled().await,
    }
}

/// Serves the admin endpoints until `stop`; without a listener, waits for `stop`.
async fn serve_admin(
    listener: Option<tokio::net::TcpListener>,
    admin: Admin,
    stop: CancellationToken,
) -> std::io::Result<()> {
    match listener {
        Some(listener) => {
            admin::serve(listener, admin, stop.clone()).await?;
            if stop.is_cancelled() {
                Ok(())
            } else {
                Err(std::io::Error::other("the server returned"))
            }
        }
        None => {
            stop.cancelled().await;
            Ok(())
        }
    }
}

// === impl Builder ===

impl Builder {
    fn new(config: Config, lock: impl LeaseLock) -> Self {
        let election = Election::builder(config.clone(), lock);
        Self::with_election(config, election)
    }

    fn with_election(config: Config, election: ElectionBuilder) -> Self {
        Self {
            config,
            election,
            supervisor: Supervisor::new(Policy::default()),
            callbacks: Callbacks::new(),
            registry: Registry::default(),
            admin: None,
            preflight: None,
            recorder: None,
            candidate: None,
            shards: None,
        }
    }

    /// Registers a component that runs on every replica until shutdown (informers, caches): see
    /// [`Supervisor::all_replica`].
    #[must_use]
    pub fn all_replica<F, Fut>(mut self, name: &str, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.supervisor = self.supervisor.all_replica(name, start);
        self
    }

    /// As [`Builder::all_replica`], under `policy`: see [`Supervisor::all_replica_with_policy`].
    #[must_use]
    pub fn all_replica_with_policy<F, Fut>(mut self, name: &str, policy: Policy, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.supervisor = self.supervisor.all_replica_with_policy(name, policy, start);
        self
    }

    /// Registers a component that runs only during this replica's terms, with a [`LeaderContext`]: the
    /// term (its `transitions` fence writes), a token cancelled when the term ends, and the election's
    /// state. See [`Supervisor::leader_only`].
    #[must_use]
    pub fn leader_only<F, Fut>(mut self, name: &str, start: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.supervisor = self.supervisor.leader_only(name, start);
        self
    }

    /// As [`Builder::leader_only`], under `policy`: see [`Supervisor::leader_only_with_policy`].
    #[must_use]
    pub fn leader_only_with_policy<F, Fut>(mut self, name: &str, policy: Policy, start: F) -> Self
    where
        F: Fn(LeaderContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.supervisor = self.supervisor.leader_only_with_policy(name, policy, start);
        self
    }

    /// The [`Policy`] of the components registered without one of their own (default:
    /// [`Policy::default`]), whether registered before or after this call.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.supervisor = self.supervisor.policy(policy);
        self
    }

    /// The user's reactions to leadership changes (`on_new_leader`, `on_stopped_leading`; an
    /// `on_started_leading` runs beside the leader-only components).
    #[must_use]
    pub fn callbacks(mut self, callbacks: Callbacks) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// Registers the leader-election metrics into `registry` (which may hold the caller's own) and
    /// serves it on `/metrics`.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` and `/debug/vars` on `addr` (port 0: any free port).
    #[must_use]
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Awaits `check` before the election starts, while the admin endpoints and feeds already run: e.g.
    /// wait until the API server answers, and fail on a refusal (401, 403) rather than retry it forever.
    /// A failure ends [`Runtime::run`] with [`RuntimeError::Preflight`]; a shutdown meanwhile ends it with
    /// `Ok(())`.
    #[must_use]
    pub fn preflight(
        mut self,
        check: impl Future<Output = Result<(), BoxError>> + Send + 'static,
    ) -> Self {
        self.preflight = Some(Preflight(check.boxed()));
        self
    }

    /// Records Kubernetes Events on the Lease through `client`, as client-go's `LeaseLock.RecordEvent`:
    /// `<identity> became leader` when a term starts and `<identity> stopped leading` when it ends, type
    /// `Normal`, reason `LeaderElection` ([`crate::recorder::REASON`]), `regarding` the Lease
    /// (`coordination.k8s.io/v1` `Lease`, its name, namespace and uid), reported by `reporting_controller`
    /// with the identity as the reporting instance. They are `events.k8s.io/v1` Events, written by
    /// kube-runtime's [`kube::runtime::events::Recorder`] (a repeat within 6 minutes is a patch of the first,
    /// counted in its `series`).
    ///
    /// Off by default. A task fed by the event bus writes them, each bounded to 5 seconds: a failure is
    /// logged (WARN once, then DEBUG) and never delays or fails the election. On shutdown, [`Runtime::run`]
    /// writes the Events still waiting (the release's `stopped leading`) after the Lease is released, so
    /// an unreachable API server can add up to 5 seconds per waiting Event to the exit.
    ///
    /// ## RBAC
    ///
    /// ```yaml
    /// - apiGroups: ["events.k8s.io"]
    ///   resources: ["events"]
    ///   verbs: ["create", "patch"]
    /// ```
    #[must_use]
    pub fn events(mut self, client: kube::Client, reporting_controller: &str) -> Self {
        self.recorder = Some(LeaseEventRecorder::new(
            client,
            reporting_controller,
            &self.config.identity,
            &self.config.lease_namespace,
            &self.config.lease_name,
        ));
        self
    }

    /// Takes part in coordinated leader election (KEP-4355): registers this candidate as a
    /// `coordination.k8s.io/v1beta1` LeaseCandidate with `candidate`'s versions through `client` (see
    /// [`Candidate`]), and leads only when kube-apiserver's election controller assigns it the Lease
    /// (see [`leaderelection::ElectorBuilder::coordination`]). Where the API server does not serve
    /// LeaseCandidates, it says so once (WARN) and runs an ordinary election. The LeaseCandidate is
    /// deleted on shutdown, before the Lease is released. A standalone runtime ([`Runtime::standalone`])
    /// refuses it: [`Builder::build`] fails.
    ///
    /// Off by default.
    ///
    /// ## RBAC
    ///
    /// ```yaml
    /// - apiGroups: ["coordination.k8s.io"]
    ///   resources: ["leasecandidates"]
    ///   verbs: ["get", "create", "update", "delete", "list", "watch"]
    /// ```
    #[must_use]
    pub fn coordinated(mut self, client: kube::Client, candidate: CandidateConfig) -> Self {
        self.candidate = Some(Coordinated(client, candidate));
        self
    }

    /// Runs `set` on this replica beside the election, until shutdown: its per-shard work runs while this
    /// replica holds the shard (fenced by the shard's own term), whether or not it leads the runtime's own
    /// Lease. On shutdown every shard's work is stopped and its Lease released, as the election's own.
    /// A shard set that ends before shutdown stops the runtime with [`RuntimeError::TaskEnded`].
    #[must_use]
    pub fn shards(mut self, set: ShardSet) -> Self {
        self.shards = Some(set);
        self
    }

    /// The runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration breaks a rule of [`Config::validate`], or (field
    /// `coordination`) when a standalone runtime was given [`Builder::coordinated`].
    pub fn build(self) -> Result<Runtime, ConfigError> {
        let Self {
            config,
            election,
            supervisor,
            callbacks,
            mut registry,
            admin,
            preflight,
            recorder,
            candidate,
            shards,
        } = self;
        config.validate()?;
        let candidate = candidate
            .map(|Coordinated(client, candidate)| Candidate::new(client, &config, candidate))
            .transpose()?;
        let metrics = Metrics::new(&mut registry, &config.lease_name);
        let (callbacks, supervised) = supervisor.with_metrics(metrics.clone()).bind(callbacks);
        let mut election = election
            .callbacks(callbacks)
            .observer(Arc::new(metrics.clone()));
        if let Some(candidate) = &candidate {
            election = election.coordination(candidate.coordination());
        }
        let election = election.build()?;
        Ok(Runtime {
            handle: election.handle(),
            election,
            candidate,
            supervised,
            metrics,
            recorder,
            registry,
            admin,
            preflight,
            shards,
        })
    }
}
