//! `leader-elect-lab bench`: the failover scenarios of the demo, many times, on the embedded fake API server;
//! prints median and p99 of graceful handover and crash failover, median and p90 of a yield to a preferred
//! holder, the steady-state API load of leader and followers (watching, and polling as client-go does), and
//! the idle footprint of one process.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use fake_apiserver::Faults;
use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, WatchEvent, WatchParams};
use leaderelection::KubeLeaseLock;
use nix::sys::signal::Signal;

use crate::failure::Failure;
use crate::harness::{Cluster, Timings, is_child_start, secs};

mod candidates;
mod shards;

/// `leader-elect-lab bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Graceful handovers to measure (default timings 15s / 10s / 2s).
    #[arg(long, default_value_t = 30)]
    handover_runs: usize,
    /// Crash failovers to measure (lease 2s, renew deadline 1s, retry period 250ms).
    #[arg(long, default_value_t = 10)]
    crash_runs: usize,
    /// How long to count steady-state requests, per mode (watch, poll).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    load_window: Duration,
    /// Yields to a preferred holder to measure (`leader-elect yield --to` run as a process; from the
    /// instant the lab's watch on the Lease sees spec.preferredHolder written -> the preferred candidate's
    /// child started; default timings 15s / 10s / 2s).
    #[arg(long, default_value_t = 20)]
    yield_runs: usize,
    /// Instead of the process scenarios: graceful handovers among N in-process candidates on one Lease,
    /// for each N given (e.g. `3,30,100`), with the API requests each handover costs.
    #[arg(long, value_delimiter = ',')]
    candidates: Vec<usize>,
    /// Instead of the process scenarios: steady-state API requests per second of one leader and N idle
    /// in-process followers, watching and polling, for each N given (e.g. `10,100,1000`), over
    /// --load-window.
    #[arg(long, value_delimiter = ',')]
    followers: Vec<usize>,
    /// Instead of the process scenarios: K shard Leases split among --replicas in-process replicas
    /// (balance, rebalancing after a join, a stop and a cut-off, requests per minute over --load-window).
    #[arg(long)]
    shards: Option<u32>,
    /// Replicas of the --shards scenario (one joins after the others have balanced).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Process scenarios: milliseconds added to every API request of every candidate (fake API server
    /// fault `latency_ms` on each candidate's listener).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Process scenarios: a uniformly random extra delay in `[0, N)` ms on every API request (`jitter_ms`).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Process scenarios: milliseconds between a write's commit and its watch event reaching each
    /// candidate (`watch_delay_ms`).
    #[arg(long, default_value_t = 0)]
    watch_delay_ms: u64,
    /// Process scenarios: the fake API server speaks plain HTTP instead of TLS. kube-apiserver serves only
    /// TLS, where a new connection costs a handshake and a client without TCP_NODELAY waits for the
    /// server's delayed ACK; plain HTTP hides both.
    #[arg(long)]
    plain_http: bool,
}

/// How the candidates of the process scenarios reach the fake API server.
#[derive(Debug)]
struct Network {
    /// Set on every candidate's listener.
    faults: Faults,
    /// The server serves TLS.
    tls: bool,
}

impl BenchArgs {
    /// The transport and the faults set on every candidate's listener in the process scenarios.
    fn network(&self) -> Network {
        Network {
            faults: Faults {
                latency: Duration::from_millis(self.latency_ms),
                jitter: Duration::from_millis(self.jitter_ms),
                watch_delay: Duration::from_millis(self.watch_delay_ms),
                ..Faults::none()
            },
            tls: !self.plain_http,
        }
    }
}

/// A client for the in-process candidates, made as `leader-elect run --server URL` makes its own
/// ([`KubeLeaseLock::client_for_url`]).
fn client(url: &str) -> anyhow::Result<kube::Client> {
    Ok(KubeLeaseLock::client_for_url(url)?)
}

fn defaults() -> Timings {
    let c = leaderelection::Config::default();
    Timings {
        lease_duration: c.lease_duration,
        renew_deadline: c.renew_deadline,
        retry_period: c.retry_period,
    }
}

/// (median, p99) of `samples` (nearest rank; NaN when empty).
pub(crate) fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (middle(&samples), quantile(&samples, 0.99))
}

/// The middle of `sorted` (the upper middle of an even count); NaN when empty.
fn middle(sorted: &[f64]) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q` quantile of `sorted` by nearest rank; NaN when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

fn ms(d: SignedDuration) -> f64 {
    secs(d) * 1000.0
}

/// Three quiet candidates with `timings` and `extra` flags, each on a listener with `network` faults, once
/// one of them leads (its index).
async fn leading(
    timings: Timings,
    extra: Vec<String>,
    network: &Network,
) -> anyhow::Result<(Cluster, usize)> {
    let mut cluster = Cluster::new(3, timings, extra, network.tls).await?;
    cluster.verbose = false;
    for listener in &cluster.listeners {
        listener.set_faults(network.faults.clone());
    }
    for i in 0..3 {
        cluster.spawn(i)?;
    }
    let leader = cluster
        .next(Duration::from_secs(60), is_child_start)
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader"))?
        .candidate;
    Ok((cluster, leader))
}

/// Repeats: stop the leader with `signal`, measure until another candidate's child starts, restart it.
/// Returns, per run, the time from the signal and the time from the Lease's expiry (as the old leader last
/// wrote it) to the next child's start.
async fn failovers(
    timings: Timings,
    runs: usize,
    signal: Signal,
    network: &Network,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let (mut cluster, mut leader) = leading(timings, Vec::new(), network).await?;
    let timeout = Duration::from_secs(60);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t0 = Timestamp::now();
        cluster.signal(leader, signal);
        let expires = cluster.lease_expiry().await?;
        let next = cluster
            .next(timeout, |s| is_child_start(s) && s.candidate != leader)
            .await
            .ok_or_else(|| anyhow::anyhow!("no failover within {timeout:?}"))?;
        samples.push((
            ms(next.at.duration_since(t0)),
            ms(next.at.duration_since(expires)),
        ));
        cluster.wait_exit(leader, Duration::from_secs(20)).await;
        cluster.spawn(leader)?;
        // Let the restarted candidate settle as a follower.
        cluster.drain(Duration::from_millis(300)).await;
        leader = next.candidate;
    }
    cluster.stop_all().await;
    cluster.server.shutdown().await;
    Ok(samples)
}

/// Repeats: `leader-elect yield --to` the next candidate, as a user would, and measure from the instant the
/// lab's watch on the Lease sees `preferredHolder` written until that candidate's child starts. Returns the
/// samples in milliseconds, and the number of child intervals of different candidates that overlapped.
async fn yields(runs: usize, network: &Network) -> anyhow::Result<(Vec<f64>, usize)> {
    let (mut cluster, mut leader) = leading(defaults(), Vec::new(), network).await?;
    let timeout = Duration::from_secs(60);
    let leases: Api<Lease> = Api::namespaced(cluster.client().await?, "default");
    // Let the followers open their watches.
    cluster.drain(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let to = (leader + 1) % 3;
        let seen = ask_to_yield(&cluster, &leases, &format!("candidate-{to}"), timeout).await?;
        let next = cluster
            .next(timeout, |s| is_child_start(s) && s.candidate == to)
            .await
            .ok_or_else(|| anyhow::anyhow!("candidate-{to} did not lead within {timeout:?}"))?;
        samples.push(ms(next.at.duration_since(seen)));
        // Let the candidate that yielded settle as a follower.
        cluster.drain(Duration::from_millis(300)).await;
        leader = to;
    }
    let overlaps = cluster.overlaps(&[]).len();
    cluster.stop_all().await;
    cluster.server.shutdown().await;
    Ok((samples, overlaps))
}

/// Runs `leader-elect yield --to identity` and returns the instant the lab's watch on the Lease (on the
/// server's default listener, which has no faults) saw the `preferredHolder` it wrote: the write's commit,
/// give or take the watch's delivery, and not the process's start-up or its read before the write. The
/// watch is opened first, so the write cannot be missed.
async fn ask_to_yield(
    cluster: &Cluster,
    leases: &Api<Lease>,
    identity: &str,
    timeout: Duration,
) -> anyhow::Result<Timestamp> {
    let version = leases
        .get("demo")
        .await?
        .metadata
        .resource_version
        .context("the Lease has no resourceVersion")?;
    let params = WatchParams::default().fields("metadata.name=demo");
    let mut events = leases.watch(&params, &version).await?.boxed();
    let mut command = cluster.leader_elect();
    command
        .args(["yield", "--lease-name", "demo", "--namespace", "default"])
        .args(["--to", identity]);
    let mut yielding = cluster
        .point_at(&mut command, cluster.server.default_listener())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its progress lines ("waiting up to 15 s ..."); the handover is timed from the watch.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting leader-elect yield")?;
    let watched = async {
        let mut exited = false;
        loop {
            tokio::select! {
                event = events.try_next() => match event? {
                    Some(WatchEvent::Modified(lease))
                        if lease.spec.as_ref().and_then(|s| s.preferred_holder.as_deref()) == Some(identity) =>
                    {
                        return Ok(Timestamp::now());
                    }
                    Some(_) => {}
                    None => anyhow::bail!("the watch on the Lease ended"),
                },
                status = yielding.wait(), if !exited => {
                    let status = status.context("waiting for leader-elect yield")?;
                    anyhow::ensure!(status.success(), "leader-elect yield --to {identity}: {status}");
                    exited = true;
                }
            }
        }
    };
    let seen = tokio::time::timeout(timeout, watched)
        .await
        .map_err(|_| anyhow::anyhow!("preferredHolder {identity} not seen within {timeout:?}"))??;
    let status = yielding
        .wait()
        .await
        .context("waiting for leader-elect yield")?;
    anyhow::ensure!(
        status.success(),
        "leader-elect yield --to {identity}: {status}"
    );
    Ok(seen)
}

/// Requests per minute of the leader and of each follower, and the footprint of each process.
struct Load {
    leader_requests: f64,
    leader_writes: f64,
    follower_requests: Vec<f64>,
    rss_kib: Vec<(usize, bool, u64)>,
    cpu_percent: Vec<(usize, bool, f64)>,
    /// One clock tick over the window, in percent: the resolution of `cpu_percent`.
    cpu_resolution: f64,
}

async fn load(window: Duration, poll: bool, network: &Network) -> anyhow::Result<Load> {
    let extra = if poll {
        vec!["--no-watch".to_owned()]
    } else {
        Vec::new()
    };
    let (mut cluster, leader) = leading(defaults(), extra, network).await?;
    cluster.drain(Duration::from_secs(1)).await;
    cluster.server.reset_counts();
    let cpu0: Vec<u64> = (0..3).map(|i| cpu_ticks(cluster.pid(i))).collect();
    cluster.drain(window).await;
    let cpu1: Vec<u64> = (0..3).map(|i| cpu_ticks(cluster.pid(i))).collect();
    let per_minute = 60.0 / window.as_secs_f64();
    let counts = cluster.server.counts();
    let of = |i: usize, writes: bool| -> f64 {
        let id = cluster.listeners[i].id();
        counts
            .iter()
            .filter(|c| {
                c.listener == id && (!writes || matches!(c.verb.as_str(), "update" | "create"))
            })
            .map(|c| c.count as f64)
            .fold(0.0, |a, b| a + b)
            * per_minute
    };
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let result = Load {
        leader_requests: of(leader, false),
        leader_writes: of(leader, true),
        follower_requests: (0..3)
            .filter(|&i| i != leader)
            .map(|i| of(i, false))
            .collect(),
        rss_kib: (0..3)
            .map(|i| (i, i == leader, rss_kib(cluster.pid(i))))
            .collect(),
        cpu_percent: (0..3)
            .map(|i| {
                let seconds = (cpu1[i] - cpu0[i]) as f64 / ticks_per_second;
                (i, i == leader, 100.0 * seconds / window.as_secs_f64())
            })
            .collect(),
        cpu_resolution: 100.0 / ticks_per_second / window.as_secs_f64(),
    };
    cluster.stop_all().await;
    cluster.server.shutdown().await;
    Ok(result)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: Option<i32>) -> u64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based) -> indexes 11 and 12 here.
    let at = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(11) + at(12)
}

/// Resident set size, in KiB.
fn rss_kib(pid: Option<i32>) -> u64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    if !args.candidates.is_empty() || !args.followers.is_empty() || args.shards.is_some() {
        candidates::run_handovers(&args.candidates, args.handover_runs).await?;
        candidates::run_idle(&args.followers, args.load_window).await?;
        if let Some(k) = args.shards {
            shards::run(k, args.replicas, args.load_window).await?;
        }
        return Ok(());
    }
    let network = args.network();
    println!(
        "leader-elect-lab bench: 3 candidate processes per scenario on the embedded fake API server"
    );
    println!(
        "the fake API server speaks {}",
        if network.tls {
            "TLS (as kube-apiserver)"
        } else {
            "plain HTTP (--plain-http)"
        }
    );
    if network.faults != Faults::none() {
        println!(
            "every candidate's requests delayed {} ms + [0, {}) ms, its watch events {} ms after the commit",
            args.latency_ms, args.jitter_ms, args.watch_delay_ms
        );
    }
    println!();
    let d = defaults();
    let handover: Vec<f64> = failovers(d.clone(), args.handover_runs, Signal::SIGTERM, &network)
        .await?
        .into_iter()
        .map(|(from_signal, _)| from_signal)
        .collect();
    let (median, p99) = percentiles(handover.clone());
    println!(
        "graceful handover (SIGTERM -> next child started), 15s/10s/2s, {} runs: median {median:.1} ms, p99 \
         {p99:.1} ms (target <= 50 / 200 ms)",
        handover.len()
    );
    let (mut yielded, overlaps) = yields(args.yield_runs, &network).await?;
    yielded.sort_by(f64::total_cmp);
    println!(
        "yield to a preferred holder (leader-elect yield; preferredHolder seen written -> its child started), 15s/10s/2s, {} runs: \
         median {:.1} ms, p90 {:.1} ms, overlapping children {overlaps} (target median <= 10 ms; client-go \
         stops renewing and waits for expiry: one lease duration, {} s here)",
        yielded.len(),
        middle(&yielded),
        quantile(&yielded, 0.9),
        d.lease_duration.as_secs()
    );
    let fast = Timings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(250),
    };
    let crash = failovers(fast, args.crash_runs, Signal::SIGKILL, &network).await?;
    let (median, p99) = percentiles(crash.iter().map(|c| c.0).collect());
    println!(
        "crash failover (SIGKILL -> next child started), lease 2s / renew 1s / retry 250ms, {} runs: median \
         {median:.1} ms, p99 {p99:.1} ms",
        crash.len()
    );
    let (median, p99) = percentiles(crash.iter().map(|c| c.1).collect());
    println!(
        "  of which after the lease expired (renewTime + leaseDurationSeconds as last written): median \
         {median:.1} ms, p99 {p99:.1} ms (target median <= 250 ms)"
    );
    for poll in [false, true] {
        let l = load(args.load_window, poll, &network).await?;
        let mode = if poll {
            "polling (--no-watch, as client-go)"
        } else {
            "watching (default)"
        };
        println!(
            "steady-state API load, 15s/10s/2s, {mode}, over {}: leader {:.1} requests/min ({:.1} writes/min; \
             one per retry period is 30), followers {}",
            humantime::format_duration(args.load_window),
            l.leader_requests,
            l.leader_writes,
            l.follower_requests
                .iter()
                .map(|r| format!("{r:.1}/min"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !poll {
            for ((i, leading, rss), (_, _, cpu)) in l.rss_kib.iter().zip(&l.cpu_percent) {
                // /proc counts CPU in clock ticks: below one tick over the window reads as zero.
                let cpu = if *cpu > 0.0 {
                    format!("{cpu:.2}%")
                } else {
                    format!("< {:.2}%", l.cpu_resolution)
                };
                println!(
                    "  candidate-{i} ({}): RSS {:.1} MiB, CPU {cpu} of one core (target <= 10 MiB, <= 0.5%)",
                    if *leading { "leader" } else { "follower" },
                    *rss as f64 / 1024.0
                );
            }
        }
    }
    Ok(())
}
