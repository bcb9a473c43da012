//! An in-process cluster for the demo, the benchmark and the tests: the fake API server with the two custom
//! resources, a pool of hosts, coordinator replicas that can be killed (each in its own thread and tokio
//! runtime, so a kill drops every task at once, with no release of the Lease: a crash), and the two
//! invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, CustomResourceExt, Resource as _, ResourceExt};
use leaderelection::fencing::{FencingPolicy, GuardedResource};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use claim_coordinator::claimer::Claimer;
use claim_coordinator::coordinator;
use claim_coordinator::metrics::Metrics;
use claim_coordinator::provider::Claim as _;
use claim_coordinator::resources::{
    GROUP, Hardware, HostClaim, HostClaimSpec, HostState, PhysicalHost, PhysicalHostSpec,
    PhysicalHostStatus, VERSION,
};
use claim_coordinator::settings::Settings;
use claim_coordinator::steps::Fence;
use leaderelection::{KubeLeaseLock, LeaderState, Term};
use leaderelection_controller::BoxError;

/// A fence of the term `transitions` of the leader `leader` that stays current (no deadline) while the
/// sender is kept: for driving [`claim_coordinator::Binder::batch`] directly.
#[must_use]
pub fn current_term(transitions: i32) -> (Fence, tokio::sync::watch::Sender<LeaderState>) {
    let (tx, rx) = tokio::sync::watch::channel(LeaderState {
        leader: Some("leader".into()),
        lease_transitions: transitions,
        term: Some(Term {
            holder: "leader".into(),
            transitions,
            acquire_time: None,
        }),
        ..LeaderState::default()
    });
    (
        Fence::Term {
            transitions,
            state: rx,
        },
        tx,
    )
}

/// The namespace of the simulated pool and Lease.
pub const NAMESPACE: &str = "default";

/// The two resource types for [`fake_apiserver::Builder::custom_resource`] (namespaced, with `/status`), with
/// their CRDs' short names and printer columns (so that `kubectl get hostclaims` shows phase and host).
#[must_use]
pub fn fake_resource_types() -> [fake_apiserver::ResourceType; 2] {
    let custom = |crd: CustomResourceDefinition| {
        let names = &crd.spec.names;
        let mut rt =
            fake_apiserver::ResourceType::custom(GROUP, VERSION, &names.kind, &names.plural, true);
        rt.short_names = names.short_names.clone().unwrap_or_default();
        rt.printer_columns = crd
            .spec
            .versions
            .iter()
            .flat_map(|v| v.additional_printer_columns.iter().flatten())
            .map(|c| fake_apiserver::PrinterColumn {
                name: c.name.clone(),
                type_: c.type_.clone(),
                json_path: c.json_path.clone(),
                description: c.description.clone().unwrap_or_default(),
            })
            .collect();
        rt
    };
    [custom(PhysicalHost::crd()), custom(HostClaim::crd())]
}

/// The timings of the demo and the benchmark: lease 2 s, renew deadline 1.5 s, retry period 250 ms,
/// processing interval 200 ms (a takeover within about 2 s), mode auto.
#[must_use]
pub fn fast_settings() -> Settings {
    Settings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(250),
        processing_interval: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// A host to create: name, tags, size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    /// The host's name.
    pub name: String,
    /// Its labels.
    pub tags: BTreeMap<String, String>,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
}

/// The fake API server with the pool's resources registered.
pub struct Cluster {
    /// The server.
    pub server: FakeApiServer,
    /// A client on the default listener (for the harness itself).
    pub client: Client,
}

// === impl Cluster ===

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the server.
    ///
    /// # Errors
    ///
    /// Binding the loopback port, or building the client.
    pub async fn start() -> Result<Self, BoxError> {
        let mut builder = FakeApiServer::builder();
        for rt in fake_resource_types() {
            builder = builder.custom_resource(rt);
        }
        let server = builder.start().await?;
        let client = KubeLeaseLock::client_for_url(&server.url())?;
        Ok(Self { server, client })
    }

    /// The hosts API (harness client).
    #[must_use]
    pub fn hosts(&self) -> Api<PhysicalHost> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// The claims API (harness client).
    #[must_use]
    pub fn claims(&self) -> Api<HostClaim> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Creates a host and makes it `Available` and ready.
    ///
    /// # Errors
    ///
    /// The API errors of the two writes.
    pub async fn add_host(&self, plan: &HostPlan) -> Result<(), kube::Error> {
        create_host(&self.hosts(), plan).await
    }

    /// Creates a claim (with the release finalizer), as a consumer would.
    ///
    /// # Errors
    ///
    /// The API error of the create.
    pub async fn add_claim(&self, name: &str, spec: HostClaimSpec) -> Result<(), kube::Error> {
        let claim = HostClaim::with_release_finalizer(name, spec);
        self.claims()
            .create(&PostParams::default(), &claim)
            .await
            .map(drop)
    }

    /// Reads every host and claim.
    ///
    /// # Errors
    ///
    /// The API error of a list.
    pub async fn snapshot(&self) -> Result<Snapshot, kube::Error> {
        Ok(Snapshot {
            hosts: self.hosts().list(&ListParams::default()).await?.items,
            claims: self.claims().list(&ListParams::default()).await?.items,
        })
    }

    /// Installs the fencing policy of the coordinator Lease `lease_name` (in [`NAMESPACE`]) for the hosts,
    /// lenient (`leader-elect fencing-policy --lease-name <lease_name> --resource
    /// claims.leaderelection.dev/v1alpha1/physicalhosts`): the server then refuses with 422 a host write
    /// stamped with a term older than the Lease's `leaseTransitions`.
    ///
    /// # Errors
    ///
    /// The API error of a create.
    pub async fn install_fencing(&self, lease_name: &str) -> Result<(), BoxError> {
        let hosts = GuardedResource::new(GROUP, VERSION, &PhysicalHost::plural(&()))?;
        let (policy, binding) = FencingPolicy::new(NAMESPACE, lease_name)
            .resource(hosts)
            .build()?;
        Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
            .create(&PostParams::default(), &policy)
            .await?;
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    /// Conflicts (409 answers) and writes (PUT, POST, DELETE answers) on hosts and claims since the last
    /// reset, not counting the creation of hosts and claims.
    #[must_use]
    pub fn api_counts(&self) -> ApiCounts {
        let mut counts = ApiCounts::default();
        for answer in self.server.answer_counts() {
            if answer.resource != "physicalhosts" && answer.resource != "hostclaims" {
                continue;
            }
            if answer.code == 409 {
                counts.conflicts += answer.count;
            }
            if matches!(answer.verb.as_str(), "update" | "patch" | "delete") {
                counts.writes += answer.count;
            }
        }
        counts
    }
}

/// Creates a host through `hosts` (its namespace) and makes it `Available` and ready.
///
/// # Errors
///
/// The API errors of the two writes.
pub async fn create_host(hosts: &Api<PhysicalHost>, plan: &HostPlan) -> Result<(), kube::Error> {
    let host = PhysicalHost {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            labels: Some(plan.tags.clone()),
            ..ObjectMeta::default()
        },
        spec: PhysicalHostSpec::default(),
        status: None,
    };
    let mut created = hosts.create(&PostParams::default(), &host).await?;
    created.status = Some(PhysicalHostStatus {
        state: HostState::Available,
        ready: true,
        hardware: Hardware {
            cpu_cores: plan.cpu_cores,
            memory_gib: plan.memory_gib,
        },
        error_message: None,
    });
    hosts
        .replace_status(&plan.name, &PostParams::default(), &created)
        .await?;
    Ok(())
}

/// 409s and writes on hosts and claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCounts {
    /// 409 Conflict answers.
    pub conflicts: u64,
    /// Update, patch and delete requests answered.
    pub writes: u64,
}

/// Every host and claim at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The hosts.
    pub hosts: Vec<PhysicalHost>,
    /// The claims.
    pub claims: Vec<HostClaim>,
}

/// The two invariants, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// Hosts two claims own: its `consumerRef` and another claim's `hostRef`, or two claims' `hostRef`.
    pub hosts_with_two_consumers: BTreeSet<String>,
    /// Claims two hosts name (`consumerRef`), or one host names and its `hostRef` names another.
    pub claims_with_two_hosts: BTreeSet<String>,
    /// Hosts whose `consumerRef` went from one consumer to another in a single write (seen by a watch,
    /// so no write is missed between snapshots): only a write that ignores the host's consumer, such as a
    /// patch without resourceVersion (cluster-api-provider-metal3#3189), does that; the binder clears a
    /// consumer (release) before another can be set.
    pub consumers_replaced: BTreeSet<String>,
}

// === impl Violations ===

impl Violations {
    /// Whether both invariants hold.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts_with_two_consumers.is_empty()
            && self.claims_with_two_hosts.is_empty()
            && self.consumers_replaced.is_empty()
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Checks the invariants (by claim uid, so a claim deleted and created again is another claim).
    #[must_use]
    pub fn violations(&self) -> Violations {
        let uid_of: BTreeMap<String, String> = self
            .claims
            .iter()
            .map(|c| (c.name_any(), c.metadata.uid.clone().unwrap_or_default()))
            .collect();
        let mut host_owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut claim_hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for host in &self.hosts {
            if let Some(c) = &host.spec.consumer_ref {
                host_owners
                    .entry(host.name_any())
                    .or_default()
                    .insert(c.uid.clone());
                claim_hosts
                    .entry(c.uid.clone())
                    .or_default()
                    .insert(host.name_any());
            }
        }
        for claim in &self.claims {
            if let Some(host) = claim.host_ref() {
                let uid = uid_of[&claim.name_any()].clone();
                host_owners
                    .entry(host.to_owned())
                    .or_default()
                    .insert(uid.clone());
                claim_hosts.entry(uid).or_default().insert(host.to_owned());
            }
        }
        let name_of: BTreeMap<&String, String> = uid_of
            .iter()
            .map(|(name, uid)| (uid, name.clone()))
            .collect();
        Violations {
            hosts_with_two_consumers: host_owners
                .into_iter()
                .filter(|(_, owners)| owners.len() > 1)
                .map(|(host, _)| host)
                .collect(),
            claims_with_two_hosts: claim_hosts
                .into_iter()
                .filter(|(_, hosts)| hosts.len() > 1)
                .map(|(uid, _)| name_of.get(&uid).cloned().unwrap_or(uid))
                .collect(),
            consumers_replaced: BTreeSet::new(),
        }
    }

    /// Names of the bound claims.
    #[must_use]
    pub fn bound(&self) -> BTreeSet<String> {
        self.claims
            .iter()
            .filter(|c| c.host_ref().is_some())
            .map(ResourceExt::name_any)
            .collect()
    }
}

/// A request to a replica's consumer: claim `name` with `spec`.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The claim's name.
    pub name: String,
    /// What it needs.
    pub spec: HostClaimSpec,
}

/// What a replica reports back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The replica's consumer got `host` for `claim`.
    Bound {
        /// The claim.
        claim: String,
        /// The host.
        host: String,
    },
}

/// A coordinator replica in its own thread and tokio runtime, on its own listener of the server, with a
/// consumer ([`Claimer`]) that claims hosts on request.
#[derive(Debug)]
pub struct Replica {
    /// The identity.
    pub identity: String,
    /// The listener id (for per-replica faults).
    pub listener: usize,
    requests: mpsc::UnboundedSender<ClaimRequest>,
    shutdown: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

// === impl Replica ===

impl Replica {
    /// Starts a replica as `identity` on a new listener of `cluster`'s server.
    ///
    /// # Errors
    ///
    /// Opening the listener.
    pub async fn start(
        cluster: &Cluster,
        identity: &str,
        settings: &Settings,
        events: mpsc::UnboundedSender<ReplicaEvent>,
    ) -> Result<Self, BoxError> {
        let listener = cluster.server.add_listener().await?;
        let url = listener.url();
        let (requests, mut incoming) = mpsc::unbounded_channel::<ClaimRequest>();
        let shutdown = CancellationToken::new();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let (identity, settings, shutdown) =
                (identity.to_owned(), settings.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(identity.clone())
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        let Ok(client) = KubeLeaseLock::client_for_url(&url) else {
                            return;
                        };
                        let claimer_metrics = Metrics::new(&mut Registry::default());
                        let Ok((runtime, _)) = coordinator::replica(
                            client.clone(),
                            &settings,
                            &identity,
                            NAMESPACE,
                            Registry::default(),
                            None,
                        ) else {
                            return;
                        };
                        let claimer =
                            Claimer::new(client, NAMESPACE, &identity, &settings, claimer_metrics);
                        let consumers = tokio_util::task::TaskTracker::new();
                        let consume = async {
                            while let Some(request) = incoming.recv().await {
                                let (claimer, events, shutdown) =
                                    (claimer.clone(), events.clone(), shutdown.clone());
                                consumers.spawn(async move {
                                    if let Ok(host) =
                                        claimer.claim(&request.name, request.spec, &shutdown).await
                                    {
                                        let _ = events.send(ReplicaEvent::Bound {
                                            claim: request.name,
                                            host,
                                        });
                                    }
                                });
                            }
                        };
                        let run = runtime.run(shutdown.clone());
                        tokio::select! {
                            _ = killed => {}
                            result = run => {
                                if let Err(err) = result {
                                    tracing::error!(%err, "replica stopped");
                                }
                            }
                            () = consume => {}
                        }
                        consumers.close();
                    });
                    // Dropping the runtime drops every task still running: a crash after a kill.
                    rt.shutdown_background();
                })?
        };
        Ok(Self {
            identity: identity.to_owned(),
            listener: listener.id(),
            requests,
            shutdown,
            kill: Some(kill),
            thread: Some(thread),
        })
    }

    /// Asks this replica's consumer to claim a host.
    pub fn request(&self, request: ClaimRequest) {
        let _ = self.requests.send(request);
    }

    /// Kills the replica at once: every task dropped, nothing released (a crash, `kill -9`); returns once
    /// its thread is gone.
    pub async fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.join().await;
    }

    /// Stops the replica gracefully (its binder stops, then the Lease is released); returns once its thread
    /// is gone.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Whether the replica still runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Replica {
    /// A replica dropped while running is killed; its thread ends on its own.
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// A pool of `count` hosts: every fifth has `gpu=a100`, every third `rack=2` (else `rack=1`), sizes from 8
/// to 64 cores and 32 to 512 GiB.
#[must_use]
pub fn host_plans(count: usize) -> Vec<HostPlan> {
    (0..count)
        .map(|i| {
            let mut tags = BTreeMap::new();
            if i % 5 == 0 {
                tags.insert("gpu".to_owned(), "a100".to_owned());
            }
            let rack = if i % 3 == 0 { "2" } else { "1" };
            tags.insert("rack".to_owned(), rack.to_owned());
            let size = u32::try_from(i % 4).unwrap_or(0);
            HostPlan {
                name: format!("host-{i:02}"),
                tags,
                cpu_cores: 8 << size,
                memory_gib: 32 << size,
            }
        })
        .collect()
}

/// `count` claims for a pool of `hosts` hosts from [`host_plans`], all satisfiable together: a quarter
/// need a GPU (at most one per GPU host), some prefer rack 2, some need 32 cores; chosen by `rng`.
#[must_use]
pub fn claim_plans(count: usize, hosts: usize, rng: &mut impl rand::Rng) -> Vec<ClaimRequest> {
    let gpu_hosts = hosts.div_ceil(5);
    let mut gpu_claims = 0;
    (0..count)
        .map(|i| {
            let mut spec = HostClaimSpec {
                image_url: "http://images.example/os-1.iso".into(),
                ..HostClaimSpec::default()
            };
            match rng.random_range(0..4) {
                0 if gpu_claims < gpu_hosts => {
                    gpu_claims += 1;
                    spec.required_tags.push("gpu".into());
                }
                1 => spec.preferred_tags.push("rack=2".into()),
                2 => spec.min_cpu_cores = 32,
                _ => {}
            }
            ClaimRequest {
                name: format!("claim-{i:02}"),
                spec,
            }
        })
        .collect()
}

/// What a [`Monitor`] saw.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Per claim: when it was first seen (within 20 ms of its creation), from the monitor's start.
    pub seen_at: BTreeMap<String, Duration>,
    /// Per claim: when it was first seen bound, from the monitor's start.
    pub bound_at: BTreeMap<String, Duration>,
    /// Every invariant violation seen in any snapshot.
    pub violations: Violations,
    /// Snapshots taken.
    pub snapshots: usize,
    /// Holder changes of the coordinator Lease: (when, holder).
    pub leaders: Vec<(Duration, String)>,
}

// === impl Observed ===

impl Observed {
    /// Per bound claim: from first seen to first seen bound (20 ms resolution).
    #[must_use]
    pub fn time_to_claim(&self) -> Vec<Duration> {
        self.bound_at
            .iter()
            .filter_map(|(name, bound)| {
                self.seen_at
                    .get(name)
                    .map(|seen| bound.saturating_sub(*seen))
            })
            .collect()
    }
}

/// Reads every host and claim every 20 ms until stopped: first-bound times, invariants on every snapshot,
/// and the coordinator Lease's holder; and watches the hosts, so that a write replacing a host's consumer
/// is seen even between snapshots ([`Violations::consumers_replaced`]).
#[derive(Debug)]
pub struct Monitor {
    observed: std::sync::Arc<std::sync::Mutex<Observed>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    history: tokio::task::JoinHandle<()>,
    started: tokio::time::Instant,
}

// === impl Monitor ===

impl Monitor {
    /// Starts monitoring `cluster` (Lease `lease_name` in [`NAMESPACE`]) every 20 ms.
    #[must_use]
    pub fn start(cluster: &Cluster, lease_name: &str) -> Self {
        Self::every(cluster, lease_name, Duration::from_millis(20))
    }

    /// Starts monitoring `cluster` every `interval`.
    #[must_use]
    pub fn every(cluster: &Cluster, lease_name: &str, interval: Duration) -> Self {
        let observed = std::sync::Arc::new(std::sync::Mutex::new(Observed::default()));
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let (hosts, claims) = (cluster.hosts(), cluster.claims());
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(cluster.client.clone(), NAMESPACE);
        let task = tokio::spawn({
            let (observed, stop, lease_name) =
                (observed.clone(), stop.clone(), lease_name.to_owned());
            async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let (Ok(h), Ok(c)) = (
                        hosts.list(&ListParams::default()).await,
                        claims.list(&ListParams::default()).await,
                    ) else {
                        continue;
                    };
                    let snapshot = Snapshot {
                        hosts: h.items,
                        claims: c.items,
                    };
                    let holder = leases
                        .get_opt(&lease_name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec.and_then(|s| s.holder_identity))
                        .unwrap_or_default();
                    let now = started.elapsed();
                    let violations = snapshot.violations();
                    let mut o = observed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    o.snapshots += 1;
                    for claim in &snapshot.claims {
                        o.seen_at.entry(claim.name_any()).or_insert(now);
                    }
                    for name in snapshot.bound() {
                        o.bound_at.entry(name).or_insert(now);
                    }
                    o.violations
                        .hosts_with_two_consumers
                        .extend(violations.hosts_with_two_consumers);
                    o.violations
                        .claims_with_two_hosts
                        .extend(violations.claims_with_two_hosts);
                    if !holder.is_empty() && o.leaders.last().is_none_or(|(_, h)| *h != holder) {
                        o.leaders.push((now, holder));
                    }
                }
            }
        });
        let history = tokio::spawn(watch_consumers(
            cluster.hosts(),
            observed.clone(),
            stop.clone(),
        ));
        Self {
            observed,
            stop,
            task,
            history,
            started,
        }
    }

    /// Time since the monitor started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What was seen so far.
    #[must_use]
    pub fn observed(&self) -> Observed {
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `done` holds for what was seen, checking every 20 ms, for at most `limit`; returns
    /// whether it held.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&Observed) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.observed()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops monitoring and returns what was seen.
    pub async fn stop(self) -> Observed {
        self.stop.cancel();
        let observed = self.observed.clone();
        let _ = self.task.await;
        let _ = self.history.await;
        observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Watches `hosts` until `stop`, recording in `observed` every host whose consumer uid changed from one
/// consumer to another in one event. The watch's initial listing (and a relist after it restarts, which
/// may skip writes) only resets what is known: only live changes are compared.
async fn watch_consumers(
    hosts: Api<PhysicalHost>,
    observed: std::sync::Arc<std::sync::Mutex<Observed>>,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let consumer = |host: &PhysicalHost| host.spec.consumer_ref.as_ref().map(|c| c.uid.clone());
    let events = watcher(hosts, watcher::Config::default()).default_backoff();
    tokio::pin!(events);
    let mut known: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut relisting: BTreeMap<String, Option<String>> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(_)) => {}
            Some(Ok(watcher::Event::Init)) => relisting.clear(),
            Some(Ok(watcher::Event::InitApply(host))) => {
                relisting.insert(host.name_any(), consumer(&host));
            }
            Some(Ok(watcher::Event::InitDone)) => known = std::mem::take(&mut relisting),
            Some(Ok(watcher::Event::Apply(host))) => {
                let now = consumer(&host);
                let before = known.insert(host.name_any(), now.clone()).flatten();
                if let (Some(before), Some(now)) = (before, now)
                    && before != now
                {
                    observed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .violations
                        .consumers_replaced
                        .insert(host.name_any());
                }
            }
            Some(Ok(watcher::Event::Delete(host))) => {
                known.remove(&host.name_any());
            }
        }
    }
}

/// The `q` quantile (0..=1) of `values` (nearest rank), zero when empty.
#[must_use]
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
