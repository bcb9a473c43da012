//! `leader-elect-lab peers`: the graceful-handover protocol of `bench` (SIGTERM to the leader until another
//! candidate starts its work; 3 candidates, a 15 s lease) run side by side, on one embedded fake API server,
//! for `leader-elect` and for the peer candidates present: small programs over kube-leader-election,
//! kube-lease-manager, kubert and the Python client's leader election (`crates/lab/peers/`); one table.
//!
//! The Rust peers are projects of their own, outside the main workspace (each library pulls its own kube
//! version), built here on demand with `cargo build --release --locked`; a peer whose build or toolchain is
//! missing is skipped with the reason.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fake_apiserver::{FakeApiServer, Listener};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bench::percentiles;
use crate::failure::Failure;
use crate::harness::{self, Kubeconfigs, What};

/// Candidates per implementation.
const CANDIDATES: usize = 3;
/// leaseDurationSeconds, RenewDeadline and RetryPeriod of every candidate that takes them (client-go's
/// defaults).
const LEASE_DURATION_SECONDS: u64 = 15;
const RENEW_DEADLINE_SECONDS: u64 = 10;
const RETRY_PERIOD_SECONDS: u64 = 2;
/// How long to wait for a leader, first or next: past four lease durations something is wrong.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// After a stopped candidate is restarted: long enough for a polling candidate (every retry period) to
/// have read the Lease, and for one started by an interpreter to be up. A random part of up to one retry
/// period is added to each wait, so that the SIGTERM falls at a random phase of the polling candidates'
/// periods: a fixed wait locks the SIGTERM to the phase of the last takeover, and a poller's handover then
/// takes the same time every run (kube-leader-election's: median 2.95 s, p99 3.00 s over 10 runs with a fixed 3 s).
const SETTLE: Duration = Duration::from_secs(3);
/// A peer's last lines on stderr kept to explain a failure.
const STDERR_KEPT: usize = 8;

/// `leader-elect-lab peers`.
#[derive(Debug, clap::Args)]
pub(crate) struct PeersArgs {
    /// Graceful handovers to measure per implementation.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Only these implementations, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Implementation>,
    /// The fake API server speaks plain HTTP instead of TLS (kube-apiserver serves only TLS).
    #[arg(long)]
    plain_http: bool,
}

/// What runs as a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Implementation {
    /// Ours: `leader-elect run -- sleep 3600`; its work starts with the child.
    LeaderElect,
    /// `crates/lab/peers/kube-leader-election`.
    KubeLeaderElection,
    /// `crates/lab/peers/kube-lease-manager`.
    KubeLeaseManager,
    /// `crates/lab/peers/kubert`.
    Kubert,
    /// `crates/lab/peers/python/candidate.py` over the `kubernetes` package.
    Python,
}

// === impl Implementation ===

impl Implementation {
    const ALL: [Self; 5] = [
        Self::LeaderElect,
        Self::KubeLeaderElection,
        Self::KubeLeaseManager,
        Self::Kubert,
        Self::Python,
    ];

    /// The name in the table.
    fn name(self) -> &'static str {
        match self {
            Self::Python => "kubernetes (Python)",
            other => other.flag(),
        }
    }

    /// The name in `--only`, also the Rust peer's directory under `crates/lab/peers`.
    fn flag(self) -> &'static str {
        match self {
            Self::LeaderElect => "leader-elect",
            Self::KubeLeaderElection => "kube-leader-election",
            Self::KubeLeaseManager => "kube-lease-manager",
            Self::Kubert => "kubert",
            Self::Python => "python",
        }
    }
}

/// How to start a candidate of one implementation and see it start its work.
#[derive(Debug)]
struct Launcher {
    program: PathBuf,
    /// Arguments before the candidate's own (the Python script).
    leading_args: Vec<OsString>,
    kind: Kind,
    /// The library's version (and the kube client's, for the Rust peers).
    version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `leader-elect` with `--log-format json`: its work starts at `child started`.
    LeaderElect,
    /// A peer program: `started leading` on stdout.
    Peer,
}

/// The peers' directory.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Finds or builds `implementation`'s candidate; `Err` is the reason to skip it.
fn prepare(implementation: Implementation) -> Result<Launcher, String> {
    match implementation {
        Implementation::LeaderElect => {
            let program = harness::LEADER_ELECT
                .get()
                .cloned()
                .ok_or("leader-elect was not located")?;
            let out = std::process::Command::new(&program)
                .arg("--version")
                .output()
                .map_err(|e| format!("{} --version: {e}", program.display()))?;
            let version = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                .unwrap_or("?")
                .to_owned();
            Ok(Launcher {
                program,
                leading_args: Vec::new(),
                kind: Kind::LeaderElect,
                version,
            })
        }
        Implementation::Python => {
            let out = std::process::Command::new("python3")
                .args(["-c", "import kubernetes; print(kubernetes.__version__)"])
                .output()
                .map_err(|e| format!("python3 not found ({e})"))?;
            if !out.status.success() {
                return Err(format!(
                    "python3 cannot import kubernetes (`pip install kubernetes`): {}",
                    last_line(&out.stderr)
                ));
            }
            Ok(Launcher {
                program: "python3".into(),
                leading_args: vec![peers_dir().join("python/candidate.py").into()],
                kind: Kind::Peer,
                version: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            })
        }
        rust => build(rust.flag()),
    }
}

/// `cargo build --release --locked` of the Rust peer `name`; its executable and versions from cargo's JSON
/// messages.
fn build(name: &str) -> Result<Launcher, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let dir = peers_dir();
    let manifest = dir.join(name).join("Cargo.toml");
    println!(
        "building {name}: cargo build --release --locked --manifest-path {}",
        manifest.display()
    );
    let out = std::process::Command::new(&cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        // One target directory for the peers: what they share (tokio, hyper, rustls) is built once.
        .arg("--target-dir")
        .arg(dir.join("target"))
        .args(["--message-format", "json-render-diagnostics"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo not found ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --manifest-path {} failed: {}",
            manifest.display(),
            last_line(&out.stderr)
        ));
    }
    let built = Built::from_messages(&String::from_utf8_lossy(&out.stdout), name);
    let program = built
        .executable
        .ok_or_else(|| format!("cargo reported no executable for {name}"))?;
    Ok(Launcher {
        program,
        leading_args: Vec::new(),
        kind: Kind::Peer,
        version: built.version,
    })
}

/// What cargo's JSON messages say about a peer's build.
#[derive(Debug, PartialEq)]
struct Built {
    executable: Option<PathBuf>,
    /// `<library version>, kube <kube-client version>`.
    version: String,
}

// === impl Built ===

impl Built {
    /// From the `compiler-artifact` messages of `cargo build --message-format json` of the peer named
    /// `library` (its package is `peer-<library>`).
    fn from_messages(stdout: &str, library: &str) -> Self {
        let artifacts: Vec<serde_json::Value> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .collect();
        let version_of = |package: &str| {
            artifacts
                .iter()
                .filter_map(|m| m["package_id"].as_str())
                .find_map(|id| {
                    let (name, version) = id.rsplit_once('#')?.1.split_once('@')?;
                    (name == package).then(|| version.to_owned())
                })
                .unwrap_or_else(|| "?".to_owned())
        };
        let peer = format!("peer-{library}");
        Self {
            executable: artifacts
                .iter()
                .filter(|m| m["target"]["name"] == peer.as_str())
                .find_map(|m| m["executable"].as_str().map(PathBuf::from)),
            version: format!(
                "{}, kube {}",
                version_of(library),
                version_of("kube-client")
            ),
        }
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}

/// A candidate's work started or stopped (by the lab's clock, when its line arrived).
#[derive(Debug)]
struct Seen {
    candidate: usize,
    at: Instant,
    work: Work,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Started,
    Stopped,
}

/// The three candidates of one implementation, each on its own listener.
struct Candidates<'a> {
    launcher: &'a Launcher,
    lease: String,
    kubeconfigs: Vec<PathBuf>,
    processes: Vec<Option<tokio::process::Child>>,
    tx: mpsc::UnboundedSender<Seen>,
    rx: mpsc::UnboundedReceiver<Seen>,
    /// The candidates whose work started and has not stopped, by their lines (a candidate sent SIGTERM
    /// counts as stopped).
    leading: BTreeSet<usize>,
    /// How many times a candidate started its work while another's had started and not stopped.
    overlaps: usize,
    /// The last lines of every candidate's stderr that were not events.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

// === impl Candidates ===

impl<'a> Candidates<'a> {
    fn new(launcher: &'a Launcher, lease: String, kubeconfigs: Vec<PathBuf>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            launcher,
            lease,
            processes: kubeconfigs.iter().map(|_| None).collect(),
            kubeconfigs,
            tx,
            rx,
            leading: BTreeSet::new(),
            overlaps: 0,
            stderr: Arc::default(),
        }
    }

    /// Starts (or restarts) candidate `i` as `candidate-i`.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let identity = format!("candidate-{i}");
        let mut command = tokio::process::Command::new(&self.launcher.program);
        command.args(&self.launcher.leading_args);
        match self.launcher.kind {
            Kind::LeaderElect => {
                let timing = |s: u64| format!("{s}s");
                command
                    .args(["--log-format", "json", "run", "--namespace", "default"])
                    .args(["--lease-name", &self.lease, "--identity", &identity])
                    .args(["--lease-duration", &timing(LEASE_DURATION_SECONDS)])
                    .args(["--renew-deadline", &timing(RENEW_DEADLINE_SECONDS)])
                    .args(["--retry-period", &timing(RETRY_PERIOD_SECONDS)])
                    .args(["--", "sleep", "3600"])
                    .env_remove("LEADER_ELECT_SERVER")
                    .env("KUBECONFIG", &self.kubeconfigs[i])
                    .env("LEADER_ELECT_LOG", "info");
            }
            Kind::Peer => {
                command
                    // An error is one line and its causes, not a backtrace.
                    .env_remove("RUST_BACKTRACE")
                    .arg("--kubeconfig")
                    .arg(&self.kubeconfigs[i])
                    .args(["--identity", &identity, "--namespace", "default"])
                    .args(["--lease-name", &self.lease])
                    .args([
                        "--lease-duration-seconds",
                        &LEASE_DURATION_SECONDS.to_string(),
                    ]);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.launcher.program.display()))?;
        let kind = self.launcher.kind;
        self.read(i, kind, child.stdout.take().context("stdout")?);
        self.read(i, kind, child.stderr.take().context("stderr")?);
        self.processes[i] = Some(child);
        Ok(())
    }

    /// Reads one of candidate `i`'s outputs: a line that says its work started or stopped becomes
    /// [`Seen`]; other lines of a peer are kept as the last few.
    fn read(&self, i: usize, kind: Kind, output: impl AsyncRead + Unpin + Send + 'static) {
        let tx = self.tx.clone();
        let kept = self.stderr.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(work) = work_of(kind, &line) {
                    let _ = tx.send(Seen {
                        candidate: i,
                        at: Instant::now(),
                        work,
                    });
                } else if kind == Kind::Peer {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == STDERR_KEPT {
                        kept.pop_front();
                    }
                    kept.push_back(format!("candidate-{i}: {line}"));
                }
            }
        });
    }

    fn signal(&self, i: usize, signal: Signal) {
        if let Some(pid) = self.processes[i]
            .as_ref()
            .and_then(tokio::process::Child::id)
            .and_then(|p| i32::try_from(p).ok())
        {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits for candidate `i` to exit, killing its process group after `grace`.
    async fn reap(&mut self, i: usize, grace: Duration) {
        let Some(mut child) = self.processes[i].take() else {
            return;
        };
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM to candidate `i`, which from now on counts as stopped.
    fn stop(&mut self, i: usize) {
        self.leading.remove(&i);
        self.signal(i, Signal::SIGTERM);
    }

    /// Records what arrives until `until`; the first start of a candidate other than `not`, if `want`.
    async fn pump(&mut self, until: Instant, not: Option<usize>, want: bool) -> Option<Seen> {
        while let Ok(Some(seen)) = tokio::time::timeout_at(until, self.rx.recv()).await {
            match seen.work {
                Work::Started => {
                    if !self.leading.is_empty() && !self.leading.contains(&seen.candidate) {
                        self.overlaps += 1;
                    }
                    self.leading.insert(seen.candidate);
                    if want && Some(seen.candidate) != not {
                        return Some(seen);
                    }
                }
                Work::Stopped => {
                    self.leading.remove(&seen.candidate);
                }
            }
        }
        None
    }

    /// The next candidate other than `not` to start its work, within `timeout`.
    async fn next(&mut self, not: Option<usize>, timeout: Duration) -> Option<Seen> {
        self.pump(Instant::now() + timeout, not, true).await
    }

    /// Records what arrives for `duration`, then until one candidate alone leads (within `timeout`): that
    /// one.
    async fn settle(&mut self, duration: Duration, timeout: Duration) -> Option<usize> {
        self.pump(Instant::now() + duration, None, false).await;
        let until = Instant::now() + timeout;
        while self.leading.len() != 1 && Instant::now() < until {
            let step = (Instant::now() + Duration::from_millis(100)).min(until);
            self.pump(step, None, false).await;
        }
        self.leading
            .first()
            .copied()
            .filter(|_| self.leading.len() == 1)
    }

    /// Why no candidate led: the last lines the candidates printed.
    fn explain(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_empty() {
            "the candidates printed nothing".to_owned()
        } else {
            format!(
                "their last lines:\n    {}",
                kept.iter().cloned().collect::<Vec<_>>().join("\n    ")
            )
        }
    }

    async fn stop_all(&mut self) {
        for i in 0..self.processes.len() {
            self.signal(i, Signal::SIGTERM);
        }
        for i in 0..self.processes.len() {
            self.reap(i, Duration::from_secs(20)).await;
        }
    }
}

/// Whether `line` (stdout or stderr) of a candidate of `kind` says its work started or stopped:
/// `leader-elect`'s child, a peer's `started leading` and `stopped leading`.
fn work_of(kind: Kind, line: &str) -> Option<Work> {
    match kind {
        Kind::LeaderElect => match harness::parse_log_line(0, line)?.what {
            What::ChildStarted { .. } => Some(Work::Started),
            What::ChildExited { .. } => Some(Work::Stopped),
            _ => None,
        },
        Kind::Peer => match line.trim() {
            "started leading" => Some(Work::Started),
            "stopped leading" => Some(Work::Stopped),
            _ => None,
        },
    }
}

/// The measured handovers of one implementation.
#[derive(Debug)]
struct Handovers {
    /// Milliseconds from the SIGTERM to the next candidate's start, per run.
    latencies: Vec<f64>,
    /// API requests of all candidates over the same span, per run.
    requests: Vec<f64>,
    /// How many times a candidate started its work while another's had started and not stopped.
    overlaps: usize,
}

/// The protocol: three candidates; repeat `runs` times: SIGTERM to the leader, time until another starts
/// its work, counting the API requests meanwhile; restart the stopped one.
async fn handovers(
    server: &FakeApiServer,
    launcher: &Launcher,
    lease: String,
    kubeconfigs: Vec<PathBuf>,
    runs: usize,
) -> anyhow::Result<Handovers> {
    let mut candidates = Candidates::new(launcher, lease, kubeconfigs);
    let result = async {
        for i in 0..CANDIDATES {
            candidates.spawn(i)?;
        }
        if candidates.next(None, LEADER_TIMEOUT).await.is_none() {
            anyhow::bail!(
                "no candidate led within {LEADER_TIMEOUT:?}; {}",
                candidates.explain()
            );
        }
        let mut measured = Handovers {
            latencies: Vec::new(),
            requests: Vec::new(),
            overlaps: 0,
        };
        for run in 0..runs {
            let Some(leader) = candidates.settle(settle(), LEADER_TIMEOUT).await else {
                anyhow::bail!(
                    "run {run}: not one leader within {LEADER_TIMEOUT:?} (leading: {:?})",
                    candidates.leading
                );
            };
            server.reset_counts();
            let t0 = Instant::now();
            candidates.stop(leader);
            let Some(next) = candidates.next(Some(leader), LEADER_TIMEOUT).await else {
                anyhow::bail!(
                    "run {run}: no handover within {LEADER_TIMEOUT:?}; {}",
                    candidates.explain()
                );
            };
            let requests: u64 = server.counts().iter().map(|c| c.count).sum();
            measured
                .latencies
                .push(next.at.duration_since(t0).as_secs_f64() * 1000.0);
            measured.requests.push(requests as f64);
            candidates.reap(leader, Duration::from_secs(20)).await;
            candidates.spawn(leader)?;
        }
        measured.overlaps = candidates.overlaps;
        Ok(measured)
    }
    .await;
    candidates.stop_all().await;
    result
}

/// [`SETTLE`] and a random part in `[0, RETRY_PERIOD_SECONDS)`.
fn settle() -> Duration {
    SETTLE + Duration::from_secs(RETRY_PERIOD_SECONDS).mul_f64(rand::random::<f64>())
}

/// One line of the table.
#[derive(Debug, PartialEq)]
struct Row {
    implementation: String,
    version: String,
    runs: usize,
    median_ms: f64,
    p99_ms: f64,
    /// The median of the API requests per handover.
    requests: f64,
}

/// The table, in Markdown: implementation, version, runs, median and p99 (ms), requests (median per
/// handover).
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| implementation | version | runs | median | p99 | requests |\n|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} |\n",
            r.implementation, r.version, r.runs, r.median_ms, r.p99_ms, r.requests
        ));
    }
    out
}

pub(crate) async fn run(args: PeersArgs) -> Result<(), Failure> {
    if args.runs == 0 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--runs 0: a measurement needs at least one handover"
        )));
    }
    let chosen: Vec<Implementation> = if args.only.is_empty() {
        Implementation::ALL.to_vec()
    } else {
        Implementation::ALL
            .into_iter()
            .filter(|i| args.only.contains(i))
            .collect()
    };
    let tls = !args.plain_http;
    let server = FakeApiServer::builder()
        .tls(tls)
        .start()
        .await
        .context("starting the fake API server")?;
    let mut listeners: Vec<Listener> = Vec::new();
    for _ in 0..CANDIDATES {
        listeners.push(server.add_listener().await.context("opening a listener")?);
    }
    let kubeconfigs = Kubeconfigs::write(&server)?;
    let paths: Vec<PathBuf> = listeners.iter().map(|l| kubeconfigs.path(l)).collect();
    println!(
        "leader-elect-lab peers: graceful handover (SIGTERM to the leader -> another candidate starts its \
         work), {CANDIDATES} candidates per implementation, lease {LEASE_DURATION_SECONDS} s (renew deadline \
         {RENEW_DEADLINE_SECONDS} s, retry period {RETRY_PERIOD_SECONDS} s where the library takes them), \
         {} runs each, one embedded fake API server speaking {}",
        args.runs,
        if tls {
            "TLS (as kube-apiserver)"
        } else {
            "plain HTTP (--plain-http)"
        }
    );
    let mut rows = Vec::new();
    let mut not_measured = Vec::new();
    let mut notes = Vec::new();
    for implementation in chosen {
        let launcher = match tokio::task::spawn_blocking(move || prepare(implementation))
            .await
            .context("preparing a candidate")?
        {
            Ok(launcher) => launcher,
            Err(reason) => {
                println!("skipping {}: {reason}", implementation.name());
                not_measured.push(format!("{}: skipped: {reason}", implementation.name()));
                continue;
            }
        };
        let lease = format!("peers-{}", implementation.flag());
        println!("measuring {} {}", implementation.name(), launcher.version);
        match handovers(&server, &launcher, lease, paths.clone(), args.runs).await {
            Ok(h) => {
                if h.overlaps > 0 {
                    notes.push(format!(
                        "{}: {} times a candidate started leading while another had started and not stopped",
                        implementation.name(),
                        h.overlaps
                    ));
                }
                let (median_ms, p99_ms) = percentiles(h.latencies);
                rows.push(Row {
                    implementation: implementation.name().to_owned(),
                    version: launcher.version,
                    runs: args.runs,
                    median_ms,
                    p99_ms,
                    requests: percentiles(h.requests).0,
                });
            }
            Err(err) => {
                println!("{} failed: {err:#}", implementation.name());
                let first = format!("{err:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                not_measured.push(format!("{}: failed: {first}", implementation.name()));
            }
        }
    }
    server.shutdown().await;
    println!();
    print!("{}", table(&rows));
    for line in &notes {
        println!("two leaders at once: {line}");
    }
    for line in &not_measured {
        println!("not measured: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_markdown_with_one_row_per_implementation() {
        let rows = [
            Row {
                implementation: "leader-elect".into(),
                version: "0.1.0".into(),
                runs: 10,
                median_ms: 4.04,
                p99_ms: 6.96,
                requests: 5.0,
            },
            Row {
                implementation: "kubert".into(),
                version: "0.25.0, kube 1.1.0".into(),
                runs: 10,
                median_ms: 11935.0,
                p99_ms: 12990.4,
                requests: 17.0,
            },
        ];
        assert_eq!(
            table(&rows),
            "| implementation | version | runs | median | p99 | requests |\n\
             |---|---|---:|---:|---:|---:|\n\
             | leader-elect | 0.1.0 | 10 | 4.0 ms | 7.0 ms | 5 |\n\
             | kubert | 0.25.0, kube 1.1.0 | 10 | 11935.0 ms | 12990.4 ms | 17 |\n"
        );
    }

    #[test]
    fn the_executable_and_versions_are_read_from_cargos_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#kube-client@1.1.0","target":{"name":"kube_client"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#kubert@0.25.0","target":{"name":"kubert"},"executable":null}"#,
            r#"{"reason":"build-script-executed","package_id":"registry+https://github.com/rust-lang/crates.io-index#kubert@9.9.9"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/lab/peers/kubert#peer-kubert@0.0.0","target":{"name":"peer-kubert"},"executable":"/w/target/release/peer-kubert"}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(
            Built::from_messages(&messages, "kubert"),
            Built {
                executable: Some(PathBuf::from("/w/target/release/peer-kubert")),
                version: "0.25.0, kube 1.1.0".into(),
            }
        );
        assert_eq!(
            Built::from_messages("", "kubert"),
            Built {
                executable: None,
                version: "?, kube ?".into(),
            }
        );
    }

    #[test]
    fn work_starts_and_stops_at_leader_elects_child_and_at_a_peers_lines() {
        let child = r#"{"timestamp":"2026-11-25T05:51:39.123456Z","level":"INFO","fields":{"message":"child started","pid":42,"term":3},"target":"x"}"#;
        let became = r#"{"timestamp":"2026-11-25T05:51:39.123456Z","level":"INFO","fields":{"message":"became leader","term":3},"target":"leaderelection_controller::commentator"}"#;
        let exited = r#"{"timestamp":"2026-11-25T05:51:40.123456Z","level":"INFO","fields":{"message":"child exited","pid":42},"target":"x"}"#;
        assert_eq!(work_of(Kind::LeaderElect, child), Some(Work::Started));
        assert_eq!(work_of(Kind::LeaderElect, exited), Some(Work::Stopped));
        assert_eq!(work_of(Kind::LeaderElect, became), None);
        assert_eq!(work_of(Kind::Peer, "started leading"), Some(Work::Started));
        assert_eq!(
            work_of(Kind::Peer, "stopped leading\n"),
            Some(Work::Stopped)
        );
        assert_eq!(work_of(Kind::Peer, child), None);
    }
}
