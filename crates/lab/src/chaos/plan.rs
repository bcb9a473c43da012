//! The faults of one chaos run, drawn from its seed: kinds, times, durations, targets and how each
//! restarted candidate's child behaves. The same seed gives the same plan (the processes' timing, and so
//! which candidate leads when a fault strikes, still varies).

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::worker::OnSigterm;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum FaultKind {
    /// SIGKILL of leader-elect (its child must die with it); restarted after `duration`.
    #[value(name = "sigkill-leader-elect")]
    KillLeaderElect,
    /// SIGKILL of the child only (leader-elect restarts it: `--on-child-exit restart`).
    #[value(name = "sigkill-child")]
    KillChild,
    /// SIGTERM of leader-elect (graceful handover); restarted after `duration`.
    #[value(name = "sigterm")]
    Sigterm,
    /// SIGSTOP of leader-elect's and its child's process groups for `duration`, then SIGCONT (leader-elect
    /// first).
    #[value(name = "sigstop")]
    Freeze,
    /// The candidate's listener accepts requests and never answers.
    #[value(name = "black-hole")]
    BlackHole,
    /// The candidate's listener applies writes and drops the answer.
    #[value(name = "commit-then-drop")]
    CommitThenDrop,
    /// The candidate's writes land 1.2 x renew deadline after they were sent, even when it gave up.
    #[value(name = "commit-delay")]
    CommitDelay,
    /// Latency above the renew deadline on the candidate's listener.
    #[value(name = "latency")]
    Latency,
    /// 429 (Retry-After: 1) to 80% of the candidate's requests.
    #[value(name = "429-burst")]
    Errors429,
    /// 500 to 80% of the candidate's requests.
    #[value(name = "500-burst")]
    Errors500,
    /// 503 to 80% of the candidate's requests.
    #[value(name = "503-burst")]
    Errors503,
    /// Every watch open on the candidate's listener ends.
    #[value(name = "drop-watches")]
    DropWatches,
    /// 403 to the candidate's watches only (RBAC without `watch`): it polls instead.
    #[value(name = "watch-forbidden")]
    WatchForbidden,
    /// The harness stops reading the candidate's stderr.
    #[value(name = "paused-stderr")]
    PauseStderr,
    /// `leader-elect release --force` of the live holder.
    #[value(name = "release-force")]
    ForceRelease,
    /// The Lease is deleted.
    #[value(name = "delete-lease")]
    DeleteLease,
    /// A label is merge-patched onto the Lease (not a renewal).
    #[value(name = "metadata-patch")]
    MetadataPatch,
    /// The candidate is cut off (a black hole on its listener) and a second process starts under its
    /// identity: a force-deleted StatefulSet pod coming back while the old one still runs. The second
    /// process is stopped after `duration`, then the black hole lifts.
    #[value(name = "identity-reuse")]
    IdentityReuse,
    /// A second live process under the candidate's identity (a copy-pasted `--identity`) for `duration`.
    #[value(name = "duplicate-identity")]
    DuplicateIdentity,
    /// SIGSTOP of leader-elect alone (not its child's or the guardian's group, as a debugger attaching)
    /// for `duration`, then SIGCONT.
    #[value(name = "stop-elector")]
    StopElector,
    /// SIGTSTP to leader-elect's process group (Ctrl-Z in its terminal), SIGCONT to it after `duration`
    /// (`fg`).
    #[value(name = "tstp-elector")]
    TstpElector,
}

impl FaultKind {
    pub(crate) const ALL: [Self; 21] = [
        Self::KillLeaderElect,
        Self::KillChild,
        Self::Sigterm,
        Self::Freeze,
        Self::BlackHole,
        Self::CommitThenDrop,
        Self::CommitDelay,
        Self::Latency,
        Self::Errors429,
        Self::Errors500,
        Self::Errors503,
        Self::DropWatches,
        Self::WatchForbidden,
        Self::PauseStderr,
        Self::ForceRelease,
        Self::DeleteLease,
        Self::MetadataPatch,
        Self::IdentityReuse,
        Self::DuplicateIdentity,
        Self::StopElector,
        Self::TstpElector,
    ];

    /// The name printed in summaries and on the timeline.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::KillLeaderElect => "sigkill-leader-elect",
            Self::KillChild => "sigkill-child",
            Self::Sigterm => "sigterm",
            Self::Freeze => "sigstop",
            Self::BlackHole => "black-hole",
            Self::CommitThenDrop => "commit-then-drop",
            Self::CommitDelay => "commit-delay",
            Self::Latency => "latency",
            Self::Errors429 => "429-burst",
            Self::Errors500 => "500-burst",
            Self::Errors503 => "503-burst",
            Self::DropWatches => "drop-watches",
            Self::WatchForbidden => "watch-forbidden",
            Self::PauseStderr => "paused-stderr",
            Self::ForceRelease => "release-force",
            Self::DeleteLease => "delete-lease",
            Self::MetadataPatch => "metadata-patch",
            Self::IdentityReuse => "identity-reuse",
            Self::DuplicateIdentity => "duplicate-identity",
            Self::StopElector => "stop-elector",
            Self::TstpElector => "tstp-elector",
        }
    }

    /// Whether it lasts `duration` (or, for kills, keeps the candidate down that long).
    pub(crate) fn lasts(self) -> bool {
        !matches!(
            self,
            Self::KillChild
                | Self::DropWatches
                | Self::ForceRelease
                | Self::DeleteLease
                | Self::MetadataPatch
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whom a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The candidate whose child runs when it strikes (a random one when none does).
    Leader,
    Candidate(usize),
}

/// One planned fault.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    /// From the start of the fault phase.
    pub(crate) at: Duration,
    pub(crate) kind: FaultKind,
    pub(crate) target: Target,
    pub(crate) duration: Duration,
    /// A killed or stopped candidate comes back under a new identity.
    pub(crate) new_identity: bool,
}

/// How a (re)started candidate's child works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChildKind {
    /// Started by a shell that does not `exec` it (the worker is a grandchild).
    pub(crate) grandchild: bool,
    pub(crate) on_sigterm: OnSigterm,
}

/// The faults of one run and the children's kinds, from its seed.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) faults: Vec<Fault>,
    rng: StdRng,
}

impl Plan {
    /// Draws `count` faults of `kinds` (every kind when empty) over `window` for `candidates` candidates;
    /// durations scale with `lease`.
    pub(crate) fn new(
        seed: u64,
        candidates: usize,
        window: Duration,
        count: usize,
        lease: Duration,
        kinds: &[FaultKind],
    ) -> Self {
        let kinds = if kinds.is_empty() {
            &FaultKind::ALL[..]
        } else {
            kinds
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut faults: Vec<Fault> = (0..count)
            .map(|_| {
                let kind = kinds[rng.random_range(0..kinds.len())];
                let factor = match kind {
                    FaultKind::Freeze => rng.random_range(0.1..2.0),
                    // Up to 3 x lease: beyond the lease's expiry, a follower's takeover and the old
                    // holder's work deadline, wherever in its term the stop strikes.
                    FaultKind::StopElector | FaultKind::TstpElector => rng.random_range(0.5..3.0),
                    // At least a lease: long enough for the second process to take an expired Lease
                    // by its own clock.
                    FaultKind::IdentityReuse | FaultKind::DuplicateIdentity => {
                        rng.random_range(1.0..3.0)
                    }
                    _ => rng.random_range(0.2..1.5),
                };
                Fault {
                    at: window.mul_f64(rng.random_range(0.0..1.0)),
                    kind,
                    target: if rng.random_bool(0.6) {
                        Target::Leader
                    } else {
                        Target::Candidate(rng.random_range(0..candidates))
                    },
                    duration: lease.mul_f64(factor),
                    new_identity: rng.random_bool(0.3),
                }
            })
            .collect();
        faults.sort_by_key(|f| f.at);
        Self { faults, rng }
    }

    /// The next (re)started child's kind: a grandchild in a third of the starts; one in six ignores
    /// SIGTERM, one in six drains slowly.
    pub(crate) fn child_kind(&mut self) -> ChildKind {
        ChildKind {
            grandchild: self.rng.random_bool(1.0 / 3.0),
            on_sigterm: match self.rng.random_range(0..6) {
                0 => OnSigterm::Ignore,
                1 => OnSigterm::Drain,
                _ => OnSigterm::Exit,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_every_kind_is_drawn() {
        let lease = Duration::from_secs(1);
        let window = Duration::from_secs(3);
        let a = Plan::new(7, 3, window, 50, lease, &[]);
        let b = Plan::new(7, 3, window, 50, lease, &[]);
        let key = |p: &Plan| {
            p.faults
                .iter()
                .map(|f| (f.at, f.kind, f.target, f.duration))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&Plan::new(8, 3, window, 50, lease, &[])));
        assert!(a.faults.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.faults.iter().all(|f| f.at < window));
        let mut all: Vec<FaultKind> = (0..20u64)
            .flat_map(|seed| Plan::new(seed, 3, window, 50, lease, &[]).faults)
            .map(|f| f.kind)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all, FaultKind::ALL.to_vec());
        let only = [FaultKind::DeleteLease, FaultKind::Freeze];
        let chosen = Plan::new(7, 3, window, 50, lease, &only);
        assert!(chosen.faults.iter().all(|f| only.contains(&f.kind)));
    }

    /// A stop of leader-elect alone lasts up to 3 x lease (the scenario of `rule_13_sigstop_of_leader_elect_alone_lets_no_two_children_work_at_once`), and a second process
    /// under a candidate's identity lives at least a lease (long enough to take an expired Lease).
    #[test]
    fn the_adversarial_kinds_last_their_planned_multiples_of_the_lease() {
        let lease = Duration::from_secs(2);
        let kinds = [
            FaultKind::IdentityReuse,
            FaultKind::DuplicateIdentity,
            FaultKind::StopElector,
            FaultKind::TstpElector,
        ];
        let faults: Vec<Fault> = (0..10u64)
            .flat_map(|seed| Plan::new(seed, 3, Duration::from_secs(8), 20, lease, &kinds).faults)
            .collect();
        for kind in kinds {
            let drawn: Vec<Duration> = faults
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| f.duration)
                .collect();
            assert!(drawn.len() > 10, "{kind}: drawn {} times", drawn.len());
            let (low, high) = match kind {
                FaultKind::StopElector | FaultKind::TstpElector => (lease / 2, lease * 3),
                _ => (lease, lease * 3),
            };
            assert!(
                drawn.iter().all(|d| (low..high).contains(d)),
                "{kind}: {drawn:?} not within {low:?}..{high:?}"
            );
            assert!(kind.lasts(), "{kind} is lifted after its duration");
        }
    }

    #[test]
    fn kind_names_are_the_command_line_values() {
        use clap::ValueEnum;
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::from_str(kind.name(), false), Ok(kind));
        }
    }
}
