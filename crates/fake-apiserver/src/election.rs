//! The coordinated leader election controller (KEP-4355), as kube-apiserver's
//! `pkg/controlplane/controller/leaderelection/leaderelection_controller.go`: it pings the LeaseCandidates
//! of each coordinated Lease, elects one of those that answer by the `OldestEmulationVersion` strategy, and
//! writes the Lease (or its `preferredHolder`) through the store, as any client's writes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::store::{EventType, Part, Store, Target};

/// The only strategy kube-apiserver's controller elects by.
const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";

/// The field manager of the controller's writes: kube-apiserver's loopback client names none, so its
/// `User-Agent` (`kube-apiserver/v1.x ...`) gives it.
const CONTROLLER_MANAGER: &str = "kube-apiserver";

/// Timings of the election controller (see [`crate::Builder::coordinated_election`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimings {
    /// How long candidates have to answer a ping (set `renewTime` after `pingTime`) before the election
    /// (default 5 s, kube-apiserver's `electionDuration`). The wait ends early once every candidate answered.
    pub election_window: Duration,
    /// `leaseDurationSeconds` written on the Leases the controller creates or assigns (default 5 s,
    /// kube-apiserver's `defaultLeaseDurationSeconds`); whole seconds, at least 1.
    pub lease_duration: Duration,
}

// === impl ElectionTimings ===

impl Default for ElectionTimings {
    fn default() -> Self {
        Self {
            // kube-apiserver's electionDuration and defaultLeaseDurationSeconds.
            election_window: Duration::from_secs(5),
            lease_duration: Duration::from_secs(5),
        }
    }
}

impl ElectionTimings {
    /// Sets [`ElectionTimings::election_window`].
    #[must_use]
    pub fn election_window(mut self, window: Duration) -> Self {
        self.election_window = window;
        self
    }

    /// Sets [`ElectionTimings::lease_duration`].
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    fn lease_duration_seconds(&self) -> i64 {
        i64::try_from(self.lease_duration.as_secs())
            .unwrap_or(i64::from(i32::MAX))
            .clamp(1, i64::from(i32::MAX))
    }
}

/// A coordinated Lease: (namespace, leaseName).
type Pair = (String, String);

/// Runs the controller until `shutdown`: elections run one at a time, for every pair marked by a candidate
/// change (a new candidate or a new `renewTime`), a released or deleted Lease, or an expired one.
pub(crate) async fn run(
    shared: Arc<Shared>,
    timings: ElectionTimings,
    shutdown: CancellationToken,
) {
    let Some(leases) = shared.resources.iter().position(|rt| rt.is_lease()) else {
        return;
    };
    let Some(candidates) = shared
        .resources
        .iter()
        .position(|rt| rt.group == "coordination.k8s.io" && rt.plural == "leasecandidates")
    else {
        return;
    };
    let c = Controller {
        shared: shared.clone(),
        timings,
        leases,
        candidates,
    };
    let mut events = shared.store().subscribe();
    // The renewTime last seen of each candidate (namespace, name): a change is a renew.
    let mut renewals: BTreeMap<Pair, Option<String>> = BTreeMap::new();
    // The renewTime of each expired Lease an election already ran for, so an expired Lease nobody can take
    // is not elected for in a loop.
    let mut expiries_handled: BTreeMap<Pair, String> = BTreeMap::new();
    let mut dirty: BTreeSet<Pair> = c.all_pairs();
    loop {
        for pair in std::mem::take(&mut dirty) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = c.elect(&pair) => {}
            }
        }
        let (expired, next_expiry) = c.expiries(&expiries_handled);
        for (pair, renew) in expired {
            expiries_handled.insert(pair.clone(), renew);
            dirty.insert(pair);
        }
        if !dirty.is_empty() {
            continue;
        }
        let sleep = tokio::time::sleep_until(next_expiry.unwrap_or_else(far_future));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep => {}
            event = events.recv() => match event {
                Ok(event) => c.observe(&event, &mut renewals, &mut dirty),
                Err(RecvError::Lagged(_)) => dirty = c.all_pairs(),
                Err(RecvError::Closed) => return,
            },
        }
        // Take every event already queued before electing.
        while let Ok(event) = events.try_recv() {
            c.observe(&event, &mut renewals, &mut dirty);
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[derive(Debug)]
struct Controller {
    shared: Arc<Shared>,
    timings: ElectionTimings,
    leases: usize,
    candidates: usize,
}

// === impl Controller ===

impl Controller {
    /// Marks the pair an event concerns, when it is a candidate's arrival or renew, or a Lease released or
    /// deleted.
    fn observe(
        &self,
        event: &crate::store::Event,
        renewals: &mut BTreeMap<Pair, Option<String>>,
        dirty: &mut BTreeSet<Pair>,
    ) {
        let object = &event.object;
        let name = str_at(object, "/metadata/name").to_owned();
        if event.resource == self.candidates {
            let key = (event.namespace.clone(), name);
            if event.kind == EventType::Deleted {
                renewals.remove(&key);
                return;
            }
            let renew = object
                .pointer("/spec/renewTime")
                .and_then(Value::as_str)
                .map(str::to_owned);
            // Our own pings change only pingTime: not a trigger.
            if renewals.get(&key) != Some(&renew) {
                renewals.insert(key, renew);
                dirty.insert((
                    event.namespace.clone(),
                    str_at(object, "/spec/leaseName").to_owned(),
                ));
            }
        } else if event.resource == self.leases {
            let released = str_at(object, "/spec/holderIdentity").is_empty();
            if event.kind == EventType::Deleted || released {
                let pair = (event.namespace.clone(), name);
                if !self.candidates_of(&self.shared.store(), &pair).is_empty() {
                    dirty.insert(pair);
                }
            }
        }
    }

    /// Every pair with candidates.
    fn all_pairs(&self) -> BTreeSet<Pair> {
        self.shared
            .store()
            .list(self.candidates, None)
            .map(|c| {
                (
                    str_at(c, "/metadata/namespace").to_owned(),
                    str_at(c, "/spec/leaseName").to_owned(),
                )
            })
            .collect()
    }

    /// The held coordinated Leases with candidates that expired and were not elected for yet (with their
    /// renewTime), and when the next one expires.
    fn expiries(&self, handled: &BTreeMap<Pair, String>) -> (Vec<(Pair, String)>, Option<Instant>) {
        let store = self.shared.store();
        let now = jiff::Timestamp::now();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for lease in store.list(self.leases, None) {
            let pair = (
                str_at(lease, "/metadata/namespace").to_owned(),
                str_at(lease, "/metadata/name").to_owned(),
            );
            let renew = str_at(lease, "/spec/renewTime");
            if str_at(lease, "/spec/strategy").is_empty()
                || str_at(lease, "/spec/holderIdentity").is_empty()
                || handled.get(&pair).is_some_and(|h| h == renew)
                || self.candidates_of(&store, &pair).is_empty()
            {
                continue;
            }
            let Some(expiry) = lease_expiry(lease) else {
                continue;
            };
            match expiry.duration_since(now).try_into() {
                Ok(left) if !Duration::is_zero(&left) => {
                    let at = Instant::now() + left;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                _ => expired.push((pair, renew.to_owned())),
            }
        }
        (expired, next)
    }

    fn candidates_of(&self, store: &Store, (namespace, lease): &Pair) -> Vec<Arc<Value>> {
        store
            .list(self.candidates, Some(namespace))
            .filter(|c| str_at(c, "/spec/leaseName") == lease)
            .cloned()
            .collect()
    }

    /// One election: ping the candidates that have not answered (those arriving during the window too), wait
    /// for their answers (at most the election window), then write the Lease. When no candidate needs a ping
    /// (each answered, or was pinged within the window) the Lease is written at once.
    async fn elect(&self, pair: &Pair) {
        let window = self.timings.election_window;
        let deadline = Instant::now() + window;
        let step = (window / 50).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut pinged = false;
        loop {
            let candidates = self.candidates_of(&self.shared.store(), pair);
            if candidates.is_empty() {
                return;
            }
            // A candidate pinged within the window is not pinged again: the answer of another must not
            // start a new round of pings for one that never answers.
            let recent = jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::try_from(window).unwrap_or_default())
                .unwrap_or_default();
            let to_ping: Vec<&Arc<Value>> = candidates
                .iter()
                .filter(|c| {
                    !answered(c) && timestamp_at(c, "/spec/pingTime").is_none_or(|p| p < recent)
                })
                .collect();
            if !to_ping.is_empty() {
                pinged = true;
                self.ping(&pair.0, &to_ping);
            }
            let now = Instant::now();
            if !pinged || now >= deadline || candidates.iter().all(|c| answered(c)) {
                break;
            }
            tokio::time::sleep(step.min(deadline - now)).await;
        }
        self.write_lease(pair);
    }

    /// Sets `pingTime` to now on each candidate, through the store.
    fn ping(&self, namespace: &str, candidates: &[&Arc<Value>]) {
        let now = micro_time_now();
        let rt = &self.shared.resources[self.candidates];
        let mut store = self.shared.store();
        for candidate in candidates {
            let target = Target {
                resource: self.candidates,
                rt,
                namespace,
                name: str_at(candidate, "/metadata/name"),
                dry_run: false,
                manager: Some(CONTROLLER_MANAGER),
            };
            // A candidate deleted meanwhile is simply not pinged.
            let _ = store.patch(
                &target,
                &json!({"spec": {"pingTime": now}}),
                Part::Main,
                |_| Ok(()),
            );
        }
    }

    /// Elects among the candidates that answered and writes the Lease, all under one store lock (so nothing
    /// is written between reading the Lease and writing it).
    fn write_lease(&self, pair: &Pair) {
        let mut store = self.shared.store();
        let candidates = self.candidates_of(&store, pair);
        let lease = store.get(self.leases, &pair.0, &pair.1);
        let strategy = lease
            .as_deref()
            .map(|l| str_at(l, "/spec/strategy"))
            .filter(|s| !s.is_empty())
            .or_else(|| candidates.first().map(|c| str_at(c, "/spec/strategy")))
            .unwrap_or_default()
            .to_owned();
        let electee = if strategy == OLDEST_EMULATION_VERSION {
            candidates
                .iter()
                .filter(|c| answered(c))
                .min_by(|a, b| compare_oldest_emulation_version(a, b))
                .map(|c| str_at(c, "/metadata/name").to_owned())
        } else {
            // Another strategy is left to a third-party controller.
            None
        };
        let rt = &self.shared.resources[self.leases];
        let target = Target {
            resource: self.leases,
            rt,
            namespace: &pair.0,
            name: &pair.1,
            dry_run: false,
            manager: Some(CONTROLLER_MANAGER),
        };
        let duration = self.timings.lease_duration_seconds();
        let result = match (lease, electee) {
            (None, electee) if !strategy.is_empty() => {
                let mut spec = json!({"strategy": strategy, "leaseDurationSeconds": duration});
                if let Some(electee) = electee {
                    spec["holderIdentity"] = json!(electee);
                    spec["renewTime"] = json!(micro_time_now());
                }
                let object = json!({"apiVersion": rt.api_version(), "kind": rt.kind,
                    "metadata": {"name": pair.1, "namespace": pair.0}, "spec": spec});
                store.create(&target, object).map(drop)
            }
            // A Lease without a strategy is not coordinated: left to its clients.
            (Some(lease), Some(electee)) if !str_at(&lease, "/spec/strategy").is_empty() => {
                let holder = str_at(&lease, "/spec/holderIdentity");
                let expired = lease_expiry(&lease).is_none_or(|e| e <= jiff::Timestamp::now());
                let patch = if holder.is_empty() || expired {
                    // renewTime now, so that the electee's term starts valid.
                    json!({"spec": {"holderIdentity": electee, "acquireTime": null,
                        "leaseDurationSeconds": duration, "preferredHolder": null,
                        "renewTime": micro_time_now()}})
                } else if holder != electee && str_at(&lease, "/spec/preferredHolder") != electee {
                    json!({"spec": {"preferredHolder": electee}})
                } else {
                    return;
                };
                store
                    .patch(&target, &patch, Part::Main, |_| Ok(()))
                    .map(drop)
            }
            _ => return,
        };
        if let Err(error) = result {
            tracing::warn!(namespace = %pair.0, lease = %pair.1, ?error, "election write failed");
        }
    }
}

/// The string at `pointer`, or "".
fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn timestamp_at(object: &Value, pointer: &str) -> Option<jiff::Timestamp> {
    str_at(object, pointer).parse().ok()
}

/// Whether a candidate answered its last ping: `renewTime` after `pingTime` (a candidate never pinged has
/// not).
fn answered(candidate: &Value) -> bool {
    match (
        timestamp_at(candidate, "/spec/pingTime"),
        timestamp_at(candidate, "/spec/renewTime"),
    ) {
        (Some(ping), Some(renew)) => renew > ping,
        _ => false,
    }
}

/// `renewTime + leaseDurationSeconds`, or `None` when either is missing.
fn lease_expiry(lease: &Value) -> Option<jiff::Timestamp> {
    let renew = timestamp_at(lease, "/spec/renewTime")?;
    let seconds = lease.pointer("/spec/leaseDurationSeconds")?.as_i64()?;
    renew
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()
}

/// kube-apiserver's `OldestEmulationVersion` order: lowest emulationVersion, then lowest binaryVersion, then
/// oldest creationTimestamp (then name, to be deterministic).
fn compare_oldest_emulation_version(a: &Value, b: &Value) -> Ordering {
    let version = |c: &Value, field: &str| semver(str_at(c, field));
    version(a, "/spec/emulationVersion")
        .cmp(&version(b, "/spec/emulationVersion"))
        .then_with(|| version(a, "/spec/binaryVersion").cmp(&version(b, "/spec/binaryVersion")))
        .then_with(|| {
            timestamp_at(a, "/metadata/creationTimestamp")
                .cmp(&timestamp_at(b, "/metadata/creationTimestamp"))
        })
        .then_with(|| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")))
}

/// A version as the `semver` crate parses it (the parser and order `leaderelection` checks candidates'
/// versions with); an unparsable one (`None`) sorts after every valid one.
fn semver(version: &str) -> (bool, Option<semver::Version>) {
    let parsed = semver::Version::parse(version).ok();
    (parsed.is_none(), parsed)
}

/// Now as a MicroTime (six fractional digits).
fn micro_time_now() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "{}.{:06}Z",
        now.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, emulation: &str, binary: &str, created: &str) -> Value {
        json!({"metadata": {"name": name, "creationTimestamp": created},
               "spec": {"emulationVersion": emulation, "binaryVersion": binary}})
    }

    #[test]
    fn oldest_emulation_version_compares_semver_then_binary_then_age() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:00:01Z";
        let order = |a: &Value, b: &Value| compare_oldest_emulation_version(a, b);
        // 1.9 < 1.10 as versions, not as strings.
        assert_eq!(
            order(
                &candidate("a", "1.9.0", "1.9.0", t1),
                &candidate("b", "1.10.0", "1.10.0", t0)
            ),
            Ordering::Less
        );
        assert_eq!(
            order(
                &candidate("a", "1.33.0", "1.34.0", t0),
                &candidate("b", "1.33.0", "1.33.0", t1)
            ),
            Ordering::Greater
        );
        assert_eq!(
            order(
                &candidate("a", "1.33.0", "1.33.0", t1),
                &candidate("b", "1.33.0", "1.33.0", t0)
            ),
            Ordering::Greater
        );
        assert_eq!(
            order(
                &candidate("a", "garbage", "1.0.0", t0),
                &candidate("b", "1.40.0", "1.40.0", t1)
            ),
            Ordering::Greater
        );
        // As the elector's validation parses them (the `semver` crate): a leading "v" is no version, and a
        // pre-release comes before its release.
        assert_eq!(
            order(
                &candidate("a", "v1.0.0", "v1.0.0", t0),
                &candidate("b", "1.40.0", "1.40.0", t1)
            ),
            Ordering::Greater
        );
        assert_eq!(
            order(
                &candidate("a", "1.34.0-rc.1", "1.34.0-rc.1", t1),
                &candidate("b", "1.34.0", "1.34.0", t0)
            ),
            Ordering::Less
        );
    }

    #[test]
    fn a_candidate_answered_when_renew_is_after_ping() {
        let c = |ping: &str, renew: &str| json!({"spec": {"pingTime": ping, "renewTime": renew}});
        assert!(answered(&c(
            "2026-01-01T00:00:00.000001Z",
            "2026-01-01T00:00:00.000002Z"
        )));
        assert!(!answered(&c(
            "2026-01-01T00:00:00.000002Z",
            "2026-01-01T00:00:00.000001Z"
        )));
        assert!(!answered(
            &json!({"spec": {"renewTime": "2026-01-01T00:00:00.000002Z"}})
        ));
        assert_eq!(micro_time_now().len(), "2026-01-01T00:00:00.000000Z".len());
    }
}
