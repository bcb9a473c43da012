//! `leader-elect-lab chaos`: real `leader-elect run` candidates under random, overlapping faults drawn from a
//! seed, checked from the outside on every run.
//!
//! Each run starts the fake API server in-process with one listener per candidate (so network faults
//! strike one candidate), and 3-5 candidates whose children append fenced heartbeats to a shared work log
//! ([`mod@worker`]). Faults ([`plan::FaultKind`]) are injected at random times; killed or stopped candidates
//! come back with the same or a new identity, and a second process may run for a while under a
//! candidate's identity (on a listener of its own, the extra slot). Then the faults stop, and the run ends
//! once a leader's child has worked continuously for a while (or the recovery bound has passed). The checks
//! ([`check`]): no two terms' children wrote in overlapping intervals (a term is one leader-elect
//! process's, whatever its identity); terms only increase; a frozen child writes nothing after SIGCONT
//! once its term has ended; while two processes share an identity, terms start and requests are made at a
//! bounded rate; a leader's child works again within lease + request timeout + 2.2 x retry period of the
//! last fault; no candidate exited that the harness did not stop; no process of the run is left.

mod check;
mod guarded;
mod plan;
mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fake_apiserver::Faults;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use leaderelection::KubeLeaseLock;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

pub(crate) use worker::{WorkerArgs, run as worker};

pub(crate) use self::guarded::widgets;
use self::guarded::{Mode, Recorder, Writes};

use self::check::{Duplicate, Freeze, Heartbeat, Observed, Report, Violation};
use self::plan::{ChildKind, FaultKind, Plan, Target};
use self::worker::OnSigterm;
use crate::failure::Failure;
use crate::harness::{Cluster, Timings, What};
use crate::timeline::{Bar, Gap, Mark, Timeline};

/// The environment variable that marks every process of a run (the orphan check looks for it).
const MARKER: &str = "LEADER_ELECT_CHAOS_RUN";

/// `leader-elect-lab chaos`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChaosArgs {
    /// Number of runs.
    #[arg(long, default_value_t = 20)]
    runs: u64,
    /// Seed of the first run; run N uses seed + N. Default: a random seed, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Candidate processes per run (3 to 5).
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    #[command(flatten)]
    timings: Timings,
    /// How long faults are injected in each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    fault_window: Duration,
    /// Faults per run.
    #[arg(long, default_value_t = 8)]
    faults: usize,
    /// Draw only faults of this kind (repeat for more). Default: every kind.
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    kinds: Vec<FaultKind>,
    /// Time between a child's heartbeats.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    heartbeat: Duration,
    /// Draw a run as SVG to this file: the first run with a violation, else the last run.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Where the work logs go (default: a directory in the system's temporary directory). A run's log
    /// and timeline are kept there when it has a violation.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// What the children do besides their heartbeats: `fenced-writer` also writes a guarded object through
    /// `leader-elect run --fence` (the write gate of its term); `direct-writer` writes it straight to the
    /// API server, stamped with its term, as a child without `--fence` (the baseline). Each run then reports
    /// the writes refused and the stale writes that landed.
    #[arg(long, value_enum, default_value_t = Mode::Heartbeat)]
    mode: Mode,
    /// With a writing `--mode`: install the admission policy that `leader-elect fencing-policy` prints
    /// (lenient, guarding the widgets), so that the API server also refuses writes stamped with a term
    /// older than the election Lease's.
    #[arg(long)]
    policy: bool,
    /// With a writing `--mode`: the time between a child's writes of the guarded object.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    write_period: Duration,
    /// Print every observation and fault as it happens.
    #[arg(long, short)]
    verbose: bool,
    /// (Showing that the checks fail.) Every child also starts a copy of itself that leaves its process
    /// group, which leader-elect cannot stop: a broken candidate.
    #[arg(long, hide = true)]
    broken_child: bool,
}

/// What one run injected, saw and concluded.
#[derive(Debug, Default)]
struct Outcome {
    seed: u64,
    faults: BTreeMap<FaultKind, usize>,
    report: Report,
    timeline: Option<Timeline>,
    log_path: PathBuf,
    /// With a writing `--mode`: its writes.
    writes: Option<Writes>,
}

/// `leader-elect-lab chaos`.
pub(crate) async fn run(args: ChaosArgs) -> Result<(), Failure> {
    if args.policy && args.mode == Mode::Heartbeat {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--policy guards the writes of --mode fenced-writer or direct-writer"
        )));
    }
    if !(3..=5).contains(&args.candidates) {
        return Err(Failure::Usage(anyhow::anyhow!(
            "invalid --candidates {}: must be 3, 4 or 5",
            args.candidates
        )));
    }
    if args.heartbeat.is_zero() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "invalid --heartbeat 0s: must be greater than zero"
        )));
    }
    let timings = args.timings.clone();
    timings.validate()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let work_dir = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("leader-elect-chaos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    println!(
        "leader-elect-lab chaos: {} runs from seed {seed}, {} candidates, lease {} / renew deadline {} / retry \
         period {}, {} faults over {} per run, heartbeats every {}; work logs in {}",
        args.runs,
        args.candidates,
        fmt(args.timings.lease_duration),
        fmt(args.timings.renew_deadline),
        fmt(args.timings.retry_period),
        args.faults,
        fmt(args.fault_window),
        fmt(args.heartbeat),
        work_dir.display()
    );
    let mut outcomes = Vec::new();
    // The first run with a violation, else the last run.
    let mut drawn: Option<Timeline> = None;
    let mut drawn_violation = false;
    for n in 0..args.runs {
        let run_seed = seed.wrapping_add(n);
        let mut outcome = run_once(&args, &timings, run_seed, &work_dir).await?;
        let violated = !outcome.report.violations.is_empty();
        print_run(n, &outcome);
        if violated {
            print_violation(&args, &outcome, &work_dir);
        } else {
            let _ = std::fs::remove_file(&outcome.log_path);
        }
        if !drawn_violation {
            drawn = outcome.timeline.take();
            drawn_violation = violated;
        }
        outcomes.push(outcome);
    }
    if let (Some(path), Some(timeline)) = (&args.timeline, &drawn) {
        timeline.write(path)?;
        println!("timeline: {}", path.display());
    }
    let violations = print_summary(&outcomes);
    if violations > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{violations} violations; replay commands above"
        )));
    }
    if args.work_dir.is_none() {
        let _ = std::fs::remove_dir(&work_dir);
    }
    Ok(())
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The command that replays one run.
fn replay(args: &ChaosArgs, seed: u64) -> String {
    let mut cmd = format!(
        "leader-elect-lab chaos --runs 1 --seed {seed} --candidates {} --lease-duration {} --renew-deadline {} \
         --retry-period {} --fault-window {} --faults {} --heartbeat {} --timeline chaos-{seed}.svg",
        args.candidates,
        fmt(args.timings.lease_duration),
        fmt(args.timings.renew_deadline),
        fmt(args.timings.retry_period),
        fmt(args.fault_window),
        args.faults,
        fmt(args.heartbeat)
    );
    for kind in &args.kinds {
        let _ = write!(cmd, " --kind {kind}");
    }
    if args.broken_child {
        cmd.push_str(" --broken-child");
    }
    if args.mode != Mode::Heartbeat {
        let _ = write!(
            cmd,
            " --mode {} --write-period {}",
            mode_name(args.mode),
            fmt(args.write_period)
        );
    }
    if args.policy {
        cmd.push_str(" --policy");
    }
    cmd
}

fn mode_name(mode: Mode) -> String {
    clap::ValueEnum::to_possible_value(&mode).map_or_else(String::new, |v| v.get_name().to_owned())
}

/// One line on the writes of a run (or of all runs).
fn describe_writes(w: &Writes) -> String {
    format!(
        "{} writes: {} refused by the gate, {} refused by the server (422), {} failed; {} landed, {} of them \
         stale{}",
        w.attempted,
        w.refused_by_gate,
        w.refused_by_server,
        w.failed,
        w.landed,
        w.landed_stale,
        if w.incomplete {
            " (watch incomplete: at least)"
        } else {
            ""
        }
    )
}

fn print_run(n: u64, outcome: &Outcome) {
    let faults: Vec<String> = outcome
        .faults
        .iter()
        .map(|(kind, count)| format!("{kind} x{count}"))
        .collect();
    let recovery = outcome
        .report
        .recovery
        .map_or_else(|| "-".to_owned(), |d| format!("{:.3}s", d.as_secs_f64()));
    println!(
        "run {n} (seed {}): {} terms, recovery {recovery}, {} violations; faults: {}",
        outcome.seed,
        outcome.report.terms,
        outcome.report.violations.len(),
        faults.join(", ")
    );
    if let Some(writes) = &outcome.writes {
        println!("  {}", describe_writes(writes));
    }
}

fn print_violation(args: &ChaosArgs, outcome: &Outcome, work_dir: &Path) {
    for v in &outcome.report.violations {
        println!("  VIOLATION: {v}");
    }
    println!("  work log: {}", outcome.log_path.display());
    if let Some(timeline) = &outcome.timeline {
        let path = work_dir.join(format!("chaos-{}.svg", outcome.seed));
        match timeline.write(&path) {
            Ok(()) => println!("  timeline: {}", path.display()),
            Err(err) => println!("  timeline not written: {err:#}"),
        }
    }
    println!("  replay: {}", replay(args, outcome.seed));
}

/// Prints the summary of every run; returns the number of violations.
fn print_summary(outcomes: &[Outcome]) -> usize {
    let mut faults: BTreeMap<FaultKind, usize> = BTreeMap::new();
    let mut recoveries = Vec::new();
    let mut forced = Vec::new();
    let mut thawed = Vec::new();
    let mut duplicated = Vec::new();
    let (mut terms, mut violations) = (0, 0);
    let mut writes: Option<Writes> = None;
    for o in outcomes {
        if let Some(w) = &o.writes {
            let sum = writes.get_or_insert_with(Writes::default);
            sum.attempted += w.attempted;
            sum.refused_by_gate += w.refused_by_gate;
            sum.refused_by_server += w.refused_by_server;
            sum.failed += w.failed;
            sum.landed += w.landed;
            sum.landed_stale += w.landed_stale;
            sum.incomplete |= w.incomplete;
        }
        for (kind, count) in &o.faults {
            *faults.entry(*kind).or_default() += count;
        }
        recoveries.extend(o.report.recovery);
        forced.extend(o.report.forced_overlaps.iter().copied());
        thawed.extend(o.report.thawed_lives.iter().copied());
        duplicated.extend(o.report.duplicated.iter().copied());
        terms += o.report.terms;
        violations += o.report.violations.len();
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort_unstable();
        match (v.get(v.len() / 2), v.last()) {
            (Some(median), Some(worst)) => format!(
                "median {:.3}s, worst {:.3}s ({} samples)",
                median.as_secs_f64(),
                worst.as_secs_f64(),
                v.len()
            ),
            _ => "none".to_owned(),
        }
    };
    println!("\n== summary");
    println!("runs: {}", outcomes.len());
    println!(
        "faults injected: {} ({})",
        faults.values().sum::<usize>(),
        faults
            .iter()
            .map(|(k, c)| format!("{k} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("terms: {terms}");
    println!("violations: {violations}");
    if let Some(writes) = &writes {
        println!("guarded writes: {}", describe_writes(writes));
    }
    println!("recovery after the last fault: {}", stats(recoveries));
    println!(
        "old holder working on after release --force or deletion (not a violation): {}",
        stats(forced)
    );
    println!(
        "frozen children whose term ended, alive after SIGCONT: {}",
        stats(thawed)
    );
    let worst_terms = duplicated.iter().map(|(t, _)| *t).max();
    let worst_rate = duplicated.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    println!(
        "second processes under one identity: {}; terms started while one ran: at most {}; its \
         requests per retry period: at most {worst_rate:.2}",
        duplicated.len(),
        worst_terms.map_or_else(|| "-".to_owned(), |t| t.to_string())
    );
    violations
}

/// A step of the schedule: a fault starts or ends.
#[derive(Clone, Copy, Debug)]
enum Step {
    Start(usize),
    End(usize),
}

/// Why the harness expects a candidate to exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Killed,
    Terminated,
}

/// A stopped candidate.
#[derive(Clone, Debug)]
struct Frozen {
    /// The fault that stopped it (only its end resumes it).
    fault: usize,
    at: Timestamp,
    how: Stopped,
}

/// What a stop stopped.
#[derive(Clone, Debug)]
enum Stopped {
    /// `sigstop`: leader-elect's process group and its children's.
    Candidate {
        /// The process groups of leader-elect's children (its child's, the guardian's).
        groups: Vec<i32>,
        /// Its child's process group, as its log told.
        child: Option<i32>,
    },
    /// `stop-elector`: SIGSTOP of leader-elect alone; SIGCONT to it alone.
    Elector,
    /// `tstp-elector`: SIGTSTP to leader-elect's process group; SIGCONT to that group, as a shell's `fg`.
    Terminal,
}

/// The second process under a candidate's identity (`identity-reuse`, `duplicate-identity`), in the
/// extra slot.
#[derive(Clone, Debug)]
struct Extra {
    /// The fault that started it (only its end stops it).
    fault: usize,
    from: Timestamp,
    /// Its listener's request count when it started.
    requests: u64,
    /// Its fault's entry in `marks` (not one of the other faults near it).
    mark: usize,
}

/// One run in progress.
struct Run<'a> {
    args: &'a ChaosArgs,
    cluster: Cluster,
    api: Api<Lease>,
    plan: Plan,
    /// This binary: each candidate's child is its `chaos-worker`.
    exe: PathBuf,
    log_path: PathBuf,
    /// Per slot: the candidates', then the extra slot's (see [`Extra`]).
    identities: Vec<String>,
    /// Per slot: the current leader-elect process's number (see [`Heartbeat::incarnation`]).
    incarnations: Vec<u64>,
    next_incarnation: u64,
    extra: Option<Extra>,
    duplicates: Vec<Duplicate>,
    generations: Vec<usize>,
    /// Index into `cluster.seen` from which candidate `i`'s current process is observed.
    since: Vec<usize>,
    expect: Vec<Option<Expect>>,
    /// When the harness signalled candidate `i` to stop (it must be gone 15 s later).
    signalled_at: Vec<Option<tokio::time::Instant>>,
    frozen: Vec<Option<Frozen>>,
    /// Listener faults in force per candidate: (fault index, faults).
    listener_faults: Vec<Vec<(usize, Faults)>>,
    /// The candidate each started fault struck.
    struck: Vec<Option<usize>>,
    forced: Vec<Timestamp>,
    deletions: Vec<Timestamp>,
    /// Each freeze, with the candidate and its child's process group.
    freezes: Vec<(Freeze, usize, Option<i32>)>,
    counts: BTreeMap<FaultKind, usize>,
    marks: Vec<(Option<String>, Timestamp, Option<Timestamp>, String)>,
    violations: Vec<Violation>,
}

async fn run_once(
    args: &ChaosArgs,
    timings: &Timings,
    seed: u64,
    work_dir: &Path,
) -> Result<Outcome, Failure> {
    let log_path = work_dir.join(format!("work-{seed}.log"));
    let _ = std::fs::remove_file(&log_path);
    // One slot per candidate and the extra slot, for a second process under a candidate's identity.
    let mut extra_args = vec!["--on-child-exit".into(), "restart".into()];
    if args.mode == Mode::FencedWriter {
        extra_args.push("--fence".into());
    }
    let mut cluster = Cluster::new(args.candidates + 1, timings.clone(), extra_args, false).await?;
    cluster.verbose = args.verbose;
    let token = format!("{}-{seed}", std::process::id());
    cluster.env.push((MARKER.into(), token.clone()));
    let api = Api::namespaced(
        KubeLeaseLock::client_for_url(&cluster.server.url()).context("building a client")?,
        "default",
    );
    let plan = Plan::new(
        seed,
        args.candidates,
        args.fault_window,
        args.faults,
        args.timings.lease_duration,
        &args.kinds,
    );
    let n = args.candidates;
    let slots = n + 1;
    let mut run = Run {
        args,
        cluster,
        api,
        exe: std::env::current_exe().context("locating leader-elect-lab")?,
        log_path: log_path.clone(),
        identities: (0..slots).map(|i| format!("candidate-{i}")).collect(),
        incarnations: vec![0; slots],
        next_incarnation: 0,
        extra: None,
        duplicates: Vec::new(),
        generations: vec![0; n],
        since: vec![0; slots],
        expect: vec![None; slots],
        signalled_at: vec![None; slots],
        frozen: vec![None; slots],
        listener_faults: vec![Vec::new(); slots],
        struck: vec![None; plan.faults.len()],
        plan,
        forced: Vec::new(),
        deletions: Vec::new(),
        freezes: Vec::new(),
        counts: BTreeMap::new(),
        marks: Vec::new(),
        violations: Vec::new(),
    };
    let recorder = match args.mode {
        Mode::Heartbeat => None,
        Mode::FencedWriter | Mode::DirectWriter => {
            let client = run.api.clone().into_client();
            if args.policy {
                guarded::install_policy(client.clone()).await?;
            }
            Some(Recorder::start(client).await?)
        }
    };
    let started = Timestamp::now();
    for i in 0..n {
        run.spawn(i)?;
    }
    // The faults start once a first leader works (bounded: a run that never elects fails its checks).
    // Its start may have been recorded already, while the others were being started.
    let started_already = run.cluster.seen.iter().any(crate::harness::is_child_start);
    let first = started_already
        || run
            .cluster
            .next(Duration::from_secs(20), crate::harness::is_child_start)
            .await
            .is_some();
    if !first {
        run.violations.push(Violation::NoRecovery);
    }
    let t0 = tokio::time::Instant::now();
    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for (i, f) in run.plan.faults.iter().enumerate() {
        steps.push((f.at, Step::Start(i)));
        if f.kind.lasts() {
            steps.push((f.at + f.duration, Step::End(i)));
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    let mut steps = std::collections::VecDeque::from(steps);
    while let Some((at, step)) = steps.pop_front() {
        run.wait_until(t0 + at).await;
        match step {
            Step::Start(i) => run.start(i).await,
            Step::End(i) => {
                if !run.end(i).await {
                    // Its candidate is still stopping: try again shortly.
                    let again = t0.elapsed() + Duration::from_millis(50);
                    let pos = steps
                        .iter()
                        .position(|(a, _)| *a > again)
                        .unwrap_or(steps.len());
                    steps.insert(pos, (again, step));
                }
            }
        }
    }
    run.heal().await;
    let last_fault_end = Timestamp::now();
    let recovery_bound = recovery_bound(timings);
    let max_gap = max_gap(args);
    run.settle(last_fault_end, recovery_bound, max_gap).await;
    let observed_until = Timestamp::now();
    run.stop_all().await;
    run.orphans(&token).await;
    run.cluster.pump();
    let writes = match recorder {
        Some(recorder) => Some(recorder.finish(&run.answers_path()).await?),
        None => None,
    };
    let _ = std::fs::remove_file(run.answers_path());

    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let (log, malformed) = check::parse_log(&text);
    let freezes = run.freezes_with_exits();
    let terms_started = run
        .cluster
        .seen
        .iter()
        .filter(|s| matches!(s.what, What::BecameLeader { .. }))
        .map(|s| s.at)
        .collect();
    let observed = Observed {
        forced: run.forced.clone(),
        deletions: run.deletions.clone(),
        freezes,
        terms_started,
        duplicates: run.duplicates.clone(),
        retry_period: args.timings.retry_period,
        last_fault_end,
        observed_until,
        lease_duration: args.timings.lease_duration,
        recovery_bound,
        max_gap,
    };
    let mut report = check::check(&log, &observed);
    report.violations.extend(malformed);
    report.violations.append(&mut run.violations);
    let timeline = run.timeline(seed, started, &log, max_gap);
    run.cluster.server.shutdown().await;
    Ok(Outcome {
        seed,
        faults: run.counts,
        report,
        timeline: Some(timeline),
        log_path,
        writes,
    })
}

/// How a candidate told to stop may end: exit 0, or killed by the SIGTERM itself when it came before
/// leader-elect installed its handler (a candidate restarted a moment before; it had no child yet).
fn terminated(status: std::process::ExitStatus) -> bool {
    status.code() == Some(0) || status.signal() == Some(Signal::SIGTERM as i32)
}

/// lease + request timeout (client-go's `max(renew_deadline / 2, 1s)`) + 2.2 x retry period: the lease
/// expires, a follower's request in flight times out, and the jittered retry (up to 1.2 x) comes twice.
fn recovery_bound(t: &Timings) -> Duration {
    let request_timeout = (t.renew_deadline / 2).max(Duration::from_secs(1));
    t.lease_duration + request_timeout + t.retry_period.mul_f64(2.2)
}

/// A child silent for longer than this is not working: 20 heartbeats or 2 retry periods, the longer.
fn max_gap(args: &ChaosArgs) -> Duration {
    (args.heartbeat * 20).max(args.timings.retry_period * 2)
}

// === impl Run ===

impl Run<'_> {
    /// Where the children's answers to their guarded writes go (a writing `--mode`).
    fn answers_path(&self) -> PathBuf {
        self.log_path.with_extension("answers")
    }

    /// The child command of a (re)started candidate in slot `i`, leader-elect process `incarnation`.
    fn command(&mut self, i: usize, incarnation: u64) -> Vec<OsString> {
        let ChildKind {
            grandchild,
            on_sigterm,
        } = self.plan.child_kind();
        let on_sigterm = match on_sigterm {
            OnSigterm::Exit => "exit",
            OnSigterm::Ignore => "ignore",
            OnSigterm::Drain => "drain",
        };
        // Half of (lease - renew deadline): the drain ends within the stop window, before SIGKILL.
        let t = &self.args.timings;
        let stop_window = t.lease_duration.saturating_sub(t.renew_deadline) / 2;
        let mut worker: Vec<OsString> = vec![
            self.exe.clone().into(),
            "chaos-worker".into(),
            "--log".into(),
            self.log_path.clone().into(),
            "--incarnation".into(),
            incarnation.to_string().into(),
            "--period".into(),
            fmt(self.args.heartbeat).into(),
            "--on-sigterm".into(),
            on_sigterm.into(),
            "--drain".into(),
            fmt(stop_window).into(),
        ];
        if self.args.broken_child {
            worker.push("--escape".into());
        }
        if self.args.mode != Mode::Heartbeat {
            worker.extend([
                "--write-period".into(),
                fmt(self.args.write_period).into(),
                "--answers".into(),
                self.answers_path().into(),
            ]);
        }
        if self.args.mode == Mode::DirectWriter {
            // Its candidate's own listener: the faults that strike leader-elect strike its writes too.
            worker.extend(["--direct".into(), self.cluster.listeners[i].url().into()]);
        }
        if grandchild {
            // Not the last command of the script, so the shell cannot exec it.
            let mut sh: Vec<OsString> = vec![
                "sh".into(),
                "-c".into(),
                "\"$@\"; exit $?".into(),
                "sh".into(),
            ];
            sh.append(&mut worker);
            sh
        } else {
            worker
        }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.incarnations[i] = incarnation;
        let command = self.command(i, incarnation);
        self.cluster.pump();
        self.since[i] = self.cluster.seen.len();
        self.expect[i] = None;
        self.signalled_at[i] = None;
        self.frozen[i] = None;
        self.cluster.spawn_as(i, &self.identities[i], &command)
    }

    /// Candidate `i`'s running child (its process group), as its log tells.
    fn child(&self, i: usize) -> Option<i32> {
        let mut child = None;
        for seen in self.cluster.seen[self.since[i]..]
            .iter()
            .filter(|s| s.candidate == i)
        {
            match seen.what {
                What::ChildStarted { pid, .. } => child = Some(pid),
                What::ChildExited { pid } if child == Some(pid) => child = None,
                _ => {}
            }
        }
        child
    }

    /// The candidate whose child runs (a random running one when none does).
    fn leader(&self) -> Option<usize> {
        let n = self.args.candidates;
        if let Some(i) = (0..n).find(|&i| self.cluster.is_running(i) && self.child(i).is_some()) {
            return Some(i);
        }
        let running: Vec<usize> = (0..n).filter(|&i| self.cluster.is_running(i)).collect();
        (!running.is_empty()).then(|| running[rand::random_range(0..running.len())])
    }

    /// Records observations and checks for exits until `deadline`.
    async fn wait_until(&mut self, deadline: tokio::time::Instant) {
        loop {
            self.cluster.pump();
            self.check_exits();
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(20))).await;
        }
    }

    /// Checks every slot's exit, the extra slot's included.
    fn check_exits(&mut self) {
        for i in 0..self.expect.len() {
            let Some(status) = self.cluster.try_exit(i) else {
                continue;
            };
            let ok = match self.expect[i] {
                Some(Expect::Killed) => status.signal() == Some(Signal::SIGKILL as i32),
                Some(Expect::Terminated) => terminated(status),
                None => false,
            };
            if !ok {
                self.violations.push(Violation::UnexpectedExit {
                    candidate: self.identities[i].clone(),
                    status: status.to_string(),
                });
            }
        }
    }

    fn count(&mut self, n: usize, i: Option<usize>, kind: FaultKind) {
        *self.counts.entry(kind).or_default() += 1;
        let fault = &self.plan.faults[n];
        let to = kind.lasts().then(|| {
            Timestamp::now()
                .checked_add(fault.duration)
                .unwrap_or_else(|_| Timestamp::now())
        });
        let row = i.map(|i| self.identities[i].clone());
        self.marks
            .push((row, Timestamp::now(), to, kind.name().to_owned()));
        if self.args.verbose {
            println!(
                "  fault {kind} on {}",
                i.map_or("the Lease", |i| self.identities[i].as_str())
            );
        }
    }

    /// The candidate's listener faults in force, combined: the longest latency, any black hole or
    /// commit-then-drop, the latest error burst. A fault limited to some verbs (`watch-forbidden`) counts
    /// only while it is alone: an overlapping fault on every verb prevails.
    fn set_listener_faults(&self, i: usize) {
        let faults = &self.listener_faults[i];
        let restricted = faults.iter().all(|(_, f)| !f.verbs.is_empty());
        let mut merged = Faults::none();
        for (_, f) in faults
            .iter()
            .filter(|(_, f)| restricted || f.verbs.is_empty())
        {
            merged.verbs.clone_from(&f.verbs);
            merged.latency = merged.latency.max(f.latency);
            merged.black_hole |= f.black_hole;
            merged.commit_then_drop |= f.commit_then_drop;
            merged.commit_delay = merged.commit_delay.max(f.commit_delay);
            if f.error_rate > 0.0 {
                merged.error_rate = f.error_rate;
                merged.error_code = f.error_code;
            }
        }
        self.cluster.listeners[i].set_faults(merged);
    }

    /// Starts fault `n`; a fault on a candidate that is down (or already frozen, for a freeze) is skipped.
    async fn start(&mut self, n: usize) {
        self.cluster.pump();
        let fault = self.plan.faults[n].clone();
        let i = match fault.target {
            Target::Leader => self.leader(),
            Target::Candidate(i) => Some(i),
        };
        let Some(i) = i else { return };
        let running = self.cluster.is_running(i) && self.expect[i].is_none();
        let process = |s: &Self| s.cluster.pid(i);
        match fault.kind {
            FaultKind::KillLeaderElect | FaultKind::Sigterm => {
                if !running {
                    return;
                }
                let (signal, expect) = match fault.kind {
                    FaultKind::KillLeaderElect => (Signal::SIGKILL, Expect::Killed),
                    _ => (Signal::SIGTERM, Expect::Terminated),
                };
                self.expect[i] = Some(expect);
                self.signalled_at[i] = Some(tokio::time::Instant::now());
                self.cluster.signal(i, signal);
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::KillChild => {
                let Some(child) = self.child(i).filter(|_| running) else {
                    return;
                };
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::Freeze => {
                let (Some(pid), true, true) = (process(self), running, self.frozen[i].is_none())
                else {
                    return;
                };
                // The whole candidate, as a paused container: leader-elect's group, then every group of
                // its children (found in /proc: its log may not have told of its child yet).
                let _ = killpg(Pid::from_raw(pid), Signal::SIGSTOP);
                let groups = child_groups(pid);
                for &group in &groups {
                    let _ = killpg(Pid::from_raw(group), Signal::SIGSTOP);
                }
                self.frozen[i] = Some(Frozen {
                    fault: n,
                    at: Timestamp::now(),
                    how: Stopped::Candidate {
                        groups,
                        child: self.child(i),
                    },
                });
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::StopElector | FaultKind::TstpElector => {
                let (Some(pid), true, true) = (process(self), running, self.frozen[i].is_none())
                else {
                    return;
                };
                // Its child and guardian, each in a process group of its own, run on.
                let how = if fault.kind == FaultKind::StopElector {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                    Stopped::Elector
                } else {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGTSTP);
                    Stopped::Terminal
                };
                self.frozen[i] = Some(Frozen {
                    fault: n,
                    at: Timestamp::now(),
                    how,
                });
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::IdentityReuse | FaultKind::DuplicateIdentity => {
                let x = self.args.candidates;
                if !running || self.extra.is_some() || self.cluster.is_running(x) {
                    return;
                }
                if fault.kind == FaultKind::IdentityReuse {
                    // Cut off first: the node is unreachable when its pod is force-deleted.
                    self.listener_faults[i].push((n, Faults::partition()));
                    self.set_listener_faults(i);
                }
                self.identities[x] = self.identities[i].clone();
                let requests = self.requests(x);
                if let Err(err) = self.spawn(x) {
                    self.violations.push(Violation::UnexpectedExit {
                        candidate: self.identities[x].clone(),
                        status: format!("could not be started as a second process: {err:#}"),
                    });
                }
                self.extra = Some(Extra {
                    fault: n,
                    from: Timestamp::now(),
                    requests,
                    mark: self.marks.len(),
                });
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::BlackHole
            | FaultKind::CommitThenDrop
            | FaultKind::CommitDelay
            | FaultKind::Latency
            | FaultKind::Errors429
            | FaultKind::Errors500
            | FaultKind::Errors503
            | FaultKind::WatchForbidden => {
                let faults = match fault.kind {
                    FaultKind::BlackHole => Faults::partition(),
                    FaultKind::CommitThenDrop => Faults {
                        commit_then_drop: true,
                        ..Faults::none()
                    },
                    FaultKind::CommitDelay => Faults {
                        commit_delay: self.args.timings.renew_deadline.mul_f64(1.2),
                        ..Faults::none()
                    },
                    FaultKind::Latency => Faults {
                        latency: self.args.timings.renew_deadline.mul_f64(1.2),
                        ..Faults::none()
                    },
                    FaultKind::WatchForbidden => Faults {
                        error_rate: 1.0,
                        error_code: 403,
                        verbs: vec!["watch".into()],
                        ..Faults::none()
                    },
                    kind => Faults {
                        error_rate: 0.8,
                        error_code: match kind {
                            FaultKind::Errors429 => 429,
                            FaultKind::Errors500 => 500,
                            _ => 503,
                        },
                        ..Faults::none()
                    },
                };
                self.listener_faults[i].push((n, faults));
                self.set_listener_faults(i);
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::DropWatches => {
                self.cluster.listeners[i].drop_watches();
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::PauseStderr => {
                self.cluster.pause_stderr(i, true);
                self.struck[n] = Some(i);
                self.count(n, Some(i), fault.kind);
            }
            FaultKind::ForceRelease => {
                let holder = match self.api.get_opt("demo").await {
                    Ok(Some(lease)) => lease.spec.and_then(|s| s.holder_identity),
                    _ => None,
                };
                let Some(holder) = holder.filter(|h| !h.is_empty()) else {
                    return;
                };
                self.forced.push(Timestamp::now());
                let released = self
                    .cluster
                    .leader_elect()
                    .args(["release", "--lease-name", "demo", "--namespace", "default"])
                    .args(["--identity", &holder, "--force"])
                    .args(["--server", &self.cluster.server.url()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status();
                if let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(10), released).await
                    && status.success()
                {
                    self.count(n, None, fault.kind);
                }
            }
            FaultKind::DeleteLease => {
                let at = Timestamp::now();
                if self
                    .api
                    .delete("demo", &DeleteParams::default())
                    .await
                    .is_ok()
                {
                    self.forced.push(at);
                    self.deletions.push(at);
                    self.count(n, None, fault.kind);
                }
            }
            FaultKind::MetadataPatch => {
                let patch = serde_json::json!({"metadata": {"labels": {"chaos": n.to_string()}}});
                if self
                    .api
                    .patch("demo", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    self.count(n, None, fault.kind);
                }
            }
        }
    }

    /// Ends fault `n`; false when its candidate is not ready for it yet (still stopping).
    async fn end(&mut self, n: usize) -> bool {
        let Some(i) = self.struck[n] else { return true };
        let fault = self.plan.faults[n].clone();
        match fault.kind {
            FaultKind::KillLeaderElect | FaultKind::Sigterm => {
                if !self.gone(i, fault.kind.name()).await {
                    return false;
                }
                self.restart(i, fault.new_identity);
            }
            FaultKind::Freeze | FaultKind::StopElector | FaultKind::TstpElector => {
                self.thaw(i, n).await;
            }
            FaultKind::IdentityReuse | FaultKind::DuplicateIdentity => {
                if !self.retire_extra(n).await {
                    return false;
                }
                // The old process reconnects only once the second one is gone (its pod's container is
                // killed when the node comes back).
                self.listener_faults[i].retain(|(m, _)| *m != n);
                self.set_listener_faults(i);
            }
            FaultKind::PauseStderr => self.cluster.pause_stderr(i, false),
            _ => {
                self.listener_faults[i].retain(|(m, _)| *m != n);
                self.set_listener_faults(i);
            }
        }
        self.struck[n] = None;
        true
    }

    /// Stops the second process that fault `n` started: SIGTERM, then true once it has exited (false
    /// while it is stopping; SIGKILL and a violation after 15 s). Records a `duplicate-identity`'s
    /// window for the checks.
    async fn retire_extra(&mut self, n: usize) -> bool {
        let x = self.args.candidates;
        let Some(extra) = self.extra.clone().filter(|e| e.fault == n) else {
            return true;
        };
        self.check_exits();
        if self.cluster.is_running(x) && self.signalled_at[x].is_none() {
            self.expect[x] = Some(Expect::Terminated);
            self.signalled_at[x] = Some(tokio::time::Instant::now());
            self.cluster.signal(x, Signal::SIGTERM);
            return false;
        }
        if !self
            .gone(x, "SIGTERM (the second process under its identity)")
            .await
        {
            return false;
        }
        self.extra = None;
        if self.plan.faults[n].kind == FaultKind::DuplicateIdentity {
            let to = Timestamp::now();
            let lease = SignedDuration::try_from(self.args.timings.lease_duration)
                .unwrap_or(SignedDuration::MAX);
            let near = extra.from.saturating_sub(lease).unwrap_or(extra.from);
            let other_faults = self
                .marks
                .iter()
                .enumerate()
                .filter(|(m, (_, from, until, _))| {
                    *m != extra.mark && *from <= to && until.unwrap_or(*from) >= near
                })
                .count();
            self.duplicates.push(Duplicate {
                identity: self.identities[x].clone(),
                from: extra.from,
                to,
                other_faults,
                requests: self.requests(x).saturating_sub(extra.requests),
            });
        }
        true
    }

    /// Whether slot `i`, signalled to stop by `what`, has exited: false while it may still be stopping;
    /// 15 s after the signal its group is killed and that is a violation.
    async fn gone(&mut self, i: usize, what: &str) -> bool {
        self.check_exits();
        if !self.cluster.is_running(i) {
            return true;
        }
        let stuck = self.signalled_at[i].is_some_and(|at| at.elapsed() > Duration::from_secs(15));
        if !stuck {
            return false;
        }
        self.cluster.signal_group(i, Signal::SIGKILL);
        let _ = self.cluster.wait_exit(i, Duration::from_secs(5)).await;
        self.violations.push(Violation::UnexpectedExit {
            candidate: self.identities[i].clone(),
            status: format!("still running 15 s after {what}"),
        });
        true
    }

    /// The requests slot `i`'s listener has received so far.
    fn requests(&self, i: usize) -> u64 {
        let listener = self.cluster.listeners[i].id();
        self.cluster
            .server
            .counts()
            .iter()
            .filter(|c| c.listener == listener)
            .map(|c| c.count)
            .sum()
    }

    fn restart(&mut self, i: usize, new_identity: bool) {
        if new_identity {
            self.generations[i] += 1;
            self.identities[i] = format!("candidate-{i}-r{}", self.generations[i]);
        }
        if let Err(err) = self.spawn(i) {
            self.violations.push(Violation::UnexpectedExit {
                candidate: self.identities[i].clone(),
                status: format!("could not be restarted: {err:#}"),
            });
        }
    }

    /// Resumes candidate `i` if fault `n` stopped it. After a `sigstop`: SIGCONT to leader-elect's group
    /// first, so that it can kill a child whose term has ended before the child runs again; the child's
    /// group a moment later.
    async fn thaw(&mut self, i: usize, n: usize) {
        let Some(Frozen {
            at: frozen_at, how, ..
        }) = self.frozen[i].take_if(|f| f.fault == n)
        else {
            return;
        };
        let pid = self.cluster.pid(i).map(Pid::from_raw);
        let (groups, child) = match (how, pid) {
            (Stopped::Elector, Some(pid)) => {
                let _ = kill(pid, Signal::SIGCONT);
                return;
            }
            (Stopped::Terminal, Some(pid)) => {
                let _ = killpg(pid, Signal::SIGCONT);
                return;
            }
            (Stopped::Elector | Stopped::Terminal, None) => return,
            (Stopped::Candidate { groups, child }, _) => (groups, child),
        };
        let thawed_at = Timestamp::now();
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGCONT);
        }
        // Once another term started while it was frozen, leader-elect must kill its child before the
        // child runs again (SIGKILL reaches a stopped process): wait for that, bounded, however slowly a
        // loaded machine schedules leader-elect. Otherwise the child resumes a moment after it.
        let children: Vec<i32> = groups
            .iter()
            .copied()
            .filter(|&g| !is_guardian(g))
            .collect();
        if self.term_ended_while_frozen(i, frozen_at) {
            let bound = self.args.timings.lease_duration * 2;
            let deadline = tokio::time::Instant::now() + bound;
            let alive = |g: &i32| killpg(Pid::from_raw(*g), None).is_ok();
            while children.iter().any(alive) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if children.iter().any(alive) {
                self.violations.push(Violation::NotKilledAfterThaw {
                    identity: self.identities[i].clone(),
                    waited: bound,
                });
            }
        } else {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for group in groups {
            let _ = killpg(Pid::from_raw(group), Signal::SIGCONT);
        }
        self.freezes.push((
            Freeze {
                incarnation: self.incarnations[i],
                frozen_at,
                thawed_at,
                child_thawed_at: Timestamp::now(),
                child_exited_at: None,
            },
            i,
            child,
        ));
    }

    /// Whether another term's child worked while candidate `i` was frozen (from the work log).
    fn term_ended_while_frozen(&self, i: usize, frozen_at: Timestamp) -> bool {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let (log, _) = check::parse_log(&text);
        let incarnation = self.incarnations[i];
        let Some(term) = log
            .iter()
            .filter(|h| h.incarnation == incarnation && h.at < frozen_at)
            .max_by_key(|h| h.at)
            .map(|h| h.term)
        else {
            return false;
        };
        log.iter()
            .any(|h| h.at > frozen_at && (h.term != term || h.incarnation != incarnation))
    }

    /// Lifts whatever is still in force and starts every candidate that is down.
    async fn heal(&mut self) {
        for n in 0..self.struck.len() {
            if self.struck[n].is_some() {
                while !self.end(n).await {
                    self.wait_until(tokio::time::Instant::now() + Duration::from_millis(20))
                        .await;
                }
            }
        }
        for i in 0..self.args.candidates {
            self.listener_faults[i].clear();
            self.cluster.listeners[i].clear_faults();
            self.cluster.pause_stderr(i, false);
            if !self.cluster.is_running(i) {
                self.restart(i, false);
            }
        }
    }

    /// Waits until a child has worked continuously for 3 retry periods after the last fault, or until
    /// the recovery bound (plus that) has passed.
    async fn settle(&mut self, since: Timestamp, bound: Duration, max_gap: Duration) {
        let stretch = self.args.timings.retry_period * 3;
        let deadline = tokio::time::Instant::now() + bound + stretch;
        while tokio::time::Instant::now() < deadline {
            self.wait_until(tokio::time::Instant::now() + Duration::from_millis(50))
                .await;
            let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            let (log, _) = check::parse_log(&text);
            let now = Timestamp::now();
            let fresh = |last: Timestamp| now.duration_since(last).unsigned_abs() <= max_gap;
            if check::final_stretch(&log, max_gap).is_some_and(|(from, last)| {
                fresh(last) && now.duration_since(from.max(since)).unsigned_abs() >= stretch
            }) {
                return;
            }
        }
    }

    /// SIGTERM to every slot's process; each must exit 0 (SIGKILL after 15 s counts as a violation).
    async fn stop_all(&mut self) {
        self.check_exits();
        for i in 0..self.expect.len() {
            self.cluster.signal(i, Signal::SIGTERM);
            self.expect[i] = Some(Expect::Terminated);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while (0..self.expect.len()).any(|i| self.cluster.is_running(i))
            && tokio::time::Instant::now() < deadline
        {
            self.check_exits();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..self.expect.len() {
            if self.cluster.is_running(i) {
                self.cluster.signal_group(i, Signal::SIGKILL);
                self.violations.push(Violation::UnexpectedExit {
                    candidate: self.identities[i].clone(),
                    status: "still running 15 s after SIGTERM".into(),
                });
                let _ = self.cluster.wait_exit(i, Duration::from_secs(5)).await;
            }
        }
    }

    /// Every process marked with this run's token must be gone soon after the candidates exited; the
    /// ones left are orphans (and are killed).
    async fn orphans(&mut self, token: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let left = marked_processes(token);
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                for (pid, command) in left {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    self.violations.push(Violation::Orphan { pid, command });
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The freezes, each with when that candidate's leader-elect logged the frozen child's exit.
    fn freezes_with_exits(&self) -> Vec<Freeze> {
        self.freezes
            .iter()
            .map(|(freeze, i, child)| {
                let mut freeze = freeze.clone();
                freeze.child_exited_at = child.and_then(|pid| {
                    self.cluster
                        .seen
                        .iter()
                        .find(|s| {
                            s.candidate == *i
                                && s.at >= freeze.frozen_at
                                && s.what == What::ChildExited { pid }
                        })
                        .map(|s| s.at)
                });
                freeze
            })
            .collect()
    }

    fn timeline(
        &self,
        seed: u64,
        started: Timestamp,
        log: &[Heartbeat],
        max_gap: Duration,
    ) -> Timeline {
        let end = Timestamp::now();
        let mut title = format!(
            "leader-elect-lab chaos, seed {seed}: {} candidates, lease {} / renew deadline {} / retry period {}",
            self.args.candidates,
            fmt(self.args.timings.lease_duration),
            fmt(self.args.timings.renew_deadline),
            fmt(self.args.timings.retry_period)
        );
        let _ = write!(title, ", {} faults", self.counts.values().sum::<usize>());
        let mut timeline = Timeline::new(title, started, end);
        for i in 0..self.args.candidates {
            timeline.row(&format!("candidate-{i}"));
        }
        let mut terms: BTreeMap<(i64, String, u64), (Timestamp, Timestamp)> = BTreeMap::new();
        for w in check::writers(log) {
            terms
                .entry((w.term, w.identity.clone(), w.incarnation))
                .and_modify(|(a, b)| {
                    *a = (*a).min(w.first);
                    *b = (*b).max(w.last);
                })
                .or_insert((w.first, w.last));
        }
        for ((term, identity, _), (from, to)) in terms {
            let row = timeline.row(&identity);
            timeline.bars.push(Bar {
                row,
                from,
                to,
                term,
            });
        }
        for (identity, from, to) in check::gaps(log, max_gap) {
            let row = timeline.row(&identity);
            timeline.gaps.push(Gap { row, from, to });
        }
        for (identity, from, to, label) in &self.marks {
            let row = identity.as_deref().map(|id| timeline.row(id));
            timeline.marks.push(Mark {
                row,
                from: *from,
                to: *to,
                label: label.clone(),
            });
        }
        timeline
    }
}

/// Whether process group `group` is led by a guardian (`leader-elect guardian`), which leader-elect does
/// not kill.
fn is_guardian(group: i32) -> bool {
    std::fs::read(format!("/proc/{group}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"guardian"))
}

/// The process groups of `parent`'s children, other than its own group (from `/proc/*/stat`).
fn child_groups(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut groups = Vec::new();
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace().skip(1);
        let (Some(ppid), Some(pgrp)) = (fields.next(), fields.next()) else {
            continue;
        };
        if ppid.parse() == Ok(parent)
            && let Ok(pgrp) = pgrp.parse::<i32>()
            && pgrp != parent
            && !groups.contains(&pgrp)
        {
            groups.push(pgrp);
        }
    }
    groups
}

/// The processes whose environment holds this run's marker: `(pid, command line)`.
fn marked_processes(token: &str) -> Vec<(i32, String)> {
    let needle = format!("{MARKER}={token}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let command = std::fs::read(entry.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            found.push((pid, command));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    /// Soak regression: a candidate restarted a moment before the end of the run died of the SIGTERM
    /// that stopped it (no handler yet); that is not an unexpected exit, but any other signal or code is.
    #[test]
    fn a_stopped_candidate_exits_0_or_dies_of_the_sigterm() {
        assert!(terminated(ExitStatus::from_raw(0)));
        assert!(terminated(ExitStatus::from_raw(Signal::SIGTERM as i32)));
        assert!(!terminated(ExitStatus::from_raw(Signal::SIGKILL as i32)));
        assert!(!terminated(ExitStatus::from_raw(1 << 8)), "exit 1");
    }

    #[test]
    fn the_recovery_bound_is_lease_plus_request_timeout_plus_2_2_retry_periods() {
        let t = Timings {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(500),
            retry_period: Duration::from_millis(100),
        };
        assert_eq!(recovery_bound(&t), Duration::from_millis(2220));
        let defaults = Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert_eq!(recovery_bound(&defaults), Duration::from_millis(24_400));
    }
}
