//! The guardian: a helper process that SIGKILLs the child's process group when leader-elect dies, however
//! it dies (SIGKILL and the OOM killer included), so no grandchild outlives it.
//!
//! The parent-death signal reaches only the direct child and is not inherited by the processes it
//! starts. The guardian holds the read end of a pipe whose only writer is leader-elect: the kernel closes
//! that end when leader-elect exits, the guardian reads end-of-file and kills every group still armed.
//!
//! Limits: a process that leaves the group on purpose (`setsid`, `setpgid`) is not killed; a guardian that
//! is itself killed protects nothing (leader-elect logs it at the next arm or disarm, and the direct child
//! still has its parent-death signal).

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, ExitCode, Stdio};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::Pid;

use super::SELF_EXE;

/// The hidden `guardian` subcommand: reads `arm PGID` and `disarm PGID` lines on stdin; at end of input
/// (leader-elect is gone) SIGKILLs every group still armed, then exits 0.
///
/// It runs in its own process group, so a terminal's Ctrl-C does not reach it, and blocks SIGINT, SIGTERM,
/// SIGHUP and SIGQUIT, so signals meant for leader-elect (or for every process of a container or unit) do
/// not end it before leader-elect is gone.
pub(crate) fn guard() -> ExitCode {
    let mut blocked = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(signal);
    }
    // Single-threaded: the calling thread's mask is the process's.
    let _ = blocked.thread_block();
    // `ps` and `top` show the name of the file executed, `exe` for `/proc/self/exe`.
    let _ = nix::sys::prctl::set_name(c"leader-elect");
    let mut armed = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some((verb, pgid)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        match verb {
            "arm" => {
                armed.insert(pgid);
            }
            "disarm" => {
                armed.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in armed {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    ExitCode::SUCCESS
}

/// leader-elect's end of the guardian: arms a child's process group after it was started and disarms it
/// once it is empty.
#[derive(Debug)]
pub(crate) struct Guardian {
    /// Non-blocking, so a stalled guardian cannot stall the elector; each line is shorter than
    /// `PIPE_BUF`, so it is written whole or not at all.
    pipe: Mutex<ChildStdin>,
}

// === impl Guardian ===

impl Guardian {
    /// Starts the guardian process (this executable, `/proc/self/exe`, so a binary replaced on disk
    /// since we started does not matter). It is never waited for here: should it die, the orphan reaper
    /// reaps it.
    ///
    /// # Errors
    ///
    /// The guardian could not be started.
    pub(crate) fn spawn() -> std::io::Result<Self> {
        let mut child = std::process::Command::new(SELF_EXE)
            .arg0("leader-elect")
            .arg("guardian")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the guardian has no stdin"))?;
        fcntl(&pipe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        tracing::debug!(pid = child.id(), "guardian started");
        Ok(Self {
            pipe: Mutex::new(pipe),
        })
    }

    /// Kill `pgid` should leader-elect die from now on.
    pub(super) fn arm(&self, pgid: Pid) {
        self.send("arm", pgid);
    }

    /// `pgid` is empty: forget it (its number may be reused).
    pub(super) fn disarm(&self, pgid: Pid) {
        self.send("disarm", pgid);
    }

    fn send(&self, verb: &str, pgid: Pid) {
        let line = format!("{verb} {pgid}\n");
        let mut pipe = self.pipe.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = pipe.write_all(line.as_bytes()) {
            tracing::error!(
                %err,
                pgid = pgid.as_raw(),
                "cannot reach the guardian: if leader-elect is killed, the child's process group \
                 outlives it"
            );
        }
    }
}
