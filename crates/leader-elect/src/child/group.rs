//! The child's process group: started in a group of its own, signalled and reaped as a whole, and
//! SIGKILLed by a deadline thread that does nothing but wait and `kill()`.
//!
//! Signals go to a group only while it has members, decided under the same lock as the reaping: once the
//! last member is reaped the group's number may be reused, and a late SIGKILL must not reach a stranger.

use std::os::unix::process::CommandExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::guardian::Guardian;
use super::reaper::Reaper;

/// After its deadline, SIGKILL is sent again at this interval while the group has members (a process
/// may join it late with `setpgid`).
const KILL_AGAIN: Duration = Duration::from_millis(100);

/// How long dropping a group that still has members waits for them to be reaped after its SIGKILL.
/// Processes that got SIGKILL run no more user code; they may still be finishing a system call.
const DROP_WAIT: Duration = Duration::from_secs(1);

/// A running process group: the child is its leader, its descendants are members unless they leave.
#[derive(Debug)]
pub(super) struct Group {
    pgid: Pid,
    shared: Arc<Shared>,
    deadline_thread: Option<JoinHandle<()>>,
    guardian: Arc<Guardian>,
    reaper: Arc<Reaper>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// The group may have members: nothing proved it empty yet.
    members: bool,
    /// When the deadline thread SIGKILLs the group; `None`: no deadline.
    kill_at: Option<Instant>,
    /// The deadline thread sent SIGKILL.
    killed: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            members: true,
            kill_at: None,
            killed: false,
        }
    }
}

/// What one [`Group::reap`] found.
#[derive(Debug)]
pub(super) struct Reaped {
    /// The members reaped, with their status.
    pub(super) exited: Vec<WaitStatus>,
    /// No member is left: the group is gone.
    pub(super) empty: bool,
}

// === impl Group ===

impl Group {
    /// Starts `command` as the leader of a new process group, arms the guardian with it, and starts its
    /// deadline thread (no deadline yet).
    ///
    /// # Errors
    ///
    /// The command could not be started.
    pub(super) fn spawn(
        mut command: std::process::Command,
        guardian: Arc<Guardian>,
        reaper: Arc<Reaper>,
    ) -> std::io::Result<Self> {
        command.process_group(0);
        // The `Child` is dropped unwaited: this group's reaping collects the leader's status.
        let pgid = reaper.spawn_managed(|| {
            let child = command.spawn()?;
            i32::try_from(child.id())
                .map(Pid::from_raw)
                .map_err(std::io::Error::other)
        })?;
        guardian.arm(pgid);
        let shared = Arc::new(Shared::default());
        let deadline_thread = std::thread::Builder::new()
            .name("leader-elect-kill".into())
            .spawn({
                let shared = shared.clone();
                move || enforce_deadline(pgid, &shared)
            });
        let deadline_thread = match deadline_thread {
            Ok(thread) => thread,
            Err(err) => {
                let group = Self {
                    pgid,
                    shared,
                    deadline_thread: None,
                    guardian,
                    reaper,
                };
                drop(group); // SIGKILLs the group: it must not run without its deadline
                return Err(err);
            }
        };
        Ok(Self {
            pgid,
            shared,
            deadline_thread: Some(deadline_thread),
            guardian,
            reaper,
        })
    }

    /// The group's id: the leader's pid.
    pub(super) fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Sends `signal` to every member, if any is left.
    pub(super) fn signal(&self, signal: Signal) {
        let state = self.state();
        if state.members {
            let _ = killpg(self.pgid, signal);
        }
    }

    /// Sets the instant at which the deadline thread SIGKILLs the group (at once if it has passed);
    /// `None` removes the deadline.
    pub(super) fn kill_at(&self, at: Option<Instant>) {
        let mut state = self.state();
        if state.kill_at != at {
            state.kill_at = at;
            self.shared.changed.notify_all();
        }
    }

    /// Whether the deadline thread had to SIGKILL the group.
    pub(super) fn killed(&self) -> bool {
        self.state().killed
    }

    /// Reaps the members that exited (those that are our children: the leader, and members orphaned to
    /// us), and finds whether any member is left. Never blocks.
    pub(super) fn reap(&self) -> Reaped {
        let mut exited = Vec::new();
        let mut state = self.state();
        if !state.members {
            return Reaped {
                exited,
                empty: true,
            };
        }
        loop {
            match waitpid(
                Pid::from_raw(-self.pgid.as_raw()),
                Some(WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => exited.push(status),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // None of our children is left in the group; members that are not our children
                    // (their parent is a member still alive) keep it in existence.
                    state.members = has_members(self.pgid);
                    break;
                }
                Err(_) => break,
            }
        }
        let empty = !state.members;
        if empty {
            self.shared.changed.notify_all();
        }
        drop(state);
        if empty {
            self.forget();
        }
        Reaped { exited, empty }
    }

    /// The group is empty (or dropped after its SIGKILL): nobody may signal its number any more.
    fn forget(&self) {
        self.guardian.disarm(self.pgid);
        self.reaper.unmanage(self.pgid);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Group {
    /// A group dropped with members (its term's task was aborted) is SIGKILLed at once, and awaited for
    /// up to [`DROP_WAIT`] so the Lease is not released while it still runs.
    fn drop(&mut self) {
        if self.state().members {
            self.signal(Signal::SIGKILL);
            let give_up = Instant::now() + DROP_WAIT;
            while !self.reap().empty && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut state = self.state();
            if state.members {
                // Killed, not yet gone (stuck in the kernel): the orphan reaper reaps what is left.
                state.members = false;
                self.shared.changed.notify_all();
                drop(state);
                self.forget();
            }
        }
        if let Some(thread) = self.deadline_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether any process (a zombie included) is in group `pgid`. A group whose members we may not signal
/// (EPERM) still has members.
fn has_members(pgid: Pid) -> bool {
    !matches!(kill(Pid::from_raw(-pgid.as_raw()), None), Err(Errno::ESRCH))
}

/// The deadline thread: SIGKILLs the group when its deadline passes, and again every [`KILL_AGAIN`]
/// until the group is empty. It wakes on every change of the deadline and on its timer, so a process
/// frozen past the deadline kills as soon as it runs again. It does no I/O: no log line, no allocation
/// on the kill path.
fn enforce_deadline(pgid: Pid, shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    while state.members {
        let now = Instant::now();
        state = match state.kill_at {
            Some(at) if at <= now => {
                let _ = killpg(pgid, Signal::SIGKILL);
                state.killed = true;
                wait(shared, state, Some(KILL_AGAIN))
            }
            Some(at) => wait(shared, state, Some(at - now)),
            None => wait(shared, state, None),
        };
    }
}

fn wait<'a>(
    shared: &Shared,
    state: MutexGuard<'a, State>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, State> {
    match timeout {
        Some(timeout) => {
            shared
                .changed
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
        None => shared
            .changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner),
    }
}
