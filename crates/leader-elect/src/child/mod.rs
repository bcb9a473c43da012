//! The leader-only child process: started at the start of each term in a process group of its own, and
//! gone, with every process of that group, before its term's work deadline.
//!
//! When the term ends the group gets SIGTERM, then SIGKILL at the earlier of the end of the grace period
//! and the term's work deadline (`LeaderState::work_deadline`: `sent_at + lease_duration - margin` of the
//! last successful renewal, the earliest instant a follower may take over, less a margin; *now* once
//! the Lease is known to be someone else's). The deadline holds while the term lasts too, twice over:
//! the guardian process is sent every new deadline and kills by its own clock, so a leader-elect that is
//! frozen (SIGSTOP, a debugger) cannot extend its child's work ([`guardian`], architecture rule 13); and
//! a leader-elect whose elector is stalled still kills its child in time, because the SIGKILL comes from
//! a thread of its own that does no I/O ([`group`]). The term's task returns only once the group is
//! empty, so the Lease is released only then. If leader-elect dies, the guardian kills the group too;
//! orphans are reaped ([`reaper`]); Ctrl-Z stops the group with leader-elect
//! ([`stop_children_on_sigtstp`]).

mod group;
mod guardian;
mod reaper;
mod shim;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use leaderelection::Term;
use leaderelection_controller::{BoxError, LeaderContext};
use nix::sys::signal::{Signal, raise};
use nix::sys::wait::WaitStatus;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub(crate) use group::Groups;
pub(crate) use guardian::{Guardian, guard};
pub(crate) use reaper::Reaper;
pub(crate) use shim::{ExecChildArgs, exec_child};

use group::Group;

use crate::proxy::FenceProxy;

/// This executable as the kernel knows it: still the binary we run after it was replaced or removed on
/// disk. `std::env::current_exe()` gives its path instead, which by then names another file or none.
pub(crate) const SELF_EXE: &str = "/proc/self/exe";

/// While the group runs, it is also looked at on this period, besides every SIGCHLD: members that are not
/// our children exit without one.
const BACKSTOP: Duration = Duration::from_millis(100);

/// What the child gets to know, how long it may take to stop, and what stops it.
#[derive(Clone, Debug)]
pub(crate) struct ChildSpec {
    /// The command and its arguments.
    pub(crate) command: Arc<Vec<OsString>>,
    pub(crate) identity: String,
    /// `namespace/name`.
    pub(crate) lease: String,
    /// Time between SIGTERM and SIGKILL when the term ends; fits in the elector's stop window.
    pub(crate) grace_period: Duration,
    /// Cancelled on a second SIGTERM or SIGINT: SIGKILL now, without the rest of the grace period.
    pub(crate) skip_grace: CancellationToken,
    pub(crate) guardian: Arc<Guardian>,
    pub(crate) reaper: Arc<Reaper>,
    /// Every child group of this process, for Ctrl-Z.
    pub(crate) groups: Arc<Groups>,
    /// `--fence`: the API proxy that gives each term's child a kubeconfig of its own.
    pub(crate) proxy: Option<FenceProxy>,
}

/// Why the group is being stopped, and when its grace period ends.
#[derive(Debug)]
struct Stopping {
    grace_until: std::time::Instant,
    /// The leader's exit status when the child exited on its own while we led.
    on_its_own: Option<WaitStatus>,
}

/// Runs the child for one term (`lead`: the term, its token, and the elector's state, whose work deadline
/// bounds the child): returns `Ok` after its whole process group is gone once the token is cancelled, or
/// `Err` after that when the child exited on its own while we led (the rest of its group stopped the same
/// way). Never starts the child for a term that has already ended.
pub(crate) async fn run_for_term(spec: ChildSpec, lead: LeaderContext) -> Result<(), BoxError> {
    let LeaderContext {
        term,
        token,
        mut state,
        fence,
    } = lead;
    let mut work_deadline = state.borrow_and_update().work_deadline;
    if token.is_cancelled() || work_deadline.is_some_and(|at| at <= tokio::time::Instant::now()) {
        tracing::warn!(
            term = term.transitions,
            "the term ended before its child was started; not starting it"
        );
        token.cancelled().await;
        return Ok(());
    }
    let kubeconfig = match &spec.proxy {
        Some(proxy) => Some(
            proxy
                .kubeconfig(&fence)
                .map_err(|e| format!("--fence: writing the child's kubeconfig: {e}"))?,
        ),
        None => None,
    };
    // Listening before the spawn: a child that exits at once still wakes us.
    let mut sigchld = signal(SignalKind::child())?;
    let group = Group::spawn(
        command(&spec, &term, kubeconfig.as_deref()),
        work_deadline.map(tokio::time::Instant::into_std),
        spec.guardian.clone(),
        spec.reaper.clone(),
        &spec.groups,
    )
    .map_err(|e| format!("starting {:?}: {e}", spec.command[0]))?;
    let pid = group.pgid().as_raw();
    tracing::info!(
        event = "child_started",
        pid,
        term = term.transitions,
        "child started"
    );
    let mut stopping: Option<Stopping> = None;
    let mut leader_status = None;
    let mut state_open = true;
    let mut grace_skipped = false;
    let mut backstop = tokio::time::interval(BACKSTOP);
    loop {
        let reaped = group.reap();
        for status in reaped.exited {
            if status.pid() == Some(group.pgid()) {
                leader_status = Some(status);
                let past_deadline =
                    work_deadline.is_some_and(|at| at <= tokio::time::Instant::now());
                if stopping.is_none() && past_deadline {
                    // Killed at its deadline (by the guardian, or by our own thread) while this
                    // process was frozen or stalled: the term is over, the elector ends it next.
                    tracing::warn!(pid, status = %describe(status), term = term.transitions,
                        "the child's work deadline passed before the term ended here \
                         (leader-elect was frozen or stalled): its process group is killed");
                    stopping = Some(Stopping {
                        grace_until: std::time::Instant::now(),
                        on_its_own: None,
                    });
                } else if stopping.is_none() {
                    tracing::warn!(pid, status = %describe(status), term = term.transitions,
                        "the child exited on its own while leading");
                    stopping = Some(Stopping {
                        grace_until: std::time::Instant::now() + spec.grace_period,
                        on_its_own: Some(status),
                    });
                    group.signal(Signal::SIGTERM);
                }
            }
        }
        if reaped.empty {
            break;
        }
        let kill_at = [
            work_deadline.map(tokio::time::Instant::into_std),
            stopping.as_ref().map(|s| s.grace_until),
        ];
        group.kill_at(kill_at.into_iter().flatten().min());
        tokio::select! {
            biased;
            () = token.cancelled(), if stopping.is_none() => {
                stopping = Some(Stopping {
                    grace_until: std::time::Instant::now() + spec.grace_period,
                    on_its_own: None,
                });
                group.signal(Signal::SIGTERM);
                tracing::info!(pid, grace_period = ?spec.grace_period, term = term.transitions,
                    "term ended: SIGTERM to the child's process group");
            }
            () = spec.skip_grace.cancelled(), if stopping.is_some() && !grace_skipped => {
                grace_skipped = true;
                tracing::warn!(pid, term = term.transitions, "second signal: SIGKILL to the child's \
                    process group, without the rest of its grace period");
                if let Some(stopping) = stopping.as_mut() {
                    stopping.grace_until = std::time::Instant::now();
                }
            }
            changed = state.changed(), if state_open => match changed {
                Ok(()) => work_deadline = state.borrow_and_update().work_deadline,
                Err(_) => state_open = false,
            },
            Some(()) = sigchld.recv() => {}
            _ = backstop.tick() => {}
        }
    }
    let status = leader_status.map_or_else(|| "unknown".to_owned(), describe);
    tracing::info!(
        event = "child_exited",
        pid,
        %status,
        killed = group.killed(),
        term = term.transitions,
        "child exited"
    );
    match stopping.and_then(|s| s.on_its_own) {
        Some(_) => Err(format!("the child exited on its own while leading ({status})").into()),
        None => {
            // Cancelled already, unless the deadline came first: returning early would count as a
            // failure of the term's work.
            token.cancelled().await;
            Ok(())
        }
    }
}

/// Job control: on each SIGTSTP (Ctrl-Z in a terminal, which reaches only leader-elect's own process
/// group), SIGSTOPs every child group, then stops leader-elect itself (SIGSTOP: a stop it cannot catch
/// again); once continued (SIGCONT, `fg`, `bg`), SIGKILLs each child group whose work deadline passed
/// meanwhile and SIGCONTs the others ([`Groups::stopped_with`]). Meanwhile the guardian still kills at
/// the deadline. Returns when `stop` is cancelled; without a SIGTSTP handler (it cannot be installed),
/// Ctrl-Z stops leader-elect alone, as before, and the guardian alone keeps the deadline.
///
/// # Cancel safety
///
/// Cancel-safe: a stop is done whole between two awaits.
pub(crate) async fn stop_children_on_sigtstp(groups: Arc<Groups>, stop: CancellationToken) {
    let mut sigtstp = match signal(SignalKind::from_raw(Signal::SIGTSTP as i32)) {
        Ok(sigtstp) => sigtstp,
        Err(err) => {
            tracing::warn!(%err, "cannot handle SIGTSTP: Ctrl-Z stops leader-elect but not its child");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = sigtstp.recv() => if received.is_none() { return },
        }
        tracing::info!(
            "SIGTSTP: stopping the child's process group, then leader-elect; SIGCONT continues both, \
             unless the child's work deadline passed meanwhile (then it is killed)"
        );
        groups.stopped_with(|| {
            let _ = raise(Signal::SIGSTOP);
        });
        tracing::info!("continued after SIGTSTP");
    }
}

/// `leader-elect exec-child -- CMD ARGS...` with the term in the environment (with `--fence`, also
/// `KUBECONFIG`, and without the in-cluster variables that would lead a client past the proxy). Runs `/proc/self/exe`
/// under the name we were started with (what `ps` shows until the shim execs the command). A child of
/// a terminal session gets `/dev/null` as stdin: it runs in a background process group, where reading
/// the terminal would stop it (SIGTTIN).
fn command(spec: &ChildSpec, term: &Term, kubeconfig: Option<&Path>) -> std::process::Command {
    let mut command = std::process::Command::new(SELF_EXE);
    command
        .arg0(
            std::env::args_os()
                .next()
                .unwrap_or_else(|| "leader-elect".into()),
        )
        .arg("exec-child")
        .arg("--")
        .args(spec.command.iter())
        .env("LEADER_ELECT_TERM", term.transitions.to_string())
        .env("LEADER_ELECT_IDENTITY", &spec.identity)
        .env("LEADER_ELECT_LEASE", &spec.lease)
        .env(shim::PARENT_PID, std::process::id().to_string());
    if let Some(kubeconfig) = kubeconfig {
        command
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
    }
    if std::io::stdin().is_terminal() {
        command.stdin(Stdio::null());
    }
    command
}

/// As `std::process::ExitStatus` prints it: `exit status: 3`, `signal: 9 (SIGKILL)`.
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status: {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("signal: {} ({signal})", signal as i32),
        other => format!("{other:?}"),
    }
}
