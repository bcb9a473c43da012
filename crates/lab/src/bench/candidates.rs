//! `leader-elect-lab bench --candidates N` and `--followers N`: many candidates on one Lease, run in this
//! process (each with its own kube client and its own listener of the embedded fake API server, so every
//! request is counted per candidate by the server's request log).

use std::time::Duration;

use anyhow::Context;
use fake_apiserver::{FakeApiServer, RequestRecord};
use leaderelection::{Callbacks, Config, Elector, KubeLeaseLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{client, percentiles};

const LEASE: &str = "bench";
const NAMESPACE: &str = "default";

/// How long after the new leader started requests are still counted as part of a handover: under the
/// retry period (2 s), so that the new leader's first renewal is not in it.
const HANDOVER_TAIL: Duration = Duration::from_millis(500);

/// One in-process candidate.
struct Candidate {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// The fake API server and N in-process candidates on one Lease, one listener each.
struct Pool {
    server: FakeApiServer,
    urls: Vec<String>,
    candidates: Vec<Option<Candidate>>,
    config: Config,
    /// (candidate, instant its term's work started).
    started_tx: mpsc::UnboundedSender<(usize, Instant)>,
    started_rx: mpsc::UnboundedReceiver<(usize, Instant)>,
}

// === impl Pool ===

impl Pool {
    async fn new(n: usize, config: Config) -> anyhow::Result<Self> {
        let server = FakeApiServer::start()
            .await
            .context("starting the fake API server")?;
        let mut urls = vec![server.url()];
        for _ in 1..n {
            urls.push(
                server
                    .add_listener()
                    .await
                    .context("opening a listener")?
                    .url(),
            );
        }
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        let mut pool = Self {
            server,
            urls,
            candidates: (0..n).map(|_| None).collect(),
            config,
            started_tx,
            started_rx,
        };
        for i in 0..n {
            pool.spawn(i).await?;
        }
        Ok(pool)
    }

    /// Starts candidate `i` afresh (a new process would: new client, new elector).
    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let client = client(&self.urls[i])
            .with_context(|| format!("building the kube client of candidate-{i}"))?;
        let lock = KubeLeaseLock::new(client, NAMESPACE, LEASE);
        let tx = self.started_tx.clone();
        let callbacks = Callbacks::new().on_started_leading(move |_term, token| {
            // Sent when the term's work is started, not when its task first runs.
            let _ = tx.send((i, Instant::now()));
            async move {
                token.cancelled().await;
                Ok(())
            }
        });
        let config = Config {
            identity: format!("candidate-{i}"),
            ..self.config.clone()
        };
        let elector = Elector::new(config, lock, callbacks)?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let _ = elector.run(shutdown).await;
            }
        });
        self.candidates[i] = Some(Candidate { shutdown, task });
        Ok(())
    }

    /// Stops candidate `i` gracefully (its work stops, then it releases) and waits for it.
    async fn stop(&mut self, i: usize) {
        if let Some(c) = self.candidates[i].take() {
            c.shutdown.cancel();
            let _ = c.task.await;
        }
    }

    /// The next term started by a candidate other than `not`, within `timeout`.
    async fn next_leader(
        &mut self,
        not: Option<usize>,
        timeout: Duration,
    ) -> Option<(usize, Instant)> {
        let until = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(until, self.started_rx.recv()).await {
                Ok(Some((i, at))) if Some(i) != not => return Some((i, at)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn shutdown(mut self) {
        for i in 0..self.candidates.len() {
            if let Some(c) = self.candidates[i].take() {
                c.shutdown.cancel();
                let _ = c.task.await;
            }
        }
        self.server.shutdown().await;
    }
}

/// What one graceful handover cost.
struct Handover {
    latency_ms: f64,
    /// Requests by every candidate from the stop until [`HANDOVER_TAIL`] after the new term started, less
    /// the releasing write.
    requests: usize,
    conflicts: usize,
    gets: usize,
    watches: usize,
}

fn handover_cost(log: &[RequestRecord], releasing: usize) -> Handover {
    let releasing_write = log
        .iter()
        .filter(|r| r.listener == releasing && r.verb == "update" && r.code == Some(200))
        .count()
        .min(1);
    let of = |verb: &str| log.iter().filter(|r| r.verb == verb).count();
    Handover {
        latency_ms: 0.0,
        requests: log.len() - releasing_write,
        conflicts: log
            .iter()
            .filter(|r| matches!(r.verb.as_str(), "update" | "create") && r.code == Some(409))
            .count(),
        gets: of("get"),
        watches: of("watch"),
    }
}

/// Graceful handovers among `n` candidates: stop the leader, time until another's work starts, count the
/// requests, restart the stopped one as a fresh candidate.
async fn handovers(n: usize, runs: usize) -> anyhow::Result<Vec<Handover>> {
    let config = Config::new("bench", LEASE, NAMESPACE);
    let mut pool = Pool::new(n, config).await?;
    let timeout = Duration::from_secs(60);
    let (mut leader, _) = pool
        .next_leader(None, timeout)
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader among {n} candidates"))?;
    // Every follower has read the Lease and opened its watch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut samples = Vec::new();
    for _ in 0..runs {
        pool.server.reset_counts();
        let t0 = Instant::now();
        pool.stop(leader).await;
        let (next, at) = pool
            .next_leader(Some(leader), timeout)
            .await
            .ok_or_else(|| anyhow::anyhow!("no handover within {timeout:?}"))?;
        tokio::time::sleep_until(at + HANDOVER_TAIL).await;
        let mut cost = handover_cost(&pool.server.request_log(), leader);
        cost.latency_ms = at.duration_since(t0).as_secs_f64() * 1000.0;
        samples.push(cost);
        pool.spawn(leader).await?;
        // The restarted candidate reads the Lease and opens its watch; the new leader renews once.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        leader = next;
    }
    pool.shutdown().await;
    Ok(samples)
}

/// Requests per second of one leader and `followers` idle followers over `window`.
struct Idle {
    total: f64,
    leader: f64,
    followers: f64,
}

async fn idle(followers: usize, window: Duration, watch: bool) -> anyhow::Result<Idle> {
    let config = Config::new("bench", LEASE, NAMESPACE).with_watch(watch);
    let mut pool = Pool::new(followers + 1, config).await?;
    let (leader, _) = pool
        .next_leader(None, Duration::from_secs(60))
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    // Past the start-up reads and the first polls.
    tokio::time::sleep(Duration::from_secs(5)).await;
    pool.server.reset_counts();
    tokio::time::sleep(window).await;
    let counts = pool.server.counts();
    let per_second = |f: &dyn Fn(usize) -> bool| {
        counts
            .iter()
            .filter(|c| f(c.listener))
            .map(|c| c.count as f64)
            .fold(0.0, |a, b| a + b)
            / window.as_secs_f64()
    };
    let leader_listener = leader;
    let result = Idle {
        total: per_second(&|_| true),
        leader: per_second(&|l| l == leader_listener),
        followers: per_second(&|l| l != leader_listener),
    };
    pool.shutdown().await;
    Ok(result)
}

/// `--candidates`: graceful handover cost for each N.
pub(super) async fn run_handovers(ns: &[usize], runs: usize) -> anyhow::Result<()> {
    for &n in ns {
        anyhow::ensure!(
            n >= 2,
            "--candidates {n}: a handover needs at least 2 candidates"
        );
        let samples = handovers(n, runs).await?;
        let (median, p99) = percentiles(samples.iter().map(|s| s.latency_ms).collect());
        let count = |f: fn(&Handover) -> usize| samples.iter().map(|s| f(s) as f64).collect();
        let (requests, requests_max) = percentiles(count(|s| s.requests));
        let (conflicts, _) = percentiles(count(|s| s.conflicts));
        let (gets, _) = percentiles(count(|s| s.gets));
        let (watches, _) = percentiles(count(|s| s.watches));
        let first = samples.first().map_or(0, |s| s.requests);
        println!(
            "graceful handover, {n} in-process candidates on one Lease, 15s/10s/2s, {} runs: latency \
             median {median:.1} ms, p99 {p99:.1} ms (target N=3 <= 5 ms, N=100 <= 20 ms); requests besides \
             the releasing write: median {requests:.0}, p99 {requests_max:.0}, first run {first} (target \
             <= 5); of which median {conflicts:.0} conflicts (409), {gets:.0} GETs, {watches:.0} watches",
            samples.len()
        );
    }
    Ok(())
}

/// `--followers`: steady-state requests per second with N idle followers, watching and polling.
pub(super) async fn run_idle(ns: &[usize], window: Duration) -> anyhow::Result<()> {
    let retry = Config::default().retry_period.as_secs_f64();
    // client-go's acquire loop: one GET per follower every wait.Jitter(RetryPeriod, 1.2), a mean of
    // 1.6 retry periods (3.2 s with the 2 s default).
    let client_go_period = retry * (1.0 + leaderelection::JITTER_FACTOR / 2.0);
    for &n in ns {
        for watch in [true, false] {
            let l = idle(n, window, watch).await?;
            println!(
                "steady state, 1 leader + {n} idle followers, 15s/10s/2s, {} over {}: {:.1} requests/s \
                 (leader {:.2}/s, followers {:.2}/s together{})",
                if watch {
                    "watching"
                } else {
                    "polling (--no-watch)"
                },
                humantime::format_duration(window),
                l.total,
                l.leader,
                l.followers,
                if watch {
                    String::new()
                } else {
                    format!(
                        "; client-go's GET per jittered retry period: {:.2}/s",
                        n as f64 / client_go_period
                    )
                }
            );
        }
    }
    Ok(())
}
