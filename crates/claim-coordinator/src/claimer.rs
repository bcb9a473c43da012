//! A consumer's side: write a claim and get a host. [`Claimer::ensure`] writes the claim if missing and
//! returns its state at once (for a reconciler); [`Claimer::claim`] waits until it is bound. The claims are
//! the queue: in [`Mode::Leader`] the consumer waits on its claim's watch until the leader binds it; in [`Mode::Optimistic`] it claims
//! directly, intent first; in [`Mode::Auto`] it delegates while a valid leader exists and claims directly
//! after a lease duration without one.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use leaderelection::{KubeLeaseLock, LeaseLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Outcome};
use crate::provider::{Claim, Host};
use crate::resources::{ClaimPhase, HostClaim, HostClaimSpec, PhysicalHost};
use crate::selection::{self, Candidate, Requirements};
use crate::selector::SelectorError;
pub use crate::settings::Mode;
use crate::steps::{Fence, Pool, StepError};

/// Retries of the optimistic path before it waits a retry period (as Beskar7: 5, backoff attempt x 100 ms).
const OPTIMISTIC_RETRIES: u32 = 5;

/// The result of a claim.
pub type Result<T, E = ClaimError> = std::result::Result<T, E>;

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// Creating, reading or deleting the claim failed.
    #[error("claim {name}: {source}")]
    Api {
        /// The claim.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The claim's spec breaks a rule (its selector): it could never be bound.
    #[error("claim {name}: {source}")]
    Invalid {
        /// The claim.
        name: String,
        /// The field, value and rule.
        #[source]
        source: SelectorError,
    },
    /// The claim can never be served in its current generation (status `Failed`).
    #[error("claim {name} failed: {reason}: {message}")]
    Failed {
        /// The claim.
        name: String,
        /// Its `Bound` condition's reason, e.g. `InvalidHostSelector`.
        reason: String,
        /// Its message.
        message: String,
    },
    /// `shutdown` was cancelled before the claim was bound.
    #[error("claim {0}: cancelled")]
    Cancelled(String),
}

/// A claim's state as its status says it ([`Claimer::ensure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimState {
    /// Waiting for a host; the `Bound` condition's reason and message (empty before the binder has
    /// written one).
    Pending {
        /// E.g. `NoHostAvailable`, `Unsatisfiable`.
        reason: String,
        /// Human-readable detail.
        message: String,
    },
    /// Bound to the host `host` (a host's `consumerRef` names the claim).
    Bound {
        /// The host's name.
        host: String,
    },
    /// Never served in its current generation; change the spec.
    Failed {
        /// E.g. `InvalidHostSelector`.
        reason: String,
        /// Human-readable detail (the field, value and rule).
        message: String,
    },
}

// === impl ClaimState ===

impl ClaimState {
    /// The state `claim`'s status says.
    #[must_use]
    pub fn of<C: Claim>(claim: &C) -> Self {
        if let Some(host) = claim.host_ref() {
            return Self::Bound {
                host: host.to_owned(),
            };
        }
        let condition = claim
            .claim_status()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Bound"));
        let (reason, message) =
            condition.map_or_else(Default::default, |c| (c.reason.clone(), c.message.clone()));
        if claim.phase() == ClaimPhase::Failed {
            Self::Failed { reason, message }
        } else {
            Self::Pending { reason, message }
        }
    }
}

/// Gets hosts for one consumer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Claimer<H = PhysicalHost> {
    pool: Pool<H, HostClaim>,
    mode: Mode,
    lease: std::sync::Arc<KubeLeaseLock>,
    /// What this claimer has seen of the leader (shared by its clones: they watch the same Lease).
    leader: std::sync::Arc<tokio::sync::Mutex<LeaderWatch>>,
    lease_duration: Duration,
    retry_period: Duration,
    metrics: Metrics,
}

/// A valid leader as observed by [`Claimer`]: the Lease record changes at least every lease duration.
#[derive(Debug)]
struct LeaderWatch {
    /// The record last read.
    last: Option<leaderelection::LeaderElectionRecord>,
    /// When `last` was first seen.
    changed_at: Instant,
    /// When a valid leader was last seen (the start counts: a lease duration of grace).
    valid_at: Instant,
}

// === impl LeaderWatch ===

impl LeaderWatch {
    fn new() -> Self {
        Self {
            last: None,
            changed_at: Instant::now(),
            valid_at: Instant::now(),
        }
    }
}

// === impl Claimer ===

impl Claimer {
    /// A claimer of our `PhysicalHost`s and `HostClaim`s in `namespace` writing as `identity`, watching
    /// the coordinator Lease `lease_name` (same namespace) in [`Mode::Auto`].
    #[must_use]
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        settings: &crate::settings::Settings,
        metrics: Metrics,
    ) -> Self {
        Self::with_pool(
            Pool::new(client.clone(), namespace, identity),
            KubeLeaseLock::new(client, namespace, &settings.lease_name),
            settings,
            metrics,
        )
    }
}

impl<H: Host> Claimer<H> {
    /// A claimer of `pool` (hosts of kind `H` in the pool namespace; its claims in one namespace, e.g. a
    /// tenant's), watching the coordinator Lease `lease` in [`Mode::Auto`].
    #[must_use]
    pub fn with_pool(
        pool: Pool<H, HostClaim>,
        lease: KubeLeaseLock,
        settings: &crate::settings::Settings,
        metrics: Metrics,
    ) -> Self {
        let mode = if settings.leader_election {
            settings.mode
        } else {
            Mode::Optimistic
        };
        Self {
            lease: std::sync::Arc::new(lease),
            leader: std::sync::Arc::new(tokio::sync::Mutex::new(LeaderWatch::new())),
            pool,
            mode,
            lease_duration: settings.lease_duration,
            retry_period: settings.retry_period,
            metrics,
        }
    }

    /// The pool this claimer writes to.
    #[must_use]
    pub fn pool(&self) -> &Pool<H, HostClaim> {
        &self.pool
    }

    /// Ensures the claim `name` exists (created with `spec` and the release finalizer; an existing claim of
    /// that name is kept as it is) and returns its state, without waiting: for a reconciler, which is
    /// triggered again by the claim's watch (or requeues). When this consumer claims directly (mode
    /// `optimistic`, or `auto` without a valid leader), it makes one attempt first (intent first, as
    /// [`Claimer::claim_directly`]); otherwise the leader binds it.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Invalid`] when `spec`'s selector breaks a rule (nothing is written);
    /// [`ClaimError::Api`] when the claim cannot be created or read.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the claim as far as it was written; a later call (or the leader) goes on
    /// from there: every step is conditional and idempotent.
    pub async fn ensure(&self, name: &str, spec: HostClaimSpec) -> Result<ClaimState> {
        self.ensure_once(name, spec, None)
            .await
            .map(|(state, _)| state)
    }

    /// [`Claimer::ensure`] for a claim owned by `owner` (an object of the claim's namespace, e.g. from
    /// `Resource::controller_owner_ref`): a claim it creates carries `owner` in `metadata.ownerReferences`,
    /// so that a kube-runtime `Controller` of the owner's kind is triggered by the claim's changes
    /// (`Controller::owns`), and Kubernetes' garbage collector deletes the claim when the owner goes (its
    /// release finalizer frees the host first). An existing claim is kept as it is.
    ///
    /// # Errors
    ///
    /// As [`Claimer::ensure`].
    ///
    /// # Cancel safety
    ///
    /// As [`Claimer::ensure`].
    pub async fn ensure_owned(
        &self,
        name: &str,
        spec: HostClaimSpec,
        owner: OwnerReference,
    ) -> Result<ClaimState> {
        self.ensure_once(name, spec, Some(owner))
            .await
            .map(|(state, _)| state)
    }

    /// [`Claimer::ensure`] (a claim it creates owned by `owner`), and whether this consumer claimed
    /// directly.
    async fn ensure_once(
        &self,
        name: &str,
        spec: HostClaimSpec,
        owner: Option<OwnerReference>,
    ) -> Result<(ClaimState, bool)> {
        let api_error = |source| ClaimError::Api {
            name: name.to_owned(),
            source,
        };
        Requirements::from_spec(&spec).map_err(|source| ClaimError::Invalid {
            name: name.to_owned(),
            source,
        })?;
        // Read first: a create answered 409 for a claim that exists would count as a conflict.
        let claim = match self.pool.claims.get_opt(name).await.map_err(api_error)? {
            Some(claim) => claim,
            None => {
                let mut claim = HostClaim::with_release_finalizer(name, spec);
                claim.metadata.owner_references = owner.map(|owner| vec![owner]);
                match self
                    .pool
                    .claims
                    .create(&PostParams::default(), &claim)
                    .await
                {
                    Ok(created) => created,
                    // Created by another call meanwhile.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        self.pool.claims.get(name).await.map_err(api_error)?
                    }
                    Err(err) => return Err(api_error(err)),
                }
            }
        };
        let state = ClaimState::of(&claim);
        if !matches!(state, ClaimState::Pending { .. }) {
            return Ok((state, false));
        }
        let direct = match self.mode {
            Mode::Leader => false,
            Mode::Optimistic => true,
            Mode::Auto => !self.leader_is_valid(&mut *self.leader.lock().await).await,
        };
        if !direct {
            return Ok((state, false));
        }
        tracing::info!(
            claim = name,
            mode = self.mode.as_str(),
            "Using fallback coordinator (no leader or leader election disabled)"
        );
        if let Some(host) = self.direct_attempt(name, claim.meta().uid.as_deref()).await {
            return Ok((ClaimState::Bound { host }, true));
        }
        let claim = self.pool.claims.get(name).await.map_err(api_error)?;
        Ok((ClaimState::of(&claim), true))
    }

    /// Ensures the claim `name` ([`Claimer::ensure`]) until it is bound, and returns its host: while
    /// delegating, it waits for the claim's changes (re-checking the leader every retry period in
    /// `auto`); while claiming directly, it retries with `try x 100 ms` backoff (5 tries, then again).
    ///
    /// # Errors
    ///
    /// [`ClaimError::Invalid`] when `spec`'s selector breaks a rule; [`ClaimError::Failed`] when the claim
    /// can never be served in its current generation; [`ClaimError::Api`] when the claim cannot be created
    /// or read; [`ClaimError::Cancelled`] on `shutdown`.
    ///
    /// # Cancel safety
    ///
    /// Cancel `shutdown` rather than dropping the future; either way the claim stays and a later call (or
    /// the leader) finishes it.
    pub async fn claim(
        &self,
        name: &str,
        spec: HostClaimSpec,
        shutdown: &CancellationToken,
    ) -> Result<String> {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let changes = watcher(self.pool.claims.clone(), config)
            .default_backoff()
            .applied_objects();
        tokio::pin!(changes);
        let mut delegating = false;
        let mut tries = 0;
        loop {
            if shutdown.is_cancelled() {
                return Err(ClaimError::Cancelled(name.to_owned()));
            }
            let (state, direct) = self.ensure_once(name, spec.clone(), None).await?;
            match state {
                ClaimState::Bound { host } => return Ok(host),
                ClaimState::Failed { reason, message } => {
                    return Err(ClaimError::Failed {
                        name: name.to_owned(),
                        reason,
                        message,
                    });
                }
                ClaimState::Pending { .. } => {}
            }
            let wait = if direct {
                tries = tries % OPTIMISTIC_RETRIES + 1;
                Duration::from_millis(100) * tries
            } else {
                if !delegating {
                    tracing::info!(claim = name, "Delegating claim to leader");
                    delegating = true;
                }
                self.retry_period
            };
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Err(ClaimError::Cancelled(name.to_owned())),
                    () = &mut deadline => break,
                    // Delegating: any change of the claim is worth a look (the leader wrote its status).
                    item = changes.next(), if !direct => match item {
                        Some(Ok(claim)) if !matches!(ClaimState::of(&claim), ClaimState::Pending { .. }) => break,
                        Some(Ok(_)) => {}
                        Some(Err(err)) => tracing::debug!(%err, claim = name, "watching the claim"),
                        None => break,
                    },
                }
            }
        }
    }

    /// Deletes the claim `name`: the leader (or, without one, this call) releases its host, then the claim
    /// goes.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Api`] when the delete fails (a missing claim is not an error).
    pub async fn release(&self, name: &str) -> Result<()> {
        match self
            .pool
            .claims
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(source) => {
                return Err(ClaimError::Api {
                    name: name.to_owned(),
                    source,
                });
            }
        }
        // Releasing is conditional and idempotent: without a leader to delegate to, do it here (racing a
        // leader that does it too costs a 409, nothing more).
        let direct = self.mode != Mode::Leader;
        if direct && let Ok((hosts, claims)) = self.pool.list(&Fence::Unfenced).await {
            let mine: Vec<HostClaim> = claims
                .into_iter()
                .filter(|c| c.name_any() == name)
                .collect();
            let held: Vec<_> = hosts
                .into_iter()
                .filter(|h| mine.iter().any(|c| h.is_consumed_by(c)))
                .collect();
            // Best effort: the leader (or the next release) finishes what fails here.
            let _ = self
                .pool
                .release_deleted(&Fence::Unfenced, &held, &mine)
                .await;
        }
        Ok(())
    }

    /// The fallback coordinator (leader election off, or mode `optimistic`): releases the hosts of deleted
    /// claims, then serves every pending claim of the pool by the optimistic path, intent first (one try
    /// each; a claim whose selector breaks a rule is skipped). Safe beside consumers and other replicas
    /// doing the same: every step is conditional, and the intent is recorded on the claim first. Returns
    /// the claims bound.
    ///
    /// # Errors
    ///
    /// [`StepError`] of the failed list.
    pub async fn serve_pending(&self) -> Result<usize, StepError> {
        let fence = Fence::Unfenced;
        let (hosts, claims) = self.pool.list(&fence).await?;
        self.pool.release_deleted(&fence, &hosts, &claims).await?;
        let mut bound = 0;
        for claim in claims
            .iter()
            .filter(|c| !c.is_deleting() && c.host_ref().is_none() && c.requirements().is_ok())
        {
            let name = claim.name_any();
            if self
                .direct_attempt(&name, claim.meta().uid.as_deref())
                .await
                .is_some()
            {
                tracing::info!(claim = %name, "Using fallback coordinator (no leader or leader election disabled)");
                bound += 1;
            }
        }
        Ok(bound)
    }

    /// Runs [`Claimer::serve_pending`] every `interval` until `token` is cancelled (a failed round is logged
    /// and retried at the next).
    ///
    /// # Errors
    ///
    /// None.
    ///
    /// # Cancel safety
    ///
    /// Cancel `token` and await: a round in flight ends after its current request.
    pub async fn run_fallback(
        self,
        interval: Duration,
        token: CancellationToken,
    ) -> Result<(), leaderelection_controller::BoxError> {
        while !token.is_cancelled() {
            tokio::select! {
                () = token.cancelled() => break,
                served = self.serve_pending() => match served {
                    Ok(0) => {}
                    Ok(bound) => tracing::debug!(bound, "fallback round done"),
                    Err(err) => tracing::debug!(%err, "fallback round failed; retrying"),
                },
            }
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        Ok(())
    }

    /// Whether a valid leader was seen within the last lease duration. A leader is valid while its Lease
    /// record keeps changing (it renews) within its `leaseDurationSeconds`, judged by our own clock from the
    /// moment we first saw each record, as a follower judges expiry in client-go's
    /// `tools/leaderelection/leaderelection.go`; server timestamps are never compared with our clock.
    async fn leader_is_valid(&self, watch: &mut LeaderWatch) -> bool {
        let read = tokio::time::timeout(self.retry_period, self.lease.get()).await;
        let record = match read {
            Ok(Ok(observed)) => observed.map(|o| o.record),
            failed => {
                // Not reading the Lease says nothing of the leader: keep delegating (claiming directly
                // through an API we cannot read would mostly fail too, and would race a healthy leader).
                if let Ok(Err(err)) = failed {
                    tracing::debug!(%err, "reading the coordinator Lease");
                }
                watch.valid_at = Instant::now();
                return true;
            }
        };
        if record != watch.last {
            watch.last = record;
            watch.changed_at = Instant::now();
        }
        if let Some(r) = &watch.last {
            let duration =
                Duration::from_secs(u64::try_from(r.lease_duration_seconds).unwrap_or(0));
            if !r.holder_identity.is_empty() && watch.changed_at.elapsed() < duration {
                watch.valid_at = Instant::now();
            }
        }
        watch.valid_at.elapsed() < self.lease_duration
    }

    /// The optimistic path, intent first (openshift/cluster-api-provider-baremetal#275): read the claim and
    /// the hosts; finish a bind a host already records; else record the chosen host on the claim
    /// (`status.selectedHost`, conditional), then claim that host (conditional), then bind the claim.
    /// Up to 5 tries with `try x 100 ms` backoff; `None` when they all failed.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Cancelled`] on `shutdown`.
    pub async fn claim_directly(
        &self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<String>> {
        for attempt in 1..=OPTIMISTIC_RETRIES {
            if shutdown.is_cancelled() {
                return Err(ClaimError::Cancelled(name.to_owned()));
            }
            if let Some(host) = self.direct_attempt(name, None).await {
                return Ok(Some(host));
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(ClaimError::Cancelled(name.to_owned())),
                () = tokio::time::sleep(Duration::from_millis(100) * attempt) => {}
            }
        }
        Ok(None)
    }

    /// One try of the optimistic path for the claim `name` (with `uid` when known: claims of several
    /// namespaces may share a name), counted in the metrics: the host once bound, `None` when no host was
    /// free or a step failed (logged at DEBUG).
    async fn direct_attempt(&self, name: &str, uid: Option<&str>) -> Option<String> {
        match self.try_direct(name, uid).await {
            Ok(Some(host)) => {
                self.metrics.attempt(Outcome::Success);
                Some(host)
            }
            Ok(None) => {
                self.metrics.attempt(Outcome::NoHosts);
                None
            }
            Err(err) => {
                self.metrics.attempt(err.outcome());
                tracing::debug!(claim = name, %err, "optimistic claim failed");
                None
            }
        }
    }

    async fn try_direct(&self, name: &str, uid: Option<&str>) -> Result<Option<String>, StepError> {
        let fence = Fence::Unfenced;
        let (hosts, claims) = self.pool.list(&fence).await?;
        let Some(claim) = claims.into_iter().find(|c| {
            c.name_any() == name && uid.is_none_or(|u| c.meta().uid.as_deref() == Some(u))
        }) else {
            return Err(StepError::InvalidState(format!("claim {name} not found")));
        };
        if let Some(host) = claim.host_ref() {
            return Ok(Some(host.to_owned()));
        }
        if claim.is_deleting() {
            return Err(StepError::InvalidState(format!(
                "claim {name} is being deleted"
            )));
        }
        // A host already naming the claim (a bind half-done by anyone): finish it.
        let intent = claim.selected_host().map(str::to_owned);
        let named: Vec<_> = hosts.iter().filter(|h| h.is_consumed_by(&claim)).collect();
        let held = named
            .iter()
            .find(|h| intent.as_deref() == h.meta().name.as_deref())
            .or(named.first());
        if let Some(host) = held {
            let host = self.pool.mark_claimed(&fence, host).await?;
            self.pool
                .mark_bound(&fence, &claim, &host.name_any())
                .await?;
            return Ok(Some(host.name_any()));
        }
        let requirements = claim
            .requirements()
            .map_err(|err| StepError::InvalidState(format!("claim {name}: {err}")))?;
        let available: Vec<_> = hosts.iter().filter(|h| h.is_available()).collect();
        let candidates: Vec<Candidate> =
            available.iter().map(|h| Candidate::from_host(*h)).collect();
        let chosen = intent
            .as_deref()
            .and_then(|i| candidates.iter().position(|c| c.name == i))
            .or_else(|| selection::choose(name, &requirements, &candidates, &[]));
        let Some(index) = chosen else {
            return Ok(None);
        };
        let host = available[index];
        let claim = self
            .pool
            .record_intent(&fence, &claim, host.meta().name.as_deref())
            .await?;
        let host = self.pool.claim_host(&fence, host, &claim).await?;
        let host = self.pool.mark_claimed(&fence, &host).await?;
        self.pool
            .mark_bound(&fence, &claim, &host.name_any())
            .await?;
        Ok(Some(host.name_any()))
    }
}
