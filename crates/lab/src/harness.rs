//! The candidate-process harness of `demo`, `bench` and `chaos`: the fake API server with one listener per
//! candidate, real `leader-elect run` processes on it, and what they report, read from their JSON logs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use fake_apiserver::{FakeApiServer, Listener};
use jiff::{SignedDuration, Timestamp};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};

use crate::failure::Failure;

/// The `leader-elect` binary the candidates run: located by `main` before a command starts
/// ([`leaderelection_lab::products::locate`]).
pub(crate) static LEADER_ELECT: OnceLock<PathBuf> = OnceLock::new();

/// What a candidate reported (from its JSON log) or what happened to it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum What {
    BecameLeader { term: i64 },
    LostLeadership { reason: String },
    ChildStarted { pid: i32, term: i64 },
    ChildExited { pid: i32 },
}

/// One observation, stamped with the candidate's own wall-clock time (same machine, same clock).
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) at: Timestamp,
    pub(crate) candidate: usize,
    pub(crate) what: What,
}

/// Timings shared by every candidate (also the `demo` and `chaos` options).
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct Timings {
    /// leaseDurationSeconds of every candidate (whole seconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub(crate) lease_duration: Duration,
    /// RenewDeadline of every candidate.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub(crate) renew_deadline: Duration,
    /// RetryPeriod of every candidate.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    pub(crate) retry_period: Duration,
}

impl Timings {
    /// Validates as the elector would.
    pub(crate) fn validate(&self) -> Result<(), Failure> {
        leaderelection::Config::new("demo", "demo", "default")
            .with_lease_duration(self.lease_duration)
            .with_renew_deadline(self.renew_deadline)
            .with_retry_period(self.retry_period)
            .validate()
            .map_err(|e| Failure::Usage(e.into()))
    }
}

/// Kubeconfig files for the listeners of a fake API server serving TLS (each trusting its CA), in a
/// directory of their own, removed with it.
pub(crate) struct Kubeconfigs {
    dir: PathBuf,
}

impl Kubeconfigs {
    /// Writes one kubeconfig per listener of `server` (`<dir>/<listener id>.kubeconfig`).
    pub(crate) fn write(server: &FakeApiServer) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("leader-elect-lab-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kubeconfigs = Self { dir };
        for listener in server.listeners() {
            let path = kubeconfigs.path(&listener);
            std::fs::write(&path, server.kubeconfig(&listener))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(kubeconfigs)
    }

    pub(crate) fn path(&self, listener: &Listener) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", listener.id()))
    }
}

impl Drop for Kubeconfigs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fake API server and the candidate processes.
pub(crate) struct Cluster {
    pub(crate) server: FakeApiServer,
    pub(crate) listeners: Vec<Listener>,
    /// `Some` when the server serves TLS: how the candidates and the lab's own clients trust it.
    kubeconfigs: Option<Kubeconfigs>,
    processes: Vec<Option<tokio::process::Child>>,
    exe: PathBuf,
    timings: Timings,
    extra_args: Vec<String>,
    /// Set in every candidate's environment (inherited by its child and the child's descendants).
    pub(crate) env: Vec<(String, String)>,
    /// While a candidate's flag is true, its stderr is not read (its log lines back up in the pipe).
    stderr_paused: Vec<watch::Sender<bool>>,
    tx: mpsc::UnboundedSender<Seen>,
    rx: mpsc::UnboundedReceiver<Seen>,
    pub(crate) seen: Vec<Seen>,
    pub(crate) started: Timestamp,
    pub(crate) verbose: bool,
}

impl Cluster {
    /// Starts the fake API server (over TLS when `tls`, as kube-apiserver serves) with one listener per
    /// candidate (no candidate yet).
    pub(crate) async fn new(
        candidates: usize,
        timings: Timings,
        extra_args: Vec<String>,
        tls: bool,
    ) -> anyhow::Result<Self> {
        // The object `chaos --mode fenced-writer` guards is a widget: Leases cannot be guarded (the
        // election's own is written unstamped).
        let server = FakeApiServer::builder()
            .custom_resource(crate::chaos::widgets())
            .tls(tls)
            .start()
            .await
            .context("starting the fake API server")?;
        let mut listeners = Vec::new();
        for _ in 0..candidates {
            listeners.push(server.add_listener().await.context("opening a listener")?);
        }
        let kubeconfigs = if tls {
            Some(Kubeconfigs::write(&server)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Self {
            server,
            listeners,
            kubeconfigs,
            processes: (0..candidates).map(|_| None).collect(),
            exe: LEADER_ELECT
                .get()
                .cloned()
                .context("leader-elect was not located")?,
            timings,
            extra_args,
            env: Vec::new(),
            stderr_paused: (0..candidates).map(|_| watch::Sender::new(false)).collect(),
            tx,
            rx,
            seen: Vec::new(),
            started: Timestamp::now(),
            verbose: true,
        })
    }

    /// A client of the server's default listener, made as `leader-elect` makes its own
    /// ([`leaderelection::KubeLeaseLock::client`]): from `--server URL`, or over TLS from the kubeconfig.
    pub(crate) async fn client(&self) -> anyhow::Result<kube::Client> {
        let Some(kubeconfigs) = &self.kubeconfigs else {
            return Ok(leaderelection::KubeLeaseLock::client_for_url(
                &self.server.url(),
            )?);
        };
        let path = kubeconfigs.path(self.server.default_listener());
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("the fake API server's kubeconfig")?;
        Ok(leaderelection::KubeLeaseLock::client(config)?)
    }

    /// Points a `leader-elect` command at `listener`: `--server URL`, or over TLS `KUBECONFIG` naming a
    /// kubeconfig that trusts the server's CA.
    pub(crate) fn point_at<'c>(
        &self,
        command: &'c mut tokio::process::Command,
        listener: &Listener,
    ) -> &'c mut tokio::process::Command {
        match &self.kubeconfigs {
            None => command.args(["--server", &listener.url()]),
            Some(kubeconfigs) => command
                .env_remove("LEADER_ELECT_SERVER")
                .env("KUBECONFIG", kubeconfigs.path(listener)),
        }
    }

    /// The Lease's expiry as last written: renewTime + leaseDurationSeconds (the candidates' wall clock is
    /// this machine's, so it compares with the times they log).
    pub(crate) async fn lease_expiry(&self) -> anyhow::Result<Timestamp> {
        let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(self.client().await?, "default");
        let spec = api.get("demo").await?.spec.unwrap_or_default();
        let renew = spec
            .renew_time
            .ok_or_else(|| anyhow::anyhow!("lease without renewTime"))?
            .0;
        Ok(renew + SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0))))
    }

    /// A `leader-elect` command (the binary the candidates run) that talks to this cluster's fake API
    /// server only: with an empty kubeconfig, so that `--server` never carries the user's own credentials
    /// (nor runs their exec plugins) to it, whatever `$KUBECONFIG` or `~/.kube/config` holds.
    pub(crate) fn leader_elect(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.exe);
        command.env("KUBECONFIG", "/dev/null");
        command
    }

    /// Starts (or restarts) candidate `i`: a `leader-elect run` process on its own listener.
    pub(crate) fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_as(
            i,
            &format!("candidate-{i}"),
            &["sleep".into(), "3600".into()],
        )
    }

    /// Starts (or restarts) candidate `i` as `identity`, running `command` while it leads.
    pub(crate) fn spawn_as(
        &mut self,
        i: usize,
        identity: &str,
        command: &[OsString],
    ) -> anyhow::Result<()> {
        let t = &self.timings;
        let mut process = self.leader_elect();
        let child = process
            .args([
                "--log-format",
                "json",
                "run",
                "--lease-name",
                "demo",
                "--namespace",
                "default",
            ])
            .args(["--identity", identity]);
        let mut child = self
            .point_at(child, &self.listeners[i])
            .args([
                "--lease-duration",
                &humantime::format_duration(t.lease_duration).to_string(),
            ])
            .args([
                "--renew-deadline",
                &humantime::format_duration(t.renew_deadline).to_string(),
            ])
            .args([
                "--retry-period",
                &humantime::format_duration(t.retry_period).to_string(),
            ])
            .args(&self.extra_args)
            .arg("--")
            .args(command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LEADER_ELECT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting a candidate")?;
        let stderr = child.stderr.take().context("candidate stderr")?;
        let tx = self.tx.clone();
        let mut paused = self.stderr_paused[i].subscribe();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while paused.wait_for(|p| !p).await.is_ok()
                && let Ok(Some(line)) = lines.next_line().await
            {
                if let Some(seen) = parse_log_line(i, &line) {
                    let _ = tx.send(seen);
                }
            }
        });
        self.processes[i] = Some(child);
        Ok(())
    }

    /// The candidate's process id.
    pub(crate) fn pid(&self, i: usize) -> Option<i32> {
        self.processes[i]
            .as_ref()
            .and_then(|c| c.id())
            .and_then(|p| i32::try_from(p).ok())
    }

    /// Sends `signal` to candidate `i`'s leader-elect process (not its child).
    pub(crate) fn signal(&self, i: usize, signal: Signal) {
        if let Some(pid) = self.pid(i) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Sends `signal` to candidate `i`'s whole process group (leader-elect and its child).
    pub(crate) fn signal_group(&self, i: usize, signal: Signal) {
        if let Some(pid) = self.pid(i) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), signal);
        }
    }

    /// Stops (true) or resumes (false) reading candidate `i`'s stderr.
    pub(crate) fn pause_stderr(&self, i: usize, paused: bool) {
        self.stderr_paused[i].send_replace(paused);
    }

    /// Whether candidate `i`'s process is running (started and not seen to exit).
    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.processes[i].is_some()
    }

    /// Candidate `i`'s exit status if it has exited (it is then forgotten), without waiting.
    pub(crate) fn try_exit(&mut self, i: usize) -> Option<ExitStatus> {
        let status = self.processes[i].as_mut()?.try_wait().ok()??;
        self.processes[i] = None;
        Some(status)
    }

    /// Records every observation that has arrived, without waiting.
    pub(crate) fn pump(&mut self) {
        while let Ok(seen) = self.rx.try_recv() {
            self.record(seen);
        }
    }

    /// Waits for candidate `i` to exit; its exit code (None if killed by a signal or still running).
    pub(crate) async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<Option<i32>> {
        let child = self.processes[i].as_mut()?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .ok()?
            .ok()?;
        self.processes[i] = None;
        Some(status.code())
    }

    /// The next observation matching `want`, within `timeout`; every observation on the way is recorded
    /// (and printed when verbose).
    pub(crate) async fn next(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Seen) -> bool,
    ) -> Option<Seen> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            self.record(seen.clone());
            if want(&seen) {
                return Some(seen);
            }
        }
    }

    /// Records whatever arrives within `timeout`.
    pub(crate) async fn drain(&mut self, timeout: Duration) {
        self.next(timeout, |_| false).await;
    }

    fn record(&mut self, seen: Seen) {
        if self.verbose {
            println!(
                "  {:>8}  candidate-{}  {}",
                format!("+{:.3}s", secs(seen.at.duration_since(self.started))),
                seen.candidate,
                describe(&seen.what)
            );
        }
        self.seen.push(seen);
    }

    /// Stops every candidate with SIGTERM and waits for them.
    pub(crate) async fn stop_all(&mut self) {
        for i in 0..self.processes.len() {
            self.signal(i, Signal::SIGTERM);
        }
        for i in 0..self.processes.len() {
            if self.wait_exit(i, Duration::from_secs(15)).await.is_none() {
                self.signal_group(i, Signal::SIGKILL);
            }
        }
        self.drain(Duration::from_millis(300)).await;
    }

    /// Pairs of children of different candidates whose run intervals overlap, from the recorded logs.
    /// A child's interval runs from its "child started" line to its "child exited" line, or to `killed_at`
    /// for the child of a candidate killed with SIGKILL (the kernel kills it with its parent).
    pub(crate) fn overlaps(&self, killed_at: &[(usize, Timestamp)]) -> Vec<(Interval, Interval)> {
        let intervals = self.intervals(killed_at);
        let mut overlaps = Vec::new();
        for (n, a) in intervals.iter().enumerate() {
            for b in &intervals[n + 1..] {
                if a.candidate != b.candidate && a.start < b.end && b.start < a.end {
                    overlaps.push((a.clone(), b.clone()));
                }
            }
        }
        overlaps
    }
}

// === impl Cluster (timeline) ===

impl Cluster {
    /// Every child's run, from the recorded logs (see [`Cluster::overlaps`]).
    pub(crate) fn intervals(&self, killed_at: &[(usize, Timestamp)]) -> Vec<Interval> {
        child_intervals(&self.seen, killed_at, Timestamp::now())
    }
}

/// One child's run.
#[derive(Clone, Debug)]
pub(crate) struct Interval {
    pub(crate) candidate: usize,
    /// Its `LEADER_ELECT_TERM`.
    pub(crate) term: i64,
    pub(crate) start: Timestamp,
    pub(crate) end: Timestamp,
}

fn child_intervals(
    seen: &[Seen],
    killed_at: &[(usize, Timestamp)],
    now: Timestamp,
) -> Vec<Interval> {
    let mut intervals = Vec::new();
    for (n, s) in seen.iter().enumerate() {
        let What::ChildStarted { pid, term } = s.what else {
            continue;
        };
        let exited = seen[n..]
            .iter()
            .find(|e| e.candidate == s.candidate && e.what == What::ChildExited { pid })
            .map(|e| e.at);
        let killed = killed_at
            .iter()
            .filter(|(c, at)| *c == s.candidate && *at >= s.at)
            .map(|(_, at)| *at)
            .min();
        let end = match (exited, killed) {
            (Some(e), Some(k)) => e.min(k),
            (Some(e), None) => e,
            (None, Some(k)) => k,
            (None, None) => now,
        };
        intervals.push(Interval {
            candidate: s.candidate,
            term,
            start: s.at,
            end,
        });
    }
    intervals
}

/// Parses one JSON log line of a candidate (tracing-subscriber's JSON format).
pub(crate) fn parse_log_line(candidate: usize, line: &str) -> Option<Seen> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let at: Timestamp = value.get("timestamp")?.as_str()?.parse().ok()?;
    let fields = value.get("fields")?;
    let from_commentator = value.get("target").and_then(serde_json::Value::as_str)
        == Some("leaderelection_controller::commentator");
    let int = |name: &str| fields.get(name).and_then(serde_json::Value::as_i64);
    let what = match fields.get("message")?.as_str()? {
        "became leader" if from_commentator => What::BecameLeader { term: int("term")? },
        "lost leadership" if from_commentator => What::LostLeadership {
            reason: fields.get("reason")?.as_str()?.to_owned(),
        },
        "child started" => What::ChildStarted {
            pid: i32::try_from(int("pid")?).ok()?,
            term: int("term")?,
        },
        "child exited" => What::ChildExited {
            pid: i32::try_from(int("pid")?).ok()?,
        },
        _ => return None,
    };
    Some(Seen {
        at,
        candidate,
        what,
    })
}

fn describe(what: &What) -> String {
    match what {
        What::BecameLeader { term } => format!("became leader (term {term})"),
        What::LostLeadership { reason } => format!("lost leadership ({reason})"),
        What::ChildStarted { pid, term } => {
            format!("child started (pid {pid}, LEADER_ELECT_TERM={term})")
        }
        What::ChildExited { pid } => format!("child exited (pid {pid})"),
    }
}

pub(crate) fn secs(d: SignedDuration) -> f64 {
    d.as_secs_f64()
}

pub(crate) fn is_child_start(seen: &Seen) -> bool {
    matches!(seen.what, What::ChildStarted { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    fn seen(ms: i64, candidate: usize, what: What) -> Seen {
        Seen {
            at: at(ms),
            candidate,
            what,
        }
    }

    #[test]
    fn log_lines_are_parsed() {
        let line = r#"{"timestamp":"2026-11-25T05:51:39.123456Z","level":"INFO","fields":{"message":"child started","event":"child_started","pid":42,"term":3},"target":"x"}"#;
        let s = parse_log_line(1, line).unwrap();
        assert_eq!(s.what, What::ChildStarted { pid: 42, term: 3 });
        assert_eq!(s.candidate, 1);
        assert!(parse_log_line(1, "not json").is_none());
    }

    #[test]
    fn overlapping_children_are_found_and_sequential_ones_are_not() {
        let log = vec![
            seen(0, 0, What::ChildStarted { pid: 1, term: 0 }),
            seen(100, 0, What::ChildExited { pid: 1 }),
            seen(150, 1, What::ChildStarted { pid: 2, term: 1 }),
            seen(300, 2, What::ChildStarted { pid: 3, term: 2 }),
        ];
        let intervals = child_intervals(&log, &[(1, at(200))], at(1000));
        assert_eq!(intervals.len(), 3);
        assert_eq!(intervals[1].end, at(200), "killed with its parent");
        assert_eq!(intervals[2].end, at(1000), "still running");
        let overlapping = vec![
            seen(0, 0, What::ChildStarted { pid: 1, term: 0 }),
            seen(50, 1, What::ChildStarted { pid: 2, term: 1 }),
            seen(100, 0, What::ChildExited { pid: 1 }),
        ];
        let i = child_intervals(&overlapping, &[], at(1000));
        assert!(i[0].start < i[1].end && i[1].start < i[0].end);
    }
}
