//! Randomized simulation of the elector on the in-memory lock, under tokio's paused clock.
//!
//! Every run (one seed, one fresh current-thread runtime with paused time) starts 3 to 5 candidates on one
//! [`MemoryLeaseStore`], each with its own [`MemoryLeaseLock`], and for `CHAOS` of virtual time injects,
//! from a seeded [`StdRng`]:
//! - **crashes**: a candidate's `run` task is aborted (no release), and the process comes back after a
//!   random downtime, under the same identity (a StatefulSet pod) or a new one (a Deployment pod);
//! - **graceful restarts**: `shutdown` cancelled (work stopped, Lease released), then restarted;
//! - **identity reuse while cut off** (a StatefulSet pod force-deleted on an unreachable node): the process
//!   is black-holed but keeps running, and a new process with the same identity takes its place after a
//!   random delay; once faults stop, both run: two live processes with one identity;
//! - **frozen processes**: the candidate's `run` future is not polled at all for a while (GC pause,
//!   SIGSTOP, paused VM): its timers, requests and watch stand still while the others' clocks run;
//! - **API faults** ([`LockFault`]): hangs (black hole), request delays (some beyond the request
//!   timeout), injected 500s, lost responses (commit then fail) and forbidden watches.
//!
//! Then every fault is cleared and the run checks:
//! - **safety**: no two candidate processes' leadership intervals overlap. An interval is measured from
//!   the candidate's own published [`LeaderState`]: from when it says it leads until the earlier of when it
//!   stops saying so (or the process crashed) and its latest `valid_until`, i.e. exactly while
//!   `is_leader()` is true. Intervals are recorded from `subscribe()` changes on the paused clock, so the
//!   instants are exact.
//! - **safety of what users see**, not rebuilt from the published state (which would pass a renew loop
//!   that no longer ends the term at its deadline, or an `is_leader()` that ignores the deadline):
//!   - every candidate runs leader-only work per term (`on_started_leading`, frozen with its process);
//!     no two processes' work may run at the same time. A work interval during which its process was
//!     frozen is left unchecked (a frozen process cannot stop itself; term numbers fence it);
//!   - an independent task reads `is_leader()` of every live process every [`SAMPLE`]; no sample may
//!     find two processes leading.
//! - **fencing**: ordered by start, leadership intervals of different processes carry strictly
//!   increasing term numbers (`leaseTransitions`).
//! - **recovery**: once faults stop, a leader exists again within `RECOVERY_BOUND` (lease_duration +
//!   request_timeout + (1 + JITTER_FACTOR) x retry_period: a follower that was cut off when the last
//!   holder wrote the Lease can only start counting the lease duration once its hung request has timed
//!   out and its jittered retry has read the Lease).
//! - **liveness (failover)**: with faults stopped and the cluster settled, the leader is killed (or shut
//!   down) and another candidate leads within lease_duration + 2 x retry_period of the config.
//!
//! `SIMULATION_RUNS` sets the number of runs (default 2000); `SIMULATION_SEED` replays one seed. A failure
//! prints its seed and the intervals. The fault schedule is a pure function of the seed; the elector's own
//! retry jitter comes from `rand::rng()` (not injectable), so a replay follows the same schedule with
//! possibly different jitter.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use leaderelection::{
    Callbacks, Config, Elector, ElectorHandle, JITTER_FACTOR, LeaderElectionRecord,
    LeaseEventStream, LeaseLock, ListedLease, LockError, LockFault, MemoryLeaseLock,
    MemoryLeaseStore, ObservedLease, Observer, Request,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);
/// Faults are injected during this much virtual time, then stop.
const CHAOS: Duration = Duration::from_secs(30);

fn config(identity: &str) -> Config {
    Config::new(identity, "sim", "default")
        .with_lease_duration(LEASE)
        .with_renew_deadline(RENEW)
        .with_retry_period(RETRY)
}

/// The failover bound: lease_duration + 2 x retry_period, from the config.
fn failover_bound() -> Duration {
    let c = config("x");
    c.lease_duration + 2 * c.retry_period
}

/// The failover bound when every follower polls: a poll every jittered retry period, `[1, 1 + J) x`.
fn polling_failover_bound() -> Duration {
    let c = config("x");
    c.lease_duration + c.retry_period.mul_f64(1.0 + JITTER_FACTOR)
}

/// The bound after arbitrary faults stop (see the module docs).
fn recovery_bound() -> Duration {
    let c = config("x");
    c.lease_duration + c.effective_request_timeout() + c.retry_period.mul_f64(1.0 + JITTER_FACTOR)
}

// --- a freezable process ---

/// Freezes a future: while frozen it is not polled at all, as a stopped process runs no code.
/// Every future of one process (its `run` and its leader-only work) shares one freezer.
#[derive(Default)]
struct Freezer {
    frozen: AtomicBool,
    /// How many times the process was frozen so far.
    freezes: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

impl Freezer {
    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        self.freezes.fetch_add(1, Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
        for waker in std::mem::take(&mut *self.wakers.lock().unwrap()) {
            waker.wake();
        }
    }

    fn freezes(&self) -> usize {
        self.freezes.load(Ordering::SeqCst)
    }

    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }
}

struct Freezable<F> {
    inner: Pin<Box<F>>,
    freezer: Arc<Freezer>,
}

impl<F: Future> Future for Freezable<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.freezer.is_frozen() {
            let mut wakers = self.freezer.wakers.lock().unwrap();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

// --- recording leadership ---

/// One leadership interval of one process: `[start, end)` on the paused clock.
#[derive(Clone, Debug)]
struct Interval {
    /// The process (unique per start, even when the identity is reused).
    process: String,
    term: i32,
    start: Instant,
    end: Instant,
}

/// The running interval of one process: term, start, latest `valid_until`.
type Open = Arc<Mutex<Option<(i32, Instant, Instant)>>>;

/// The running leader-only work of one process: term, start, and how many times the process had been
/// frozen when it started.
type OpenWork = Arc<Mutex<Option<(i32, Instant, usize)>>>;

/// A sample at which several processes said they lead: when, and which.
type Together = (Instant, Vec<String>);

/// How often the sampler reads `is_leader()` of every live process (virtual time).
const SAMPLE: Duration = Duration::from_millis(50);

/// A live process's elector, as the sampler reads it.
struct Sampled {
    process: String,
    elector: ElectorHandle,
    /// Cleared when the process dies: a dead process runs no code that could read `is_leader()`.
    alive: Arc<AtomicBool>,
}

#[derive(Clone, Default)]
struct Log {
    /// Leadership as published (`subscribe()`), cut at each `valid_until`.
    intervals: Arc<Mutex<Vec<Interval>>>,
    /// Leader-only work (`on_started_leading`), one interval per term: from when the elector started it
    /// until it ended (its token cancelled, or it was aborted) or its process died. This is what a user's
    /// work does, whatever the published state says.
    work: Arc<Mutex<Vec<Interval>>>,
    /// Work intervals left unchecked because their process was frozen while the work ran: a frozen
    /// process cannot stop its own work (term numbers fence it; `is_leader()` is still sampled).
    work_frozen: Arc<AtomicUsize>,
    /// Every process started, for the sampler.
    electors: Arc<Mutex<Vec<Sampled>>>,
    /// Samples at which some process's `is_leader()` was true.
    leading_samples: Arc<AtomicUsize>,
    /// Samples at which `is_leader()` was true for more than one process: when, and which.
    both_leaders: Arc<Mutex<Vec<Together>>>,
    /// Anything the recorder found wrong on its own (e.g. leading without a deadline).
    anomalies: Arc<Mutex<Vec<String>>>,
    /// What each process did and saw, printed when a run fails.
    trace: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

/// Traces every request of one process, with its send time and outcome.
struct Tracer {
    process: String,
    log: Log,
}

impl Observer for Tracer {
    fn on_request(&self, request: &Request<'_>) {
        let now = Instant::now();
        let what = format!(
            "{} {} sent {:.3}s ago: {}",
            request.phase.as_str(),
            request.verb,
            request.latency.as_secs_f64(),
            request
                .error
                .map_or_else(|| "ok".to_string(), ToString::to_string)
        );
        self.log.trace(now, &self.process, what);
    }
}

/// Reads `is_leader()` of every live process every [`SAMPLE`], from its own task (independent of the
/// elector's publishing and of the recorder), as user code polling it would, and records every sample at
/// which two processes say they lead. Runs until its runtime ends.
async fn sample(log: Log) {
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leaders: Vec<String> = {
            let mut electors = log.electors.lock().unwrap();
            electors.retain(|s| s.alive.load(Ordering::SeqCst));
            electors
                .iter()
                .filter(|s| s.elector.is_leader())
                .map(|s| s.process.clone())
                .collect()
        };
        if !leaders.is_empty() {
            log.leading_samples.fetch_add(1, Ordering::SeqCst);
        }
        if leaders.len() > 1 {
            log.both_leaders
                .lock()
                .unwrap()
                .push((Instant::now(), leaders));
        }
    }
}

impl Log {
    /// Ends the running work interval of `process` at `at`; left unchecked if the process was frozen
    /// meanwhile.
    fn close_work(&self, process: &str, open: &OpenWork, freezer: &Freezer, at: Instant) {
        if let Some((term, start, freezes)) = open.lock().unwrap().take() {
            if freezer.freezes() != freezes {
                self.work_frozen.fetch_add(1, Ordering::SeqCst);
            } else if start < at {
                self.work.lock().unwrap().push(Interval {
                    process: process.to_string(),
                    term,
                    start,
                    end: at,
                });
            }
        }
    }

    fn trace(&self, at: Instant, process: &str, what: String) {
        self.trace
            .lock()
            .unwrap()
            .push((at, process.to_string(), what));
    }

    /// The trace since `from`, one line per entry, times relative to `origin`.
    fn trace_since(&self, from: Instant, origin: Instant) -> String {
        self.trace
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, _)| *at >= from)
            .map(|(at, process, what)| {
                format!(
                    "\n  {:>9.3}s {process:>8} {what}",
                    (*at - origin).as_secs_f64()
                )
            })
            .collect()
    }

    fn close(&self, process: &str, open: &Open, at: Instant) {
        if let Some((term, start, valid_until)) = open.lock().unwrap().take() {
            let end = at.min(valid_until);
            if start < end {
                self.intervals.lock().unwrap().push(Interval {
                    process: process.to_string(),
                    term,
                    start,
                    end,
                });
            }
        }
    }
}

/// One candidate process.
struct Candidate {
    identity: String,
    process: String,
    elector: ElectorHandle,
    lock: MemoryLeaseLock,
    shutdown: CancellationToken,
    freezer: Arc<Freezer>,
    task: JoinHandle<()>,
    recorder: JoinHandle<()>,
    open: Open,
    open_work: OpenWork,
    /// Cancelled when the process dies: ends its work task (which the elector does not own).
    killed: CancellationToken,
    alive: Arc<AtomicBool>,
    /// Watching was forbidden at some point: the elector polls from then on.
    polls: bool,
}

impl Candidate {
    fn start(store: &MemoryLeaseStore, identity: String, process: String, log: &Log) -> Self {
        let lock = store.lock(&process);
        let freezer = Arc::new(Freezer::default());
        let open_work: OpenWork = Arc::default();
        let killed = CancellationToken::new();
        let work = Work {
            log: log.clone(),
            process: process.clone(),
            open: open_work.clone(),
            freezer: freezer.clone(),
            killed: killed.clone(),
        };
        let callbacks =
            Callbacks::new().on_started_leading(move |term, token| work.run(term, token));
        let driver = Elector::builder(config(&identity), lock.clone())
            .callbacks(callbacks)
            .observer(Arc::new(Tracer {
                process: process.clone(),
                log: log.clone(),
            }))
            .build()
            .unwrap();
        let elector = driver.handle();
        let alive = Arc::new(AtomicBool::new(true));
        log.electors.lock().unwrap().push(Sampled {
            process: process.clone(),
            elector: elector.clone(),
            alive: alive.clone(),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Freezable {
            inner: Box::pin({
                let shutdown = shutdown.clone();
                async move {
                    driver.run(shutdown).await.unwrap();
                }
            }),
            freezer: freezer.clone(),
        });
        let open: Open = Arc::default();
        let recorder =
            tokio::spawn({
                let (mut rx, open, log, process) = (
                    elector.subscribe(),
                    open.clone(),
                    log.clone(),
                    process.clone(),
                );
                async move {
                    loop {
                        let (term, valid_until) = {
                            let s = rx.borrow_and_update();
                            (s.term.as_ref().map(|t| t.transitions), s.valid_until)
                        };
                        let now = Instant::now();
                        let current = *open.lock().unwrap();
                        match (current, term, valid_until) {
                            // The same term, still valid: its deadline moves to the one published.
                            (Some((t, start, last)), Some(term), Some(v))
                                if t == term && now < last =>
                            {
                                *open.lock().unwrap() = Some((t, start, v));
                            }
                            _ => {
                                // Ended: by a publish, or at its deadline already passed, or a new term.
                                log.close(&process, &open, now);
                                match (term, valid_until) {
                                    (Some(term), Some(v)) if now < v => {
                                        *open.lock().unwrap() = Some((term, now, v));
                                    }
                                    (Some(_), None) => log.anomalies.lock().unwrap().push(format!(
                                        "{process} leads without a deadline at {now:?}"
                                    )),
                                    _ => {}
                                }
                            }
                        }
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
            });
        Self {
            identity,
            process,
            elector,
            lock,
            shutdown,
            freezer,
            task,
            recorder,
            open,
            open_work,
            killed,
            alive,
            polls: false,
        }
    }

    /// The process dies now (no release): its open interval ends now or at its deadline, its work now.
    fn kill(&self, log: &Log) {
        self.task.abort();
        self.recorder.abort();
        self.alive.store(false, Ordering::SeqCst);
        self.killed.cancel();
        let now = Instant::now();
        log.close(&self.process, &self.open, now);
        log.close_work(&self.process, &self.open_work, &self.freezer, now);
    }
}

/// The leader-only work of one process (`on_started_leading`): it runs until its term's token is
/// cancelled (or the process dies), frozen with its process, and records its interval.
#[derive(Clone)]
struct Work {
    log: Log,
    process: String,
    open: OpenWork,
    freezer: Arc<Freezer>,
    killed: CancellationToken,
}

impl Work {
    /// Starts the interval now (when the elector starts the work, even if the process is frozen before
    /// the task first runs) and returns the task's future.
    fn run(
        &self,
        term: leaderelection::Term,
        token: CancellationToken,
    ) -> Freezable<impl Future<Output = Result<(), leaderelection::BoxError>> + use<>> {
        *self.open.lock().unwrap() =
            Some((term.transitions, Instant::now(), self.freezer.freezes()));
        let (ended, killed) = (WorkEnded(self.clone()), self.killed.clone());
        Freezable {
            inner: Box::pin(async move {
                let _ended = ended;
                tokio::select! {
                    () = token.cancelled() => {}
                    () = killed.cancelled() => {}
                }
                Ok(())
            }),
            freezer: self.freezer.clone(),
        }
    }
}

/// Ends the work interval when the work's future ends or is dropped (aborted).
struct WorkEnded(Work);

impl Drop for WorkEnded {
    fn drop(&mut self) {
        let w = &self.0;
        w.log
            .close_work(&w.process, &w.open, &w.freezer, Instant::now());
    }
}

// --- checks ---

/// Two intervals of different processes that overlap, if any.
fn overlap(intervals: &[Interval]) -> Option<(&Interval, &Interval)> {
    intervals.iter().enumerate().find_map(|(n, a)| {
        intervals[n + 1..]
            .iter()
            .find(|b| a.process != b.process && a.start < b.end && b.start < a.end)
            .map(|b| (a, b))
    })
}

/// Two intervals of different processes, ordered by start, whose terms do not increase.
fn fencing_violation(intervals: &[Interval]) -> Option<(&Interval, &Interval)> {
    let mut sorted: Vec<&Interval> = intervals.iter().collect();
    sorted.sort_by_key(|i| i.start);
    sorted.iter().enumerate().find_map(|(n, a)| {
        sorted[n + 1..]
            .iter()
            .find(|b| {
                if a.process == b.process {
                    b.term < a.term
                } else {
                    b.term <= a.term
                }
            })
            .map(|b| (*a, *b))
    })
}

fn describe(intervals: &[Interval], origin: Instant) -> String {
    let mut sorted: Vec<&Interval> = intervals.iter().collect();
    sorted.sort_by_key(|i| i.start);
    sorted
        .iter()
        .map(|i| {
            format!(
                "\n  {:>8} term {:>3}: {:>9.3}s .. {:>9.3}s",
                i.process,
                i.term,
                (i.start - origin).as_secs_f64(),
                (i.end - origin).as_secs_f64()
            )
        })
        .collect()
}

// --- one run ---

fn random_fault(rng: &mut StdRng) -> LockFault {
    let mut fault = LockFault::default();
    match rng.random_range(0..7) {
        0 => fault.hang = true,
        // Up to 2.5 s: past the 1 s request timeout and the 2 s renew deadline.
        1 => fault.delay = Duration::from_millis(rng.random_range(0..2500)),
        2 => fault.fail = true,
        3 => fault.commit_then_fail = true,
        4 => fault.forbid_watch = true,
        5 => {
            fault.delay = Duration::from_millis(rng.random_range(0..900));
            fault.commit_then_fail = rng.random_bool(0.5);
        }
        _ => {
            fault.delay = Duration::from_millis(rng.random_range(0..300));
            fault.fail = rng.random_bool(0.3);
        }
    }
    fault
}

/// A process to start again at `at`, in slot `slot`, under `identity`.
struct Restart {
    at: Instant,
    slot: usize,
    identity: String,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    store: MemoryLeaseStore,
    log: Log,
    origin: Instant,
    /// `None` while that slot's process is down.
    slots: Vec<Option<Candidate>>,
    /// Candidates shut down gracefully and still stopping (awaited before their identity is reused).
    stopping: Vec<Candidate>,
    /// Processes cut off from the API whose slot (and identity) a new process took: still running, and
    /// live again once faults stop.
    cut_off: Vec<Candidate>,
    restarts: Vec<Restart>,
    /// Frozen slots and when they thaw.
    thaws: Vec<(Instant, usize)>,
    processes: usize,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(3..=5);
        let mut sim = Self {
            seed,
            rng,
            store: MemoryLeaseStore::new(),
            log: Log::default(),
            origin: Instant::now(),
            slots: Vec::new(),
            stopping: Vec::new(),
            cut_off: Vec::new(),
            restarts: Vec::new(),
            thaws: Vec::new(),
            processes: 0,
        };
        tokio::spawn(sample(sim.log.clone()));
        for slot in 0..count {
            let candidate = sim.spawn(format!("c{slot}"));
            sim.slots.push(Some(candidate));
        }
        sim
    }

    fn spawn(&mut self, identity: String) -> Candidate {
        self.processes += 1;
        let process = format!("{identity}#{}", self.processes);
        Candidate::start(&self.store, identity, process, &self.log)
    }

    fn live(&self) -> impl Iterator<Item = &Candidate> {
        self.slots.iter().flatten().chain(&self.cut_off)
    }

    /// Starts the restarts that are due (all of them when `all`), once a gracefully stopped process with
    /// the same identity has finished (one identity never runs twice at once).
    fn restart_due(&mut self, all: bool) {
        let now = Instant::now();
        self.stopping.retain(|c| !c.task.is_finished());
        let mut pending = std::mem::take(&mut self.restarts);
        pending.retain(|r| {
            let busy = self.stopping.iter().any(|c| c.identity == r.identity);
            if (all || r.at <= now) && !busy {
                let candidate = self.spawn(r.identity.clone());
                self.slots[r.slot] = Some(candidate);
                false
            } else {
                true
            }
        });
        self.restarts = pending;
    }

    fn thaw_due(&mut self, all: bool) {
        let now = Instant::now();
        let slots = &self.slots;
        self.thaws.retain(|&(at, slot)| {
            if all || at <= now {
                if let Some(c) = &slots[slot] {
                    c.freezer.thaw();
                }
                false
            } else {
                true
            }
        });
    }

    /// One random event on a random slot.
    fn event(&mut self) {
        let slot = self.rng.random_range(0..self.slots.len());
        let roll = self.rng.random_range(0..20);
        let same_identity = self.rng.random_bool(0.5);
        let millis = self.rng.random_range(0..4000u64);
        let fault = random_fault(&mut self.rng);
        let now = Instant::now();
        let Some(mut candidate) = self.slots[slot].take() else {
            return;
        };
        match roll {
            // Crash; back later under the same identity (StatefulSet) or a new one (Deployment).
            0..=1 => {
                candidate.kill(&self.log);
                let identity = if same_identity {
                    candidate.identity.clone()
                } else {
                    format!("c{slot}r{}", self.processes)
                };
                self.restarts.push(Restart {
                    at: now + Duration::from_millis(millis),
                    slot,
                    identity,
                });
                self.thaws.retain(|&(_, s)| s != slot);
                return;
            }
            // Graceful restart: shutdown (work stopped, Lease released), then start again.
            2 => {
                candidate.shutdown.cancel();
                // Thawed, or it never finishes stopping.
                candidate.freezer.thaw();
                self.thaws.retain(|&(_, s)| s != slot);
                self.restarts.push(Restart {
                    at: now + Duration::from_millis(millis / 2),
                    slot,
                    identity: candidate.identity.clone(),
                });
                self.stopping.push(candidate);
                return;
            }
            // Frozen process, for up to 3 lease durations.
            3..=5 => {
                if !candidate.freezer.is_frozen() {
                    candidate.freezer.freeze();
                    let length = Duration::from_millis(100 + millis * 2);
                    self.thaws.push((now + length, slot));
                }
            }
            6..=13 => {
                candidate.polls |= fault.forbid_watch;
                candidate.lock.set_fault(fault);
            }
            // Cut off, and replaced by a new process with the same identity (rule 12); the old one runs on.
            14 => {
                candidate.lock.set_fault(LockFault {
                    hang: true,
                    ..LockFault::default()
                });
                // Its thaw is keyed by the slot it leaves.
                candidate.freezer.thaw();
                self.thaws.retain(|&(_, s)| s != slot);
                self.restarts.push(Restart {
                    at: now + Duration::from_millis(millis),
                    slot,
                    identity: candidate.identity.clone(),
                });
                self.cut_off.push(candidate);
                return;
            }
            _ => candidate.lock.set_fault(LockFault::default()),
        }
        self.slots[slot] = Some(candidate);
    }

    /// Sleeps `d` of virtual time, handling restarts and thaws as they fall due (a restart waiting for a
    /// stopping process is retried every 50 ms).
    async fn sleep(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            let next = self
                .restarts
                .iter()
                .map(|r| r.at.max(now + Duration::from_millis(50)))
                .chain(self.thaws.iter().map(|t| t.0))
                .filter(|&at| at < until)
                .min()
                .unwrap_or(until);
            tokio::time::sleep_until(next).await;
            self.thaw_due(false);
            self.restart_due(false);
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// Stops every fault: clears lock faults, thaws, starts every pending restart.
    async fn heal(&mut self) {
        // Graceful stops finish on their own once thawed (release is bounded by renew_deadline).
        let deadline = Instant::now() + RENEW + RETRY * 4;
        for c in &self.stopping {
            c.lock.set_fault(LockFault::default());
            c.freezer.thaw();
        }
        for c in self.live() {
            c.lock.set_fault(LockFault::default());
        }
        self.thaw_due(true);
        while !self.stopping.iter().all(|c| c.task.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.restart_due(true);
    }

    fn intervals(&self) -> Vec<Interval> {
        self.log.intervals.lock().unwrap().clone()
    }

    /// Every interval so far, the running ones cut at now.
    fn all_intervals(&self) -> Vec<Interval> {
        let now = Instant::now();
        let mut intervals = self.intervals();
        for c in self.live().chain(&self.stopping) {
            if let Some((term, start, valid_until)) = *c.open.lock().unwrap() {
                intervals.push(Interval {
                    process: c.process.clone(),
                    term,
                    start,
                    end: now.min(valid_until).max(start),
                });
            }
        }
        intervals
    }

    /// Whether some process led at some instant of `[from, to]`.
    fn led_between(&self, from: Instant, to: Instant) -> bool {
        self.all_intervals()
            .iter()
            .any(|i| i.start <= to && i.end > from)
    }

    /// The first instant at or after `after` at which a process other than `except` starts leading.
    fn first_leader_after(&self, after: Instant, except: &str) -> Option<Instant> {
        self.all_intervals()
            .iter()
            .filter(|i| i.start >= after && i.process != except)
            .map(|i| i.start)
            .min()
    }

    fn leader(&self) -> Option<&Candidate> {
        self.live().find(|c| c.elector.is_leader())
    }

    fn fail(&self, what: String) -> String {
        format!(
            "seed {}: {what}\nintervals (seconds since the start of the run):{}",
            self.seed,
            describe(&self.intervals(), self.origin)
        )
    }

    fn at(&self, t: Instant) -> f64 {
        (t - self.origin).as_secs_f64()
    }
}

/// What one run saw, for the summary.
#[derive(Default)]
struct Stats {
    intervals: usize,
    processes: usize,
    /// Work intervals checked, and left unchecked (frozen).
    work: usize,
    work_frozen: usize,
    /// Samples of `is_leader()` at which some process led.
    leading_samples: usize,
}

async fn run(seed: u64) -> Result<Stats, String> {
    let mut sim = Sim::new(seed);
    while sim.origin.elapsed() < CHAOS {
        let pause = Duration::from_millis(sim.rng.random_range(20..1200));
        sim.sleep(pause).await;
        sim.event();
    }

    // Faults stop; a leader must exist again within the recovery bound.
    sim.heal().await;
    let healed = Instant::now();
    let bound = recovery_bound();
    sim.sleep(bound + Duration::from_millis(1)).await;
    if !sim.led_between(healed, healed + bound) {
        return Err(sim.fail(format!(
            "no leader within {bound:?} after faults stopped at {:.3}s",
            sim.at(healed)
        )));
    }

    // Settle (every dead watch, stale observation and backoff has had time to play out), then kill or
    // shut down the leader: another must lead within lease_duration + 2 x retry_period.
    sim.sleep(2 * LEASE).await;
    let graceful = sim.rng.random_bool(0.3);
    let Some(leader) = sim.leader() else {
        return Err(sim.fail(format!(
            "no leader {:?} after faults stopped at {:.3}s",
            bound + 2 * LEASE,
            sim.at(healed)
        )));
    };
    let killed_at = Instant::now();
    let process = leader.process.clone();
    if graceful {
        leader.shutdown.cancel();
    } else {
        leader.kill(&sim.log);
    }
    // Followers that watch see the last renew at once and take over a lease duration later; a follower
    // that polls (its watch was forbidden) first sees it up to one jittered retry period late.
    let all_poll = sim.live().all(|c| c.process == process || c.polls);
    let bound = if all_poll {
        polling_failover_bound()
    } else {
        failover_bound()
    };
    sim.sleep(3 * bound).await;
    match sim.first_leader_after(killed_at, &process) {
        Some(t) if t - killed_at <= bound => {}
        found => {
            return Err(sim.fail(
                format!(
                    "{} {process} at {:.3}s: next leader {}, bound {bound:?}",
                    if graceful { "shut down" } else { "killed" },
                    sim.at(killed_at),
                    match found {
                        Some(t) => format!("after {:?}", t - killed_at),
                        None => format!("none within {:?}", 3 * bound),
                    }
                ) + &format!(
                    "\ntrace since 2 lease durations before:{}",
                    sim.log.trace_since(killed_at - 2 * LEASE, sim.origin)
                ),
            ));
        }
    }

    for c in sim.live().chain(&sim.stopping) {
        c.kill(&sim.log);
    }
    let anomalies = sim.log.anomalies.lock().unwrap().clone();
    if !anomalies.is_empty() {
        return Err(sim.fail(format!("recorder anomalies: {anomalies:?}")));
    }
    let intervals = sim.intervals();
    if let Some((a, b)) = overlap(&intervals) {
        return Err(sim.fail(format!(
            "SAFETY: {} (term {}) led {:.3}s..{:.3}s and {} (term {}) led {:.3}s..{:.3}s",
            a.process,
            a.term,
            sim.at(a.start),
            sim.at(a.end),
            b.process,
            b.term,
            sim.at(b.start),
            sim.at(b.end)
        )));
    }
    if let Some((a, b)) = fencing_violation(&intervals) {
        return Err(sim.fail(format!(
            "FENCING: {} term {} at {:.3}s, then {} term {} at {:.3}s",
            a.process,
            a.term,
            sim.at(a.start),
            b.process,
            b.term,
            sim.at(b.start)
        )));
    }
    let work = sim.log.work.lock().unwrap().clone();
    if let Some((a, b)) = overlap(&work) {
        return Err(sim.fail(format!(
            "WORK SAFETY: {}'s work (term {}) ran {:.3}s..{:.3}s and {}'s work (term {}) ran {:.3}s..{:.3}s",
            a.process,
            a.term,
            sim.at(a.start),
            sim.at(a.end),
            b.process,
            b.term,
            sim.at(b.start),
            sim.at(b.end)
        )));
    }
    if let Some((at, leaders)) = sim.log.both_leaders.lock().unwrap().first() {
        return Err(sim.fail(format!(
            "IS_LEADER SAFETY: at {:.3}s is_leader() was true for {leaders:?}",
            sim.at(*at)
        )));
    }
    Ok(Stats {
        intervals: intervals.len(),
        processes: sim.processes,
        work: work.len(),
        work_frozen: sim.log.work_frozen.load(Ordering::SeqCst),
        leading_samples: sim.log.leading_samples.load(Ordering::SeqCst),
    })
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(run(seed))
}

fn paused<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn randomized_faults_never_give_two_leaders_and_always_recover() {
    let wall = std::time::Instant::now();
    let seeds: Vec<u64> = match std::env::var("SIMULATION_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIMULATION_SEED: a u64")],
        Err(_) => {
            let runs: u64 = std::env::var("SIMULATION_RUNS")
                .ok()
                .map(|r| r.parse().expect("SIMULATION_RUNS: a number"))
                .unwrap_or(2000);
            (0..runs).collect()
        }
    };
    let mut failures = Vec::new();
    let mut total = Stats::default();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(stats) => {
                total.intervals += stats.intervals;
                total.processes += stats.processes;
                total.work += stats.work;
                total.work_frozen += stats.work_frozen;
                total.leading_samples += stats.leading_samples;
            }
            Err(failure) => failures.push(failure),
        }
    }
    let Stats {
        intervals,
        processes,
        work,
        work_frozen,
        leading_samples,
    } = total;
    println!(
        "simulation: {} runs, {processes} processes, {intervals} leadership intervals, {work} work \
         intervals checked ({work_frozen} left unchecked: frozen), {leading_samples} is_leader() samples \
         with a leader, {} violations, wall {:.1}s",
        seeds.len(),
        failures.len(),
        wall.elapsed().as_secs_f64()
    );
    for failure in failures.iter().take(5) {
        println!("{failure}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs failed; first: {}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
    assert!(
        intervals >= seeds.len(),
        "too few leadership intervals ({intervals}) for {} runs: the recorder sees nothing",
        seeds.len()
    );
    assert!(
        work >= seeds.len(),
        "too few work intervals ({work}) for {} runs: the work recorder sees nothing",
        seeds.len()
    );
    assert!(
        leading_samples >= seeds.len(),
        "too few is_leader() samples with a leader ({leading_samples}) for {} runs: the sampler sees nothing",
        seeds.len()
    );
}

/// The safety check catches two leaders: two candidates on separate stores both lead, and the very
/// recorder and check the simulation uses must report the overlap.
#[test]
fn the_checker_detects_two_leaders() {
    let caught = paused(async {
        let log = Log::default();
        let a = Candidate::start(&MemoryLeaseStore::new(), "a".into(), "a#1".into(), &log);
        let b = Candidate::start(&MemoryLeaseStore::new(), "b".into(), "b#1".into(), &log);
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.kill(&log);
        b.kill(&log);
        let intervals = log.intervals.lock().unwrap().clone();
        assert_eq!(intervals.len(), 2, "{intervals:?}");
        // Both began leading at once and renewed throughout: each interval spans the whole 5 s.
        assert!(
            intervals
                .iter()
                .all(|i| i.end - i.start == Duration::from_secs(5))
        );
        overlap(&intervals).is_some() && fencing_violation(&intervals).is_some()
    });
    assert!(
        caught,
        "separate stores: both lead, and the checks must say so"
    );
}

/// A frozen leader's interval ends at its own deadline, not when it thaws; a leader whose API hangs stops
/// leading at its deadline too; and the next leader starts only after.
#[test]
fn the_recorder_ends_intervals_at_the_deadline() {
    paused(async {
        let log = Log::default();
        let store = MemoryLeaseStore::new();
        let a = Candidate::start(&store, "a".into(), "a#1".into(), &log);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a.elector.is_leader());
        let b = Candidate::start(&store, "b".into(), "b#2".into(), &log);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let renewed_at = a.elector.state().renewed_at.unwrap();
        a.freezer.freeze();
        tokio::time::sleep(Duration::from_secs(10)).await;
        a.freezer.thaw();
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.kill(&log);
        b.kill(&log);
        let intervals = log.intervals.lock().unwrap().clone();
        let first = intervals.iter().find(|i| i.process == "a#1").unwrap();
        assert_eq!(first.end, renewed_at + RENEW, "{intervals:?}");
        let second = intervals.iter().find(|i| i.process == "b#2").unwrap();
        assert!(second.start >= renewed_at + LEASE, "{intervals:?}");
        assert!(overlap(&intervals).is_none());
        assert!(fencing_violation(&intervals).is_none());
    });
}

/// Minimal case of the polling failover, outside the randomized runs: a follower that polls (watching
/// disabled, as when RBAC forbids it) must take over from a crashed leader once the Lease it last saw
/// change has been unchanged for a lease duration.
#[test]
fn a_polling_follower_takes_over_from_a_crashed_leader() {
    paused(async {
        let store = MemoryLeaseStore::new();
        let start = |identity: &str| {
            let elector = Elector::new(
                config(identity).with_watch(false),
                store.lock(identity),
                Callbacks::new(),
            )
            .unwrap();
            let (elector, elector_driver) = (elector.handle(), elector);
            let task = tokio::spawn(elector_driver.run(CancellationToken::new()));
            (elector, task)
        };
        let (a, a_task) = start("a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a.is_leader());
        let (b, _b_task) = start("b");
        tokio::time::sleep(Duration::from_secs(2)).await;
        a_task.abort();
        let killed_at = Instant::now();
        while !b.is_leader() && killed_at.elapsed() <= 5 * polling_failover_bound() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            b.is_leader() && killed_at.elapsed() <= polling_failover_bound(),
            "b leads: {}, {:?} after a crashed (bound {:?}); b's calls: {:?}",
            b.is_leader(),
            killed_at.elapsed(),
            polling_failover_bound(),
            store.calls_of("b")
        );
    });
}

/// Minimal case of a watching follower whose watch went silent during a short API hang (the event that
/// arrived meanwhile never comes out, as on a black-holed connection): after the fault stops it must
/// still take over from a crashed leader within lease_duration + 2 x retry_period. Its renew-conflict on
/// each take proves its watch is stale.
#[test]
fn a_follower_with_a_dead_watch_takes_over_from_a_crashed_leader() {
    paused(async {
        let start = Instant::now();
        let store = MemoryLeaseStore::new();
        let a = Elector::new(config("a"), store.lock("a"), Callbacks::new()).unwrap();
        let (a, a_driver) = (a.handle(), a);
        let a_task = tokio::spawn(a_driver.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.is_leader());
        let b_lock = store.lock("b");
        let b = Elector::new(config("b"), b_lock.clone(), Callbacks::new()).unwrap();
        let (b, b_driver) = (b.handle(), b);
        let _b_task = tokio::spawn(b_driver.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // b's API hangs across one of a's renews (at 0.5 s), then recovers.
        b_lock.set_fault(LockFault {
            hang: true,
            ..LockFault::default()
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        b_lock.set_fault(LockFault::default());
        // Kill a just after b's conflicting take at 3.1 s and 6.1 s has re-read the Lease, and after a
        // renew that b's watch cannot deliver.
        tokio::time::sleep_until(start + Duration::from_millis(6600)).await;
        a_task.abort();
        let killed_at = Instant::now();
        while !b.is_leader() && killed_at.elapsed() <= 5 * failover_bound() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            b.is_leader() && killed_at.elapsed() <= failover_bound(),
            "b leads: {}, {:?} after a crashed (bound {:?}); b's calls: {:?}",
            b.is_leader(),
            killed_at.elapsed(),
            failover_bound(),
            store.calls_of("b")
        );
    });
}

/// `[start, end)` in milliseconds after a common origin, for one process.
fn interval(process: &str, start: u64, end: u64) -> Interval {
    let origin = Instant::now();
    Interval {
        process: process.to_string(),
        term: 0,
        start: origin + Duration::from_millis(start),
        end: origin + Duration::from_millis(end),
    }
}

/// The overlap check, case by case: it must see partial overlap and containment in either order, and
/// accept intervals that only touch (`[a, b)` then `[b, c)`) and overlaps within one process.
#[test]
fn the_overlap_check_sees_every_kind_of_overlap() {
    paused(async {
        let cases: [(&str, Vec<Interval>, bool); 9] = [
            (
                "disjoint",
                vec![interval("a", 0, 10), interval("b", 20, 30)],
                false,
            ),
            (
                "touching",
                vec![interval("a", 0, 10), interval("b", 10, 20)],
                false,
            ),
            (
                "touching, listed backwards",
                vec![interval("b", 10, 20), interval("a", 0, 10)],
                false,
            ),
            (
                "partial overlap",
                vec![interval("a", 0, 10), interval("b", 9, 20)],
                true,
            ),
            (
                "partial overlap, listed backwards",
                vec![interval("b", 9, 20), interval("a", 0, 10)],
                true,
            ),
            (
                "containment",
                vec![interval("a", 0, 30), interval("b", 10, 20)],
                true,
            ),
            (
                "contained first",
                vec![interval("b", 10, 20), interval("a", 0, 30)],
                true,
            ),
            (
                "identical",
                vec![interval("a", 0, 10), interval("b", 0, 10)],
                true,
            ),
            (
                "one process only",
                vec![interval("a", 0, 10), interval("a", 5, 20)],
                false,
            ),
        ];
        for (name, intervals, overlaps) in cases {
            assert_eq!(
                overlap(&intervals).is_some(),
                overlaps,
                "{name}: {intervals:?}"
            );
        }
        // An overlap between the first and the last of many is found too.
        let mut many: Vec<Interval> = (0..10)
            .map(|n| interval(&format!("p{n}"), n * 10, n * 10 + 10))
            .collect();
        assert!(overlap(&many).is_none());
        many.push(interval("late", 5, 6));
        assert!(overlap(&many).is_some());
    });
}

#[test]
fn bounds_come_from_a_valid_config() {
    config("x").validate().unwrap();
    assert_eq!(failover_bound(), Duration::from_secs(4));
    assert_eq!(polling_failover_bound(), Duration::from_millis(4100));
    assert_eq!(recovery_bound(), Duration::from_millis(5100));
}

// --- a write committed at once and answered late ---

/// What [`LateAnswers`] does to the next calls.
#[derive(Clone, Copy, Debug)]
enum Answering {
    /// Every call is served as the inner lock serves it.
    Normal,
    /// The next write is committed at once and its answer arrives this much later; every call after it
    /// hangs (the API server became unreachable right after the commit).
    LateOnce(Duration),
    Hang,
}

/// A lock over [`MemoryLeaseLock`] whose next write can be committed at once and answered late, as when
/// the response of a write that etcd applied is delayed on its way back. A leader must count its validity
/// from when it sent that write, not from when the answer arrived: followers start counting the lease
/// duration from the commit.
#[derive(Clone, Debug)]
struct LateAnswers {
    inner: MemoryLeaseLock,
    answering: Arc<Mutex<Answering>>,
    /// When the late write was committed.
    committed_at: Arc<Mutex<Option<Instant>>>,
}

impl LateAnswers {
    fn new(inner: MemoryLeaseLock) -> Self {
        Self {
            inner,
            answering: Arc::new(Mutex::new(Answering::Normal)),
            committed_at: Arc::default(),
        }
    }

    fn answer_next_write_late(&self, delay: Duration) {
        *self.answering.lock().unwrap() = Answering::LateOnce(delay);
    }

    fn committed_at(&self) -> Option<Instant> {
        *self.committed_at.lock().unwrap()
    }

    /// Serves `call` as configured; `write` marks a create or update.
    fn serve<'a, T: Send + 'a>(
        &'a self,
        write: bool,
        call: futures::future::BoxFuture<'a, T>,
    ) -> futures::future::BoxFuture<'a, T> {
        let answering = {
            let mut answering = self.answering.lock().unwrap();
            let now = *answering;
            if write && let Answering::LateOnce(_) = now {
                *answering = Answering::Hang;
            }
            now
        };
        Box::pin(async move {
            match answering {
                Answering::Normal => call.await,
                Answering::LateOnce(delay) if write => {
                    let answer = call.await;
                    *self.committed_at.lock().unwrap() = Some(Instant::now());
                    tokio::time::sleep(delay).await;
                    answer
                }
                Answering::LateOnce(_) => call.await,
                Answering::Hang => std::future::pending().await,
            }
        })
    }
}

impl LeaseLock for LateAnswers {
    fn get(&self) -> BoxFuture<'_, Result<Option<ObservedLease>, LockError>> {
        self.serve(false, self.inner.get())
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        self.serve(true, self.inner.create(record))
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        self.serve(true, self.inner.update(record, resource_version))
    }

    fn list(&self) -> BoxFuture<'_, Result<ListedLease, LockError>> {
        self.serve(false, self.inner.list())
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>> {
        self.serve(false, self.inner.watch(resource_version))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A leader's renewal is committed at once and answered 1.5 s later, then its API server hangs. The
/// follower saw the commit at once and takes over a lease duration after it; the leader's validity must
/// be counted from the send time of that renewal (`renewed_at`), so it has stopped leading, and its
/// work has stopped, before the follower leads. The request timeout (1.9 s) lets the late answer count:
/// counted from its arrival, the leader's validity would run 0.5 s past the takeover.
#[test]
fn a_renewal_committed_at_once_and_answered_late_counts_from_its_send_time() {
    paused(async {
        let config =
            |identity: &str| config(identity).with_request_timeout(Duration::from_millis(1900));
        let store = MemoryLeaseStore::new();
        let log = Log::default();
        let late = LateAnswers::new(store.lock("a"));
        let freezer = Arc::new(Freezer::default());
        let work = |process: &str| Work {
            log: log.clone(),
            process: process.to_string(),
            open: OpenWork::default(),
            freezer: freezer.clone(),
            killed: CancellationToken::new(),
        };
        let (a_work, b_work) = (work("a"), work("b"));
        let a = Elector::new(
            config("a"),
            late.clone(),
            Callbacks::new().on_started_leading(move |term, token| a_work.run(term, token)),
        )
        .unwrap();
        let (a, a_driver) = (a.handle(), a);
        let _a_task = tokio::spawn(a_driver.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(a.is_leader());
        let b = Elector::new(
            config("b"),
            store.lock("b"),
            Callbacks::new().on_started_leading(move |term, token| b_work.run(term, token)),
        )
        .unwrap();
        let (b, b_driver) = (b.handle(), b);
        let _b_task = tokio::spawn(b_driver.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(b.leader().as_deref() == Some("a") && !b.is_leader());

        late.answer_next_write_late(Duration::from_millis(1500));
        let armed = Instant::now();
        // Sample both every 10 ms for 3 lease durations (b takes over about one after the commit).
        let (mut both, mut b_led) = (Vec::new(), false);
        while armed.elapsed() < 3 * LEASE {
            tokio::time::sleep(Duration::from_millis(10)).await;
            b_led |= b.is_leader();
            if a.is_leader() && b.is_leader() {
                both.push(armed.elapsed());
            }
        }
        let committed_at = late.committed_at().expect("a renewal was answered late");
        assert!(b_led, "b never took over: {:?}", store.calls_of("b"));
        assert!(both.is_empty(), "a and b both led at {both:?} after arming");
        let work = log.work.lock().unwrap().clone();
        assert!(overlap(&work).is_none(), "work ran twice at once: {work:?}");
        assert!(
            work.iter()
                .any(|w| w.process == "a" && w.end <= committed_at + RENEW),
            "a's work ended after its deadline: {work:?}, committed at {committed_at:?}"
        );
    });
}
