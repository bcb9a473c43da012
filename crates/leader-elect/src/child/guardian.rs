//! The guardian: a helper process that holds the work deadline of each child process group and SIGKILLs
//! the group at that instant by its own clock, and SIGKILLs every group it still guards when leader-elect
//! dies, however it dies (SIGKILL and the OOM killer included).
//!
//! Why a process of its own (architecture rule 13): whatever freezes leader-elect (SIGSTOP, a debugger,
//! Ctrl-Z) freezes its renewals and its own kill thread with it, while the child, in a process group of
//! its own, keeps working. The guardian is in yet another group, with the terminal's signals out of its
//! reach, so it still kills at the deadline leader-elect last gave it.
//!
//! Deadlines travel as absolute instants on `CLOCK_BOOTTIME` (nanoseconds), a system-wide clock, so both
//! processes read the same one. leader-elect's own clock (std's and tokio's `Instant`) is
//! `CLOCK_MONOTONIC`, which stops while the system is suspended; `CLOCK_BOOTTIME` is the same clock plus
//! the time spent suspended. A deadline is converted when it is sent (what is left of it, added to the
//! boot clock read just before), and a guardian woken from a suspend longer than what was left kills at
//! once, as a follower on another machine, whose clock did not stop, may have taken over meanwhile.
//!
//! The parent-death signal reaches only the direct child and is not inherited by the processes it
//! starts. The guardian holds the read end of a pipe whose only writer is leader-elect: the kernel closes
//! that end when leader-elect exits, the guardian reads end-of-file and kills every group still armed.
//!
//! Limits: a process that leaves the group on purpose (`setsid`, `setpgid`) is not killed; a guardian that
//! is itself stopped or killed protects nothing (leader-elect then kills at the last deadline the guardian
//! took, by its own thread, and starts no child it cannot arm: see [`Guardian::arm`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;
use nix::unistd::Pid;

use super::SELF_EXE;

/// The hidden `guardian` subcommand. Reads lines on stdin:
/// - `arm PGID DEADLINE`: guard group `PGID` and SIGKILL it at `DEADLINE` (nanoseconds on
///   `CLOCK_BOOTTIME`, or `-` for none); sent again with every new deadline, the last one holds;
/// - `disarm PGID`: the group is gone, forget it (its number may be reused).
///
/// At end of input (leader-elect is gone) it SIGKILLs every group still armed, then exits 0.
///
/// It runs in its own process group, so a terminal's Ctrl-C and Ctrl-Z do not reach it, and blocks
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT, so signals meant for leader-elect (or for every process of a
/// container or unit) do not end it before leader-elect is gone.
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
    let mut armed = Armed::default();
    // A guardian that cannot keep time exits at once: leader-elect then cannot arm it, and starts no
    // child.
    if let Ok(timer) = TimerFd::new(
        ClockId::CLOCK_BOOTTIME,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    ) {
        watch(&mut armed, &timer);
    }
    for pgid in armed.all() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    ExitCode::SUCCESS
}

/// Applies stdin's lines to `armed` and kills each group when its deadline passes, until end of input
/// or an error reading it.
fn watch(armed: &mut Armed, timer: &TimerFd) {
    let stdin = std::io::stdin();
    let mut partial = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let Ok(now) = boot_clock() else { return };
        for pgid in armed.due(now) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        // An absolute timer on the boot clock: it fires at once after a suspend that passed it.
        let set = match armed.next() {
            Some(at) => timer.set(
                Expiration::OneShot(TimeSpec::from(at)),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            ),
            None => timer.unset(),
        };
        if set.is_err() {
            return;
        }
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(timer.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(false) {
            // Cleared by the next `set` too; read so that it cannot stay readable.
            let _ = nix::unistd::read(timer, &mut [0_u8; 8]);
        }
        if !fds[0].any().unwrap_or(false) {
            continue; // the deadlines are checked at the top
        }
        // Readable or hung up: this read does not block.
        match nix::unistd::read(&stdin, &mut buf) {
            Ok(0) => return,
            Ok(n) => partial.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return,
        }
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            armed.apply(std::str::from_utf8(&line[..end]).unwrap_or(""));
        }
    }
}

/// `CLOCK_BOOTTIME` now: the time since boot, suspended time included.
fn boot_clock() -> nix::Result<Duration> {
    clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map(Duration::from)
}

/// The groups the guardian guards, each with the instant (on `CLOCK_BOOTTIME`) it is to be killed at.
#[derive(Debug, Default)]
struct Armed(HashMap<i32, Option<Duration>>);

// === impl Armed ===

impl Armed {
    /// Applies one input line; a line that is not understood changes nothing.
    fn apply(&mut self, line: &str) {
        let mut words = line.split(' ');
        let (Some(verb), Some(Ok(pgid))) = (words.next(), words.next().map(str::parse::<i32>))
        else {
            return;
        };
        match (verb, words.next(), words.next()) {
            ("arm", Some("-"), None) => {
                self.0.insert(pgid, None);
            }
            ("arm", Some(at), None) => {
                if let Ok(nanos) = at.parse() {
                    self.0.insert(pgid, Some(Duration::from_nanos(nanos)));
                }
            }
            ("disarm", None, None) => {
                self.0.remove(&pgid);
            }
            _ => {}
        }
    }

    /// The groups whose deadline is `now` or earlier. Each is returned once: its deadline is dropped, the
    /// group stays armed (killed again at end of input) until disarmed or given a new deadline.
    fn due(&mut self, now: Duration) -> Vec<i32> {
        let mut due = Vec::new();
        for (&pgid, at) in &mut self.0 {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                due.push(pgid);
            }
        }
        due
    }

    /// The earliest deadline.
    fn next(&self) -> Option<Duration> {
        self.0.values().flatten().min().copied()
    }

    /// Every armed group.
    fn all(self) -> impl Iterator<Item = i32> {
        self.0.into_keys()
    }
}

/// leader-elect's end of the guardian: arms a child's process group with its deadline after it was
/// started, sends every new deadline, and disarms the group once it is empty.
#[derive(Debug)]
pub(crate) struct Guardian {
    pipe: Mutex<Pipe>,
    /// A write failed and no write succeeded since: the failure was reported once.
    failing: AtomicBool,
}

#[derive(Debug)]
struct Pipe {
    /// Non-blocking, so a stalled guardian cannot stall the elector; each line is shorter than
    /// `PIPE_BUF`, so it is written whole or not at all.
    file: File,
    /// Groups whose `disarm` could not be written yet: written before any other line, so that a later
    /// `arm` of the same number (reused by a new group) is never read before it.
    disarms: Vec<Pid>,
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
        tracing::debug!(pid = child.id(), "guardian started");
        Self::over(pipe.into())
    }

    /// leader-elect's end over `pipe`, the write end of the guardian's stdin; made non-blocking here.
    fn over(pipe: OwnedFd) -> std::io::Result<Self> {
        fcntl(&pipe, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(Self {
            pipe: Mutex::new(Pipe {
                file: pipe.into(),
                disarms: Vec::new(),
            }),
            failing: AtomicBool::new(false),
        })
    }

    /// Arms `pgid` with the instant at which the guardian SIGKILLs it (`None`: only when leader-elect
    /// dies); sent again for every new deadline. Never blocks.
    ///
    /// # Errors
    ///
    /// The line was not written (the guardian is gone, or stalled with its pipe full, or the boot clock
    /// cannot be read): the guardian keeps the deadline it had, or does not guard `pgid` at all if this
    /// was the first.
    pub(super) fn arm(&self, pgid: Pid, at: Option<Instant>) -> std::io::Result<()> {
        let line = match at {
            Some(at) => format!("arm {pgid} {}\n", on_boot_clock(at)?.as_nanos()),
            None => format!("arm {pgid} -\n"),
        };
        let mut pipe = self.pipe();
        pipe.flush_disarms()?;
        pipe.file.write_all(line.as_bytes())
    }

    /// `pgid` is empty: forget it (its number may be reused). Written later, before any other line,
    /// when it cannot be written now.
    pub(super) fn disarm(&self, pgid: Pid) {
        let mut pipe = self.pipe();
        pipe.disarms.push(pgid);
        let result = pipe.flush_disarms();
        drop(pipe);
        self.report(&result);
    }

    /// Logs a failed write once per streak of failures. Called outside any lock the deadline thread
    /// takes: a log line is never on the path of a kill.
    pub(super) fn report(&self, result: &std::io::Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the guardian is reachable again");
                }
            }
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        %err,
                        "cannot reach the guardian: the child's process group is SIGKILLed at the last \
                         deadline the guardian was given, and no child is started until it is reachable"
                    );
                }
            }
        }
    }

    fn pipe(&self) -> MutexGuard<'_, Pipe> {
        self.pipe.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Pipe ===

impl Pipe {
    fn flush_disarms(&mut self) -> std::io::Result<()> {
        while let Some(&pgid) = self.disarms.first() {
            self.file.write_all(format!("disarm {pgid}\n").as_bytes())?;
            self.disarms.remove(0);
        }
        Ok(())
    }
}

/// `at` as an instant on `CLOCK_BOOTTIME`. The boot clock is read before `Instant::now()`: the time
/// between the two reads makes the result earlier, never later. An instant that has passed is now.
///
/// # Errors
///
/// The boot clock cannot be read.
fn on_boot_clock(at: Instant) -> std::io::Result<Duration> {
    let boot = boot_clock()?;
    Ok(boot + at.saturating_duration_since(Instant::now()))
}

/// A guardian over a pipe whose read end the test holds, and what to fill and drain that pipe with.
#[cfg(test)]
pub(super) mod testing {
    use std::io::Read;

    use super::*;

    pub(in super::super) fn over_pipe() -> (Guardian, File) {
        let (read, write) = nix::unistd::pipe().unwrap();
        (Guardian::over(write).unwrap(), read.into())
    }

    /// Fills the pipe with empty lines until a write would block.
    pub(in super::super) fn fill(guardian: &Guardian) {
        let mut pipe = guardian.pipe();
        while pipe.file.write(&[b'\n'; 4096]).is_ok() {}
    }

    /// What was written since the last drain, empty lines left out.
    pub(in super::super) fn drain(read: &mut File) -> String {
        fcntl(&*read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut all = Vec::new();
        let mut buf = [0_u8; 65536];
        while let Ok(n @ 1..) = read.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(all)
            .unwrap()
            .trim_start_matches('\n')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{drain, fill, over_pipe};
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn armed(lines: &[&str]) -> Armed {
        let mut armed = Armed::default();
        for line in lines {
            armed.apply(line);
        }
        armed
    }

    #[test]
    fn rule_13_the_guardian_kills_a_group_once_at_its_latest_deadline() {
        let mut armed = armed(&["arm 7 1000000000", "arm 7 3000000000"]);
        assert_eq!(armed.next(), Some(3 * SECOND));
        assert!(armed.due(2 * SECOND).is_empty(), "the renewal moved it");
        assert_eq!(armed.due(3 * SECOND), vec![7]);
        assert!(armed.due(4 * SECOND).is_empty(), "killed once");
        assert_eq!(armed.next(), None);
        assert_eq!(armed.all().collect::<Vec<_>>(), vec![7], "still armed");
    }

    #[test]
    fn rule_13_a_disarmed_or_deadline_free_group_is_killed_only_at_end_of_input() {
        let mut armed = armed(&["arm 7 1000000000", "arm 8 -", "disarm 7"]);
        assert!(armed.due(Duration::MAX).is_empty());
        assert_eq!(armed.all().collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn the_guardian_ignores_a_line_it_does_not_understand() {
        let mut armed = armed(&[
            "arm 7 1000000000",
            "arm 7 soon",
            "arm 7",
            "arm x 5",
            "arm 7 5 6",
            "disarm 7 now",
            "kill 7",
            "",
        ]);
        assert_eq!(armed.next(), Some(SECOND));
        assert_eq!(armed.due(SECOND), vec![7]);
    }

    #[test]
    fn rule_13_a_deadline_that_passed_is_due_at_once_on_the_boot_clock() {
        let passed = Instant::now().checked_sub(SECOND).unwrap();
        let at = on_boot_clock(passed).unwrap();
        assert!(at <= boot_clock().unwrap());
    }

    #[test]
    fn a_disarm_that_cannot_be_written_goes_before_the_next_line() {
        let (guardian, mut read) = over_pipe();
        fill(&guardian);
        guardian.disarm(Pid::from_raw(7));
        assert!(
            guardian.arm(Pid::from_raw(8), None).is_err(),
            "the pipe is full"
        );
        assert_eq!(drain(&mut read), "");
        guardian.arm(Pid::from_raw(7), None).unwrap();
        assert_eq!(drain(&mut read), "disarm 7\narm 7 -\n");
    }
}
