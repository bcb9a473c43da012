//! `Candidate`: this candidate's `coordination.k8s.io/v1beta1` LeaseCandidate, for coordinated leader
//! election (KEP-4355), and the [`Coordination`] handle through which the elector learns whether the
//! election is coordinated.
//!
//! Under coordinated election an election controller in kube-apiserver (feature gate
//! `CoordinatedLeaderElection`, beta since 1.33) pings every LeaseCandidate of a Lease, elects one of those
//! that answer (strategy `OldestEmulationVersion`: lowest emulationVersion, then binaryVersion, then the
//! oldest candidate), and assigns it the Lease or asks the holder to yield through `preferredHolder`
//! (kube-apiserver `pkg/controlplane/controller/leaderelection/leaderelection_controller.go`). A candidate
//! registers itself, answers the pings, and never takes a coordinated Lease on its own (client-go
//! `tools/leaderelection/leasecandidate.go` and `tryCoordinatedRenew` in `leaderelection.go`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DNS_SUBDOMAIN_RULE, JITTER_FACTOR, is_dns_subdomain};
use crate::record::truncate_to_micros;
use crate::{Config, ConfigError, Denied, LeaderState};

/// The strategy this candidate asks for: kube-apiserver's only built-in one.
pub const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";

/// How often the LeaseCandidate is renewed without being pinged: client-go's `requeueInterval` (5 minutes;
/// kube-apiserver garbage-collects candidates 30 minutes after their last renewal).
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(300);

/// The group version LeaseCandidates are served at (Kubernetes 1.33 to 1.37 serve v1alpha2 and v1beta1).
const GROUP_VERSION: &str = "coordination.k8s.io/v1beta1";

/// How long the election controller takes to elect once it pings the candidates: kube-apiserver's
/// `electionDuration` (5 s). Registered this long without a ping and with no leader, a candidate says that
/// no election controller answered.
const ELECTION_WINDOW: Duration = Duration::from_secs(5);

/// The resource our requests are about, as RBAC names it.
const RESOURCE: &str = "leasecandidates.coordination.k8s.io";

/// What a ServiceAccount needs for [`Candidate::run`].
const GRANT: &str =
    "get, create, update, delete, list, watch on coordination.k8s.io leasecandidates";

/// How long a watch of our LeaseCandidate stays open before the server ends it and we resume, in seconds
/// (under kube's default 295 s read timeout).
const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// What a candidate registers: the versions the election controller orders candidates by.
///
/// # Examples
///
/// ```
/// use leaderelection::CandidateConfig;
///
/// let config = CandidateConfig::new("1.34.0").with_emulation_version("1.33.0");
/// assert!(config.validate().is_ok());
/// assert!(CandidateConfig::new("v1.34").validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateConfig {
    /// `spec.binaryVersion`: the version of this binary, `MAJOR.MINOR.PATCH` without a leading `v`.
    pub binary_version: String,
    /// `spec.emulationVersion`: the version whose behaviour this binary keeps (during an upgrade, the old
    /// one); at most `binary_version`. The controller prefers the lowest.
    pub emulation_version: String,
    /// How often the LeaseCandidate is renewed when nothing pings it (default [`DEFAULT_RENEW_INTERVAL`]).
    pub renew_interval: Duration,
}

// === impl CandidateConfig ===

impl CandidateConfig {
    /// A candidate of `binary_version` that also emulates it, renewed every [`DEFAULT_RENEW_INTERVAL`].
    #[must_use]
    pub fn new(binary_version: impl Into<String>) -> Self {
        let binary_version = binary_version.into();
        Self {
            emulation_version: binary_version.clone(),
            binary_version,
            renew_interval: DEFAULT_RENEW_INTERVAL,
        }
    }

    /// Sets [`CandidateConfig::emulation_version`].
    #[must_use]
    pub fn with_emulation_version(mut self, emulation_version: impl Into<String>) -> Self {
        self.emulation_version = emulation_version.into();
        self
    }

    /// Sets [`CandidateConfig::renew_interval`].
    #[must_use]
    pub fn with_renew_interval(mut self, renew_interval: Duration) -> Self {
        self.renew_interval = renew_interval;
        self
    }

    /// Checks the versions as kube-apiserver validates a LeaseCandidate: both semantic versions
    /// `MAJOR.MINOR.PATCH` (an optional `-pre-release` or `+build` suffix allowed, no leading `v`), and
    /// emulationVersion at most binaryVersion in semver's order; the renew interval above zero.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field (`binary_version`, `emulation_version`, `renew_interval`), the value
    /// and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let binary = parse_version("binary_version", &self.binary_version)?;
        let emulation = parse_version("emulation_version", &self.emulation_version)?;
        if emulation > binary {
            return Err(ConfigError::new(
                "emulation_version",
                self.emulation_version.clone(),
                format!(
                    "emulationVersion must be at most binaryVersion ({})",
                    self.binary_version
                ),
            ));
        }
        if self.renew_interval.is_zero() {
            return Err(ConfigError::new(
                "renew_interval",
                "0s".into(),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The version as the `semver` crate parses it: strict semantic versioning (`MAJOR.MINOR.PATCH`, an
/// optional `-pre-release` and `+build`, no leading `v`, no leading zeros), ordered as semver orders
/// (a pre-release before its release, build metadata ignored), as kube-apiserver's validation of
/// LeaseCandidates parses and compares them.
fn parse_version(field: &'static str, value: &str) -> Result<semver::Version, ConfigError> {
    semver::Version::parse(value).map_err(|err| {
        ConfigError::new(
            field,
            value.to_string(),
            format!(
                "must be a semantic version MAJOR.MINOR.PATCH without a leading \"v\" (e.g. 1.33.0): {err}"
            ),
        )
    })
}

/// Where this candidate's registration stands, published through [`Coordination`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CandidateStatus {
    /// Not known yet whether the API server serves LeaseCandidates, or not registered yet.
    #[default]
    Pending,
    /// Our LeaseCandidate exists: the election is coordinated.
    Registered,
    /// The API server does not serve `coordination.k8s.io/v1beta1` `leasecandidates`: ordinary election.
    Unsupported,
    /// Our LeaseCandidate was deleted because the candidate or its elector stopped (or the candidate stopped
    /// before registering).
    Withdrawn,
}

/// The elector's view of a [`Candidate`] (see [`crate::ElectorBuilder::coordination`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Coordination {
    status: watch::Receiver<CandidateStatus>,
    /// Cancelled by the elector when it stops: the [`Candidate`] deletes its LeaseCandidate then.
    withdraw: CancellationToken,
    /// The state of the elector given this handle: whether the Lease has a leader, for the [`Candidate`]'s
    /// warning that no election controller answered.
    leader: Arc<OnceLock<watch::Receiver<LeaderState>>>,
}

// === impl Coordination ===

impl Coordination {
    /// A handle whose status is set through the returned sender (the [`Candidate`]'s, or a test's).
    pub(crate) fn channel() -> (watch::Sender<CandidateStatus>, Self) {
        let (tx, status) = watch::channel(CandidateStatus::Pending);
        let withdraw = CancellationToken::new();
        let leader = Arc::default();
        (
            tx,
            Self {
                status,
                withdraw,
                leader,
            },
        )
    }

    /// Gives the [`Candidate`] the state of the elector this handle was given to (the first one only).
    pub(crate) fn observe(&self, state: watch::Receiver<LeaderState>) {
        let _ = self.leader.set(state);
    }

    /// Asks the [`Candidate`] to delete its LeaseCandidate and stop (the elector, when it stops), and waits
    /// until it has, or the API server does not serve LeaseCandidates, for at most `timeout`.
    pub(crate) async fn withdraw(&self, timeout: Duration) {
        self.withdraw.cancel();
        let withdrawn = self
            .wait_for(|s| matches!(s, CandidateStatus::Withdrawn | CandidateStatus::Unsupported));
        let _ = tokio::time::timeout(timeout, withdrawn).await;
    }

    /// Whether the elector asked for the LeaseCandidate to be withdrawn.
    #[cfg(test)]
    pub(crate) fn withdrawal_requested(&self) -> bool {
        self.withdraw.is_cancelled()
    }

    /// The registration's status now.
    #[must_use]
    pub fn status(&self) -> CandidateStatus {
        *self.status.borrow()
    }

    /// Whether the election is coordinated: true unless the API server does not serve LeaseCandidates.
    #[must_use]
    pub fn is_coordinated(&self) -> bool {
        self.status() != CandidateStatus::Unsupported
    }

    /// Waits until the status satisfies `f`. Returns at once if the [`Candidate`] is gone.
    pub(crate) async fn wait_for(&self, f: impl Fn(CandidateStatus) -> bool) {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| f(*s)).await;
    }
}

/// This candidate's LeaseCandidate, named after its identity, in the Lease's namespace: created and renewed
/// by [`Candidate::run`], which answers the election controller's pings at once and deletes it when it
/// stops (on shutdown, or when the elector holding [`Candidate::coordination`] stops, before its release).
///
/// # Examples
///
/// ```no_run
/// use leaderelection::{Candidate, CandidateConfig, Config, Elector, KubeLeaseLock};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new("pod-a", "my-controller", "default");
/// let candidate = Candidate::new(client.clone(), &config, CandidateConfig::new("1.34.0"))?;
/// let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
/// let elector = Elector::builder(config, lock)
///     .coordination(candidate.coordination())
///     .build()?;
/// let shutdown = CancellationToken::new();
/// // A candidate that RBAC refuses stops at once: stop the elector with it.
/// let stop_on_refusal = shutdown.clone();
/// let candidacy = async move {
///     let candidacy = candidate.run(stop_on_refusal.clone()).await;
///     stop_on_refusal.cancel();
///     candidacy
/// };
/// let (candidacy, election) = tokio::join!(candidacy, elector.run(shutdown.clone()));
/// candidacy?;
/// election?;
/// # Ok(()) }
/// ```
///
/// ## RBAC
///
/// ```yaml
/// - apiGroups: ["coordination.k8s.io"]
///   resources: ["leasecandidates"]
///   verbs: ["get", "create", "update", "delete", "list", "watch"]
/// ```
pub struct Candidate {
    api: Api<LeaseCandidate>,
    client: kube::Client,
    namespace: String,
    name: String,
    lease_name: String,
    config: CandidateConfig,
    request_timeout: Duration,
    retry_period: Duration,
    status: watch::Sender<CandidateStatus>,
    coordination: Coordination,
    /// Notified whenever the election controller pings us.
    pinged: watch::Sender<()>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("lease_name", &self.lease_name)
            .field("config", &self.config)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// What [`Candidate::look`] found.
enum Look {
    /// The watch is open.
    Watching(BoxStream<'static, kube::Result<WatchEvent<LeaseCandidate>>>),
    /// No watch; the LeaseCandidate as read (`None`: it does not exist), and whether a watch was tried and
    /// failed.
    Read {
        candidate: Option<Box<LeaseCandidate>>,
        watch_failed: bool,
    },
    /// Neither.
    Failed,
}

/// Why a request about our LeaseCandidate failed.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("request timed out")]
    Timeout,
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// RBAC refused it: retrying cannot help.
    #[error(transparent)]
    Denied(Denied),
}

impl RequestError {
    fn code(&self) -> Option<u16> {
        match self {
            Self::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }
}

/// Why [`Candidate::run`] stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// RBAC refuses a request on our LeaseCandidate (403 Forbidden): the candidate can never register.
    #[error(transparent)]
    Denied(Denied),
}

// === impl Candidate ===

impl Candidate {
    /// The candidate `election.identity` for the Lease `election.lease_namespace/election.lease_name`,
    /// registering `config` through `client`; requests are bounded by the election's request timeout, and
    /// failures retried every jittered retry period.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`CandidateConfig::validate`], `election` one of
    /// [`Config::validate`], or `election.identity`, which names the LeaseCandidate, is not a DNS-1123
    /// subdomain (kube-apiserver would refuse every create with 422 Unprocessable Entity).
    pub fn new(
        client: kube::Client,
        election: &Config,
        config: CandidateConfig,
    ) -> Result<Self, ConfigError> {
        election.validate()?;
        config.validate()?;
        if !is_dns_subdomain(&election.identity) {
            return Err(ConfigError::new(
                "identity",
                election.identity.clone(),
                format!(
                    "under coordinated leader election the identity names the LeaseCandidate, so it \
                     {DNS_SUBDOMAIN_RULE} (a DNS-1123 subdomain, the rule of object names)"
                ),
            ));
        }
        let (status, coordination) = Coordination::channel();
        Ok(Self {
            api: Api::namespaced(client.clone(), &election.lease_namespace),
            client,
            namespace: election.lease_namespace.clone(),
            name: election.identity.clone(),
            lease_name: election.lease_name.clone(),
            config,
            request_timeout: election.effective_request_timeout(),
            retry_period: election.retry_period,
            status,
            coordination,
            pinged: watch::Sender::new(()),
        })
    }

    /// The handle to give the elector ([`crate::ElectorBuilder::coordination`]).
    #[must_use]
    pub fn coordination(&self) -> Coordination {
        self.coordination.clone()
    }

    /// Registers until `shutdown` is cancelled or the elector given [`Candidate::coordination`] stops, then
    /// deletes the LeaseCandidate.
    ///
    /// First asks discovery whether `coordination.k8s.io/v1beta1` `leasecandidates` is served: when it is
    /// not (404, or not listed), logs one WARN, publishes [`CandidateStatus::Unsupported`] (the elector runs
    /// an ordinary election) and waits for `shutdown`. Otherwise creates (or updates) the LeaseCandidate
    /// with `renewTime` now, publishes [`CandidateStatus::Registered`], watches it and renews it at once
    /// whenever the controller pings it (`pingTime` not before `renewTime`), and every
    /// [`CandidateConfig::renew_interval`] otherwise; re-creates it if it is deleted. Transient errors are
    /// logged and retried forever. On shutdown it deletes the LeaseCandidate (bounded by the request
    /// timeout) and publishes [`CandidateStatus::Withdrawn`].
    ///
    /// Registered for one election window (5 s, kube-apiserver's `electionDuration`) without a ping while
    /// the elector given [`Candidate::coordination`] sees no leader, it logs one WARN that no election
    /// controller answered, and keeps waiting: a coordinated Lease is assigned only by the controller.
    ///
    /// # Errors
    ///
    /// [`CandidateError::Denied`] when RBAC refuses reading, creating or updating our LeaseCandidate
    /// (403): it can never register, so it stops at once (and publishes [`CandidateStatus::Withdrawn`])
    /// rather than retry. A refused watch is not an error: the LeaseCandidate is read instead.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the LeaseCandidate registered (until the controller's garbage collection,
    /// 30 minutes after its last renewal) and the elector waiting: cancel `shutdown` and await instead.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CandidateError> {
        // Stopped by `shutdown`, or by the elector through the handle (so that it can release the Lease
        // once we are withdrawn, whatever stopped it).
        let stop = self.coordination.withdraw.clone();
        let link = async {
            tokio::select! {
                () = shutdown.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        };
        let serve = async {
            let served = self.serve(&stop).await;
            // Ends the link when serving ended on its own (refused by RBAC).
            stop.cancel();
            served
        };
        let ((), served) = tokio::join!(link, serve);
        served
    }

    async fn serve(&self, shutdown: &CancellationToken) -> Result<(), CandidateError> {
        match self.discover(shutdown).await {
            Some(true) => {}
            Some(false) => {
                warn!(
                    identity = %self.name,
                    lease = %self.lease_name,
                    "coordinated leader election: the API server does not serve {GROUP_VERSION} \
                     leasecandidates (feature gate CoordinatedLeaderElection and runtime-config \
                     {GROUP_VERSION}=true); falling back to ordinary leader election"
                );
                self.status.send_replace(CandidateStatus::Unsupported);
                shutdown.cancelled().await;
                return Ok(());
            }
            None => {
                self.status.send_replace(CandidateStatus::Withdrawn);
                return Ok(());
            }
        }
        let registered = tokio::select! {
            registered = self.register_until(shutdown) => registered,
            () = self.warn_without_controller() => Ok(()),
        };
        match registered {
            Ok(()) => {
                self.withdraw().await;
                Ok(())
            }
            Err(denied) => {
                self.status.send_replace(CandidateStatus::Withdrawn);
                Err(CandidateError::Denied(denied))
            }
        }
    }

    /// Logs one WARN per silence when no election controller seems to run: registered for
    /// [`ELECTION_WINDOW`] without a ping while the elector sees no leader. A silence ends with a ping, a
    /// leader, or a new registration. Never returns; without an elector to ask, waits.
    async fn warn_without_controller(&self) {
        let Some(mut leader) = self.coordination.leader.get().cloned() else {
            return std::future::pending().await;
        };
        let mut status = self.status.subscribe();
        let mut pings = self.pinged.subscribe();
        // Since when we have been registered, unpinged and without a leader; and whether we said so.
        let mut silent_since: Option<Instant> = None;
        let mut warned = false;
        loop {
            let silent = *status.borrow_and_update() == CandidateStatus::Registered
                && leader.borrow_and_update().leader.is_none();
            if !silent {
                (silent_since, warned) = (None, false);
            }
            let since = *silent_since.get_or_insert_with(Instant::now);
            tokio::select! {
                Ok(()) = status.changed() => {}
                Ok(()) = leader.changed() => {}
                Ok(()) = pings.changed() => (silent_since, warned) = (None, false),
                () = sleep_until(since + ELECTION_WINDOW), if silent && !warned => {
                    warn!(
                        identity = %self.name,
                        lease = %self.lease_name,
                        "no election controller answered: registered as a LeaseCandidate for {} without \
                         a ping while the Lease has no leader. Coordinated Leases are assigned only by \
                         kube-apiserver's election controller (feature gate CoordinatedLeaderElection), \
                         which does not seem to run; still waiting (a coordinated candidate never takes \
                         the Lease on its own)",
                        humantime::format_duration(ELECTION_WINDOW)
                    );
                    warned = true;
                }
            }
        }
    }

    /// Whether LeaseCandidates are served; retried until known. `None` on shutdown.
    async fn discover(&self, shutdown: &CancellationToken) -> Option<bool> {
        loop {
            let listed = tokio::select! {
                () = shutdown.cancelled() => return None,
                listed = self.request(self.client.list_api_group_resources(GROUP_VERSION)) => listed,
            };
            match listed {
                Ok(list) => {
                    return Some(list.resources.iter().any(|r| r.name == "leasecandidates"));
                }
                Err(err) if err.code() == Some(404) => return Some(false),
                Err(err) => {
                    self.log_transient("asking discovery for leasecandidates", &err);
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(self.jittered_retry_period()) => {}
                    }
                }
            }
        }
    }

    /// Keeps the LeaseCandidate registered and answers pings until `shutdown`, or until RBAC refuses a
    /// request (the [`Denied`] returned).
    ///
    /// Pings are seen through a watch of our LeaseCandidate. Where the watch cannot be opened (RBAC without
    /// `watch`, a failing server), the LeaseCandidate is read instead every jittered retry period, with
    /// another try at the watch.
    async fn register_until(&self, shutdown: &CancellationToken) -> Result<(), Denied> {
        // The LeaseCandidate as last written or read (its resourceVersion guards the next renewal and is
        // where the watch resumes).
        let mut known: Option<LeaseCandidate> = None;
        let mut next_renew = Instant::now();
        // When to open the watch (or, without one, to read the LeaseCandidate) next.
        let mut next_look = Instant::now();
        let mut events: Option<BoxStream<'static, kube::Result<WatchEvent<LeaseCandidate>>>> = None;
        loop {
            if Instant::now() >= next_renew {
                let renewed = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    renewed = self.renew(known.take()) => renewed,
                };
                next_renew = match renewed {
                    Ok(renewed) => {
                        if self.status.send_replace(CandidateStatus::Registered)
                            != CandidateStatus::Registered
                        {
                            info!(identity = %self.name, lease = %self.lease_name,
                                "registered as a LeaseCandidate for coordinated leader election");
                        }
                        known = Some(renewed);
                        Instant::now() + self.config.renew_interval
                    }
                    Err(RequestError::Denied(denied)) => return Err(denied),
                    // Someone wrote since (a ping): read it and renew again at once.
                    Err(err) if err.code() == Some(409) => Instant::now(),
                    Err(err) => {
                        self.log_transient("renewing the LeaseCandidate", &err);
                        Instant::now() + self.jittered_retry_period()
                    }
                };
                continue;
            }
            if events.is_none() && Instant::now() >= next_look {
                let looked = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    looked = self.look(known.as_ref()) => looked?,
                };
                match looked {
                    Look::Watching(stream) => events = Some(stream),
                    Look::Read {
                        candidate,
                        watch_failed,
                    } => {
                        // Watch from what was read at once, unless watching is what failed.
                        next_look = match (&candidate, watch_failed) {
                            (Some(_), false) => Instant::now(),
                            _ => Instant::now() + self.jittered_retry_period(),
                        };
                        match &candidate {
                            Some(candidate) if pinged(candidate) => {
                                self.pinged.send_replace(());
                                next_renew = Instant::now();
                            }
                            Some(_) => {}
                            // Deleted: registered again within a retry period.
                            None => {
                                next_renew =
                                    next_renew.min(Instant::now() + self.jittered_retry_period());
                            }
                        }
                        known = candidate.map(|c| *c);
                        continue;
                    }
                    Look::Failed => next_look = Instant::now() + self.jittered_retry_period(),
                }
            }
            let event = match events.as_mut() {
                Some(stream) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = sleep_until(next_renew) => continue,
                    event = stream.next() => event,
                },
                None => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = sleep_until(next_renew.min(next_look)) => continue,
                },
            };
            match event {
                Some(Ok(WatchEvent::Added(candidate) | WatchEvent::Modified(candidate))) => {
                    if pinged(&candidate) {
                        debug!(identity = %self.name, "pinged by the election controller; renewing");
                        self.pinged.send_replace(());
                        next_renew = Instant::now();
                    }
                    known = Some(candidate);
                }
                Some(Ok(WatchEvent::Deleted(_))) => {
                    warn!(identity = %self.name, "our LeaseCandidate was deleted; registering again");
                    self.status.send_replace(CandidateStatus::Pending);
                    known = None;
                    events = None;
                    next_renew = Instant::now();
                }
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                // Closed by the server: resume from the last version seen.
                None => events = None,
                // An ERROR event (410 Gone: too old to resume from) or a failed watch: read, then watch
                // from what was read.
                Some(Ok(WatchEvent::Error(_)) | Err(_)) => {
                    events = None;
                    known = None;
                }
            }
        }
    }

    /// Opens the watch of our LeaseCandidate from `known`'s version; without one, or when the watch cannot
    /// be opened, reads the LeaseCandidate instead. [`Denied`] when RBAC refuses the read.
    async fn look(&self, known: Option<&LeaseCandidate>) -> Result<Look, Denied> {
        let mut watch_failed = false;
        if let Some(rv) = known.and_then(|c| c.metadata.resource_version.as_deref()) {
            match self.request(self.api.watch(&self.watch_params(), rv)).await {
                Ok(stream) => return Ok(Look::Watching(stream.boxed())),
                Err(err) => {
                    debug!(identity = %self.name, error = %err,
                        "could not watch our LeaseCandidate; reading it instead");
                    watch_failed = true;
                }
            }
        }
        match self.request_as("get", self.api.get_opt(&self.name)).await {
            Ok(candidate) => Ok(Look::Read {
                candidate: candidate.map(Box::new),
                watch_failed,
            }),
            Err(RequestError::Denied(denied)) => Err(denied),
            Err(err) => {
                self.log_transient("reading the LeaseCandidate", &err);
                Ok(Look::Failed)
            }
        }
    }

    /// Writes our LeaseCandidate with `renewTime` now: an update of `known` (or of a fresh read), or a
    /// create when there is none. One that names another Lease (this identity elected for it before) is
    /// replaced: `leaseName` is immutable.
    async fn renew(&self, known: Option<LeaseCandidate>) -> Result<LeaseCandidate, RequestError> {
        let current = match known {
            Some(known) => Some(known),
            None => self.request_as("get", self.api.get_opt(&self.name)).await?,
        };
        let pp = PostParams::default();
        match current {
            Some(current) if spec_lease_name(&current) == self.lease_name => {
                let desired = self.desired(current.metadata, current.spec);
                self.request_as("update", self.api.replace(&self.name, &pp, &desired))
                    .await
            }
            current => {
                if let Some(other) = current {
                    warn!(identity = %self.name, lease = %spec_lease_name(&other),
                        "our LeaseCandidate named another Lease; replacing it");
                    self.delete().await?;
                }
                let metadata = ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                };
                self.request_as(
                    "create",
                    self.api.create(&pp, &self.desired(metadata, None)),
                )
                .await
            }
        }
    }

    /// Our LeaseCandidate with `renewTime` now, over `metadata` (and `pingTime` as read: the controller
    /// compares the two). `renewTime` is at least one microsecond after `pingTime`: a clock behind the
    /// controller's would otherwise write a renewal that does not answer the ping (and that we would take
    /// for a new ping).
    fn desired(&self, metadata: ObjectMeta, spec: Option<LeaseCandidateSpec>) -> LeaseCandidate {
        let ping_time = spec.and_then(|s| s.ping_time);
        let now = truncate_to_micros(Timestamp::now());
        let renew_time = match &ping_time {
            Some(ping) if ping.0 >= now => ping.0 + jiff::SignedDuration::from_micros(1),
            _ => now,
        };
        LeaseCandidate {
            metadata,
            spec: Some(LeaseCandidateSpec {
                lease_name: self.lease_name.clone(),
                binary_version: self.config.binary_version.clone(),
                emulation_version: Some(self.config.emulation_version.clone()),
                strategy: OLDEST_EMULATION_VERSION.to_string(),
                ping_time,
                renew_time: Some(MicroTime(renew_time)),
            }),
        }
    }

    /// Deletes our LeaseCandidate on shutdown, so that the controller no longer elects us, and says so.
    async fn withdraw(&self) {
        match self.delete().await {
            Ok(()) => info!(identity = %self.name, "deleted our LeaseCandidate"),
            Err(err) => warn!(identity = %self.name, error = %err,
                "could not delete our LeaseCandidate; the election controller drops it once it stops \
                 answering pings"),
        }
        self.status.send_replace(CandidateStatus::Withdrawn);
    }

    async fn delete(&self) -> Result<(), RequestError> {
        match self
            .request_as(
                "delete",
                self.api.delete(&self.name, &DeleteParams::default()),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some(404) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn watch_params(&self) -> WatchParams {
        WatchParams::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(WATCH_TIMEOUT_SECONDS)
            .disable_bookmarks()
    }

    async fn request<T>(
        &self,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, RequestError> {
        match timeout(self.request_timeout, call).await {
            Ok(result) => result.map_err(RequestError::from),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// A request of `verb` on our LeaseCandidate, as [`Candidate::request`]; a 403 is
    /// [`RequestError::Denied`].
    async fn request_as<T>(
        &self,
        verb: &'static str,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, RequestError> {
        match self.request(call).await {
            Err(RequestError::Kube(kube::Error::Api(status))) if status.code == 403 => {
                Err(RequestError::Denied(Denied {
                    verb,
                    resource: RESOURCE,
                    object: format!("leasecandidate {}/{}", self.namespace, self.name),
                    message: status.message,
                    grant: GRANT,
                }))
            }
            other => other,
        }
    }

    fn jittered_retry_period(&self) -> Duration {
        let rp = self.retry_period;
        rp + rp.mul_f64(rand::rng().random_range(0.0..JITTER_FACTOR))
    }

    fn log_transient(&self, what: &str, err: &RequestError) {
        warn!(identity = %self.name, lease = %self.lease_name, error = %err, "error {what}; retrying");
    }
}

fn spec_lease_name(candidate: &LeaseCandidate) -> &str {
    candidate
        .spec
        .as_ref()
        .map_or("", |spec| spec.lease_name.as_str())
}

/// Whether the controller pinged the candidate since it last renewed: `pingTime` not before `renewTime`
/// (the controller waits for `renewTime > pingTime`).
fn pinged(candidate: &LeaseCandidate) -> bool {
    let Some(spec) = &candidate.spec else {
        return false;
    };
    match (&spec.ping_time, &spec.renew_time) {
        (Some(ping), Some(renew)) => renew.0 <= ping.0,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_as_kube_apiserver_does() {
        assert_eq!(CandidateConfig::new("1.34.0").validate(), Ok(()));
        assert_eq!(
            CandidateConfig::new("1.34.0-rc.1+abc")
                .with_emulation_version("1.33.2")
                .validate(),
            Ok(())
        );
        for bad in ["v1.34.0", "1.34", "1.34.x", "", "1..0", "01.34.0"] {
            let err = CandidateConfig::new(bad).validate().unwrap_err();
            assert_eq!((err.field, err.value.as_str()), ("binary_version", bad));
        }
        let err = CandidateConfig::new("1.33.0")
            .with_emulation_version("1.34.0")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "emulation_version");
        assert!(err.rule.contains("at most binaryVersion"), "{err}");
        // Semver's order: a pre-release comes before its release.
        let err = CandidateConfig::new("1.34.0-rc.1")
            .with_emulation_version("1.34.0")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "emulation_version");
        let err = CandidateConfig::new("1.33.0")
            .with_renew_interval(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "renew_interval");
    }

    #[tokio::test]
    async fn a_renewal_answers_a_ping_from_a_clock_ahead_of_ours() {
        let client = crate::KubeLeaseLock::client_for_url("http://127.0.0.1:1").unwrap();
        let candidate = Candidate::new(
            client,
            &Config::new("a", "l", "ns"),
            CandidateConfig::new("1.0.0"),
        )
        .unwrap();
        let spec = |ping: Timestamp| LeaseCandidateSpec {
            ping_time: Some(MicroTime(ping)),
            ..LeaseCandidateSpec::default()
        };
        let ahead = truncate_to_micros(Timestamp::now()) + jiff::SignedDuration::from_secs(60);
        let renewed = candidate.desired(ObjectMeta::default(), Some(spec(ahead)));
        assert!(!pinged(&renewed));
        assert_eq!(
            renewed.spec.unwrap().renew_time.unwrap().0,
            ahead + jiff::SignedDuration::from_micros(1)
        );
        let behind = Timestamp::now() - jiff::SignedDuration::from_secs(60);
        let renewed = candidate.desired(ObjectMeta::default(), Some(spec(behind)));
        assert!(
            renewed.spec.unwrap().renew_time.unwrap().0
                > Timestamp::now() - jiff::SignedDuration::from_secs(1)
        );
    }

    #[test]
    fn a_ping_is_a_ping_time_not_before_the_renew_time() {
        let at = |s: &str| Some(MicroTime(s.parse().unwrap()));
        let candidate = |ping, renew| LeaseCandidate {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseCandidateSpec {
                ping_time: ping,
                renew_time: renew,
                ..LeaseCandidateSpec::default()
            }),
        };
        let (t1, t2) = ("2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z");
        assert!(pinged(&candidate(at(t2), at(t1))));
        assert!(pinged(&candidate(at(t1), at(t1))));
        assert!(pinged(&candidate(at(t1), None)));
        assert!(!pinged(&candidate(at(t1), at(t2))));
        assert!(!pinged(&candidate(None, at(t2))));
    }
}
