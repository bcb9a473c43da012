//! `leader-elect-lab chaos-worker` (internal): the leader-only child of a chaos candidate. It appends a fenced
//! heartbeat, `TERM IDENTITY UNIX_NANOS PID INCARNATION`, to the work log every period, one `write` on a file opened
//! with `O_APPEND` (atomic for a line this short on a local file), until SIGTERM, which it obeys, ignores
//! or answers by draining (writing on for a while), as real commands do.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};

use super::check::Heartbeat;
use crate::failure::Failure;

/// What the worker does on SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnSigterm {
    /// Exit at once.
    Exit,
    /// Keep writing (leader-elect SIGKILLs the group at the end of its grace period).
    Ignore,
    /// Keep writing for `--drain`, then exit.
    Drain,
}

/// `leader-elect-lab chaos-worker`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    /// The work log.
    #[arg(long)]
    pub(crate) log: PathBuf,
    /// The harness's number for the leader-elect process that started this worker, unique in the run:
    /// two processes may run under one identity, and only this tells their work apart.
    #[arg(long)]
    pub(crate) incarnation: u64,
    /// Time between heartbeats.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5ms")]
    pub(crate) period: Duration,
    /// What to do on SIGTERM.
    #[arg(long, value_enum, default_value_t = OnSigterm::Exit)]
    pub(crate) on_sigterm: OnSigterm,
    /// How long to keep writing after SIGTERM with `--on-sigterm drain`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub(crate) drain: Duration,
    /// Also merge-patch the guarded object every this period (`--mode fenced-writer`, `direct-writer`),
    /// appending each answer as a line to `--answers`.
    #[arg(long, value_parser = humantime::parse_duration, requires = "answers")]
    pub(crate) write_period: Option<Duration>,
    /// Where the answers to the guarded writes go.
    #[arg(long)]
    pub(crate) answers: Option<PathBuf>,
    /// With `--write-period`: write straight to this API server, stamping the term ourselves, instead of
    /// through `$KUBECONFIG` (`--fence`'s proxy).
    #[arg(long, value_name = "URL")]
    pub(crate) direct: Option<String>,
    /// A deliberately broken worker, to show that the checks fail: it also starts a copy of itself in a
    /// process group of its own, which leader-elect cannot stop at the end of the term.
    #[arg(long)]
    pub(crate) escape: bool,
}

/// Runs the worker until SIGTERM (or forever). The term and identity come from `LEADER_ELECT_TERM` and
/// `LEADER_ELECT_IDENTITY`.
pub(crate) async fn run(args: WorkerArgs) -> Result<(), Failure> {
    let env = |name: &str| {
        std::env::var(name)
            .with_context(|| format!("{name} is not set (run me under leader-elect run)"))
    };
    let term: i64 = env("LEADER_ELECT_TERM")?
        .parse()
        .context("LEADER_ELECT_TERM is not a number")?;
    let identity = env("LEADER_ELECT_IDENTITY")?;
    let mut escaped = None;
    if args.escape {
        let mut copy = tokio::process::Command::new("/proc/self/exe");
        copy.arg("chaos-worker")
            .arg("--log")
            .arg(&args.log)
            .arg("--incarnation")
            .arg(args.incarnation.to_string())
            .arg("--period")
            .arg(humantime::format_duration(args.period).to_string())
            .args(["--on-sigterm", "ignore"])
            .stdin(Stdio::null())
            .process_group(0);
        escaped = Some(copy.spawn().context("starting the escaping copy")?);
    }
    let mut writer = match (args.write_period, &args.answers) {
        (Some(period), Some(answers)) => Some(tokio::spawn(super::guarded::write_loop(
            args.direct.clone(),
            identity.clone(),
            term,
            args.incarnation,
            answers.clone(),
            period,
        ))),
        _ => None,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut ticks = tokio::time::interval(args.period);
    let mut stop_at = None;
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            ended = async { writer.as_mut().expect("guarded by the condition").await }, if writer.is_some() => {
                writer = None;
                ended.context("the writing task")?.context("writing the guarded object")?;
            }
            Some(()) = sigterm.recv() => match args.on_sigterm {
                OnSigterm::Exit => break,
                OnSigterm::Ignore => continue,
                OnSigterm::Drain => {
                    stop_at.get_or_insert(tokio::time::Instant::now() + args.drain);
                }
            },
        }
        if stop_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
            break;
        }
        let line = Heartbeat {
            term,
            identity: identity.clone(),
            at: Timestamp::now(),
            pid,
            incarnation: args.incarnation,
        }
        .line();
        // One write per line: O_APPEND makes it land whole at the end of the file.
        let written = file
            .write(line.as_bytes())
            .context("writing the work log")?;
        if written != line.len() {
            return Err(anyhow::anyhow!(
                "short write to the work log ({written} of {} bytes)",
                line.len()
            )
            .into());
        }
    }
    // The escaped copy is deliberately left running: that is the bug it shows.
    drop(escaped);
    Ok(())
}
