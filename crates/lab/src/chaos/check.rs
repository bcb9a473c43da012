//! The checks of one chaos run, from the outside: the children's work log (fenced heartbeats) and what the
//! harness did and saw. Pure functions of their input, so each rule is tested on fabricated logs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// One line of the work log, `TERM IDENTITY UNIX_NANOS PID INCARNATION`: a child of the leader-elect
/// process `incarnation`, running as `identity`, working in `term` (its `LEADER_ELECT_TERM`) at `at` (its
/// own wall clock; every process is on this machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) term: i64,
    pub(crate) identity: String,
    pub(crate) at: Timestamp,
    /// The process that wrote it (a grandchild when the child is a shell).
    pub(crate) pid: i32,
    /// The harness's number for the leader-elect process whose child wrote it, unique in the run: two
    /// processes under one identity are two holders, and a term is one process's.
    pub(crate) incarnation: u64,
}

impl Heartbeat {
    /// The line as the worker writes it (with its newline).
    pub(crate) fn line(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.term,
            self.identity,
            self.at.as_nanosecond(),
            self.pid,
            self.incarnation
        )
    }

    /// Parses one line; `None` when it is not five well-formed fields (a torn or interleaved write).
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split(' ');
        let term = fields.next()?.parse().ok()?;
        let identity = fields.next()?.to_owned();
        let at = Timestamp::from_nanosecond(fields.next()?.parse().ok()?).ok()?;
        let pid = fields.next()?.parse().ok()?;
        let incarnation = fields.next()?.parse().ok()?;
        if identity.is_empty() || fields.next().is_some() {
            return None;
        }
        Some(Self {
            term,
            identity,
            at,
            pid,
            incarnation,
        })
    }
}

/// The heartbeats of one process in one term, as one closed interval `[first, last]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Writer {
    pub(crate) term: i64,
    pub(crate) identity: String,
    pub(crate) incarnation: u64,
    pub(crate) pid: i32,
    pub(crate) first: Timestamp,
    pub(crate) last: Timestamp,
    pub(crate) count: usize,
}

impl Writer {
    /// One term of one leader-elect process: a child it restarted in the term has another pid, but a
    /// second process under the same identity, even with the same term number, is another holder.
    fn same_term(&self, other: &Self) -> bool {
        self.term == other.term
            && self.identity == other.identity
            && self.incarnation == other.incarnation
    }

    /// Closed intervals: a shared instant is an overlap (both wrote at that nanosecond).
    fn overlaps(&self, other: &Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "term {} {} (incarnation {}, pid {}) {} .. {}",
            self.term, self.identity, self.incarnation, self.pid, self.first, self.last
        )
    }
}

/// A candidate frozen with SIGSTOP (leader-elect's process group and its children's), then thawed:
/// leader-elect at `thawed_at`, its children's groups at `child_thawed_at`.
#[derive(Clone, Debug)]
pub(crate) struct Freeze {
    /// The frozen leader-elect process (see [`Heartbeat::incarnation`]).
    pub(crate) incarnation: u64,
    pub(crate) frozen_at: Timestamp,
    pub(crate) thawed_at: Timestamp,
    pub(crate) child_thawed_at: Timestamp,
    /// When leader-elect logged the frozen child's exit, if it did.
    pub(crate) child_exited_at: Option<Timestamp>,
}

/// A second live leader-elect process under a candidate's identity (`duplicate-identity`), from its start
/// to its exit.
#[derive(Clone, Debug)]
pub(crate) struct Duplicate {
    pub(crate) identity: String,
    pub(crate) from: Timestamp,
    pub(crate) to: Timestamp,
    /// The other faults that struck from a lease duration before `from` until `to`: each may end a term
    /// and start another.
    pub(crate) other_faults: usize,
    /// Its API requests from start to exit (the count of its own listener).
    pub(crate) requests: u64,
}

impl Duplicate {
    /// At most one term starts for the duplicate's sake, and at most two for each other fault near it
    /// (one holder cut off, then the next taking over after a forced fault): two live processes under one
    /// identity must not take the Lease from each other (~180 new terms/s were measured on commit `3018a34`).
    pub(crate) fn term_bound(&self) -> usize {
        1 + 2 * self.other_faults
    }

    /// Two requests per retry period of its life, plus 10 for starting (read, create, list, watch) and
    /// stopping (release): the target is at most one per retry period, a leader renews once per
    /// retry period and a follower with a watch makes next to none; ~255 requests/s were measured
    /// on commit `3018a34` per process while two live ones took the Lease from each other.
    pub(crate) fn request_bound(&self, retry_period: Duration) -> u64 {
        let periods = self
            .life()
            .as_nanos()
            .div_ceil(retry_period.as_nanos().max(1));
        u64::try_from(periods)
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
            .saturating_add(10)
    }

    fn life(&self) -> Duration {
        self.to.duration_since(self.from).unsigned_abs()
    }
}

/// What the harness knows about one run besides the work log.
#[derive(Clone, Debug)]
pub(crate) struct Observed {
    /// `leader-elect release --force` of the live holder and Lease deletions: the operator overrides
    /// the protocol, and the old holder stops when it learns of it (`docs/design.md`).
    pub(crate) forced: Vec<Timestamp>,
    /// Lease deletions (a candidate that never saw the Lease creates it with term 0).
    pub(crate) deletions: Vec<Timestamp>,
    pub(crate) freezes: Vec<Freeze>,
    /// When any candidate process logged "became leader" (every process's log, second processes under
    /// one identity included).
    pub(crate) terms_started: Vec<Timestamp>,
    /// The `duplicate-identity` faults.
    pub(crate) duplicates: Vec<Duplicate>,
    /// RetryPeriod: a second process under one identity makes about one request per retry period.
    pub(crate) retry_period: Duration,
    /// When the last fault was lifted (every candidate running again, every listener healthy).
    pub(crate) last_fault_end: Timestamp,
    /// When the harness stopped looking (before stopping the candidates).
    pub(crate) observed_until: Timestamp,
    /// leaseDurationSeconds: how long the old holder may work after a forced fault.
    pub(crate) lease_duration: Duration,
    /// lease + request timeout + 2.2 x retry period.
    pub(crate) recovery_bound: Duration,
    /// A longer silence of a working child is a gap (and ends "working continuously").
    pub(crate) max_gap: Duration,
}

/// A broken rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Violation {
    /// A line that is not `TERM IDENTITY UNIX_NANOS PID INCARNATION`.
    Malformed { line: String },
    /// Two children of different terms wrote in overlapping intervals.
    Overlap { a: Writer, b: Writer },
    /// A line's term is below an earlier line's, without a Lease deletion between their terms.
    TermBackwards { line: usize, term: i64, after: i64 },
    /// A frozen child whose term had ended was still there this long after leader-elect's SIGCONT.
    NotKilledAfterThaw { identity: String, waited: Duration },
    /// A frozen child wrote after SIGCONT although another term had started while it was frozen.
    WroteAfterThaw {
        identity: String,
        term: i64,
        at: Timestamp,
    },
    /// More terms started while a second process ran under `identity` than [`Duplicate::term_bound`].
    TermInflation {
        identity: String,
        terms: usize,
        bound: usize,
        over: Duration,
    },
    /// The second process under `identity` made more requests than [`Duplicate::request_bound`].
    RequestStorm {
        identity: String,
        requests: u64,
        bound: u64,
        over: Duration,
    },
    /// No child was working continuously until the end.
    NoRecovery,
    /// A leader's child was working again only this long after the last fault.
    SlowRecovery { after: Duration, bound: Duration },
    /// A process exited that the harness did not kill, or with an unexpected status.
    UnexpectedExit { candidate: String, status: String },
    /// A process of the run was still alive after every candidate had exited.
    Orphan { pid: i32, command: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { line } => write!(f, "malformed work log line {line:?}"),
            Self::Overlap { a, b } => write!(f, "overlap: {a} and {b}"),
            Self::TermBackwards { line, term, after } => {
                write!(
                    f,
                    "term went backwards: line {line} has term {term} after term {after}"
                )
            }
            Self::WroteAfterThaw { identity, term, at } => write!(
                f,
                "{identity}'s child wrote for term {term} at {at}, after SIGCONT, once its term had ended"
            ),
            Self::NotKilledAfterThaw { identity, waited } => write!(
                f,
                "{identity}'s frozen child, whose term had ended, was not killed within {:.3}s of \
                 leader-elect's SIGCONT",
                waited.as_secs_f64()
            ),
            Self::TermInflation {
                identity,
                terms,
                bound,
                over,
            } => write!(
                f,
                "term inflation: {terms} terms started in {:.3}s while a second process ran as \
                 {identity} (bound {bound}: 1, and 2 per other fault near it)",
                over.as_secs_f64()
            ),
            Self::RequestStorm {
                identity,
                requests,
                bound,
                over,
            } => write!(
                f,
                "request storm: the second process running as {identity} made {requests} requests in \
                 {:.3}s (bound {bound}: 2 per retry period + 10)",
                over.as_secs_f64()
            ),
            Self::NoRecovery => f.write_str("no leader's child was working at the end of the run"),
            Self::SlowRecovery { after, bound } => write!(
                f,
                "a leader's child was working again {:.3}s after the last fault (bound {:.3}s)",
                after.as_secs_f64(),
                bound.as_secs_f64()
            ),
            Self::UnexpectedExit { candidate, status } => {
                write!(f, "{candidate} exited unexpectedly ({status})")
            }
            Self::Orphan { pid, command } => write!(f, "orphan process {pid} ({command})"),
        }
    }
}

/// The outcome of the checks of one run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
    /// Overlaps after `release --force` or a deletion, within a lease duration of it: the old holder
    /// working until it learned of it. Not violations; reported with how long they lasted.
    pub(crate) forced_overlaps: Vec<Duration>,
    /// Distinct (term, identity, incarnation) triples that worked.
    pub(crate) terms: usize,
    /// From the last fault to a leader's child working continuously until the end.
    pub(crate) recovery: Option<Duration>,
    /// How long each frozen child whose term ended lived after leader-elect's SIGCONT.
    pub(crate) thawed_lives: Vec<Duration>,
    /// Per second process under one identity (`duplicate-identity`): the terms started while it ran, and
    /// its requests per retry period of its life.
    pub(crate) duplicated: Vec<(usize, f64)>,
}

/// Parses the work log: the heartbeats in file order, and a violation for each malformed line.
pub(crate) fn parse_log(text: &str) -> (Vec<Heartbeat>, Vec<Violation>) {
    let mut heartbeats = Vec::new();
    let mut malformed = Vec::new();
    for line in text.lines() {
        match Heartbeat::parse(line) {
            Some(h) => heartbeats.push(h),
            None => malformed.push(Violation::Malformed {
                line: line.to_owned(),
            }),
        }
    }
    (heartbeats, malformed)
}

/// Each process's heartbeats per term, ordered by first heartbeat.
pub(crate) fn writers(log: &[Heartbeat]) -> Vec<Writer> {
    let mut by_key: BTreeMap<(i64, &str, u64, i32), Writer> = BTreeMap::new();
    for h in log {
        by_key
            .entry((h.term, &h.identity, h.incarnation, h.pid))
            .and_modify(|w| {
                w.first = w.first.min(h.at);
                w.last = w.last.max(h.at);
                w.count += 1;
            })
            .or_insert_with(|| Writer {
                term: h.term,
                identity: h.identity.clone(),
                incarnation: h.incarnation,
                pid: h.pid,
                first: h.at,
                last: h.at,
                count: 1,
            });
    }
    let mut writers: Vec<Writer> = by_key.into_values().collect();
    writers.sort_by_key(|w| (w.first, w.last));
    writers
}

/// Overlapping writers of different terms: `(older, newer)` by first heartbeat.
pub(crate) fn overlaps(writers: &[Writer]) -> Vec<(Writer, Writer)> {
    let mut found = Vec::new();
    for (n, a) in writers.iter().enumerate() {
        for b in &writers[n + 1..] {
            if !a.same_term(b) && a.overlaps(b) {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

/// When `w`'s term started: the first heartbeat of any child of the same leader-elect process in it (a
/// child restarted in the term writes under another pid, also after a Lease deletion its leader-elect has
/// not seen yet). A candidate restarted under the same identity that creates the Lease again with the same
/// term number is another process (incarnation), hence another term; one process never reuses a term
/// number (rule 11).
fn term_start(writers: &[Writer], w: &Writer) -> Timestamp {
    writers
        .iter()
        .filter(|other| other.same_term(w))
        .map(|other| other.first)
        .min()
        .unwrap_or(w.first)
}

/// Whether a forced fault excuses `a` and `b` working at once. Of the two, the one whose term started
/// first is the holder the operator overrode: it was working when the fault came (it wrote after it),
/// the other term started after it, and the overridden one stopped within a lease duration of it. (Its
/// child may write its first heartbeat just after the fault: it starts a few milliseconds after
/// leader-elect logs it.)
fn excused(a: &Writer, b: &Writer, writers: &[Writer], observed: &Observed) -> bool {
    let lease = SignedDuration::try_from(observed.lease_duration).unwrap_or(SignedDuration::MAX);
    let start = |w| term_start(writers, w);
    let (start_a, start_b) = (start(a), start(b));
    let (older, newer_start) = match start_a.cmp(&start_b) {
        std::cmp::Ordering::Less => (a, start_b),
        std::cmp::Ordering::Greater => (b, start_a),
        std::cmp::Ordering::Equal => return false,
    };
    observed.forced.iter().any(|&f| {
        f <= newer_start && f <= older.last && older.last <= f.saturating_add(lease).unwrap_or(f)
    })
}

/// Runs every check on one run's work log.
pub(crate) fn check(log: &[Heartbeat], observed: &Observed) -> Report {
    let mut report = Report::default();
    let writers = writers(log);
    let mut terms: Vec<(i64, &str, u64)> = writers
        .iter()
        .map(|w| (w.term, w.identity.as_str(), w.incarnation))
        .collect();
    terms.sort_unstable();
    terms.dedup();
    report.terms = terms.len();

    for (a, b) in overlaps(&writers) {
        if excused(&a, &b, &writers, observed) {
            let (from, to) = (a.first.max(b.first), a.last.min(b.last));
            report
                .forced_overlaps
                .push(to.duration_since(from).unsigned_abs());
        } else {
            report.violations.push(Violation::Overlap { a, b });
        }
    }
    terms_increase(log, &writers, observed, &mut report.violations);
    thaws(&writers, observed, &mut report);
    duplicates(observed, &mut report);
    recovery(log, observed, &mut report);
    report
}

/// Terms in file order never go down, except to a term that started after a Lease deletion that came
/// after the higher term started (a new epoch), or a stale line of an excused forced overlap.
fn terms_increase(
    log: &[Heartbeat],
    writers: &[Writer],
    observed: &Observed,
    violations: &mut Vec<Violation>,
) {
    let writer_of = |h: &Heartbeat| {
        writers.iter().find(|w| {
            w.term == h.term
                && w.identity == h.identity
                && w.incarnation == h.incarnation
                && w.pid == h.pid
        })
    };
    let mut highest: Option<(&Heartbeat, &Writer)> = None;
    // One violation per writer, at its first line out of order.
    let mut flagged: Vec<&Writer> = Vec::new();
    for (n, h) in log.iter().enumerate() {
        let Some(w) = writer_of(h) else { continue };
        let Some((top, top_writer)) = highest else {
            highest = Some((h, w));
            continue;
        };
        if h.term >= top.term {
            highest = Some((h, w));
            continue;
        }
        let new_epoch = observed
            .deletions
            .iter()
            .any(|&d| top_writer.first < d && d <= w.first);
        if new_epoch {
            highest = Some((h, w));
        } else if !excused(w, top_writer, writers, observed) && !flagged.contains(&w) {
            flagged.push(w);
            violations.push(Violation::TermBackwards {
                line: n + 1,
                term: h.term,
                after: top.term,
            });
        }
    }
}

/// A frozen child writes nothing after its SIGCONT once another term started while it was frozen, unless
/// that term started only because of a forced fault (then the overlap rule's exception applies).
fn thaws(writers: &[Writer], observed: &Observed, report: &mut Report) {
    for freeze in &observed.freezes {
        let frozen: Vec<&Writer> = writers
            .iter()
            .filter(|w| w.incarnation == freeze.incarnation && w.first < freeze.frozen_at)
            .collect();
        for w in frozen {
            let ended = writers.iter().any(|other| {
                !other.same_term(w)
                    && other.first > w.first
                    && other.first < freeze.child_thawed_at
                    && !excused(w, other, writers, observed)
            });
            if !ended {
                continue;
            }
            if let Some(exited) = freeze.child_exited_at {
                report
                    .thawed_lives
                    .push(exited.duration_since(freeze.thawed_at).unsigned_abs());
            }
            if w.last > freeze.child_thawed_at {
                report.violations.push(Violation::WroteAfterThaw {
                    identity: w.identity.clone(),
                    term: w.term,
                    at: w.last,
                });
            }
        }
    }
}

/// While a second process ran under one identity, terms started at most [`Duplicate::term_bound`] times
/// and it made at most [`Duplicate::request_bound`] requests.
fn duplicates(observed: &Observed, report: &mut Report) {
    let violations = &mut report.violations;
    for d in &observed.duplicates {
        let terms = observed
            .terms_started
            .iter()
            .filter(|&&at| d.from <= at && at <= d.to)
            .count();
        let periods = d.life().as_secs_f64() / observed.retry_period.as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a count of requests is far below 2^52
        let rate = d.requests as f64 / periods.max(1.0);
        report.duplicated.push((terms, rate));
        if terms > d.term_bound() {
            violations.push(Violation::TermInflation {
                identity: d.identity.clone(),
                terms,
                bound: d.term_bound(),
                over: d.life(),
            });
        }
        let bound = d.request_bound(observed.retry_period);
        if d.requests > bound {
            violations.push(Violation::RequestStorm {
                identity: d.identity.clone(),
                requests: d.requests,
                bound,
                over: d.life(),
            });
        }
    }
}

/// The final stretch of work: the heartbeats of the term that wrote last, back to the last silence
/// longer than `max_gap`. `(since, last)`.
pub(crate) fn final_stretch(
    log: &[Heartbeat],
    max_gap: Duration,
) -> Option<(Timestamp, Timestamp)> {
    let max_gap = SignedDuration::try_from(max_gap).unwrap_or(SignedDuration::MAX);
    let last = log.iter().max_by_key(|h| h.at)?;
    let mut times: Vec<Timestamp> = log
        .iter()
        .filter(|h| {
            h.term == last.term && h.identity == last.identity && h.incarnation == last.incarnation
        })
        .map(|h| h.at)
        .collect();
    times.sort_unstable();
    let mut since = last.at;
    for pair in times.windows(2).rev() {
        if pair[1].duration_since(pair[0]) > max_gap {
            break;
        }
        since = pair[0];
    }
    Some((since, last.at))
}

/// From the last fault to the start of the final stretch of work, which must last until the end of the
/// observation.
fn recovery(log: &[Heartbeat], observed: &Observed, report: &mut Report) {
    let max_gap = SignedDuration::try_from(observed.max_gap).unwrap_or(SignedDuration::MAX);
    let Some((since, _)) = final_stretch(log, observed.max_gap)
        .filter(|(_, last)| observed.observed_until.duration_since(*last) <= max_gap)
    else {
        report.violations.push(Violation::NoRecovery);
        return;
    };
    let after = since
        .duration_since(observed.last_fault_end)
        .max(SignedDuration::ZERO)
        .unsigned_abs();
    report.recovery = Some(after);
    if after > observed.recovery_bound {
        report.violations.push(Violation::SlowRecovery {
            after,
            bound: observed.recovery_bound,
        });
    }
}

/// Silences longer than `max_gap` between consecutive heartbeats of the same writer: `(writer, from, to)`.
pub(crate) fn gaps(log: &[Heartbeat], max_gap: Duration) -> Vec<(String, Timestamp, Timestamp)> {
    let max_gap = SignedDuration::try_from(max_gap).unwrap_or(SignedDuration::MAX);
    let mut last: BTreeMap<(i64, &str, i32), Timestamp> = BTreeMap::new();
    let mut found = Vec::new();
    let mut sorted: Vec<&Heartbeat> = log.iter().collect();
    sorted.sort_by_key(|h| h.at);
    for h in sorted {
        if let Some(prev) = last.insert((h.term, &h.identity, h.pid), h.at)
            && h.at.duration_since(prev) > max_gap
        {
            found.push((h.identity.clone(), prev, h.at));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).unwrap()
    }

    /// Heartbeats every 5 ms over `[from, to]` ms.
    fn work(term: i64, identity: &str, pid: i32, from: i64, to: i64) -> Vec<Heartbeat> {
        (from..=to)
            .step_by(5)
            .map(|ms| Heartbeat {
                term,
                identity: identity.into(),
                at: at(ms),
                pid,
                incarnation: 0,
            })
            .collect()
    }

    /// [`work`] of leader-elect process `incarnation`.
    fn work_of(
        incarnation: u64,
        term: i64,
        identity: &str,
        pid: i32,
        from: i64,
        to: i64,
    ) -> Vec<Heartbeat> {
        let mut log = work(term, identity, pid, from, to);
        for h in &mut log {
            h.incarnation = incarnation;
        }
        log
    }

    fn observed(until: i64) -> Observed {
        Observed {
            forced: vec![],
            deletions: vec![],
            freezes: vec![],
            terms_started: vec![],
            duplicates: vec![],
            retry_period: Duration::from_millis(100),
            last_fault_end: at(0),
            observed_until: at(until),
            lease_duration: Duration::from_secs(1),
            recovery_bound: Duration::from_millis(2500),
            max_gap: Duration::from_millis(100),
        }
    }

    fn sorted(mut log: Vec<Heartbeat>) -> Vec<Heartbeat> {
        log.sort_by_key(|h| h.at);
        log
    }

    #[test]
    fn lines_round_trip_and_torn_lines_are_malformed() {
        let h = Heartbeat {
            term: 3,
            identity: "candidate-1".into(),
            at: at(5),
            pid: 42,
            incarnation: 7,
        };
        assert_eq!(Heartbeat::parse(h.line().trim_end()), Some(h.clone()));
        let text = format!("{}3 candidate-2 17000{}", h.line(), h.line());
        let four_fields = "3 candidate-1 1700000000005000000 42";
        assert_eq!(Heartbeat::parse(four_fields), None, "no incarnation");
        let (parsed, malformed) = parse_log(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(malformed.len(), 1, "{malformed:?}");
    }

    /// The table of the overlap checker: which pairs of intervals are overlaps.
    #[test]
    fn overlap_table() {
        // (name, a's first and last heartbeat in ms, b's, whether they overlap)
        type Case = (&'static str, (i64, i64), (i64, i64), bool);
        let cases: &[Case] = &[
            ("sequential", (0, 100), (200, 300), false),
            ("adjacent (1 ms apart)", (0, 100), (101, 200), false),
            ("touching (a shared instant)", (0, 100), (100, 200), true),
            ("partial overlap", (0, 100), (50, 200), true),
            ("containment", (0, 300), (100, 200), true),
            ("contained", (100, 200), (0, 300), true),
            ("same start", (0, 100), (0, 50), true),
        ];
        for (name, a, b, overlap) in cases {
            let point = |term, identity: &str, ms| Heartbeat {
                term,
                identity: identity.into(),
                at: at(ms),
                pid: 1,
                incarnation: 0,
            };
            let log = sorted(vec![
                point(1, "a", a.0),
                point(1, "a", a.1),
                point(2, "b", b.0),
                point(2, "b", b.1),
            ]);
            let found = overlaps(&writers(&log));
            assert_eq!(!found.is_empty(), *overlap, "{name}: {found:?}");
        }
    }

    #[test]
    fn the_same_term_in_two_processes_is_not_an_overlap_but_the_same_number_of_two_identities_is() {
        let restarted = sorted([work(4, "a", 1, 0, 100), work(4, "a", 2, 50, 200)].concat());
        assert!(overlaps(&writers(&restarted)).is_empty());
        let two = sorted([work(4, "a", 1, 0, 100), work(4, "b", 2, 50, 200)].concat());
        assert_eq!(overlaps(&writers(&two)).len(), 1);
    }

    /// Commit `3018a34`: a second process started under a cut-off holder's identity took its Lease at once,
    /// keeping its term number, while the first one's child still worked.
    #[test]
    fn two_processes_under_one_identity_working_at_once_overlap_even_in_one_term_number() {
        let reused = sorted(
            [
                work_of(1, 4, "a", 10, 0, 1000),
                work_of(2, 4, "a", 20, 900, 3000),
            ]
            .concat(),
        );
        let report = check(&reused, &observed(3000));
        assert!(
            matches!(
                report.violations.as_slice(),
                [Violation::Overlap { a, b }] if a.incarnation == 1 && b.incarnation == 2
            ),
            "{:?}",
            report.violations
        );
        assert_eq!(report.terms, 2, "one term each");
        let after = sorted(
            [
                work_of(1, 4, "a", 10, 0, 800),
                work_of(2, 5, "a", 20, 900, 3000),
            ]
            .concat(),
        );
        assert_eq!(check(&after, &observed(3000)).violations, vec![]);
    }

    /// A frozen process's term ends when another process under its identity works, even in the same
    /// term number (it took the Lease naming them both while the first one was frozen).
    #[test]
    fn a_term_taken_by_another_process_under_the_frozen_identity_ends_the_frozen_term() {
        let log = sorted(
            [
                work_of(1, 1, "a", 10, 0, 100),
                work_of(2, 1, "a", 20, 1200, 1500),
                work_of(3, 2, "b", 30, 1600, 3000),
            ]
            .concat(),
        );
        let mut seen = observed(3000);
        seen.freezes = vec![Freeze {
            incarnation: 1,
            frozen_at: at(101),
            thawed_at: at(1970),
            child_thawed_at: at(2000),
            child_exited_at: Some(at(2010)),
        }];
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.thawed_lives, vec![Duration::from_millis(40)]);
        let wrote = sorted([log, work_of(1, 1, "a", 10, 2001, 2001)].concat());
        assert!(
            check(&wrote, &seen)
                .violations
                .iter()
                .any(|v| matches!(v, Violation::WroteAfterThaw { term: 1, .. })),
            "{:?}",
            check(&wrote, &seen).violations
        );
    }

    fn duplicate(from: i64, to: i64, other_faults: usize, requests: u64) -> Duplicate {
        Duplicate {
            identity: "a".into(),
            from: at(from),
            to: at(to),
            other_faults,
            requests,
        }
    }

    /// Commit `3018a34`: two live processes under one identity took the Lease from each other, ~180 new terms/s.
    #[test]
    fn terms_start_at_most_once_plus_twice_per_other_fault_while_an_identity_is_duplicated() {
        let mut seen = observed(3000);
        seen.duplicates = vec![duplicate(0, 1000, 1, 0)];
        assert_eq!(seen.duplicates[0].term_bound(), 3);
        // Before and after the window: not counted.
        seen.terms_started = [-1, 0, 400, 1000, 1001].into_iter().map(at).collect();
        let log = work(1, "b", 10, 0, 3000);
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(
            report.duplicated,
            vec![(3, 0.0)],
            "the figures of the summary"
        );
        seen.terms_started.push(at(500));
        assert!(
            matches!(
                check(&log, &seen).violations.as_slice(),
                [Violation::TermInflation {
                    terms: 4,
                    bound: 3,
                    ..
                }]
            ),
            "{:?}",
            check(&log, &seen).violations
        );
    }

    /// Commit `3018a34`: ~255 requests/s per process while two live ones took the Lease from each other.
    #[test]
    fn a_second_process_under_one_identity_makes_at_most_two_requests_per_retry_period_and_ten() {
        let mut seen = observed(3000);
        let log = work(1, "b", 10, 0, 3000);
        // 1 s at a 100 ms retry period: 2 x 10 + 10.
        seen.duplicates = vec![duplicate(0, 1000, 0, 30)];
        assert_eq!(seen.duplicates[0].request_bound(seen.retry_period), 30);
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(
            report.duplicated,
            vec![(0, 3.0)],
            "30 requests in 10 retry periods"
        );
        seen.duplicates = vec![duplicate(0, 1000, 0, 31)];
        assert!(
            matches!(
                check(&log, &seen).violations.as_slice(),
                [Violation::RequestStorm {
                    requests: 31,
                    bound: 30,
                    ..
                }]
            ),
            "{:?}",
            check(&log, &seen).violations
        );
        // A part of a period counts whole.
        assert_eq!(
            duplicate(0, 1001, 0, 0).request_bound(seen.retry_period),
            32
        );
    }

    #[test]
    fn a_clean_run_has_no_violation() {
        let log = sorted(
            [
                work(1, "a", 10, -2000, -1000),
                work(2, "b", 11, -500, 500),
                work(3, "c", 12, 1200, 3000),
            ]
            .concat(),
        );
        let report = check(&log, &observed(3000));
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.terms, 3);
        assert_eq!(report.recovery, Some(Duration::from_millis(1200)));
    }

    #[test]
    fn a_fabricated_overlap_is_a_violation() {
        let log = sorted([work(1, "a", 10, 0, 1000), work(2, "b", 11, 900, 3000)].concat());
        let report = check(&log, &observed(3000));
        assert!(
            matches!(
                report.violations.as_slice(),
                [
                    Violation::Overlap { a, b },
                    Violation::TermBackwards { term: 1, after: 2, .. }
                ] if a.term == 1 && b.term == 2
            ),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_forced_release_excuses_the_old_holder_for_one_lease_duration_only() {
        let log = sorted([work(1, "a", 10, 0, 1000), work(2, "b", 11, 900, 3000)].concat());
        let mut seen = observed(3000);
        seen.forced = vec![at(850)];
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.forced_overlaps, vec![Duration::from_millis(100)]);
        // Unexcused: the overlap and the stale lines.
        seen.forced = vec![at(-100)];
        assert_eq!(
            check(&log, &seen).violations.len(),
            2,
            "longer than a lease after it"
        );
        seen.forced = vec![at(1001)];
        assert_eq!(
            check(&log, &seen).violations.len(),
            2,
            "after the old term had stopped"
        );
        seen.forced = vec![at(950)];
        assert_eq!(
            check(&log, &seen).violations.len(),
            2,
            "after the new term had started"
        );
    }

    /// Soak regression: the harness deletes the Lease as soon as leader-elect logs its child's start, and
    /// the child writes its first heartbeat a few milliseconds later; its holder was still overridden.
    #[test]
    fn a_forced_fault_just_before_the_old_holders_first_heartbeat_is_excused() {
        let log = sorted([work(0, "a", 10, 0, 600), work(1, "b", 11, 300, 3000)].concat());
        let mut seen = observed(3000);
        seen.forced = vec![at(-5)];
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.forced_overlaps, vec![Duration::from_millis(300)]);
    }

    #[test]
    fn terms_never_go_backwards_except_after_a_deletion() {
        let log = [work(5, "a", 10, 0, 100), work(2, "b", 11, 200, 3000)].concat();
        let report = check(&log, &observed(3000));
        assert!(
            matches!(
                report.violations.as_slice(),
                [Violation::TermBackwards {
                    term: 2,
                    after: 5,
                    ..
                }]
            ),
            "{:?}",
            report.violations
        );
        let mut seen = observed(3000);
        seen.deletions = vec![at(150)];
        assert_eq!(check(&log, &seen).violations, vec![]);
    }

    #[test]
    fn a_stale_line_after_a_newer_term_is_a_violation() {
        let mut log = [work(1, "a", 10, 0, 100), work(2, "b", 11, 200, 3000)].concat();
        log.insert(
            30,
            Heartbeat {
                term: 1,
                identity: "a".into(),
                at: at(90),
                pid: 10,
                incarnation: 0,
            },
        );
        let report = check(&log, &observed(3000));
        assert!(
            report.violations.iter().any(|v| matches!(
                v,
                Violation::TermBackwards {
                    term: 1,
                    after: 2,
                    ..
                }
            )),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn a_thawed_child_whose_term_ended_must_not_write() {
        let quiet = sorted([work(1, "a", 10, 0, 100), work(2, "b", 11, 1200, 3000)].concat());
        let mut seen = observed(3000);
        seen.freezes = vec![Freeze {
            incarnation: 0,
            frozen_at: at(101),
            thawed_at: at(1970),
            child_thawed_at: at(2000),
            child_exited_at: Some(at(2003)),
        }];
        let report = check(&quiet, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.thawed_lives, vec![Duration::from_millis(33)]);

        let wrote = sorted([quiet.clone(), work(1, "a", 10, 2001, 2001)].concat());
        let report = check(&wrote, &seen);
        assert!(
            report
                .violations
                .iter()
                .any(|v| matches!(v, Violation::WroteAfterThaw { term: 1, .. })),
            "{:?}",
            report.violations
        );
    }

    /// Soak regression: a holder under latency did not learn of a forced release, and restarted its
    /// killed child in its term after the new term had started: the restarted child's term began before
    /// the release, so it is the overridden holder, whatever its pid's first heartbeat.
    #[test]
    fn a_child_restarted_in_an_overridden_term_is_excused() {
        let log = sorted(
            [
                work(0, "a", 10, 0, 50),
                work(0, "a", 12, 700, 800),
                work(1, "b", 11, 519, 1300),
            ]
            .concat(),
        );
        let mut seen = observed(1300);
        let unexcused = check(&log, &seen).violations;
        assert!(
            unexcused
                .iter()
                .any(|v| matches!(v, Violation::Overlap { .. }))
                && unexcused
                    .iter()
                    .any(|v| matches!(v, Violation::TermBackwards { term: 0, .. })),
            "{unexcused:?}"
        );
        seen.forced = vec![at(494)];
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.forced_overlaps, vec![Duration::from_millis(100)]);
    }

    /// Soak regression: a candidate restarted under the same identity created the Lease again after a
    /// deletion with term 0, the number of its first leadership; the holder overridden by the deletion
    /// is the other one.
    #[test]
    fn a_term_number_reused_after_a_deletion_starts_anew() {
        let log = sorted(
            [
                work_of(0, 0, "c", 10, 0, 1000),
                work_of(1, 1, "a", 11, 2000, 2600),
                work_of(2, 0, "c", 12, 2550, 4000),
            ]
            .concat(),
        );
        let mut seen = observed(4000);
        seen.forced = vec![at(2500)];
        seen.deletions = vec![at(2500)];
        seen.last_fault_end = at(2500);
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.forced_overlaps, vec![Duration::from_millis(50)]);
    }

    /// Soak regression (seed 31000234): a holder restarted its killed child in its term just after the
    /// Lease was deleted, before its leader-elect learned of the deletion, while another candidate had
    /// already created the Lease with the next term: the restarted child belongs to the overridden term
    /// (same leader-elect process), which started before the deletion.
    #[test]
    fn a_child_restarted_in_its_term_after_a_deletion_is_the_overridden_holder() {
        let log = sorted(
            [
                work_of(0, 1, "a", 10, 0, 500),
                work_of(0, 1, "a", 12, 1100, 1200),
                work_of(1, 2, "b", 11, 1090, 3000),
            ]
            .concat(),
        );
        let mut seen = observed(3000);
        seen.last_fault_end = at(1080);
        let unexcused = check(&log, &seen).violations;
        assert!(
            unexcused
                .iter()
                .any(|v| matches!(v, Violation::Overlap { .. })),
            "{unexcused:?}"
        );
        seen.forced = vec![at(1080)];
        seen.deletions = vec![at(1080)];
        let report = check(&log, &seen);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.forced_overlaps, vec![Duration::from_millis(100)]);
    }

    /// Soak regression: the Lease was deleted while its holder was frozen; the next term started at once,
    /// and the thawed child worked on until its leader-elect learned of it (within a lease duration of the
    /// deletion): the forced fault's exception, not a write after its term had ended.
    #[test]
    fn a_thawed_child_of_a_holder_overridden_while_frozen_is_excused() {
        let log = sorted(
            [
                work(1, "a", 10, 0, 100),
                work(1, "a", 10, 600, 630),
                work(2, "b", 11, 400, 3000),
            ]
            .concat(),
        );
        let mut seen = observed(3000);
        seen.freezes = vec![Freeze {
            incarnation: 0,
            frozen_at: at(101),
            thawed_at: at(570),
            child_thawed_at: at(599),
            child_exited_at: Some(at(631)),
        }];
        assert!(
            check(&log, &seen)
                .violations
                .iter()
                .any(|v| matches!(v, Violation::WroteAfterThaw { .. })),
            "without the deletion"
        );
        seen.forced = vec![at(300)];
        assert_eq!(check(&log, &seen).violations, vec![]);
    }

    #[test]
    fn recovery_is_measured_to_the_final_continuous_stretch() {
        let log = sorted([work(1, "a", 10, 0, 500), work(1, "a", 10, 900, 3000)].concat());
        let report = check(&log, &observed(3000));
        assert_eq!(
            report.recovery,
            Some(Duration::from_millis(900)),
            "after the gap"
        );
        let mut seen = observed(3000);
        seen.recovery_bound = Duration::from_millis(800);
        assert!(matches!(
            check(&log, &seen).violations.as_slice(),
            [Violation::SlowRecovery { .. }]
        ));
        assert_eq!(
            check(&log, &observed(4000)).violations,
            vec![Violation::NoRecovery],
            "nobody working at the end"
        );
        assert_eq!(
            check(&[], &observed(1000)).violations,
            vec![Violation::NoRecovery]
        );
    }

    #[test]
    fn gaps_are_found_per_writer() {
        let log = sorted(
            [
                work(1, "a", 10, 0, 100),
                work(1, "a", 10, 400, 500),
                work(2, "b", 11, 100, 300),
            ]
            .concat(),
        );
        let found = gaps(&log, Duration::from_millis(100));
        assert_eq!(found, vec![("a".to_owned(), at(100), at(400))]);
    }
}
