//! The leader-only child process: started at the start of each term, SIGTERM then SIGKILL when it ends,
//! killed by the kernel if leader-elect dies (parent-death signal, armed by the `exec-child` shim).

use std::ffi::CString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use leaderelection::Term;
use leaderelection_controller::BoxError;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

/// Environment variable carrying leader-elect's pid to the shim (removed before the exec).
const PARENT_PID: &str = "LEADER_ELECT_PARENT_PID";

/// `exec-child -- CMD ARGS...`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecChildArgs {
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Arms `PR_SET_PDEATHSIG` (SIGKILL), checks the parent is still the one that started us (it may have
/// died between fork and here), then execs the command with the parent pid variable removed. Returns only
/// on failure.
pub(crate) fn exec_child(args: &ExecChildArgs) -> ExitCode {
    if let Err(err) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("leader-elect: error: arming the parent-death signal: {err}");
        return ExitCode::from(1);
    }
    let expected = std::env::var(PARENT_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if expected.is_some_and(|pid| nix::unistd::getppid() != Pid::from_raw(pid)) {
        eprintln!("leader-elect: error: leader-elect exited before the child started");
        return ExitCode::from(1);
    }
    let to_c =
        |s: &str| CString::new(s).map_err(|_| format!("argument contains a NUL byte: {s:?}"));
    let argv: Result<Vec<CString>, String> = args.command.iter().map(|a| to_c(a)).collect();
    let envp: Result<Vec<CString>, String> = std::env::vars()
        .filter(|(k, _)| k != PARENT_PID)
        .map(|(k, v)| to_c(&format!("{k}={v}")))
        .collect();
    let (argv, envp) = match (argv, envp) {
        (Ok(argv), Ok(envp)) => (argv, envp),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("leader-elect: error: {err}");
            return ExitCode::from(2);
        }
    };
    let err = match nix::unistd::execvpe(&argv[0], &argv, &envp) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    eprintln!(
        "leader-elect: error: cannot run {:?}: {err}",
        args.command[0]
    );
    ExitCode::from(127)
}

/// What the child gets to know, and how long it may take to stop.
#[derive(Clone, Debug)]
pub(crate) struct ChildSpec {
    pub(crate) command: Arc<Vec<String>>,
    pub(crate) identity: String,
    pub(crate) lease: String,
    pub(crate) grace_period: Duration,
}

/// Runs the child for one term: returns `Ok` after stopping it when `token` is cancelled, or `Err` when it
/// exits on its own while we lead.
pub(crate) async fn run_for_term(
    spec: ChildSpec,
    term: Term,
    token: CancellationToken,
) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("exec-child")
        .arg("--")
        .args(spec.command.iter())
        .env("LEADER_ELECT_TERM", term.transitions.to_string())
        .env("LEADER_ELECT_IDENTITY", &spec.identity)
        .env("LEADER_ELECT_LEASE", &spec.lease)
        .env(PARENT_PID, std::process::id().to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {:?}: {e}", spec.command[0]))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_default();
    tracing::info!(
        event = "child_started",
        pid,
        term = term.transitions,
        "child started"
    );
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            tracing::warn!(event = "child_exited", pid, %status, term = term.transitions, "child exited");
            return Err(format!("the child exited on its own while leading ({status})").into());
        }
        () = token.cancelled() => {}
    }
    // The term ended: SIGTERM, then SIGKILL after the grace period.
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let status = match tokio::time::timeout(spec.grace_period, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            tracing::warn!(pid, grace_period = ?spec.grace_period, "child ignored SIGTERM; sending SIGKILL");
            child.kill().await?;
            child.wait().await?
        }
    };
    tracing::info!(event = "child_exited", pid, %status, term = term.transitions, "child exited");
    Ok(())
}
