//! The `exec-child` shim: the first program the child runs. It arms the parent-death signal, then becomes
//! the command.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Environment variable carrying leader-elect's pid to the shim (removed before the exec).
pub(super) const PARENT_PID: &str = "LEADER_ELECT_PARENT_PID";

/// `exec-child -- CMD ARGS...`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecChildArgs {
    /// The command and its arguments (any bytes: they are passed on as given).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Arms `PR_SET_PDEATHSIG` (SIGKILL), checks the parent is still the one that started us (it may have
/// died between fork and here), then execs the command with the parent pid variable removed. Returns only
/// on failure.
///
/// The exec goes through `std::process::Command`, which passes the environment on as bytes (a variable
/// that is not UTF-8 is kept as it is) and restores the signal dispositions a Rust program changes at
/// start (SIGPIPE ignored), so the command starts as if run from a shell.
pub(crate) fn exec_child(args: &ExecChildArgs) -> ExitCode {
    if let Err(err) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        report(format_args!("arming the parent-death signal: {err}"));
        return ExitCode::from(1);
    }
    let expected = std::env::var(PARENT_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if expected.is_some_and(|pid| nix::unistd::getppid() != Pid::from_raw(pid)) {
        report(format_args!("leader-elect exited before the child started"));
        return ExitCode::from(1);
    }
    let Some((program, rest)) = args.command.split_first() else {
        report(format_args!("no command to run"));
        return ExitCode::from(2);
    };
    let err = std::process::Command::new(program)
        .args(rest)
        .env_remove(PARENT_PID)
        .exec();
    report(format_args!("cannot run {program:?}: {err}"));
    ExitCode::from(127)
}

/// One line on stderr; a stderr that is gone is not a reason to panic.
fn report(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "leader-elect: error: {message}");
}
