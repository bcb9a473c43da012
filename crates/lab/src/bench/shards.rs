//! `leader-elect-lab bench --shards K --replicas R`: K shard Leases split among R in-process replicas
//! (`leaderelection::ShardSet`, each with its own kube client and listener): balance, rebalancing time
//! after a replica joins, leaves, or is cut off, overlap of any shard's work, and API requests per minute.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fake_apiserver::{FakeApiServer, Faults, Listener};
use leaderelection::{Config, ShardConfig, ShardSet, ShardState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client;

/// (shard, replica, start, end) of every term's work.
type Intervals = Arc<Mutex<Vec<(u32, usize, Instant, Option<Instant>)>>>;

struct Replica {
    listener: Listener,
    state: watch::Receiver<ShardState>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Ends an interval when the work's future ends or is dropped (aborted at the work deadline).
struct EndOnDrop(Intervals, usize);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Ok(mut log) = self.0.lock() {
            log[self.1].3 = Some(Instant::now());
        }
    }
}

async fn replica(
    server: &FakeApiServer,
    i: usize,
    shards: u32,
    log: &Intervals,
) -> anyhow::Result<Replica> {
    let listener = server.add_listener().await.context("opening a listener")?;
    let client = client(&listener.url())
        .with_context(|| format!("building the kube client of replica-{i}"))?;
    let log = log.clone();
    let config = ShardConfig::new(
        Config::new(format!("replica-{i}"), "shard", "default"),
        shards,
    );
    let set = ShardSet::new(config, client, move |shard, _term, token| {
        let log = log.clone();
        let index = log.lock().map_or(0, |mut l| {
            l.push((shard, i, Instant::now(), None));
            l.len() - 1
        });
        async move {
            let _end = EndOnDrop(log, index);
            token.cancelled().await;
            Ok(())
        }
    })?;
    let state = set.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(set.run(shutdown.clone()));
    Ok(Replica {
        listener,
        state,
        shutdown,
        task,
    })
}

/// Waits until the replicas (those `Some`) hold all `k` shards, each within one of `k / R`; how long it
/// took, or `None` after `within`.
async fn until_balanced(
    replicas: &[Option<Replica>],
    k: usize,
    within: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        let held: Vec<usize> = replicas
            .iter()
            .flatten()
            .map(|r| r.state.borrow().held.len())
            .collect();
        let (min, max) = (held.iter().min()?, held.iter().max()?);
        if held.iter().sum::<usize>() == k && max - min <= 1 {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn overlaps(log: &Intervals) -> usize {
    let Ok(log) = log.lock() else { return 0 };
    let mut intervals = log.clone();
    intervals.sort_by_key(|i| (i.0, i.2));
    let now = Instant::now();
    intervals
        .windows(2)
        .filter(|p| p[0].0 == p[1].0 && p[1].2 < p[0].3.unwrap_or(now))
        .count()
}

fn shares(replicas: &[Option<Replica>]) -> String {
    replicas
        .iter()
        .flatten()
        .map(|r| r.state.borrow().held.len().to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `--shards K --replicas R`.
pub(super) async fn run(k: u32, r: usize, window: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(
        r >= 2,
        "--replicas {r}: joins and departures need at least 2 replicas"
    );
    let lease = Config::default().lease_duration;
    let within = 4 * lease;
    let kk = k as usize;
    let server = FakeApiServer::start()
        .await
        .context("starting the fake API server")?;
    let log = Intervals::default();
    let mut replicas = Vec::new();
    for i in 0..r - 1 {
        replicas.push(Some(replica(&server, i, k, &log).await?));
    }
    let first = until_balanced(&replicas, kk, within).await;
    println!(
        "shards: {k} shard Leases, {} in-process replicas, 15s/10s/2s: balanced {} after start ({})",
        r - 1,
        shares(&replicas),
        fmt(first)
    );
    replicas.push(Some(replica(&server, r - 1, k, &log).await?));
    let join = until_balanced(&replicas, kk, within).await;
    println!(
        "  a replica joins: balanced {} in {} (target within 2 lease durations, {:.0} s)",
        shares(&replicas),
        fmt(join),
        2.0 * lease.as_secs_f64()
    );
    server.reset_counts();
    tokio::time::sleep(window).await;
    let requests: u64 = server.counts().iter().map(|c| c.count).sum();
    let writes: u64 = server
        .counts()
        .iter()
        .filter(|c| c.verb == "update")
        .map(|c| c.count)
        .sum();
    let per_minute = 60.0 / window.as_secs_f64();
    println!(
        "  steady state over {}: {:.0} requests/min, of which {:.0} writes/min (one renewal per held Lease \
         and per heartbeat Lease per retry period: ({k} + {r}) x 30 = {})",
        humantime::format_duration(window),
        requests as f64 * per_minute,
        writes as f64 * per_minute,
        (kk + r) * 30
    );
    // A graceful departure: the leaving replica stops its shards' work, releases them and its heartbeat.
    if let Some(leaving) = replicas[r - 1].take() {
        leaving.shutdown.cancel();
        let _ = leaving.task.await;
    }
    let leave = until_balanced(&replicas, kk, within).await;
    println!(
        "  a replica stops (graceful): balanced {} in {}",
        shares(&replicas),
        fmt(leave)
    );
    // A crash, as the others see it: the replica's requests go unanswered; its shards expire.
    let cut = replicas[r - 2].take();
    if let Some(cut) = &cut {
        cut.listener.set_faults(Faults::partition());
    }
    let crash = until_balanced(&replicas, kk, within).await;
    println!(
        "  a replica is cut off (requests unanswered): balanced {} in {} (its heartbeat and its shards' Leases \
         expire a lease duration after its last renewal, {:.0} s)",
        shares(&replicas),
        fmt(crash),
        lease.as_secs_f64()
    );
    if let Some(cut) = cut {
        cut.listener.clear_faults();
        cut.shutdown.cancel();
        let _ = cut.task.await;
    }
    for replica in replicas.into_iter().flatten() {
        replica.shutdown.cancel();
        let _ = replica.task.await;
    }
    let terms = log.lock().map_or(0, |l| l.len());
    println!(
        "  overlapping work of one shard in two replicas: {} (checked over {terms} terms)",
        overlaps(&log)
    );
    server.shutdown().await;
    Ok(())
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not within the bound".to_owned(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}
