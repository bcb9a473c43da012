//! `leader-elect-lab claim-bench`: one pool and one set of claims, six arms, each run under two loads (the
//! claims arriving evenly over `--arrival`, and a burst over `--burst`), each run on a fresh embedded fake API
//! server with three replicas (one for (e) and (f)), each replica on its own listener with the same latency:
//!
//! - (a) every replica claims optimistically as Beskar7 did: for each pending claim (10 concurrent
//!   reconciles per replica, every replica reconciling every claim), list the hosts, start at a hash of
//!   `<namespace>-<name>-<date>`, conditional update of the host, then its status, then the claim; 5 tries
//!   with `try x 100 ms` backoff; requeue after 30 s when all 5 conflicted, 60 s when no host is available;
//! - (b) the same reconcilers, optimistic with the intent first ([`Claimer::claim_directly`]); requeue after
//!   5 s when it did not bind;
//! - (c) leader-batched: the replicas elect a leader that binds;
//! - (d) as (c), with the leader killed (no release) once it has bound a third of the claims;
//! - (e) as (b) on one replica: the original as deployed, behind controller-runtime's manager election (one
//!   active replica, 10 concurrent reconciles), with our optimistic path and no leader-elected binder;
//! - (f) as (a) on one replica: the original as deployed, with its own retry loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use claim_coordinator::metrics::Metrics;
use claim_coordinator::provider::{Claim as _, Host as _};
use claim_coordinator::resources::HostClaim;
use claim_coordinator::selection::{Candidate, Requirements, spread};
use claim_coordinator::steps::{Fence, Pool};
use claim_coordinator::{Claimer, Settings};
use fake_apiserver::Faults;
use kube::ResourceExt;
use kube::api::ListParams;
use leaderelection_lab::claim_sim::{
    self as sim, Cluster, Monitor, NAMESPACE, Replica, claim_plans, host_plans, quantile,
};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod selection;

/// `bench`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Hosts in the pool.
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Claims, arriving evenly over `--arrival`.
    #[arg(long, default_value_t = 40)]
    claims: usize,
    /// How long the claims take to arrive, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    arrival: Duration,
    /// Latency added to every request of every replica, in milliseconds.
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
    /// How long an arm may take before it is stopped, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    arm_timeout: Duration,
    /// Seed of the claims' requirements.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the claims take to arrive in the `burst` load, e.g. 50ms.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    burst: Duration,
    /// The loads to run each arm under: `steady` (over `--arrival`), `burst` (over `--burst`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "steady,burst"
    )]
    loads: Vec<Load>,
    /// The arms to run, e.g. `a,c`.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,f", value_parser = parse_arm)]
    arms: Vec<char>,
    /// Instead of the arms: time the leader's selection of --claims pending claims over --hosts hosts,
    /// with no API server (e.g. `--selection --hosts 1000 --claims 1000`; build with --release).
    #[arg(long)]
    selection: bool,
}

/// An arm's letter, `a` to `f`.
fn parse_arm(value: &str) -> std::result::Result<char, String> {
    match value.trim() {
        letter @ ("a" | "b" | "c" | "d" | "e" | "f") => Ok(letter.chars().next().unwrap_or('a')),
        other => Err(format!("arm {other:?}: an arm is one letter from a to f")),
    }
}

/// How the claims arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Load {
    /// Evenly over `--arrival`.
    Steady,
    /// Evenly over `--burst`.
    Burst,
}

/// The six arms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Original,
    Intent,
    Leader,
    LeaderKilled,
    /// [`Arm::Intent`] on one replica.
    SingleIntent,
    /// [`Arm::Original`] on one replica.
    SingleOriginal,
}

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Self::Original => "(a) optimistic, as Beskar7",
            Self::Intent => "(b) optimistic, intent first",
            Self::Leader => "(c) leader-batched",
            Self::LeaderKilled => "(d) leader-batched, leader killed",
            Self::SingleIntent => "(e) 1 replica, intent first",
            Self::SingleOriginal => "(f) 1 replica, as Beskar7",
        }
    }

    /// The active replicas: one for the original as deployed (behind its manager's election), else three.
    fn replicas(self) -> usize {
        match self {
            Self::SingleIntent | Self::SingleOriginal => 1,
            _ => 3,
        }
    }
}

/// One arm's figures.
#[derive(Debug)]
struct Result {
    bound: usize,
    hosts_used: usize,
    conflicts: u64,
    writes: u64,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    two_consumers: usize,
    two_hosts: usize,
    /// From the first claim's creation to the last's.
    arrived: Duration,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.selection {
        return selection::run(args.hosts, args.claims, args.seed);
    }
    println!(
        "leader-elect-lab claim-bench: {} hosts, {} claims, 3 replicas ((e) and (f): 1), {} ms latency per request, seed {}",
        args.hosts, args.claims, args.latency_ms, args.seed
    );
    for load in &args.loads {
        let (name, arrival) = match load {
            Load::Steady => ("steady", args.arrival),
            Load::Burst => ("burst", args.burst),
        };
        println!();
        println!(
            "{name}: {} claims over {}",
            args.claims,
            humantime::format_duration(arrival)
        );
        println!(
            "{:<36} {:>7} {:>6} {:>6} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
            "arm",
            "bound",
            "hosts",
            "409s",
            "409/min",
            "409/cl",
            "writes/cl",
            "p50 ms",
            "p99 ms",
            "max ms",
            "2-cons.h",
            "2-host cl"
        );
        let mut arrived = Duration::ZERO;
        for (letter, arm) in [
            ('a', Arm::Original),
            ('b', Arm::Intent),
            ('c', Arm::Leader),
            ('d', Arm::LeaderKilled),
            ('e', Arm::SingleIntent),
            ('f', Arm::SingleOriginal),
        ] {
            if !args.arms.contains(&letter) {
                continue;
            }
            let r = run_arm(arm, &args, arrival).await?;
            arrived = arrived.max(r.arrived);
            #[allow(clippy::cast_precision_loss)]
            let per = |n: u64| {
                if r.bound == 0 {
                    0.0
                } else {
                    n as f64 / r.bound as f64
                }
            };
            #[allow(clippy::cast_precision_loss)]
            let per_minute = r.conflicts as f64 / (r.wall.as_secs_f64() / 60.0).max(1e-9);
            let ms = |d: Duration| {
                if d == Duration::MAX {
                    "unbound".to_owned()
                } else {
                    format!("{:.0}", d.as_secs_f64() * 1000.0)
                }
            };
            println!(
                "{:<36} {:>3}/{:<3} {:>6} {:>6} {:>8.0} {:>7.2} {:>8.2} {:>8} {:>8} {:>8} {:>10} {:>10}",
                arm.label(),
                r.bound,
                args.claims,
                r.hosts_used,
                r.conflicts,
                per_minute,
                per(r.conflicts),
                per(r.writes),
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                r.two_consumers,
                r.two_hosts
            );
        }
        println!(
            "(the claims arrived within {:.0} ms in the slowest arm)",
            arrived.as_secs_f64() * 1000.0
        );
    }
    println!();
    println!(
        "bound: claims bound / claims; hosts: hosts with a consumer at the end; 409s: Conflict answers on hosts \
         and claims; writes/cl: PUTs and DELETEs on hosts and claims per bound claim; p50/p99/max: time from a \
         claim's creation to its bind (20 ms snapshots; a claim not bound when the arm ends counts as unbound); 2-cons.h / 2-host cl: hosts with two consumers and \
         claims with two hosts seen in any snapshot or at the end."
    );
    Ok(())
}

/// Runs `arm` with the claims arriving evenly over `arrival`.
async fn run_arm(arm: Arm, args: &BenchArgs, arrival: Duration) -> anyhow::Result<Result> {
    let cluster = Cluster::start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the fake API server: {e}"))?;
    for plan in host_plans(args.hosts) {
        cluster.add_host(&plan).await.context("creating hosts")?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let claims = claim_plans(args.claims, args.hosts, &mut rng);
    let settings = sim::fast_settings();
    let faults = Faults {
        latency: Duration::from_millis(args.latency_ms),
        ..Faults::default()
    };
    let stop = CancellationToken::new();
    let mut replicas = Vec::new();
    let mut reconcilers = tokio::task::JoinSet::new();
    let (events, _bound) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..arm.replicas() {
        let identity = format!("replica-{i}");
        match arm {
            Arm::Original | Arm::Intent | Arm::SingleOriginal | Arm::SingleIntent => {
                let listener = cluster.server.add_listener().await?;
                listener.set_faults(faults.clone());
                let client = leaderelection::KubeLeaseLock::client_for_url(&listener.url())?;
                reconcilers.spawn(reconciler(
                    arm,
                    client,
                    identity,
                    settings.clone(),
                    stop.clone(),
                ));
            }
            Arm::Leader | Arm::LeaderKilled => {
                let replica = Replica::start(&cluster, &identity, &settings, events.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("starting {identity}: {e}"))?;
                cluster.server.listeners()[replica.listener].set_faults(faults.clone());
                replicas.push(replica);
            }
        }
    }
    let monitor = Monitor::start(&cluster, &settings.lease_name);
    if !replicas.is_empty()
        && !monitor
            .wait_for(Duration::from_secs(10), |o| !o.leaders.is_empty())
            .await
    {
        anyhow::bail!("no leader within 10 s");
    }
    cluster.server.reset_counts();
    let started = Instant::now();
    let gap = arrival / u32::try_from(args.claims.max(1)).unwrap_or(1);
    let mut killed = false;
    // Each claim at its time from the start (no drift from the creations' own latency).
    for (at, claim) in (0u32..).zip(&claims) {
        tokio::time::sleep_until(started + gap * at).await;
        cluster
            .add_claim(&claim.name, claim.spec.clone())
            .await
            .context("creating a claim")?;
        if arm == Arm::LeaderKilled && !killed {
            killed = kill_leader_after(&monitor, &mut replicas, claims.len() / 3, false).await;
        }
    }
    let arrived = started.elapsed();
    if arm == Arm::LeaderKilled && !killed {
        kill_leader_after(&monitor, &mut replicas, claims.len() / 3, true).await;
    }
    let all = claims.len();
    monitor
        .wait_for(args.arm_timeout.saturating_sub(started.elapsed()), |o| {
            o.bound_at.len() >= all
        })
        .await;
    stop.cancel();
    while reconcilers.join_next().await.is_some() {}
    for replica in &mut replicas {
        replica.stop().await;
    }
    let observed = monitor.stop().await;
    let wall = observed
        .bound_at
        .values()
        .max()
        .copied()
        .unwrap_or_default()
        .min(started.elapsed());
    let counts = cluster.api_counts();
    let snapshot = cluster.snapshot().await?;
    let final_violations = snapshot.violations();
    // A claim never bound counts as unbounded time, so a quantile that reaches it says "unbound".
    let mut times = observed.time_to_claim();
    times.resize(claims.len().max(times.len()), Duration::MAX);
    let two_consumers: BTreeSet<_> = observed
        .violations
        .hosts_with_two_consumers
        .union(&final_violations.hosts_with_two_consumers)
        .cloned()
        .collect();
    let two_hosts: BTreeSet<_> = observed
        .violations
        .claims_with_two_hosts
        .union(&final_violations.claims_with_two_hosts)
        .cloned()
        .collect();
    cluster.server.shutdown().await;
    Ok(Result {
        bound: snapshot.bound().len(),
        hosts_used: snapshot
            .hosts
            .iter()
            .filter(|h| h.spec.consumer_ref.is_some())
            .count(),
        conflicts: counts.conflicts,
        writes: counts.writes,
        wall,
        p50: quantile(&times, 0.5),
        p99: quantile(&times, 0.99),
        max: quantile(&times, 1.0),
        two_consumers: two_consumers.len(),
        two_hosts: two_hosts.len(),
        arrived,
    })
}

/// Kills the leader once `bound` claims are bound (waiting for it when `wait`); whether it did.
async fn kill_leader_after(
    monitor: &Monitor,
    replicas: &mut [Replica],
    bound: usize,
    wait: bool,
) -> bool {
    let enough = |o: &sim::Observed| o.bound_at.len() >= bound;
    let reached = enough(&monitor.observed())
        || (wait && monitor.wait_for(Duration::from_secs(10), enough).await);
    if !reached {
        return false;
    }
    let Some((_, leader)) = monitor.observed().leaders.last().cloned() else {
        return false;
    };
    if let Some(replica) = replicas.iter_mut().find(|r| r.identity == leader) {
        replica.kill().await;
        return true;
    }
    false
}

/// A replica's reconciler for arms (a), (b), (e) and (f): every 50 ms, the pending claims not in flight and not
/// waiting for a requeue are reconciled, at most 10 at once.
async fn reconciler(
    arm: Arm,
    client: kube::Client,
    identity: String,
    settings: Settings,
    stop: CancellationToken,
) {
    let pool = Arc::new(Pool::new(client.clone(), NAMESPACE, &identity));
    let claimer = Arc::new(Claimer::new(
        client,
        NAMESPACE,
        &identity,
        &Settings {
            mode: claim_coordinator::Mode::Optimistic,
            ..settings
        },
        Metrics::new(&mut Registry::default()),
    ));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut requeue: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((name, after)) = done {
                    busy.remove(&name);
                    if let Some(after) = after {
                        requeue.insert(name, Instant::now() + after);
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let Ok(claims) = pool.claims.list(&ListParams::default()).await else {
            continue;
        };
        let now = Instant::now();
        for claim in claims.items.into_iter().filter(|c| c.host_ref().is_none()) {
            let name = claim.name_any();
            if busy.len() >= 10
                || busy.contains(&name)
                || requeue.get(&name).is_some_and(|at| *at > now)
            {
                continue;
            }
            busy.insert(name.clone());
            let (pool, claimer, stop) = (pool.clone(), claimer.clone(), stop.clone());
            in_flight.spawn(async move {
                let after = match arm {
                    Arm::Original | Arm::SingleOriginal => original(&pool, &claim).await,
                    _ => match claimer.claim_directly(&name, &stop).await {
                        Ok(Some(_)) => None,
                        _ => Some(Duration::from_secs(5)),
                    },
                };
                (name, after)
            });
        }
    }
    in_flight.shutdown().await;
}

/// Beskar7's claim, without intent: `None` when bound, else when to try again.
async fn original(pool: &Pool, claim: &HostClaim) -> Option<Duration> {
    let fence = Fence::Unfenced;
    let date = jiff::Zoned::now().strftime("%Y-%m-%d").to_string();
    let key = format!("{NAMESPACE}-{}-{date}", claim.name_any());
    for attempt in 1..=5u32 {
        let Ok((hosts, claims)) = pool.list(&fence).await else {
            tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            continue;
        };
        let claim = claims
            .into_iter()
            .find(|c| c.name_any() == claim.name_any())?;
        if claim.host_ref().is_some() {
            return None;
        }
        if let Some(host) = hosts.iter().find(|h| h.is_consumed_by(&claim)) {
            // "already claimed by me": finish the status writes.
            let _ = pool.mark_claimed(&fence, host).await;
            return pool
                .mark_bound(&fence, &claim, &host.name_any())
                .await
                .err()
                .map(|_| Duration::from_secs(5));
        }
        let Ok(requirements) = Requirements::from_spec(&claim.spec) else {
            return Some(Duration::from_secs(60));
        };
        let mut available: Vec<_> = hosts
            .iter()
            .filter(|h| h.is_available() && Candidate::from_host(*h).fits(&requirements))
            .collect();
        if available.is_empty() {
            return Some(Duration::from_secs(60));
        }
        available.sort_by_key(|h| h.name_any());
        let start = spread(&key, available.len());
        let host = available[(start + attempt as usize - 1) % available.len()];
        match pool.claim_host(&fence, host, &claim).await {
            Ok(host) => {
                // The second write's errors were only logged.
                let _ = pool.mark_claimed(&fence, &host).await;
                let _ = pool.mark_bound(&fence, &claim, &host.name_any()).await;
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100) * attempt).await,
        }
    }
    Some(Duration::from_secs(30))
}
