//! `ShardSet`: one replica's part in K Leases (`<name>-0` .. `<name>-{K-1}`) split among replicas, with
//! one list+watch for all of them, membership from per-replica heartbeat Leases, and balancing.

mod hub;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::hub::{Cached, Hub, SharedLeaseLock};
use crate::{
    BoxError, Callbacks, Config, ConfigError, Elector, ElectorHandle, KubeLeaseLock, LeaseMetadata,
    Term,
};

/// The label that selects every Lease of a shard set (its value: the set's name).
pub const SHARD_SET_LABEL: &str = "leaderelection-shard-set";

/// The label that tells a shard's Lease (`shard`) from a replica's heartbeat Lease (`member`).
pub const ROLE_LABEL: &str = "leaderelection-role";

/// The most shards a set may have.
pub const MAX_SHARDS: u32 = 10_000;

type ShardWorkFn =
    dyn Fn(u32, Term, CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync;

/// A shard set's configuration: the set's name and size, and this replica's identity, namespace and
/// timings (those of [`Config`]: its `lease_name` is the set's name).
///
/// Shard `i` is Lease `<name>-<i>`; replica `identity` heartbeats through Lease `<name>-member-<identity>`.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Identity, namespace, the set's name (as `lease_name`) and the timings of every Lease of the set.
    pub election: Config,
    /// K, the number of shards (1 ..= [`MAX_SHARDS`]).
    pub shards: u32,
}

// === impl ShardConfig ===

impl ShardConfig {
    /// A set of `shards` Leases named after `election.lease_name`.
    #[must_use]
    pub fn new(election: Config, shards: u32) -> Self {
        Self { election, shards }
    }

    /// Checks the rules of [`Config::validate`] for every Lease of the set (shard and heartbeat names
    /// included), and that `shards` is within 1 ..= [`MAX_SHARDS`].
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field, the value and the rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError {
                field: "shards",
                value: self.shards.to_string(),
                rule: format!("must be between 1 and {MAX_SHARDS}"),
            });
        }
        self.shard_config(self.shards - 1).validate()?;
        self.member_config().validate()
    }

    fn shard_name(&self, shard: u32) -> String {
        format!("{}-{shard}", self.election.lease_name)
    }

    fn member_name(&self) -> String {
        format!(
            "{}-member-{}",
            self.election.lease_name, self.election.identity
        )
    }

    fn shard_config(&self, shard: u32) -> Config {
        Config {
            lease_name: self.shard_name(shard),
            ..self.election.clone()
        }
    }

    fn member_config(&self) -> Config {
        Config {
            lease_name: self.member_name(),
            ..self.election.clone()
        }
    }
}

/// What a replica knows of its shard set, published on every change through [`ShardSet::subscribe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardState {
    /// The live members (their heartbeat Lease held and not expired by our clock), sorted.
    pub members: Vec<String>,
    /// How many shards this replica should hold: `K / R`, plus one for the first `K % R` members.
    pub quota: u32,
    /// The shards this replica leads now, with each shard's term (its own fencing token).
    pub held: BTreeMap<u32, Term>,
}

/// One replica's part in a shard set: it holds about `K / R` of the set's K Leases, each through an
/// [`Elector`] of its own (so every rule of the single-Lease election holds per shard: conditional
/// writes, expiry by our clock, the renew deadline, stop the work then release, terms), and runs the
/// shard's work while it leads it.
///
/// - **One watch for all**: one list+watch of the Leases labelled [`SHARD_SET_LABEL`]`=<name>` feeds every
///   shard's elector (their watches cost no request) and the balancer.
/// - **Membership from the API**: each replica holds a heartbeat Lease (`<name>-member-<identity>`,
///   renewed every retry period like any Lease); a member is live while its heartbeat is held and not
///   expired by our clock. A replica that stops releases it, so the others see it leave at once.
/// - **Balancing**: with the live members sorted, member `r` has quota `K / R + (r < K % R)`. A replica
///   above its quota releases its surplus (each shard's work stopped first, then its Lease released); a
///   replica below it contends for shards that are free, expired, or held by a replica that is no longer
///   a member (taken on expiry, by the elector's rules).
///
/// Cost: one renewal per held Lease and per heartbeat per retry period (`(K + R) / retry_period` writes
/// per second for the whole set), one list+watch per replica, and a GET and a write per shard that moves.
///
/// # Examples
///
/// ```no_run
/// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use leaderelection::{Config, ShardConfig, ShardSet};
/// use tokio_util::sync::CancellationToken;
///
/// // Leases "work-0" .. "work-63" in namespace "default"; this replica is "pod-a".
/// let config = ShardConfig::new(Config::new("pod-a", "work", "default"), 64);
/// let set = ShardSet::new(config, client, |shard, term, token| async move {
///     // shard-only work, fenced by term.transitions, until the shard's term ends:
///     token.cancelled().await;
///     Ok(())
/// })?;
/// let shutdown = CancellationToken::new();
/// tokio::spawn(set.run(shutdown.clone()));
/// # Ok(()) }
/// ```
///
/// ## RBAC
///
/// `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch`.
#[derive(Debug)]
pub struct ShardSet {
    config: ShardConfig,
    /// The Leases of the set's namespace (for the list+watch).
    api: kube::Api<Lease>,
    hub: Arc<Hub>,
    /// One elector per shard (run while this replica holds or contends for the shard, once at a time).
    shards: Vec<Arc<Elector>>,
    /// The heartbeat Lease's elector.
    member: Arc<Elector>,
    state: watch::Sender<ShardState>,
}

/// A shard's elector while this replica runs it.
struct Running {
    elector: ElectorHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

// === impl Running ===

impl Running {
    /// Runs `elector` until `parent` is cancelled or [`Balancer::stop`] stops it.
    fn start(elector: &Arc<Elector>, parent: &CancellationToken) -> Self {
        let shutdown = parent.child_token();
        let task = tokio::spawn({
            let elector = Arc::clone(elector);
            let shutdown = shutdown.clone();
            // A shard's elector is run by one task at a time: a stopped one's task is awaited (`stopping`)
            // before the shard is contended for again.
            async move { elector.drive(shutdown).await }
        });
        Self {
            elector: elector.handle(),
            shutdown,
            task,
        }
    }
}

// === impl ShardSet ===

impl ShardSet {
    /// A replica of the set `config`, reaching the API through `client`, running `work(shard, term,
    /// token)` for each shard while it leads it (until `token` is cancelled, as `on_started_leading`; an
    /// `Err` ends that shard's term as [`crate::StopReason::WorkFailed`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`ShardConfig::validate`], or when the set's name is
    /// not a valid label value (`lease_name`).
    pub fn new<F, Fut>(
        config: ShardConfig,
        client: kube::Client,
        work: F,
    ) -> Result<Self, ConfigError>
    where
        F: Fn(u32, Term, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        config.validate()?;
        let work: Arc<ShardWorkFn> =
            Arc::new(move |shard, term, token| work(shard, term, token).boxed());
        let hub = Hub::new();
        let set_name = config.election.lease_name.clone();
        let elector = |config: Config, role: &str, callbacks: Callbacks| {
            let mut labels = BTreeMap::new();
            labels.insert(SHARD_SET_LABEL.to_owned(), set_name.clone());
            labels.insert(ROLE_LABEL.to_owned(), role.to_owned());
            let name = config.lease_name.clone();
            let lock = KubeLeaseLock::new(client.clone(), &config.lease_namespace, &name)
                .with_metadata(LeaseMetadata {
                    labels,
                    ..LeaseMetadata::default()
                })
                .map_err(|e| ConfigError {
                    field: "lease_name",
                    value: name.clone(),
                    rule: format!("must be a valid label value: {e}"),
                })?;
            Elector::new(
                config,
                SharedLeaseLock::new(lock, &name, hub.clone()),
                callbacks,
            )
            .map(Arc::new)
        };
        let shards = (0..config.shards)
            .map(|shard| {
                let work = Arc::clone(&work);
                let callbacks = Callbacks::new()
                    .on_started_leading(move |term, token| work(shard, term, token));
                elector(config.shard_config(shard), "shard", callbacks)
            })
            .collect::<Result<_, _>>()?;
        let member = elector(config.member_config(), "member", Callbacks::new())?;
        Ok(Self {
            api: kube::Api::namespaced(client, &config.election.lease_namespace),
            config,
            hub,
            shards,
            member,
            state: watch::Sender::new(ShardState::default()),
        })
    }

    /// A receiver of every change of [`ShardState`].
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<ShardState> {
        self.state.subscribe()
    }

    /// Runs this replica's part until `shutdown` is cancelled: list+watch, heartbeat, balancing, one
    /// elector per shard held or contended for. On shutdown every shard's work is stopped and its Lease
    /// released (each shard keeps being renewed while its work drains, as [`Elector::run`] does), and
    /// the heartbeat is released; `run` returns once all have.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is not a clean stop: the tasks it started (the list+watch, the heartbeat, the
    /// shards' electors) run on, unawaited, until `shutdown` is cancelled (then they stop their work and
    /// release as usual). Cancel `shutdown` and await `run` instead.
    pub async fn run(self, shutdown: CancellationToken) {
        let hub = &self.hub;
        let election = &self.config.election;
        let selector = format!("{SHARD_SET_LABEL}={}", election.lease_name);
        let informer_stop = shutdown.child_token();
        let informer = tokio::spawn(hub.clone().run(
            self.api.clone(),
            selector,
            election.retry_period,
            election.effective_request_timeout(),
            informer_stop.clone(),
        ));
        let heartbeat = Running::start(&self.member, &shutdown);
        let mut balancer = Balancer {
            set: &self,
            shutdown: &shutdown,
            heartbeat: &heartbeat.elector,
            member_since: None,
            running: BTreeMap::new(),
            stopping: Vec::new(),
        };
        let mut changes = hub.subscribe();
        loop {
            balancer.step();
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = changes.changed() => {}
                () = sleep(election.retry_period) => {}
            }
        }
        balancer.stop_all().await;
        heartbeat.shutdown.cancel();
        let _ = heartbeat.task.await;
        informer_stop.cancel();
        let _ = informer.await;
    }
}

/// The balancing loop's state.
struct Balancer<'a> {
    set: &'a ShardSet,
    /// The parent of every shard elector's token.
    shutdown: &'a CancellationToken,
    heartbeat: &'a ElectorHandle,
    /// Since when our heartbeat has been ours, without a break.
    member_since: Option<Instant>,
    running: BTreeMap<u32, Running>,
    /// Electors told to stop (their work stopping, then their Lease released), by shard: not started
    /// again before they have.
    stopping: Vec<(u32, JoinHandle<()>)>,
}

// === impl Balancer ===

impl Balancer<'_> {
    fn identity(&self) -> &str {
        &self.set.config.election.identity
    }

    /// One pass: read membership, then release surplus or contend for missing shards.
    fn step(&mut self) {
        self.stopping.retain(|(_, t)| !t.is_finished());
        let busy: BTreeSet<u32> = self
            .running
            .keys()
            .chain(self.stopping.iter().map(|(shard, _)| shard))
            .copied()
            .collect();
        let now = Instant::now();
        let cache = self.set.hub.snapshot();
        let set = self.set;
        let config = &set.config;
        let identity = config.election.identity.as_str();
        let live = |c: &Cached| c.record.is_held() && now < c.observed_at + duration(c);
        // A holder renews every retry period: a shard silent for three is contended for (its Lease is
        // then taken when it expires by the shard elector's own clock), as is one that names us while
        // we do not run its elector (an acquire abandoned when the elector was stopped).
        let renewing = |c: &Cached| now < c.observed_at + 3 * config.election.retry_period;
        let mut members: BTreeSet<String> = cache
            .values()
            .filter(|c| role(c) == Some("member") && live(c))
            .map(|c| c.record.holder_identity.clone())
            .collect();
        if self.heartbeat.is_leader() {
            members.insert(self.identity().to_owned());
            self.member_since.get_or_insert(now);
        } else {
            self.member_since = None;
        }
        let members: Vec<String> = members.into_iter().collect();
        // Contend only after a retry period as a member: replicas started together see one another
        // first, rather than each taking every shard and releasing most of them again.
        let settled = self
            .member_since
            .is_some_and(|since| now >= since + config.election.retry_period);
        let quota = match members.iter().position(|m| m == self.identity()) {
            Some(_) if !settled => 0,
            Some(rank) => {
                let r = u32::try_from(members.len()).unwrap_or(u32::MAX);
                config.shards / r
                    + u32::from(u32::try_from(rank).unwrap_or(u32::MAX) < config.shards % r)
            }
            None => 0,
        };
        let held_by_member = |shard: u32| -> Option<String> {
            cache
                .get(&config.shard_name(shard))
                .filter(|c| {
                    live(c)
                        && renewing(c)
                        && members.contains(&c.record.holder_identity)
                        && (c.record.holder_identity != identity || busy.contains(&shard))
                })
                .map(|c| c.record.holder_identity.clone())
        };

        // Contending for a shard a live member holds is pointless: stop (a follower's stop costs nothing).
        let lost: Vec<u32> = self
            .running
            .iter()
            .filter(|(shard, r)| {
                !r.elector.is_leader()
                    && held_by_member(**shard).is_some_and(|h| h != self.identity())
            })
            .map(|(shard, _)| *shard)
            .collect();
        for shard in lost {
            self.stop(shard);
        }
        // Surplus: release the shards we rank lowest for (stop the work, then release).
        let mine = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        if mine > quota {
            let mut ours: Vec<u32> = self.running.keys().copied().collect();
            ours.sort_by_key(|s| std::cmp::Reverse(rank(self.identity(), *s)));
            let surplus = usize::try_from(mine - quota).unwrap_or(usize::MAX);
            for shard in ours.into_iter().take(surplus) {
                info!(identity = %self.identity(), shard, quota, "releasing a shard above our quota");
                self.stop(shard);
            }
        } else if mine < quota {
            let mut free: Vec<u32> = (0..config.shards)
                .filter(|s| !busy.contains(s) && held_by_member(*s).is_none())
                .collect();
            free.sort_by_key(|s| rank(self.identity(), *s));
            let want = usize::try_from(quota - mine).unwrap_or(usize::MAX);
            for shard in free.into_iter().take(want) {
                self.contend(shard);
            }
        }
        let held = self
            .running
            .iter()
            .filter_map(|(shard, r)| {
                r.elector
                    .state()
                    .current_term()
                    .map(|t| (*shard, t.clone()))
            })
            .collect();
        self.set.state.send_if_modified(|state| {
            let next = ShardState {
                members,
                quota,
                held,
            };
            let changed = *state != next;
            *state = next;
            changed
        });
    }

    fn contend(&mut self, shard: u32) {
        if let Some(elector) = self.set.shards.get(shard as usize) {
            self.running
                .insert(shard, Running::start(elector, self.shutdown));
        }
    }

    fn stop(&mut self, shard: u32) {
        if let Some(r) = self.running.remove(&shard) {
            r.shutdown.cancel();
            self.stopping.push((shard, r.task));
        }
    }

    async fn stop_all(&mut self) {
        let shards: Vec<u32> = self.running.keys().copied().collect();
        for shard in shards {
            self.stop(shard);
        }
        for (_, task) in self.stopping.drain(..) {
            let _ = task.await;
        }
    }
}

/// `leaseDurationSeconds` of a cached Lease.
fn duration(c: &Cached) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(c.record.lease_duration_seconds).unwrap_or(0))
}

fn role(c: &Cached) -> Option<&str> {
    c.lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ROLE_LABEL))
        .map(String::as_str)
}

/// A replica's preference for a shard (lower first): a hash of both, so that replicas short of shards
/// reach for different ones first, and release their least preferred.
fn rank(identity: &str, shard: u32) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (identity, shard).hash(&mut hasher);
    hasher.finish()
}
