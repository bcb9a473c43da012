//! The child's process group: started in a group of its own, signalled and reaped as a whole, and
//! SIGKILLed at its deadline twice over: by the guardian process, which holds every deadline the group is
//! given and keeps time while leader-elect is frozen (architecture rule 13), and by a deadline thread
//! here that does nothing but wait and `kill()`.
//!
//! Signals go to a group only while it has members, decided under the same lock as the reaping: once the
//! last member is reaped the group's number may be reused, and a late SIGKILL must not reach a stranger.
//! For the same reason a deadline is sent to the guardian only under that lock, so none follows the
//! group's `disarm`.

use std::os::unix::process::CommandExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
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
    shared: Arc<Shared>,
    deadline_thread: Option<JoinHandle<()>>,
    guardian: Arc<Guardian>,
    reaper: Arc<Reaper>,
}

#[derive(Debug)]
struct Shared {
    pgid: Pid,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// The group may have members: nothing proved it empty yet.
    members: bool,
    /// When the group is to be SIGKILLed; `None`: no deadline.
    kill_at: Option<Instant>,
    /// The deadline the guardian holds: the last one it could be sent. It differs from `kill_at` only
    /// while the guardian cannot be reached (sent again at every [`Group::kill_at`] until it can).
    guardian_at: Option<Instant>,
    /// The deadline thread (or a continuation past the deadline) sent SIGKILL.
    killed: bool,
}

// === impl State ===

impl State {
    /// A new group's, armed in the guardian with `kill_at`.
    fn new(kill_at: Option<Instant>) -> Self {
        Self {
            members: true,
            kill_at,
            guardian_at: kill_at,
            killed: false,
        }
    }

    /// When the deadline thread SIGKILLs the group: the earlier of its deadline and the guardian's, so
    /// a deadline the guardian could not be sent kills early, never late (a guardian that is stalled or
    /// gone still holds, or would have held, the old one).
    fn enforced(&self) -> Option<Instant> {
        match (self.kill_at, self.guardian_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
    /// Starts `command` as the leader of a new process group, arms the guardian with it and `kill_at`
    /// (when it is to be SIGKILLed; `None`: only if leader-elect dies), registers it in `groups`, and
    /// starts its deadline thread.
    ///
    /// # Errors
    ///
    /// The command could not be started, or the guardian could not be armed (the group is then SIGKILLed
    /// at once: no child runs without a deadline kept outside leader-elect).
    pub(super) fn spawn(
        mut command: std::process::Command,
        kill_at: Option<Instant>,
        guardian: Arc<Guardian>,
        reaper: Arc<Reaper>,
        groups: &Groups,
    ) -> std::io::Result<Self> {
        command.process_group(0);
        // Registered before a Ctrl-Z can look: a group started meanwhile is stopped with the others.
        let mut registry = groups.registry();
        // The `Child` is dropped unwaited: this group's reaping collects the leader's status.
        let pgid = reaper.spawn_managed(|| {
            let child = command.spawn()?;
            i32::try_from(child.id())
                .map(Pid::from_raw)
                .map_err(std::io::Error::other)
        })?;
        let mut group = Self {
            shared: Arc::new(Shared {
                pgid,
                state: Mutex::new(State::new(kill_at)),
                changed: Condvar::new(),
            }),
            deadline_thread: None,
            guardian,
            reaper,
        };
        let armed = group.guardian.arm(pgid, kill_at);
        group.guardian.report(&armed);
        if let Err(err) = armed {
            drop(registry);
            drop(group); // SIGKILLs the group: it must not run without its deadline
            return Err(std::io::Error::new(
                err.kind(),
                format!("cannot arm the guardian process with the child's deadline: {err}"),
            ));
        }
        registry.retain(|shared| shared.strong_count() > 0);
        registry.push(Arc::downgrade(&group.shared));
        drop(registry);
        let deadline_thread = std::thread::Builder::new()
            .name("leader-elect-kill".into())
            .spawn({
                let shared = group.shared.clone();
                move || enforce_deadline(&shared)
            })?; // on failure the group is dropped: SIGKILLed, it must not run without its deadline
        group.deadline_thread = Some(deadline_thread);
        Ok(group)
    }

    /// The group's id: the leader's pid.
    pub(super) fn pgid(&self) -> Pid {
        self.shared.pgid
    }

    /// Sends `signal` to every member, if any is left.
    pub(super) fn signal(&self, signal: Signal) {
        let state = self.state();
        if state.members {
            let _ = killpg(self.pgid(), signal);
        }
    }

    /// Sets the instant at which the group is SIGKILLed (at once if it has passed; `None` removes the
    /// deadline), by the deadline thread and by the guardian. Call it again at least every so often: a
    /// deadline the guardian could not be sent (its pipe full, or gone) is sent again then, and until
    /// it is, the guardian's older one holds here too. Never blocks.
    pub(super) fn kill_at(&self, at: Option<Instant>) {
        let mut state = self.state();
        if !state.members {
            return;
        }
        let enforced = state.enforced();
        state.kill_at = at;
        let mut sent = None;
        if state.guardian_at != at {
            let result = self.guardian.arm(self.pgid(), at);
            if result.is_ok() {
                state.guardian_at = at;
            }
            sent = Some(result);
        }
        if state.enforced() != enforced {
            self.shared.changed.notify_all();
        }
        drop(state);
        if let Some(result) = sent {
            self.guardian.report(&result);
        }
    }

    /// Whether the group had to be SIGKILLed at its deadline by leader-elect (the guardian's kills are
    /// not seen here).
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
                Pid::from_raw(-self.pgid().as_raw()),
                Some(WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => exited.push(status),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // None of our children is left in the group; members that are not our children
                    // (their parent is a member still alive) keep it in existence.
                    state.members = has_members(self.pgid());
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
        self.guardian.disarm(self.pgid());
        self.reaper.unmanage(self.pgid());
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The child process groups of this process, for job control: Ctrl-Z (SIGTSTP) stops them with
/// leader-elect, and its continuation continues them, unless their deadline passed meanwhile.
#[derive(Debug, Default)]
pub(crate) struct Groups(Mutex<Vec<Weak<Shared>>>);

// === impl Groups ===

impl Groups {
    /// SIGSTOPs every group that has members, runs `stop` (which stops this process until it is
    /// continued), then, group by group, SIGKILLs one whose deadline has passed and SIGCONTs the others:
    /// the deadline is checked before anything is continued, so a child whose term ended while all was
    /// stopped never runs again. No group is started meanwhile.
    pub(crate) fn stopped_with(&self, stop: impl FnOnce()) {
        let registry = self.registry();
        let live: Vec<Arc<Shared>> = registry.iter().filter_map(Weak::upgrade).collect();
        for shared in &live {
            if shared.lock().members {
                let _ = killpg(shared.pgid, Signal::SIGSTOP);
            }
        }
        stop();
        for shared in &live {
            let mut state = shared.lock();
            if !state.members {
                continue;
            }
            if state.enforced().is_some_and(|at| at <= Instant::now()) {
                let _ = killpg(shared.pgid, Signal::SIGKILL);
                state.killed = true;
                shared.changed.notify_all();
            } else {
                let _ = killpg(shared.pgid, Signal::SIGCONT);
            }
        }
        drop(registry);
    }

    fn registry(&self) -> MutexGuard<'_, Vec<Weak<Shared>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether any process (a zombie included) is in group `pgid`. A group whose members we may not signal
/// (EPERM) still has members.
fn has_members(pgid: Pid) -> bool {
    !matches!(kill(Pid::from_raw(-pgid.as_raw()), None), Err(Errno::ESRCH))
}

/// The deadline thread: SIGKILLs the group when its deadline ([`State::enforced`]) passes, and again
/// every [`KILL_AGAIN`] until the group is empty. It wakes on every change of the deadline and on its
/// timer, so a process frozen past the deadline kills as soon as it runs again. It does no I/O: no log
/// line, no allocation on the kill path.
fn enforce_deadline(shared: &Shared) {
    let mut state = shared.lock();
    while state.members {
        let now = Instant::now();
        state = match state.enforced() {
            Some(at) if at <= now => {
                let _ = killpg(shared.pgid, Signal::SIGKILL);
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

#[cfg(test)]
mod tests {
    use super::super::guardian::testing::{drain, fill, over_pipe};
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A sleeping process group armed with a deadline an hour away, on a guardian over a test pipe.
    fn sleeping(groups: &Groups) -> (Group, Instant, std::fs::File) {
        let (guardian, read) = over_pipe();
        let reaper = Arc::new(Reaper::new().unwrap());
        let mut command = std::process::Command::new("sleep");
        command.arg("3600");
        let first = Instant::now() + HOUR;
        let group = Group::spawn(command, Some(first), Arc::new(guardian), reaper, groups).unwrap();
        (group, first, read)
    }

    #[test]
    fn rule_13_a_later_deadline_the_guardian_did_not_get_does_not_extend_the_work() {
        let (group, first, mut read) = sleeping(&Groups::default());
        let pgid = group.pgid();
        assert!(drain(&mut read).starts_with(&format!("arm {pgid} ")));
        fill(&group.guardian);
        group.kill_at(Some(first + HOUR));
        assert_eq!(
            group.state().enforced(),
            Some(first),
            "the guardian's holds"
        );
        assert_eq!(drain(&mut read), "", "nothing was written");
        // Sent again at the next call, once the guardian reads again.
        group.kill_at(Some(first + HOUR));
        assert_eq!(group.state().enforced(), Some(first + HOUR));
        assert!(drain(&mut read).starts_with(&format!("arm {pgid} ")));
    }

    #[test]
    fn rule_13_an_earlier_deadline_holds_at_once_even_when_the_guardian_did_not_get_it() {
        let (group, first, _read) = sleeping(&Groups::default());
        fill(&group.guardian);
        let sooner = first - HOUR / 2;
        group.kill_at(Some(sooner));
        assert_eq!(group.state().enforced(), Some(sooner));
    }

    #[test]
    fn no_child_runs_when_the_guardian_cannot_be_armed() {
        let (guardian, _read) = over_pipe();
        fill(&guardian);
        let mut command = std::process::Command::new("sleep");
        command.arg("3600");
        let reaper = Arc::new(Reaper::new().unwrap());
        let groups = Groups::default();
        let err = Group::spawn(command, None, Arc::new(guardian), reaper, &groups).unwrap_err();
        assert!(err.to_string().contains("cannot arm the guardian"), "{err}");
        let registry = groups.registry();
        assert!(
            registry.iter().all(|g| g.strong_count() == 0),
            "not registered"
        );
    }
}
