//! The reaper: leader-elect is a child subreaper (and may be PID 1 of a container), so processes orphaned
//! below it become its children; their zombies must be reaped, without reaping anything someone else
//! waits for.
//!
//! Who waits for what:
//! - the child's process group (the direct child, whose exit status we need, and its orphaned members):
//!   [`super::group::Group`], with `waitpid(-pgid)`, while the group is *managed* here;
//! - processes in leader-elect's own process group: whoever spawned them (kube's kubeconfig `exec`
//!   credential plugins are run by `std::process::Command` and waited for by pid; reaping them would
//!   break authentication);
//! - everything else (processes that left the child's group, what is left of an earlier group, the
//!   guardian should it die, anything orphaned in a container where we are PID 1): this task.
//!
//! A zombie is looked at with `waitid(WNOWAIT)` before it is reaped. The kernel returns the oldest
//! child first, so a zombie that is left to its owner hides the others until that owner reaps it (at
//! once for the group and for `std::process::Command`); the periodic pass picks them up after that.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The periodic pass, for zombies hidden behind one left to its owner (SIGCHLD wakes us otherwise).
const BACKSTOP: Duration = Duration::from_secs(1);

/// Orphan reaping for this process, and the registry of the child process groups reaped elsewhere.
#[derive(Debug)]
pub(crate) struct Reaper {
    own_group: Pid,
    /// Process groups whose members [`super::group::Group`] reaps. Held while a group is spawned, so
    /// that a child exiting at once is not reaped here before it is registered.
    managed: Mutex<HashSet<Pid>>,
}

// === impl Reaper ===

impl Reaper {
    /// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): a grandchild whose parent exits
    /// is re-parented to us, stays in reach of the group's signals and reaping, and cannot slip out to
    /// init unnoticed.
    ///
    /// # Errors
    ///
    /// The `prctl` failed.
    pub(crate) fn new() -> nix::Result<Self> {
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(Self {
            own_group: nix::unistd::getpgrp(),
            managed: Mutex::default(),
        })
    }

    /// Runs `spawn` (which starts a process group and returns its id) with the registry locked, and
    /// registers the group.
    pub(super) fn spawn_managed<E>(
        &self,
        spawn: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<Pid, E> {
        let mut managed = self.managed();
        let pgid = spawn()?;
        managed.insert(pgid);
        Ok(pgid)
    }

    /// The group is empty: its leftovers, if any, are ours from now on.
    pub(super) fn unmanage(&self, pgid: Pid) {
        self.managed().remove(&pgid);
    }

    /// Reaps orphans on every SIGCHLD and every [`BACKSTOP`], until `shutdown` is cancelled.
    pub(crate) async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(sigchld) => Some(sigchld),
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGCHLD; reaping orphans every second");
                None
            }
        };
        let mut backstop = tokio::time::interval(BACKSTOP);
        loop {
            for (pid, status) in self.reap_orphans() {
                tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = async { sigchld.as_mut()?.recv().await }, if sigchld.is_some() => {}
                _ = backstop.tick() => {}
            }
        }
    }

    /// One pass: reaps every zombie child that is neither in our own process group nor in a managed
    /// one, until the next zombie is someone else's (or none is left). Never blocks.
    fn reap_orphans(&self) -> Vec<(Pid, WaitStatus)> {
        let managed = self.managed();
        let mut reaped = Vec::new();
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            );
            let pid = match peek {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => break, // no zombie now
                },
                Err(Errno::EINTR) => continue,
                Err(_) => break, // ECHILD: no children at all
            };
            match nix::unistd::getpgid(Some(pid)) {
                Ok(group) if group == self.own_group || managed.contains(&group) => break,
                Ok(_) => {}
                Err(_) => break, // reaped by its owner meanwhile: look again next pass
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => reaped.push((pid, status)),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        reaped
    }

    fn managed(&self) -> MutexGuard<'_, HashSet<Pid>> {
        self.managed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
