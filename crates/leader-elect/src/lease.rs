//! `leader-elect status` and `leader-elect release`.

use std::time::Duration;

use clap::ValueEnum;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;
use leaderelection::{
    KubeLeaseLock, LeaderElectionRecord, LeaseEvent, LeaseLock, LockError, ObservedLease,
};
use leaderelection_controller::settings::Environment;
use serde_json::json;
use tokio::time::{Instant, timeout, timeout_at};

use crate::client::{ServerArgs, preflight};
use crate::failure::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned text.
    Text,
    /// One JSON object.
    Json,
}

/// `leader-elect status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The Lease's name.
    #[arg(long)]
    lease_name: String,
    /// The Lease's namespace (default: POD_NAMESPACE, the kubeconfig context's, the service-account
    /// namespace, "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

/// How often `release` reads the Lease while observing it where watching is forbidden or failing.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Bound on each request `release` and `yield` make (the client has no read timeout, for the sake of
/// watches).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Release writes tried when conflicts show only writes that do not stop the release (labels or
/// annotations; with --force, the holder's renewals).
pub(crate) const WRITE_ATTEMPTS: usize = 5;

const RELEASE_HELP: &str = "\
How release tells a live holder from a gone one:
  It never compares the Lease's renewTime (written with the holder's clock) with this machine's clock.
  It watches the Lease (where RBAC denies watch, it reads it every second) for up to the Lease's
  leaseDurationSeconds:
  - the holder renews in that time: it is alive. release refuses (exit 1) and changes nothing. Stop that
    replica instead: SIGTERM makes `leader-elect run` stop its command, then release the Lease itself.
  - nothing is written for the whole lease duration: the holder is gone (the rule by which a follower
    takes over). release writes holderIdentity \"\", leaseDurationSeconds 1, leaseTransitions kept, with
    a PUT guarded by the resourceVersion it read, so a renewal that slips in makes the write fail instead
    of being overwritten.
  A Lease already released (holderIdentity \"\") is left as it is (exit 0); one held by another identity
  is refused (exit 1).

--force skips the watch and releases at once. A holder that is still running sees the release through the
watch on its own Lease and kills its work at once (a holder that may not watch learns of it at its next
renewal, within its retry period); another candidate may take over at once, so both may work for that
short while.";

/// `leader-elect release`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = RELEASE_HELP)]
pub(crate) struct ReleaseArgs {
    /// The Lease's name.
    #[arg(long)]
    lease_name: String,
    /// The Lease's namespace (default: POD_NAMESPACE, the kubeconfig context's, the service-account
    /// namespace, "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The identity that holds the Lease; the release is refused if another holds it.
    #[arg(long)]
    identity: String,
    /// Release at once, without first watching for one lease duration whether the holder still renews.
    /// A live holder kills its work when it sees the release (at once through its watch; without watch
    /// RBAC, within its retry period).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) async fn open(
    lease_name: &str,
    ns: Option<&str>,
    server: &ServerArgs,
) -> Result<KubeLeaseLock, Failure> {
    Ok(open_in(lease_name, ns, server).await?.0)
}

/// As [`open`], also giving the client and the namespace.
pub(crate) async fn open_in(
    lease_name: &str,
    ns: Option<&str>,
    server: &ServerArgs,
) -> Result<(KubeLeaseLock, kube::Client, String), Failure> {
    if let Some(rule) = leaderelection::Config::new("x", lease_name, "default")
        .validate()
        .err()
    {
        return Err(Failure::Usage(rule.into()));
    }
    let connection = server.connect().await?;
    let ns = connection.namespace(ns, &Environment::from_process());
    let lock = KubeLeaseLock::new(connection.client.clone(), &ns, lease_name);
    preflight(&lock, &connection.describe()).await?;
    Ok((lock, connection.client, ns))
}

/// The LeaseCandidates of a Lease (coordinated leader election), as far as the API server says.
pub(crate) enum Candidates {
    /// Those whose `spec.leaseName` is the Lease's, by name.
    Listed(Vec<LeaseCandidate>),
    /// `coordination.k8s.io/v1beta1` `leasecandidates` is not served (404).
    NotServed,
    /// The list failed (e.g. 403: RBAC grants no list on leasecandidates).
    Failed(String),
}

pub(crate) async fn candidates(client: &kube::Client, ns: &str, lease_name: &str) -> Candidates {
    let api: kube::Api<LeaseCandidate> = kube::Api::namespaced(client.clone(), ns);
    match timeout(REQUEST_TIMEOUT, api.list(&kube::api::ListParams::default())).await {
        Ok(Ok(list)) => Candidates::Listed(
            list.items
                .into_iter()
                .filter(|c| c.spec.as_ref().is_some_and(|s| s.lease_name == lease_name))
                .collect(),
        ),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Candidates::NotServed,
        Ok(Err(err)) => Candidates::Failed(err.to_string()),
        Err(_) => Candidates::Failed(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
    }
}

pub(crate) async fn status(args: StatusArgs) -> Result<(), Failure> {
    let (lock, client, ns) =
        open_in(&args.lease_name, args.namespace.as_deref(), &args.server).await?;
    let observed = lock
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("reading lease {}: {e}", lock.describe()))?
        .ok_or_else(|| anyhow::anyhow!("lease {} not found", lock.describe()))?;
    let candidates = candidates(&client, &ns, &args.lease_name).await;
    let now = jiff::Timestamp::now();
    println!(
        "{}",
        render(&lock.describe(), &observed, &candidates, now, args.output)
    );
    Ok(())
}

/// When a held Lease expires, by this machine's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Nobody holds it (`holderIdentity` empty): free now, whatever its timings say.
    Released,
    /// No renewTime, or a negative leaseDurationSeconds: it cannot be valid.
    Invalid,
    /// renewTime + leaseDurationSeconds.
    At(jiff::Timestamp),
    /// renewTime + leaseDurationSeconds is after the latest time there is (year 9999): it never expires
    /// by any clock.
    Never,
}

fn expiry(r: &LeaderElectionRecord) -> Expiry {
    if !r.is_held() {
        return Expiry::Released;
    }
    match r.renew_time {
        Some(_) if r.lease_duration_seconds < 0 => Expiry::Invalid,
        None => Expiry::Invalid,
        Some(renewed) => renewed
            .checked_add(jiff::SignedDuration::from_secs(i64::from(
                r.lease_duration_seconds,
            )))
            .map_or(Expiry::Never, Expiry::At),
    }
}

/// What `status` prints for `observed` (Lease `lease`) and its `candidates` at `now`, in `output`.
/// Whatever a Lease holds (times at either end of the range, any duration, missing fields) renders.
fn render(
    lease: &str,
    observed: &ObservedLease,
    candidates: &Candidates,
    now: jiff::Timestamp,
    output: Output,
) -> String {
    let r = &observed.record;
    let expiry = expiry(r);
    let expired = match expiry {
        Expiry::Released | Expiry::Invalid => true,
        Expiry::At(at) => at <= now,
        Expiry::Never => false,
    };
    let spec_of = |c: &LeaseCandidate| c.spec.clone().unwrap_or_default();
    match output {
        Output::Json => json!({
            "lease": lease,
            "holder": r.holder_identity,
            "held": r.is_held(),
            "term": r.lease_transitions,
            "acquire_time": r.acquire_time.map(|t| t.to_string()),
            "renew_time": r.renew_time.map(|t| t.to_string()),
            "lease_duration_seconds": r.lease_duration_seconds,
            "expired": expired,
            "resource_version": observed.resource_version,
            "strategy": r.strategy,
            "preferred_holder": r.preferred_holder,
            // null where LeaseCandidates are not served or could not be listed.
            "candidates": match candidates {
                Candidates::Listed(list) => json!(list.iter().map(|c| {
                    let spec = spec_of(c);
                    json!({
                        "name": c.metadata.name,
                        "binary_version": spec.binary_version,
                        "emulation_version": spec.emulation_version,
                        "strategy": spec.strategy,
                        "renew_time": spec.renew_time.map(|t| t.0.to_string()),
                        "ping_time": spec.ping_time.map(|t| t.0.to_string()),
                    })
                }).collect::<Vec<_>>()),
                Candidates::NotServed | Candidates::Failed(_) => serde_json::Value::Null,
            },
        })
        .to_string(),
        Output::Text => {
            let when = |t: Option<jiff::Timestamp>| match t {
                Some(t) if t <= now => format!("{t} ({} ago)", human(now.duration_since(t))),
                Some(t) => format!(
                    "{t} (in {}: ahead of this machine's clock)",
                    human(t.duration_since(now))
                ),
                None => "-".into(),
            };
            let holder = if r.is_held() {
                r.holder_identity.as_str()
            } else {
                "<none> (released)"
            };
            let mut lines = vec![
                format!("Lease:     {lease}"),
                format!("Holder:    {holder}"),
                format!("Term:      {} (leaseTransitions)", r.lease_transitions),
                format!("Acquired:  {}", when(r.acquire_time)),
                format!("Renewed:   {}", when(r.renew_time)),
                format!("Duration:  {}s", r.lease_duration_seconds),
                match expiry {
                    Expiry::At(at) if !expired => format!(
                        "Expired:   no (expires in {}, by this machine's clock)",
                        human(at.duration_since(now))
                    ),
                    Expiry::Never => {
                        "Expired:   no (renewTime + leaseDurationSeconds is past year \
                                      9999: never)"
                            .to_owned()
                    }
                    Expiry::Released => "Expired:   yes (released)".to_owned(),
                    Expiry::Invalid => {
                        "Expired:   yes (no renewTime, or a negative leaseDurationSeconds)"
                            .to_owned()
                    }
                    Expiry::At(_) => "Expired:   yes (by this machine's clock)".to_owned(),
                },
                format!(
                    "Strategy:  {}",
                    r.strategy.as_deref().unwrap_or("<none> (not coordinated)")
                ),
                format!(
                    "Preferred: {}",
                    r.preferred_holder.as_deref().unwrap_or("<none>")
                ),
            ];
            match candidates {
                Candidates::Listed(list) if list.is_empty() => {
                    lines.push("Candidates: <none>".to_owned());
                }
                Candidates::Listed(list) => {
                    lines.push("Candidates:".to_owned());
                    for c in list {
                        let spec = spec_of(c);
                        lines.push(format!(
                            "  {}  binary {}, emulation {}, renewed {}",
                            c.metadata.name.as_deref().unwrap_or(""),
                            spec.binary_version,
                            spec.emulation_version.as_deref().unwrap_or("-"),
                            when(spec.renew_time.map(|t| t.0)),
                        ));
                    }
                }
                Candidates::NotServed => lines.push(
                    "Candidates: <not served> (coordination.k8s.io/v1beta1 leasecandidates)"
                        .to_owned(),
                ),
                Candidates::Failed(reason) => {
                    lines.push(format!("Candidates: <unknown> ({reason})"));
                }
            }
            lines.join("\n")
        }
    }
}

fn human(d: jiff::SignedDuration) -> String {
    let d = std::time::Duration::try_from(d.abs()).unwrap_or_default();
    humantime::format_duration(std::time::Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
    .to_string()
}

pub(crate) async fn release(args: ReleaseArgs) -> Result<(), Failure> {
    let lock = open(&args.lease_name, args.namespace.as_deref(), &args.server).await?;
    release_lease(&lock, &args.identity, args.force).await
}

/// Releases the Lease if `identity` holds it and, unless `force`, has not renewed it for one lease
/// duration of watching.
async fn release_lease(lock: &dyn LeaseLock, identity: &str, force: bool) -> Result<(), Failure> {
    let lease = lock.describe();
    let read = read(lock)
        .await?
        .ok_or_else(|| anyhow::anyhow!("lease {lease} not found"))?;
    let holder = read.record.holder_identity.clone();
    if !read.record.is_held() {
        println!("lease {lease} is already released (holderIdentity is empty): nothing to do");
        return Ok(());
    }
    if holder != identity {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "lease {lease} is held by {holder}, not {identity}: refusing to release"
        )));
    }
    let started = Instant::now();
    let guard = if force {
        eprintln!(
            "--force: releasing lease {lease} from \"{holder}\" without checking whether it still renews. \
             If \"{holder}\" is running, it sees the release through the watch on its own Lease and kills \
             its work at once (without watch RBAC: at its next renewal, within its retry period); another \
             candidate may take over at once, so both may work for that short while."
        );
        read
    } else {
        let window = lease_duration(&read.record);
        eprintln!(
            "watching lease {lease} for up to {} s (its leaseDurationSeconds) to see whether \"{holder}\" \
             still renews (--force skips this)...",
            window.as_secs()
        );
        match observe(lock, read, window).await {
            Observation::Silent(latest) => {
                eprintln!(
                    "\"{holder}\" did not renew lease {lease} in {} s, its lease duration: it has stopped \
                     (as a follower would judge); releasing",
                    window.as_secs()
                );
                latest
            }
            Observation::Changed(change, after) => return report(&lease, &holder, change, after),
        }
    };
    write_release(lock, guard, force, started).await
}

/// What watching the Lease for one lease duration showed.
#[derive(Debug, PartialEq, Eq)]
enum Observation {
    /// The election record was not written for the whole window: the holder is not renewing. Carries the
    /// Lease as last seen, whose resourceVersion guards the release.
    Silent(ObservedLease),
    /// The record changed, this long after the observation started.
    Changed(Change, Duration),
}

/// How the Lease differs from the election record first read.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// The same holder wrote the record again: it is alive.
    Renewed,
    /// The holder released it (`holderIdentity` is empty).
    Released,
    /// Another candidate holds it, in term `term`.
    Taken { holder: String, term: i32 },
    /// The Lease was deleted.
    Deleted,
}

/// How `after` differs from `before`; `None` when the election record is the same (a write that changes
/// only labels or annotations is not a renewal, as the elector judges it).
fn change(before: &LeaderElectionRecord, after: &LeaderElectionRecord) -> Option<Change> {
    if after == before {
        None
    } else if !after.is_held() {
        Some(Change::Released)
    } else if after.holder_identity != before.holder_identity {
        Some(Change::Taken {
            holder: after.holder_identity.clone(),
            term: after.lease_transitions,
        })
    } else {
        Some(Change::Renewed)
    }
}

/// Watches the Lease from `seen` (or, where watching is forbidden or failing, reads it every
/// [`POLL_INTERVAL`]) until its election record changes or `window` has passed.
///
/// Only changes are compared, never the Lease's renewTime with our clock (the holder's clock may be
/// skewed). A change missed here (a failed read, a silent watch) is still caught by the release, a PUT
/// guarded by the resourceVersion returned.
async fn observe(lock: &dyn LeaseLock, mut seen: ObservedLease, window: Duration) -> Observation {
    let started = Instant::now();
    let deadline = started + window;
    let within = |bound: Duration| deadline.min(Instant::now() + bound);
    let mut from = seen.resource_version.clone();
    let mut watching = true;
    loop {
        if watching {
            match timeout_at(within(REQUEST_TIMEOUT), lock.watch(&from)).await {
                Ok(Ok(mut events)) => loop {
                    let Ok(event) = timeout_at(deadline, events.next()).await else {
                        return Observation::Silent(seen);
                    };
                    match event {
                        Some(Ok(LeaseEvent::Applied(lease))) => {
                            if let Some(change) = change(&seen.record, &lease.record) {
                                return Observation::Changed(change, started.elapsed());
                            }
                            from.clone_from(&lease.resource_version);
                            seen = lease;
                        }
                        Some(Ok(LeaseEvent::Deleted(_))) => {
                            return Observation::Changed(Change::Deleted, started.elapsed());
                        }
                        Some(Ok(LeaseEvent::Bookmark(version))) => from = version,
                        // Closed by the server, failed, or too old to resume: read, then watch again.
                        Some(Err(_)) | None => break,
                    }
                },
                Ok(Err(LockError::Forbidden(_))) => {
                    eprintln!(
                        "watching lease {} is forbidden (RBAC grants no list/watch on leases): reading it \
                         every {} s instead",
                        lock.describe(),
                        POLL_INTERVAL.as_secs()
                    );
                    watching = false;
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
        tokio::time::sleep_until(within(POLL_INTERVAL)).await;
        if Instant::now() >= deadline {
            return Observation::Silent(seen);
        }
        match timeout_at(within(REQUEST_TIMEOUT), lock.get()).await {
            Ok(Ok(Some(lease))) => {
                if let Some(change) = change(&seen.record, &lease.record) {
                    return Observation::Changed(change, started.elapsed());
                }
                from.clone_from(&lease.resource_version);
                seen = lease;
            }
            Ok(Ok(None)) => return Observation::Changed(Change::Deleted, started.elapsed()),
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// Writes the released record with a PUT guarded by `guard`'s resourceVersion (client-go's release:
/// holder `""`, `leaseDurationSeconds: 1`, `leaseTransitions` kept). On a conflict, reads the Lease again:
/// a write that left the election record as it was (or, with `force`, a renewal) is retried; anything else
/// is reported and nothing is written.
async fn write_release(
    lock: &dyn LeaseLock,
    mut guard: ObservedLease,
    force: bool,
    started: Instant,
) -> Result<(), Failure> {
    let lease = lock.describe();
    let holder = guard.record.holder_identity.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let released = guard.record.released(jiff::Timestamp::now());
        match timeout(
            REQUEST_TIMEOUT,
            lock.update(&released, &guard.resource_version),
        )
        .await
        {
            Ok(Ok(_)) => {
                println!("released {lease} (term {})", released.lease_transitions);
                return Ok(());
            }
            Ok(Err(LockError::Conflict)) => {
                let Some(fresh) = read(lock).await? else {
                    return report(&lease, &holder, Change::Deleted, started.elapsed());
                };
                match change(&guard.record, &fresh.record) {
                    None => guard = fresh,
                    Some(Change::Renewed) if force => guard = fresh,
                    Some(change) => return report(&lease, &holder, change, started.elapsed()),
                }
            }
            Ok(Err(err)) => {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "releasing {lease}: {err}"
                )));
            }
            Err(_) => {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "releasing {lease}: no answer within {} s; it may or may not be released (see \
                     leader-elect status)",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        }
    }
    Err(Failure::Runtime(anyhow::anyhow!(
        "lease {lease} was written {WRITE_ATTEMPTS} times while releasing it; not released"
    )))
}

/// What a change seen before the release means to the user: already released is success; a renewal, a
/// new holder or a deletion leave the Lease as it is and fail.
fn report(lease: &str, holder: &str, change: Change, after: Duration) -> Result<(), Failure> {
    match change {
        Change::Released => {
            println!("lease {lease} was released by \"{holder}\" meanwhile: nothing to do");
            Ok(())
        }
        Change::Renewed => Err(Failure::Runtime(anyhow::anyhow!(
            "lease {lease} is held by \"{holder}\", which is still renewing (renewed during the {:.1} s \
             observed); stop that replica instead (SIGTERM makes it stop its work and release), or pass \
             --force to take the Lease from a live holder",
            after.as_secs_f64()
        ))),
        Change::Taken { holder: new, term } => Err(Failure::Runtime(anyhow::anyhow!(
            "lease {lease} is now held by \"{new}\" (term {term}), not \"{holder}\": not released"
        ))),
        Change::Deleted => Err(Failure::Runtime(anyhow::anyhow!(
            "lease {lease} was deleted meanwhile: nothing to release"
        ))),
    }
}

/// The record's leaseDurationSeconds, at least 1 s: a Lease written without a duration (kubectl) still
/// gets one look.
pub(crate) fn lease_duration(record: &LeaderElectionRecord) -> Duration {
    Duration::from_secs(
        u64::try_from(record.lease_duration_seconds)
            .unwrap_or(0)
            .max(1),
    )
}

/// Reads the Lease, bounded by [`REQUEST_TIMEOUT`].
pub(crate) async fn read(lock: &dyn LeaseLock) -> Result<Option<ObservedLease>, Failure> {
    match timeout(REQUEST_TIMEOUT, lock.get()).await {
        Ok(result) => result.map_err(|e| {
            Failure::Runtime(anyhow::anyhow!("reading lease {}: {e}", lock.describe()))
        }),
        Err(_) => Err(Failure::Runtime(anyhow::anyhow!(
            "reading lease {}: no answer within {} s",
            lock.describe(),
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaderelection::{LockFault, MemoryLeaseStore};
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> LeaderElectionRecord {
        let t: jiff::Timestamp = "2026-05-01T12:00:00Z".parse().unwrap();
        LeaderElectionRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(t),
            renew_time: Some(t),
            lease_transitions: 4,
            ..LeaderElectionRecord::default()
        }
    }

    fn renewed(record: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            renew_time: record
                .renew_time
                .map(|t| t + jiff::SignedDuration::from_secs(2)),
            ..record.clone()
        }
    }

    /// The store with the Lease held by "pod-a", and the Lease as `release` first reads it.
    async fn held() -> (MemoryLeaseStore, ObservedLease) {
        let store = MemoryLeaseStore::new();
        store.put(held_by("pod-a"));
        let read = store.lock("release").get().await.unwrap().unwrap();
        (store, read)
    }

    /// Writes `record` as another client would, `after` from now.
    fn write_later(store: &MemoryLeaseStore, after: Duration, record: LeaderElectionRecord) {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            store.put(record);
        });
    }

    #[test]
    fn only_a_change_of_the_election_record_counts() {
        let a = held_by("pod-a");
        assert_eq!(change(&a, &a.clone()), None);
        assert_eq!(change(&a, &renewed(&a)), Some(Change::Renewed));
        assert_eq!(
            change(&a, &a.released(jiff::Timestamp::now())),
            Some(Change::Released)
        );
        let taken = LeaderElectionRecord {
            lease_transitions: 5,
            ..held_by("pod-b")
        };
        assert_eq!(
            change(&a, &taken),
            Some(Change::Taken {
                holder: "pod-b".into(),
                term: 5
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_seen_through_the_watch_ends_the_observation_at_once() {
        let (store, read) = held().await;
        write_later(&store, Duration::from_secs(2), renewed(&read.record));
        let observed = observe(&store.lock("release"), read, WINDOW).await;
        assert_eq!(
            observed,
            Observation::Changed(Change::Renewed, Duration::from_secs(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn where_watch_is_forbidden_a_renewal_is_seen_by_the_next_read() {
        let (store, read) = held().await;
        let lock = store.lock("release");
        lock.set_fault(LockFault {
            forbid_watch: true,
            ..LockFault::default()
        });
        write_later(&store, Duration::from_millis(2500), renewed(&read.record));
        let observed = observe(&lock, read, WINDOW).await;
        assert_eq!(
            observed,
            Observation::Changed(Change::Renewed, Duration::from_secs(3))
        );
        assert!(
            store
                .calls_of("release")
                .contains(&"watch:forbidden".to_string())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_holder_is_observed_for_the_whole_lease_duration() {
        let (store, read) = held().await;
        // A write of metadata only (the same election record) is not a renewal, and the release is
        // then guarded by its resourceVersion.
        write_later(&store, Duration::from_secs(3), read.record.clone());
        let started = Instant::now();
        let observed = observe(&store.lock("release"), read, WINDOW).await;
        assert_eq!(started.elapsed(), WINDOW);
        assert_eq!(observed, Observation::Silent(store.lease().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_or_takeover_while_observing_is_reported_and_nothing_written() {
        let (store, read) = held().await;
        write_later(
            &store,
            Duration::from_secs(1),
            read.record.released(jiff::Timestamp::now()),
        );
        let lock = store.lock("release");
        release_lease(&lock, "pod-a", false).await.unwrap();
        assert!(
            !store
                .calls_of("release")
                .iter()
                .any(|c| c.starts_with("update"))
        );

        let (store, _) = held().await;
        write_later(&store, Duration::from_secs(1), held_by("pod-b"));
        let lock = store.lock("release");
        let err = match release_lease(&lock, "pod-a", false).await {
            Err(Failure::Runtime(err)) => err.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(err.contains("is now held by \"pod-b\""), "{err}");
        assert!(
            !store
                .calls_of("release")
                .iter()
                .any(|c| c.starts_with("update"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_between_observing_and_writing_fails_the_guarded_write_unless_forced() {
        // The read is taken, then the holder renews before the write: the watch from a later version
        // would not show it, the resourceVersion guard does.
        let (store, read) = held().await;
        store.put(renewed(&read.record));
        let lock = store.lock("release");
        let err = match write_release(&lock, read.clone(), false, Instant::now()).await {
            Err(Failure::Runtime(err)) => err.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(err.contains("which is still renewing"), "{err}");
        assert!(store.lease().unwrap().record.is_held());

        write_release(&lock, read, true, Instant::now())
            .await
            .unwrap();
        let released = store.lease().unwrap().record;
        assert!(!released.is_held());
        assert_eq!(released.lease_transitions, 4);
    }

    fn arbitrary_time() -> impl Strategy<Value = Option<jiff::Timestamp>> {
        let (min, max) = (
            jiff::Timestamp::MIN.as_second(),
            jiff::Timestamp::MAX.as_second(),
        );
        prop_oneof![
            Just(None),
            prop_oneof![Just(min), Just(max), min..=max, -1_000_000i64..1_000_000]
                .prop_map(|s| jiff::Timestamp::from_second(s).ok()),
        ]
    }

    /// Whatever another writer may leave in a Lease: any holder (none, empty, the releasing identity),
    /// times at either end of the range or missing, any leaseDurationSeconds (`i32::MIN`, negative, 0,
    /// `i32::MAX`), any leaseTransitions, with or without strategy and preferredHolder.
    fn arbitrary_record() -> impl Strategy<Value = LeaderElectionRecord> {
        let holder = prop_oneof![
            Just(String::new()),
            Just("pod-a".to_owned()),
            "[a-z0-9.-]{1,12}",
        ];
        let duration = prop_oneof![
            Just(i32::MIN),
            Just(-1),
            Just(0),
            Just(1),
            Just(i32::MAX),
            any::<i32>(),
        ];
        let transitions = prop_oneof![Just(i32::MAX), Just(i32::MIN), any::<i32>()];
        let optional = |value: &'static str| prop_oneof![Just(None), Just(Some(value.to_owned()))];
        (
            holder,
            duration,
            arbitrary_time(),
            arbitrary_time(),
            transitions,
            optional("OldestEmulationVersion"),
            optional("pod-b"),
        )
            .prop_map(
                |(holder, duration, acquire, renew, transitions, strategy, preferred)| {
                    LeaderElectionRecord {
                        holder_identity: holder,
                        lease_duration_seconds: duration,
                        acquire_time: acquire,
                        renew_time: renew,
                        lease_transitions: transitions,
                        strategy,
                        preferred_holder: preferred,
                    }
                },
            )
    }

    /// A runtime on tokio's paused clock: `release` watches one lease duration (up to `i32::MAX` s) in
    /// no real time.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `status` renders any Lease at any time, in both formats, without a panic; a held Lease is shown
        /// expired exactly when renewTime + leaseDurationSeconds (when there is such a time) is not after
        /// now.
        #[test]
        fn status_renders_any_lease(
            record in arbitrary_record(),
            now in arbitrary_time(),
            candidate_renewed in arbitrary_time(),
        ) {
            let now = now.unwrap_or_else(jiff::Timestamp::now);
            let observed = ObservedLease { record: record.clone(), resource_version: "7".into() };
            let candidates = Candidates::Listed(vec![LeaseCandidate {
                metadata: kube::api::ObjectMeta { name: Some("pod-b".into()), ..Default::default() },
                spec: Some(k8s_openapi::api::coordination::v1beta1::LeaseCandidateSpec {
                    renew_time: candidate_renewed.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime),
                    ..Default::default()
                }),
            }]);
            let json = render("default/x", &observed, &candidates, now, Output::Json);
            let json: serde_json::Value = serde_json::from_str(&json).unwrap();
            let expected = match (record.is_held(), record.renew_time) {
                (true, Some(renewed)) if record.lease_duration_seconds >= 0 => renewed
                    .checked_add(jiff::SignedDuration::from_secs(record.lease_duration_seconds.into()))
                    .is_ok_and(|at| at <= now),
                _ => true,
            };
            prop_assert_eq!(&json["expired"], &serde_json::Value::Bool(expected));
            let text = render("default/x", &observed, &candidates, now, Output::Text);
            prop_assert!(text.contains(if expected { "Expired:   yes" } else { "Expired:   no" }), "{}", text);
        }

        /// `release` of any Lease ends without a panic: a released one is left as it is, one held by
        /// another identity is refused, and one held by "pod-a" that nobody renews is released after one
        /// lease duration, its term kept.
        #[test]
        fn release_handles_any_lease(record in arbitrary_record(), force in any::<bool>()) {
            let store = MemoryLeaseStore::new();
            store.put(record.clone());
            let released = paused().block_on(release_lease(&store.lock("release"), "pod-a", force));
            let after = store.lease().unwrap().record;
            if !record.is_held() {
                prop_assert!(released.is_ok());
                prop_assert_eq!(after, record);
            } else if record.holder_identity != "pod-a" {
                prop_assert!(released.is_err());
                prop_assert_eq!(after, record);
            } else {
                prop_assert!(released.is_ok());
                prop_assert!(!after.is_held());
                prop_assert_eq!(after.lease_transitions, record.lease_transitions);
            }
        }

        /// `yield` over any Lease ends without a panic: nothing written when "pod-b" already holds it or
        /// when the Lease has a strategy (coordinated election), otherwise preferredHolder "pod-b" with a
        /// strategy.
        #[test]
        fn yield_handles_any_lease(record in arbitrary_record()) {
            let store = MemoryLeaseStore::new();
            store.put(record.clone());
            let asked = paused().block_on(crate::preferred::ask(&store.lock("yield"), "pod-b"));
            let after = store.lease().unwrap().record;
            if record.holder_identity == "pod-b" {
                prop_assert_eq!(asked.ok(), Some(crate::preferred::Asked::AlreadyHeld));
                prop_assert_eq!(after, record);
            } else if let Some(strategy) = record.strategy.clone() {
                prop_assert_eq!(asked.ok(), Some(crate::preferred::Asked::Coordinated { strategy }));
                prop_assert_eq!(after, record);
            } else {
                let set = matches!(asked, Ok(crate::preferred::Asked::Set { .. }));
                prop_assert!(set, "not set: {:?}", asked);
                prop_assert_eq!(after.preferred_holder.as_deref(), Some("pod-b"));
                prop_assert!(after.strategy.is_some());
            }
        }
    }
}
