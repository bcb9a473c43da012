//! The bind and release steps: each one conditional (the resourceVersion read), idempotent (a step already
//! done is not written again), and fenced (a leader writes only while its term is current, each request
//! bounded by the term's validity deadline).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use leaderelection::LeaderState;
use leaderelection::fencing::{self, Fenced, LEASE_ANNOTATION};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Writes;
use crate::metrics::Outcome;
use crate::provider::{Claim, Host};
use crate::resources::{
    CLAIMED_BY_ANNOTATION, ClaimCondition, ClaimPhase, ConsumerRef, HostClaim, PhysicalHost,
    RELEASE_FINALIZER, TERM_ANNOTATION,
};

/// Bound on one request when no term deadline is nearer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of a step.
pub type Result<T, E = StepError> = std::result::Result<T, E>;

/// Why a step did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The term ended (or its deadline passed): nothing was sent, or the term's write gate
    /// ([`Pool::gated`]) cancelled the request in flight.
    #[error("the term ended")]
    Fenced,
    /// A conditional write lost: 409 Conflict.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The host has another consumer.
    #[error("host {host} is already claimed by {by}")]
    AlreadyClaimed {
        /// The host.
        host: String,
        /// Its consumer.
        by: String,
    },
    /// The object is not in a state that allows the step (deleted, not available).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The request did not finish before the deadline.
    #[error("request timed out")]
    Timeout,
    /// Another API error.
    #[error("api: {0}")]
    Api(#[source] kube::Error),
}

// === impl StepError ===

impl StepError {
    /// The attempt outcome this error counts as.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Conflict(_) => Outcome::ConflictOptimisticLock,
            Self::AlreadyClaimed { .. } => Outcome::ConflictAlreadyClaimed,
            Self::InvalidState(_) => Outcome::ConflictInvalidState,
            Self::Fenced | Self::Timeout | Self::Api(_) => Outcome::Error,
        }
    }

    fn from_kube(err: kube::Error) -> Self {
        if Fenced::find(&err).is_some() {
            return Self::Fenced;
        }
        match err {
            kube::Error::Api(status) if status.code == 409 => Self::Conflict(status.message),
            kube::Error::Api(status) if status.code == 404 => Self::InvalidState(status.message),
            other => Self::Api(other),
        }
    }
}

/// A host freed because the claim its `consumerRef` named was deleted (or is gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The host's name.
    pub host: String,
    /// The consumer reference it held.
    pub consumer: ConsumerRef,
}

/// Who writes, and until when.
#[derive(Clone, Debug)]
pub enum Fence {
    /// The leader of the term with this `leaseTransitions`: writes only while the elector's state says this
    /// term is current, each request bounded by the term's validity deadline.
    Term {
        /// The term's `leaseTransitions`.
        transitions: i32,
        /// The elector's state.
        state: watch::Receiver<LeaderState>,
    },
    /// A consumer claiming directly: conditional writes only.
    Unfenced,
}

// === impl Fence ===

impl Fence {
    /// The deadline for a request sent now, or [`StepError::Fenced`] when the term is over.
    fn deadline(&self) -> Result<Instant> {
        let now = Instant::now();
        let bound = now + REQUEST_TIMEOUT;
        match self {
            Self::Unfenced => Ok(bound),
            Self::Term { transitions, state } => {
                let state = state.borrow();
                match state.current_term() {
                    Some(term) if term.transitions == *transitions => {
                        Ok(state.valid_until.map_or(bound, |until| until.min(bound)))
                    }
                    _ => Err(StepError::Fenced),
                }
            }
        }
    }

    /// The term number, for the host annotation and the claim's `boundTerm`.
    #[must_use]
    pub fn term(&self) -> Option<i32> {
        match self {
            Self::Term { transitions, .. } => Some(*transitions),
            Self::Unfenced => None,
        }
    }
}

/// The hosts and claims of a pool, and who writes to them: hosts of kind `H` in one namespace, claims of
/// kind `C` in one namespace or in every namespace (tenant namespaces beside a pool namespace).
#[derive(Clone, Debug)]
pub struct Pool<H = PhysicalHost, C = HostClaim> {
    /// The hosts (the pool namespace).
    pub hosts: Api<H>,
    /// The claims (one namespace, or all of them).
    pub claims: Api<C>,
    /// The identity written into `claimed-by`.
    pub identity: String,
    /// Where the binder's cache learns of its own writes ([`Pool::recording`]).
    writes: Option<Arc<Writes<H, C>>>,
}

// === impl Pool ===

impl Pool {
    /// Our `PhysicalHost`s and `HostClaim`s, both in `namespace`, through `client`, writing as `identity`.
    #[must_use]
    pub fn new(client: Client, namespace: &str, identity: &str) -> Self {
        Self::with_namespaces(client, namespace, Some(namespace), identity)
    }
}

impl<H: Host, C: Claim> Pool<H, C> {
    /// Hosts of kind `H` in `host_namespace`, claims of kind `C` in `claim_namespace` (`None`: every
    /// namespace), through `client`, writing as `identity`.
    #[must_use]
    pub fn with_namespaces(
        client: Client,
        host_namespace: &str,
        claim_namespace: Option<&str>,
        identity: &str,
    ) -> Self {
        Self {
            hosts: Api::namespaced(client.clone(), host_namespace),
            claims: claim_namespace.map_or_else(
                || Api::all(client.clone()),
                |ns| Api::namespaced(client.clone(), ns),
            ),
            identity: identity.to_owned(),
            writes: None,
        }
    }

    /// This pool with every successful write recorded into `writes`, which the binder lays over its cache
    /// (`crate::cache`).
    pub(crate) fn recording(&self, writes: &Arc<Writes<H, C>>) -> Self {
        Self {
            writes: Some(writes.clone()),
            ..self.clone()
        }
    }

    /// `after`, the answer to a write of `before`, recorded for the cache.
    fn wrote_host(&self, before: &H, after: H) -> H {
        if let Some(writes) = &self.writes {
            writes.hosts.record(before, &after);
        }
        after
    }

    /// As [`Pool::wrote_host`] for a claim.
    fn wrote_claim(&self, before: &C, after: C) -> C {
        if let Some(writes) = &self.writes {
            writes.claims.record(before, &after);
        }
        after
    }

    /// Whether `consumer` is a claim of this pool: kind `C`, of `C`'s API group (any version), in the
    /// claims' namespace (any namespace when the claims are read across namespaces). Only such a consumer
    /// may be released by the binder: a host consumed by another kind (a Metal3Machine, a reused node's
    /// booking, as in cluster-api-provider-metal3#3474) or by another pool's claims is never touched.
    #[must_use]
    pub fn is_own_consumer(&self, consumer: &ConsumerRef) -> bool {
        let group = consumer
            .api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group);
        group == C::group(&())
            && consumer.kind == C::kind(&())
            && self
                .claims
                .namespace()
                .is_none_or(|ns| ns == consumer.namespace)
    }

    /// This pool with every request sent through `fence`, one term's write gate: a write outside the term
    /// fails before it is sent ([`StepError::Fenced`]), one in flight when the term ends is cancelled, and
    /// the objects written are stamped with the term and the Lease (`leaderelection::fencing`), so that the
    /// admission policy refuses a host write that reaches the API server after a newer term began. The
    /// namespaces are kept.
    #[must_use]
    pub fn gated(&self, fence: &fencing::Fence) -> Self {
        let client = fence.client(&self.hosts.clone().into_client());
        let hosts_namespace = self.hosts.namespace().unwrap_or_default();
        Self {
            hosts: Api::namespaced(client.clone(), hosts_namespace),
            claims: self.claims.namespace().map_or_else(
                || Api::all(client.clone()),
                |ns| Api::namespaced(client.clone(), ns),
            ),
            identity: self.identity.clone(),
            writes: self.writes.clone(),
        }
    }

    /// The API of `host`'s namespace.
    fn host_api(&self, host: &H) -> Api<H> {
        Api::namespaced(
            self.hosts.clone().into_client(),
            &host.namespace().unwrap_or_default(),
        )
    }

    /// The API of `claim`'s namespace.
    fn claim_api(&self, claim: &C) -> Api<C> {
        Api::namespaced(
            self.claims.clone().into_client(),
            &claim.namespace().unwrap_or_default(),
        )
    }

    /// Lists hosts and claims (fresh reads, not a cache), each bounded as a write under `fence` (a
    /// leader's reads end with its term too).
    ///
    /// # Errors
    ///
    /// [`StepError`] of the failed list.
    pub async fn list(&self, fence: &Fence) -> Result<(Vec<H>, Vec<C>)> {
        let hosts = write(fence, self.hosts.list(&ListParams::default())).await?;
        let claims = write(fence, self.claims.list(&ListParams::default())).await?;
        Ok((hosts.items, claims.items))
    }

    /// Step 1: the host's `consumerRef` names `claim` (with the claim's image, the term and the identity as
    /// annotations). Guarded by the host's resourceVersion; nothing is written when it already names it.
    ///
    /// # Errors
    ///
    /// [`StepError::AlreadyClaimed`] when the host has another consumer, [`StepError::InvalidState`] when
    /// it is not available, [`StepError::Conflict`] when it changed since it was read.
    pub async fn claim_host(&self, fence: &Fence, host: &H, claim: &C) -> Result<H> {
        if host.is_consumed_by(claim) {
            return Ok(host.clone());
        }
        if let Some(other) = host.consumer() {
            return Err(StepError::AlreadyClaimed {
                host: host.name_any(),
                by: other.name,
            });
        }
        if let Some(why) = host.unavailable() {
            return Err(StepError::InvalidState(format!(
                "host {} is not available: {why:?}",
                host.name_any()
            )));
        }
        let mut updated = host.clone();
        updated.set_consumer(Some(claim.consumer_ref()), claim.image());
        let annotations = updated.annotations_mut();
        annotations.insert(CLAIMED_BY_ANNOTATION.into(), self.identity.clone());
        match fence.term() {
            Some(term) => {
                annotations.insert(TERM_ANNOTATION.into(), term.to_string());
            }
            // An optimistic bind is no term's: a leader's stamp left on the host would make it a stale
            // write under the fencing policy.
            None => unstamp(annotations),
        }
        let written = write(
            fence,
            self.host_api(host)
                .replace(&host.name_any(), &PostParams::default(), &updated),
        )
        .await?;
        Ok(self.wrote_host(host, written))
    }

    /// Step 2: the host's status records that it is claimed ([`Host::set_claimed_state`]; nothing is
    /// written for a kind whose status is not ours).
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the host changed since it was read.
    pub async fn mark_claimed(&self, fence: &Fence, host: &H) -> Result<H> {
        self.set_claimed_state(fence, host, true).await
    }

    async fn set_claimed_state(&self, fence: &Fence, host: &H, claimed: bool) -> Result<H> {
        let mut updated = host.clone();
        if !updated.set_claimed_state(claimed) {
            return Ok(host.clone());
        }
        let written = write(
            fence,
            self.host_api(host)
                .replace_status(&host.name_any(), &PostParams::default(), &updated),
        )
        .await?;
        Ok(self.wrote_host(host, written))
    }

    /// Step 3: the claim is `Bound` to `host` (with the term), guarded by the claim's resourceVersion.
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the claim changed since it was read.
    pub async fn mark_bound(&self, fence: &Fence, claim: &C, host: &str) -> Result<C> {
        if claim.host_ref() == Some(host) {
            return Ok(claim.clone());
        }
        let reason = if fence.term().is_some() {
            "BoundByLeader"
        } else {
            "BoundOptimistically"
        };
        let mut updated = claim.clone();
        let status = updated.claim_status_mut();
        status.phase = ClaimPhase::Bound;
        status.host_ref = Some(host.to_owned());
        status.bound_term = fence.term();
        set_condition(
            &mut status.conditions,
            claim.meta().generation,
            "True",
            reason,
            &format!("bound to {host} by {}", self.identity),
        );
        self.write_claim_status(fence, claim, &updated).await
    }

    /// The optimistic path's first step: the claim's `status.selectedHost` is `host`.
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the claim changed since it was read.
    pub async fn record_intent(&self, fence: &Fence, claim: &C, host: Option<&str>) -> Result<C> {
        if claim.selected_host() == host {
            return Ok(claim.clone());
        }
        let mut updated = claim.clone();
        updated.claim_status_mut().selected_host = host.map(str::to_owned);
        self.write_claim_status(fence, claim, &updated).await
    }

    /// The claim back to `phase` (`Pending`, or `Failed`) with no host and no intent: its host no longer
    /// names it, or it cannot be served.
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the claim changed since it was read.
    pub async fn mark_pending(
        &self,
        fence: &Fence,
        claim: &C,
        reason: &str,
        message: &str,
        phase: ClaimPhase,
    ) -> Result<C> {
        let mut updated = claim.clone();
        let status = updated.claim_status_mut();
        status.phase = phase;
        status.host_ref = None;
        status.bound_term = None;
        status.selected_host = None;
        set_condition(
            &mut status.conditions,
            claim.meta().generation,
            "False",
            reason,
            message,
        );
        if updated.claim_status() == claim.claim_status() {
            return Ok(claim.clone());
        }
        self.write_claim_status(fence, claim, &updated).await
    }

    /// Counts one failed attempt on the claim (best effort: a conflict here is not retried).
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the claim changed since it was read.
    pub async fn count_attempt(&self, fence: &Fence, claim: &C) -> Result<C> {
        let mut updated = claim.clone();
        updated.claim_status_mut().attempts += 1;
        self.write_claim_status(fence, claim, &updated).await
    }

    async fn write_claim_status(&self, fence: &Fence, claim: &C, updated: &C) -> Result<C> {
        let written = write(
            fence,
            self.claim_api(claim).replace_status(
                &claim.name_any(),
                &PostParams::default(),
                updated,
            ),
        )
        .await?;
        Ok(self.wrote_claim(claim, written))
    }

    /// Frees `host`: its `consumerRef` (and the annotations) cleared, then its status no longer claimed.
    /// Guarded by the host's resourceVersion; nothing is written for a step already done.
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the host changed since it was read.
    pub async fn release_host(&self, fence: &Fence, host: &H) -> Result<H> {
        let mut host = host.clone();
        if host.consumer().is_some() {
            let mut updated = host.clone();
            updated.set_consumer(None, None);
            let annotations = updated.annotations_mut();
            unstamp(annotations);
            annotations.remove(CLAIMED_BY_ANNOTATION);
            let written = write(
                fence,
                self.host_api(&host)
                    .replace(&host.name_any(), &PostParams::default(), &updated),
            )
            .await?;
            host = self.wrote_host(&host, written);
        }
        self.set_claimed_state(fence, &host, false).await
    }

    /// Removes the release finalizer from a claim being deleted (which then goes).
    ///
    /// # Errors
    ///
    /// [`StepError::Conflict`] when the claim changed since it was read.
    pub async fn remove_finalizer(&self, fence: &Fence, claim: &C) -> Result<()> {
        if !claim.finalizers().iter().any(|f| f == RELEASE_FINALIZER) {
            return Ok(());
        }
        let mut updated = claim.clone();
        updated.finalizers_mut().retain(|f| f != RELEASE_FINALIZER);
        let written = write(
            fence,
            self.claim_api(claim)
                .replace(&claim.name_any(), &PostParams::default(), &updated),
        )
        .await?;
        self.wrote_claim(claim, written);
        Ok(())
    }

    /// Whether the claim `consumer` names exists and is not being deleted, read fresh (a LIST by name:
    /// the RBAC the binder has): `claims` may come from a cache that lags the hosts' (two watches, no
    /// order between them), so a claim created and bound since the cache was filled must not count as
    /// deleted. When the read fails, the claim counts as alive until the next batch.
    async fn claim_lives(&self, fence: &Fence, consumer: &ConsumerRef) -> Result<bool> {
        let api: Api<C> = Api::namespaced(self.claims.clone().into_client(), &consumer.namespace);
        let by_name = ListParams::default().fields(&format!("metadata.name={}", consumer.name));
        match write(fence, api.list(&by_name)).await {
            Ok(found) => Ok(found.items.iter().any(|c| {
                c.meta().uid.as_deref() == Some(consumer.uid.as_str()) && !c.is_deleting()
            })),
            Err(StepError::Fenced) => Err(StepError::Fenced),
            Err(err) => {
                tracing::debug!(claim = %consumer.name, %err, "reading a claim failed; its host is kept");
                Ok(true)
            }
        }
    }

    /// Releases the host of every claim being deleted and lets the claims go; frees hosts whose consumer is
    /// a claim of this pool ([`Pool::is_own_consumer`]) that no longer exists (not in `claims`, and not
    /// found by a fresh read either). A host consumed by anything else is left alone. Idempotent: what is
    /// done already is not written again.
    ///
    /// # Errors
    ///
    /// The first [`StepError::Fenced`]; other failures are left for the next pass.
    pub async fn release_deleted(
        &self,
        fence: &Fence,
        hosts: &[H],
        claims: &[C],
    ) -> Result<Vec<Released>> {
        let by_uid: BTreeMap<&str, &C> = claims
            .iter()
            .filter_map(|c| c.meta().uid.as_deref().map(|u| (u, c)))
            .collect();
        let mut released = Vec::new();
        let mut held = std::collections::BTreeSet::new();
        for host in hosts {
            let Some(consumer) = host.consumer().filter(|c| self.is_own_consumer(c)) else {
                continue;
            };
            let claim = by_uid.get(consumer.uid.as_str());
            if claim.is_some_and(|c| !c.is_deleting()) {
                continue;
            }
            if claim.is_none() && self.claim_lives(fence, &consumer).await? {
                continue;
            }
            match self.release_host(fence, host).await {
                Ok(_) => released.push(Released {
                    host: host.name_any(),
                    consumer,
                }),
                Err(StepError::Fenced) => return Err(StepError::Fenced),
                Err(err) => {
                    held.insert(consumer.uid);
                    tracing::debug!(host = %host.name_any(), %err, "release failed");
                }
            }
        }
        for claim in claims.iter().filter(|c| c.is_deleting()) {
            // A claim goes only once no host names it.
            if claim
                .meta()
                .uid
                .as_ref()
                .is_some_and(|uid| held.contains(uid))
            {
                continue;
            }
            match self.remove_finalizer(fence, claim).await {
                Ok(()) => {}
                Err(StepError::Fenced) => return Err(StepError::Fenced),
                Err(err) => {
                    tracing::debug!(claim = %claim.name_any(), %err, "finalizer removal failed");
                }
            }
        }
        Ok(released)
    }
}

/// Removes the fencing stamp (term and Lease) from a host's annotations; a leader's write gate stamps its
/// own again.
fn unstamp(annotations: &mut BTreeMap<String, String>) {
    annotations.remove(TERM_ANNOTATION);
    annotations.remove(LEASE_ANNOTATION);
}

/// Sends `write` if `fence` allows it, bounded by the fence's deadline.
async fn write<T>(fence: &Fence, write: impl Future<Output = Result<T, kube::Error>>) -> Result<T> {
    let deadline = fence.deadline()?;
    tokio::time::timeout_at(deadline, write)
        .await
        .map_err(|_| StepError::Timeout)?
        .map_err(StepError::from_kube)
}

/// The condition types the binder sets on a claim, with the same status, reason and message.
pub const CONDITION_TYPES: [&str; 2] = ["Bound", "Ready"];

/// Sets the `Bound` and `Ready` conditions (a map keyed by `type`), with `observedGeneration`, keeping
/// `lastTransitionTime` when the status does not change (as apimachinery's `meta.SetStatusCondition`).
fn set_condition(
    conditions: &mut Vec<ClaimCondition>,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for type_ in CONDITION_TYPES {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time.clone_from(&now);
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.observed_generation = generation;
            }
            None => conditions.push(ClaimCondition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now.clone(),
                observed_generation: generation,
            }),
        }
    }
}
