//! The leader's binder: one term of serving pending claims in batches, from the hosts (the truth) and the
//! claims as the term's watch of each has them (kube-runtime reflector stores, with the binder's own writes
//! laid over them), so a new term starts by finishing whatever the last one left half-done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use leaderelection::{LeaderState, Term};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{Writes, Written};
use crate::debounce::{self, MAX_DELAY, QUIET};
use crate::events::{self, ClaimEvents};
use crate::metrics::{Metrics, Outcome};
use crate::priority::{self, Pending};
use crate::provider::{Claim, Host, Object};
use crate::resources::{ClaimPhase, HostClaim, PhysicalHost};
use crate::selection::{Batch, Candidate, Requirements};
use crate::settings::DEFAULT_MAX_CONCURRENT_BINDS;
use crate::steps::{Fence, Pool, StepError};

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Claims bound in this batch (new binds and half-done binds finished).
    pub bound: usize,
    /// Pending claims served (a host was looked for).
    pub served: usize,
    /// Hosts released (claims deleted, or a second host of one claim).
    pub released: usize,
}

/// The leader's binder: construct once per replica, run once per term by [`Binder::run_term`].
#[derive(Clone, Debug)]
pub struct Binder<H = PhysicalHost, C = HostClaim> {
    pool: Pool<H, C>,
    metrics: Metrics,
    interval: Duration,
    max_wait: Duration,
    max_concurrent_binds: usize,
    events: Option<ClaimEvents>,
}

// === impl Binder ===

impl<H: Host, C: Claim> Binder<H, C> {
    /// A binder of `pool`, serving every `interval` (or sooner after a change), with the starvation bound
    /// `max_wait`, and at most [`DEFAULT_MAX_CONCURRENT_BINDS`] binds in flight.
    #[must_use]
    pub fn new(pool: Pool<H, C>, metrics: Metrics, interval: Duration, max_wait: Duration) -> Self {
        Self {
            pool,
            metrics,
            interval,
            max_wait,
            max_concurrent_binds: DEFAULT_MAX_CONCURRENT_BINDS,
            events: None,
        }
    }

    /// At most `binds` binds (each its host's and its claim's writes, in order) in flight at once, as
    /// controller-runtime's `MaxConcurrentReconciles` bounds reconciles (`--claim-coordinator-max-concurrent-binds`,
    /// default [`DEFAULT_MAX_CONCURRENT_BINDS`]); 0 counts as 1. Finishing half-done binds shares the bound.
    #[must_use]
    pub fn max_concurrent_binds(mut self, binds: usize) -> Self {
        self.max_concurrent_binds = binds.max(1);
        self
    }

    /// Records Kubernetes Events on the claims it binds, releases and cannot serve (see [`crate::events`]).
    #[must_use]
    pub fn events(mut self, events: ClaimEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// This binder with its reads and writes sent through `fence`, the write gate of the term it is about
    /// to run ([`Pool::gated`]; `LeaderContext::fence` in a `Runtime`): with the fencing policy installed
    /// for the hosts (`docs/claim-coordinator.md`, "Fencing"), a host write held on the wire past the
    /// next leader's takeover is refused by the API server.
    #[must_use]
    pub fn gated(mut self, fence: &leaderelection::fencing::Fence) -> Self {
        self.pool = self.pool.gated(fence);
        self
    }

    /// Serves claims for one term until `token` is cancelled (the term ended, or shutdown): a batch every
    /// interval, or sooner after a host or claim changed ([`debounce`]: once changes have been quiet for
    /// [`QUIET`], at most [`MAX_DELAY`] after the first). The hosts and claims come from one watch each
    /// (kube-runtime's `reflector`, no LIST per batch), with the binder's own writes laid over them until
    /// the watch brings them back (`crate::cache`); the echo of its own write starts no batch. A batch waits
    /// for both initial lists. Every write stays guarded by the resourceVersion read: one made from a stale
    /// cache gets 409 Conflict and is tried again in a later batch, once the watch has the newer version.
    /// Nothing is sent once the term's deadline has passed (checked before every request).
    ///
    /// # Errors
    ///
    /// None: failed requests are retried at the next batch; a failed watch is retried with kube-runtime's
    /// default backoff (and logged).
    ///
    /// # Cancel safety
    ///
    /// Cancel `token` and await: a write in flight is bounded by the term's deadline.
    ///
    /// ## RBAC
    ///
    /// `list` and `watch` on the hosts and the claims (the crate's RBAC).
    pub async fn run_term(
        self,
        term: Term,
        state: watch::Receiver<LeaderState>,
        token: CancellationToken,
    ) -> Result<(), leaderelection_controller::BoxError> {
        let started = Instant::now();
        tracing::info!(
            term = term.transitions,
            identity = %term.holder,
            "Became leader for claim coordination"
        );
        self.metrics.leader_election_event("started_leading");
        let fence = Fence::Term {
            transitions: term.transitions,
            state,
        };
        let writes = Arc::new(Writes::default());
        let binder = Self {
            pool: self.pool.recording(&writes),
            ..self
        };
        let (hosts, hosts_writer) = reflector::store::<H>();
        let (claims, claims_writer) = reflector::store::<C>();
        let host_changes = reflector(
            hosts_writer,
            watcher(binder.pool.hosts.clone(), watcher::Config::default()).default_backoff(),
        )
        .filter_map({
            let writes = writes.clone();
            move |event| futures::future::ready(news(&writes.hosts, event))
        });
        let claim_changes = reflector(
            claims_writer,
            watcher(binder.pool.claims.clone(), watcher::Config::default()).default_backoff(),
        )
        .filter_map({
            let writes = writes.clone();
            move |event| futures::future::ready(news(&writes.claims, event))
        });
        let changes = futures::stream::select(host_changes, claim_changes);
        tokio::pin!(changes);
        // The first batch reads both initial lists; the watches run meanwhile.
        tokio::select! {
            () = token.cancelled() => {}
            _ = async { tokio::join!(hosts.wait_until_ready(), claims.wait_until_ready()) } => {}
            () = changes.by_ref().for_each(|()| futures::future::ready(())) => {}
        }
        // Until the term's token is cancelled: returning early would count as a failed component. A batch
        // after the term's deadline (before the elector has ended the term) sends nothing.
        while !token.is_cancelled() {
            let hosts = writes.hosts.overlay(hosts.state());
            let claims = writes.claims.overlay(claims.state());
            match binder.batch_on(&fence, &hosts, &claims).await {
                Ok(report) if report != BatchReport::default() => {
                    tracing::debug!(?report, term = term.transitions, "batch done");
                }
                Ok(_) => {}
                Err(StepError::Fenced) => {
                    tracing::debug!(
                        term = term.transitions,
                        "the term's deadline passed; waiting for its end"
                    );
                }
                Err(err) => tracing::debug!(%err, "batch failed; retrying at the next interval"),
            }
            binder
                .metrics
                .leadership_duration(&term.holder, started.elapsed().as_secs_f64());
            tokio::select! {
                () = token.cancelled() => break,
                () = debounce::next_batch(&mut changes, binder.interval, QUIET, MAX_DELAY) => {}
            }
        }
        binder
            .metrics
            .leadership_duration(&term.holder, started.elapsed().as_secs_f64());
        binder.metrics.leader_election_event("stopped_leading");
        tracing::info!(
            term = term.transitions,
            identity = %term.holder,
            "Lost leadership for claim coordination"
        );
        Ok(())
    }

    /// One batch from fresh reads (a LIST of the hosts and one of the claims): what a term's batches do
    /// from the cache ([`Binder::run_term`]), for a caller that drives batches itself.
    ///
    /// # Errors
    ///
    /// [`StepError::Fenced`] when the term ended; the error of a failed list.
    pub async fn batch(&self, fence: &Fence) -> Result<BatchReport, StepError> {
        let (hosts, claims) = self.pool.list(fence).await?;
        self.batch_on(fence, &hosts, &claims).await
    }

    /// One batch over `hosts` and `claims` as read: release what deleted claims held, finish half-done
    /// binds (from the hosts), repair claims whose host no longer names them, finish optimistic intents,
    /// then bind pending claims in priority order.
    ///
    /// # Errors
    ///
    /// [`StepError::Fenced`] when the term ended.
    async fn batch_on(
        &self,
        fence: &Fence,
        hosts: &[H],
        claims: &[C],
    ) -> Result<BatchReport, StepError> {
        let released = self.pool.release_deleted(fence, hosts, claims).await?;
        for freed in &released {
            self.event(
                events::reference(&freed.consumer),
                EventType::Normal,
                "Released",
                "Release",
                format!("host {} released", freed.host),
            );
        }
        let mut report = BatchReport {
            released: released.len(),
            ..BatchReport::default()
        };
        let live: Vec<&C> = claims.iter().filter(|c| !c.is_deleting()).collect();
        // The index: claim uid -> hosts naming it (the truth); hosts of foreign consumers are not ours.
        let mut index: BTreeMap<String, Vec<&H>> = BTreeMap::new();
        for host in hosts {
            if let Some(consumer) = host.consumer().filter(|c| self.pool.is_own_consumer(c)) {
                index.entry(consumer.uid).or_default().push(host);
            }
        }
        let mut waiting = Vec::new();
        let mut half_done = Vec::new();
        for claim in &live {
            let uid = claim.meta().uid.clone().unwrap_or_default();
            match index.get(&uid) {
                Some(held) => half_done.push((*claim, held)),
                None if claim.phase() == ClaimPhase::Bound => {
                    // Derived state says Bound, the hosts say otherwise: back to Pending.
                    self.set_pending(
                        fence,
                        claim,
                        "HostLost",
                        "no host names this claim",
                        ClaimPhase::Pending,
                    )
                    .await?;
                }
                None => waiting.push(*claim),
            }
        }
        // Each claim's hosts are its own: the binds to finish touch disjoint objects and go together, at
        // most `max_concurrent_binds` at once.
        let finishing: Vec<_> = half_done
            .iter()
            .map(|(claim, held)| self.finish(fence, claim, held))
            .collect();
        let finished: Vec<_> = futures::stream::iter(finishing)
            .buffer_unordered(self.max_concurrent_binds)
            .collect()
            .await;
        for finished in finished {
            let (bound, released) = finished?;
            report.bound += usize::from(bound);
            report.released += released;
        }
        let (bound, served) = self.serve(fence, hosts, &waiting).await?;
        report.bound += bound;
        report.served = served;
        Ok(report)
    }

    /// Finishes the bind of `claim` to the hosts naming it: keeps one (the one its status names, else its
    /// intent, else the first by name), releases the others, then steps 2 and 3 on the one kept.
    async fn finish(
        &self,
        fence: &Fence,
        claim: &C,
        held: &[&H],
    ) -> Result<(bool, usize), StepError> {
        let status = claim.claim_status().cloned().unwrap_or_default();
        let named = |name: Option<&String>| {
            name.and_then(|n| held.iter().find(|h| h.meta().name.as_ref() == Some(n)))
        };
        let intent_elsewhere = status
            .selected_host
            .as_ref()
            .is_some_and(|s| named(Some(s)).is_none());
        let keep = named(claim.host_ref().map(str::to_owned).as_ref())
            .or_else(|| named(status.selected_host.as_ref()))
            .filter(|_| claim.phase() == ClaimPhase::Bound || !intent_elsewhere)
            .or_else(|| {
                (!intent_elsewhere)
                    .then(|| held.iter().min_by_key(|h| h.meta().name.clone()))
                    .flatten()
            })
            .copied();
        let mut released = 0;
        for host in held {
            if keep.is_none_or(|k| k.meta().name != host.meta().name) {
                // A second host (a write that outlived its term), or one an optimistic intent overrides.
                tracing::warn!(claim = %claim.name_any(), host = %host.name_any(), "releasing a host the claim does not keep");
                match self.pool.release_host(fence, host).await {
                    Ok(_) => released += 1,
                    Err(StepError::Fenced) => return Err(StepError::Fenced),
                    Err(err) => tracing::debug!(%err, "release failed"),
                }
            }
        }
        let Some(host) = keep else {
            return Ok((false, released));
        };
        if claim.host_ref() == host.meta().name.as_deref() && host.claimed_state_recorded() {
            return Ok((false, released));
        }
        tracing::info!(claim = %claim.name_any(), host = %host.name_any(), "finishing a half-done bind");
        let done = self.complete(fence, claim, host).await?;
        Ok((done, released))
    }

    /// Steps 2 and 3 for a host that names the claim.
    async fn complete(&self, fence: &Fence, claim: &C, host: &H) -> Result<bool, StepError> {
        let result = async {
            let host = self.pool.mark_claimed(fence, host).await?;
            self.pool.mark_bound(fence, claim, &host.name_any()).await
        }
        .await;
        match result {
            Ok(claim) => {
                self.bound_event(&claim);
                Ok(true)
            }
            Err(StepError::Fenced) => Err(StepError::Fenced),
            Err(err) => {
                self.metrics.attempt(err.outcome());
                tracing::debug!(claim = %claim.name_any(), %err, "finishing failed; retried next batch");
                Ok(false)
            }
        }
    }

    /// Binds the claims no host names, in priority order.
    async fn serve(
        &self,
        fence: &Fence,
        hosts: &[H],
        waiting: &[&C],
    ) -> Result<(usize, usize), StepError> {
        let now = jiff::Timestamp::now();
        let age = |c: &C| {
            c.meta()
                .creation_timestamp
                .as_ref()
                .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
                .unwrap_or_default()
        };
        // Claims by `namespace/name`: claims of tenant namespaces may share a name.
        let key = |c: &C| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
        // A claim whose selector breaks a rule can never be served until its spec changes: Failed, with
        // the field, value and rule in the condition's message.
        let mut by_name: BTreeMap<String, (&C, Requirements)> = BTreeMap::new();
        for claim in waiting {
            match claim.requirements() {
                Ok(requirements) => {
                    by_name.insert(key(claim), (*claim, requirements));
                }
                Err(err) => {
                    let message = err.to_string();
                    self.set_pending(
                        fence,
                        claim,
                        "InvalidHostSelector",
                        &message,
                        ClaimPhase::Failed,
                    )
                    .await?;
                }
            }
        }
        let mut order: Vec<Pending> = by_name
            .values()
            .map(|(c, requirements)| Pending {
                name: key(c),
                age: age(c),
                simple: requirements.is_simple(),
                attempts: c.attempts(),
            })
            .collect();
        priority::sort(&mut order, self.max_wait);
        let oldest = order.iter().map(|p| p.age).max().unwrap_or_default();
        let available: Vec<&H> = hosts.iter().filter(|h| h.is_available()).collect();
        let candidates: Vec<Candidate> =
            available.iter().map(|h| Candidate::from_host(*h)).collect();
        let pool: Vec<Candidate> = hosts.iter().map(Candidate::from_host).collect();
        // In priority order, each claim ranks the hosts not yet taken by how many claims after it fit them.
        let mut batch = Batch::new(
            &candidates,
            order.iter().map(|p| &by_name[&p.name].1).collect(),
        );
        let mut bound = 0;
        let mut served = 0;
        let mut plan = Vec::new();
        for (k, pending) in order.iter().enumerate() {
            let (claim, requirements) = &by_name[&pending.name];
            let claim = *claim;
            let started = Instant::now();
            served += 1;
            // An optimistic claimer's intent is honoured while its host is free.
            let intent = claim.selected_host();
            let Some(index) = batch.serve(k, &claim.name_any(), intent) else {
                if let Some(host) = intent {
                    // The intended host is gone or taken: the claim is pending again.
                    let message = format!("host {host} is no longer available");
                    self.set_pending(fence, claim, "IntentStale", &message, ClaimPhase::Pending)
                        .await?;
                    continue;
                }
                self.metrics.attempt(Outcome::NoHosts);
                self.metrics
                    .result(Outcome::NoHosts, started.elapsed().as_secs_f64());
                // Why it waits, on the claim (not terminal: a host may join or be freed).
                let (reason, message) = if pool.iter().any(|h| h.fits(requirements)) {
                    (
                        "NoHostAvailable",
                        "the hosts that match the host selector and minimums are taken or skipped",
                    )
                } else {
                    (
                        "Unsatisfiable",
                        "no host in the pool matches the host selector and minimums",
                    )
                };
                self.set_pending(fence, claim, reason, message, ClaimPhase::Pending)
                    .await?;
                continue;
            };
            let host = available[index];
            tracing::info!(claim = %pending.name, host = %host.name_any(), term = ?fence.term(), "Processing claim as leader");
            plan.push((claim, host, started));
        }
        // The hosts are chosen (in priority order, each once); the binds touch disjoint objects, so they
        // are sent together, each still host first, at most `max_concurrent_binds` at once.
        let binds: Vec<_> = plan
            .into_iter()
            .map(|(claim, host, started)| self.bind(fence, claim, host, started))
            .collect();
        let mut binds = futures::stream::iter(binds).buffer_unordered(self.max_concurrent_binds);
        let mut fenced = false;
        while let Some((claim, result, seconds, counted)) = binds.next().await {
            fenced |= counted.is_err();
            match result {
                Ok(claim) => {
                    self.bound_event(&claim);
                    bound += 1;
                    self.metrics.attempt(Outcome::Success);
                    self.metrics.result(Outcome::Success, seconds);
                }
                Err(StepError::Fenced) => fenced = true,
                Err(err) => {
                    let outcome = err.outcome();
                    self.metrics.attempt(outcome);
                    self.metrics.result(outcome, seconds);
                    tracing::debug!(claim = %claim.name_any(), %err, "bind failed; retried next batch");
                }
            }
        }
        if fenced {
            return Err(StepError::Fenced);
        }
        self.metrics
            .batch(waiting.len(), oldest.as_secs_f64(), served);
        Ok((bound, served))
    }

    /// Binds `claim` to `host`, host first; a failed bind counts an attempt on the claim. Returns the
    /// claim, the result, the seconds since `started`, and whether the attempt could be counted
    /// ([`StepError::Fenced`] only).
    async fn bind<'c>(
        &self,
        fence: &Fence,
        claim: &'c C,
        host: &H,
        started: Instant,
    ) -> (&'c C, Result<C, StepError>, f64, Result<(), StepError>) {
        let result = async {
            let host = self.pool.claim_host(fence, host, claim).await?;
            let host = self.pool.mark_claimed(fence, &host).await?;
            self.pool.mark_bound(fence, claim, &host.name_any()).await
        }
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let counted = match &result {
            Err(err) if !matches!(err.outcome(), Outcome::Error) => {
                self.step(claim, || self.pool.count_attempt(fence, claim))
                    .await
            }
            _ => Ok(()),
        };
        (claim, result, seconds, counted)
    }

    /// The claim back to `phase` with `reason` and `message` (best effort, as [`Binder::step`]); an Event
    /// when that changed its status: a Warning for a claim that no host can serve, else Normal.
    async fn set_pending(
        &self,
        fence: &Fence,
        claim: &C,
        reason: &str,
        message: &str,
        phase: ClaimPhase,
    ) -> Result<(), StepError> {
        match self
            .pool
            .mark_pending(fence, claim, reason, message, phase)
            .await
        {
            Ok(updated) if updated.resource_version() != claim.resource_version() => {
                let type_ = if phase == ClaimPhase::Failed || reason == "Unsatisfiable" {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                self.event(
                    claim.object_ref(&()),
                    type_,
                    reason,
                    "Wait",
                    message.to_owned(),
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(StepError::Fenced) => Err(StepError::Fenced),
            Err(err) => {
                tracing::debug!(claim = %claim.name_any(), %err, "claim status write failed; retried next batch");
                Ok(())
            }
        }
    }

    /// The `Bound` Event of a claim just bound.
    fn bound_event(&self, claim: &C) {
        let note = format!("bound to host {}", claim.host_ref().unwrap_or_default());
        self.event(
            claim.object_ref(&()),
            EventType::Normal,
            "Bound",
            "Bind",
            note,
        );
    }

    /// Records an Event when the binder has a recorder ([`Binder::events`]).
    fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if let Some(events) = &self.events {
            events.publish(regarding, type_, reason, action, note);
        }
    }

    /// Runs a best-effort claim status write: only [`StepError::Fenced`] stops the batch.
    async fn step<F, Fut>(&self, claim: &C, write: F) -> Result<(), StepError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, StepError>>,
    {
        match write().await {
            Ok(_) => Ok(()),
            Err(StepError::Fenced) => Err(StepError::Fenced),
            Err(err) => {
                tracing::debug!(claim = %claim.name_any(), %err, "claim status write failed; retried next batch");
                Ok(())
            }
        }
    }
}

/// Whether a watch event may change a batch's decisions (`Some`), as [`Written::is_news`]; a watch error
/// is logged (the watch retries with backoff).
fn news<K: Object>(
    written: &Written<K>,
    event: Result<watcher::Event<K>, watcher::Error>,
) -> Option<()> {
    match event {
        Ok(event) => written.is_news(&event).then_some(()),
        Err(err) => {
            tracing::warn!(%err, kind = %K::kind(&()), "watch failed; retrying with backoff");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kube::api::ObjectMeta;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::resources::{
        Hardware, HostClaimSpec, HostState, PhysicalHostSpec, PhysicalHostStatus,
    };

    /// Requests in flight now, and the most seen at once.
    #[derive(Debug, Default)]
    struct InFlight {
        now: AtomicUsize,
        most: AtomicUsize,
        answered: AtomicUsize,
    }

    /// A client whose API server holds every request 10 ms, then answers a PUT with the object sent, its
    /// resourceVersion one higher; `in_flight` counts the requests held.
    fn fake_client(in_flight: Arc<InFlight>) -> kube::Client {
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let in_flight = in_flight.clone();
            async move {
                let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
                in_flight.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                let body = request.into_body().collect_bytes().await?;
                let mut object: serde_json::Value = serde_json::from_slice(&body)?;
                let rv: u64 = object["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse().ok())
                    .unwrap_or_default();
                object["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
                in_flight.now.fetch_sub(1, Ordering::SeqCst);
                in_flight.answered.fetch_add(1, Ordering::SeqCst);
                Ok::<_, leaderelection_controller::BoxError>(http::Response::new(
                    kube::client::Body::from(serde_json::to_vec(&object)?),
                ))
            }
        });
        kube::Client::new(service, "default")
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_concurrent_binds_are_in_flight() {
        let in_flight = Arc::new(InFlight::default());
        let pool = Pool::new(fake_client(in_flight.clone()), "default", "leader");
        let hosts: Vec<PhysicalHost> = (0..30)
            .map(|i| PhysicalHost {
                metadata: meta(&format!("h-{i:02}")),
                spec: PhysicalHostSpec::default(),
                status: Some(PhysicalHostStatus {
                    state: HostState::Available,
                    ready: true,
                    hardware: Hardware {
                        cpu_cores: 8,
                        memory_gib: 32,
                    },
                    error_message: None,
                }),
            })
            .collect();
        let claims: Vec<HostClaim> = (0..30)
            .map(|i| HostClaim {
                metadata: meta(&format!("c-{i:02}")),
                spec: HostClaimSpec::default(),
                status: None,
            })
            .collect();
        let binder = Binder::new(
            pool,
            Metrics::new(&mut Registry::default()),
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
        .max_concurrent_binds(4);
        let report = binder
            .batch_on(&Fence::Unfenced, &hosts, &claims)
            .await
            .unwrap();
        assert_eq!((report.bound, report.served), (30, 30));
        // Three PUTs per bind (host, host status, claim status), one bind's PUTs one after the other.
        assert_eq!(in_flight.answered.load(Ordering::SeqCst), 90);
        assert_eq!(in_flight.most.load(Ordering::SeqCst), 4);
    }
}
