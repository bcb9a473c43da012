//! `leader-elect yield`: asks the Lease's holder to hand it to another candidate, by setting
//! `spec.preferredHolder` (KEP-4355), and waits one lease duration for that candidate to take over.

use std::time::Duration;

use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, OLDEST_EMULATION_VERSION};
use tokio::time::{Instant, timeout};

use crate::client::ServerArgs;
use crate::failure::Failure;
use crate::lease::{
    Candidates, REQUEST_TIMEOUT, WRITE_ATTEMPTS, candidates, lease_duration, open_in, read,
};

const YIELD_HELP: &str = "\
What happens next:
  The holder (leader-elect run, or any program built on the leaderelection crate) sees preferredHolder
  through the watch on its own Lease, stops its work as on a graceful stop (SIGTERM, grace period) while it
  keeps renewing, then releases the Lease with preferredHolder kept. The preferred candidate, watching,
  takes it at once. yield waits up to one lease duration (the Lease's leaseDurationSeconds) for it:
  - it took over: yield says so (exit 0);
  - it did not (not running, or not a candidate of this Lease): yield clears preferredHolder if it is
    still set, says who leads now, and exits 1. The holder that released the Lease for it takes it back
    after the released record's duration (1 s), before the other candidates (they wait one lease duration
    for it): its work is interrupted for that long and restarts in a new term, but leadership does not
    pass to whoever is fastest.

  Kubernetes accepts preferredHolder only on a Lease whose spec.strategy is set, so yield sets strategy
  OldestEmulationVersion on a Lease that has none; the new holder's first write clears both.
  Under coordinated leader election (leader-elect run --coordinated: the Lease has a spec.strategy of its
  own, or LeaseCandidates name it) yield refuses (exit 1) and changes nothing: kube-apiserver's election
  controller chooses the holder, and would give the Lease back to its own choice.

  A client-go holder does not release: it stops renewing only under coordinated election, so yield
  ends with exit 1 and preferredHolder cleared.";

/// `leader-elect yield`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = YIELD_HELP)]
pub(crate) struct YieldArgs {
    /// The Lease's name.
    #[arg(long)]
    lease_name: String,
    /// The Lease's namespace (default: POD_NAMESPACE, the kubeconfig context's, the service-account
    /// namespace, "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The identity of the candidate to hand the Lease to (spec.preferredHolder), e.g. a pod's name.
    #[arg(long, value_name = "IDENTITY", value_parser = non_empty)]
    to: String,
    #[command(flatten)]
    server: ServerArgs,
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("the identity to yield to must not be empty".into());
    }
    Ok(value.to_owned())
}

pub(crate) async fn yield_lease(args: YieldArgs) -> Result<(), Failure> {
    let (lock, client, ns) =
        open_in(&args.lease_name, args.namespace.as_deref(), &args.server).await?;
    let lease = lock.describe();
    let to = args.to.as_str();
    if let Candidates::Listed(list) = candidates(&client, &ns, &args.lease_name).await
        && !list.is_empty()
    {
        let names: Vec<&str> = list
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        return Err(coordinated(
            &lease,
            &format!("LeaseCandidates {}", names.join(", ")),
        ));
    }
    let (holder, window) = match ask(&lock, to).await? {
        Asked::AlreadyHeld => {
            println!("lease {lease} is already held by \"{to}\": nothing to do");
            return Ok(());
        }
        Asked::Coordinated { strategy } => {
            return Err(coordinated(&lease, &format!("spec.strategy {strategy}")));
        }
        Asked::Set { holder, window } => (holder, window),
    };
    if holder.is_empty() {
        eprintln!(
            "lease {lease} is released; \"{to}\" may take it first (preferredHolder set); waiting up to {} s \
             (one lease duration) for it...",
            window.as_secs()
        );
    } else {
        eprintln!(
            "asked \"{holder}\" to hand lease {lease} to \"{to}\" (preferredHolder set); waiting up to {} s \
             (one lease duration) for \"{to}\" to take over...",
            window.as_secs()
        );
    }
    match await_holder(&lock, to, window).await? {
        Some(term) => {
            println!("\"{to}\" leads lease {lease} (term {term})");
            Ok(())
        }
        None => {
            let cleared = withdraw(&lock, to).await?;
            let now = match read(&lock).await? {
                Some(now) if now.record.is_held() => format!(
                    "\"{}\" leads (term {})",
                    now.record.holder_identity, now.record.lease_transitions
                ),
                Some(_) => {
                    "nobody holds it now (released; the candidate that released it takes it \
                            back first)"
                        .to_owned()
                }
                None => "the Lease was deleted".to_owned(),
            };
            let cleared = if cleared {
                "; preferredHolder cleared"
            } else {
                ""
            };
            Err(Failure::Runtime(anyhow::anyhow!(
                "\"{to}\" did not take over lease {lease} within {} s (one lease duration): is it running, as a \
                 candidate of this Lease? {now}{cleared}",
                window.as_secs()
            )))
        }
    }
}

/// The refusal under coordinated leader election, `because` naming what shows it.
fn coordinated(lease: &str, because: &str) -> Failure {
    Failure::Runtime(anyhow::anyhow!(
        "lease {lease} is under coordinated leader election ({because}): kube-apiserver's election \
         controller chooses the holder (lowest emulation version, then binary version, then the oldest \
         candidate) and would give the Lease back to its choice; not changed"
    ))
}

/// How often [`await_holder`] reads the Lease.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reads the Lease every [`POLL_INTERVAL`] until `to` holds it (its term) or `window` has passed
/// (`None`).
async fn await_holder(
    lock: &dyn LeaseLock,
    to: &str,
    window: Duration,
) -> Result<Option<i32>, Failure> {
    let deadline = Instant::now() + window;
    loop {
        if let Some(now) = read(lock).await?
            && now.record.is_held()
            && now.record.holder_identity == to
        {
            return Ok(Some(now.record.lease_transitions));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL_INTERVAL)).await;
    }
}

/// Clears `preferredHolder: to` (and the strategy `yield` set with it) if the Lease still has it, with a
/// PUT guarded by the resourceVersion read, so that `to` cannot take the Lease later, when nobody waits
/// for it. Whether it cleared it.
async fn withdraw(lock: &dyn LeaseLock, to: &str) -> Result<bool, Failure> {
    let lease = lock.describe();
    for _ in 0..WRITE_ATTEMPTS {
        let Some(read) = read(lock).await? else {
            return Ok(false);
        };
        if read.record.preferred_holder.as_deref() != Some(to) {
            return Ok(false);
        }
        let cleared = LeaderElectionRecord {
            preferred_holder: None,
            strategy: None,
            ..read.record.clone()
        };
        match put(lock, &cleared, &read.resource_version, "clearing").await? {
            Put::Written => return Ok(true),
            // A renewal or a release since the read: read again.
            Put::Conflict => {}
            Put::NotFound => return Ok(false),
        }
    }
    Err(anyhow::anyhow!(
        "lease {lease} was written {WRITE_ATTEMPTS} times while clearing preferredHolder; it may still be set"
    )
    .into())
}

/// What [`ask`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `to` holds the Lease already: nothing written.
    AlreadyHeld,
    /// The Lease has a `spec.strategy`: coordinated leader election, where the election controller
    /// chooses the holder. Nothing written.
    Coordinated { strategy: String },
    /// `preferredHolder` was written on the Lease held by `holder` (`""`: released), whose
    /// leaseDurationSeconds (at least 1 s) is `window`.
    Set { holder: String, window: Duration },
}

/// Sets `preferredHolder: to` and strategy `OldestEmulationVersion` on a Lease without a strategy, with a
/// PUT guarded by the resourceVersion read; a write in between (a renewal) makes it read and ask again, at
/// most [`WRITE_ATTEMPTS`] times. A Lease with a strategy is left as it is ([`Asked::Coordinated`]).
pub(crate) async fn ask(lock: &dyn LeaseLock, to: &str) -> Result<Asked, Failure> {
    let lease = lock.describe();
    for _ in 0..WRITE_ATTEMPTS {
        let read = read(lock)
            .await?
            .ok_or_else(|| anyhow::anyhow!("lease {lease} not found: nothing to yield"))?;
        let record = &read.record;
        if record.is_held() && record.holder_identity == to {
            return Ok(Asked::AlreadyHeld);
        }
        if let Some(strategy) = &record.strategy {
            return Ok(Asked::Coordinated {
                strategy: strategy.clone(),
            });
        }
        let asked = LeaderElectionRecord {
            preferred_holder: Some(to.to_owned()),
            // Kubernetes' Lease validation: preferredHolder only with a strategy.
            strategy: Some(OLDEST_EMULATION_VERSION.to_owned()),
            ..record.clone()
        };
        match put(lock, &asked, &read.resource_version, "setting").await? {
            Put::Written => {
                return Ok(Asked::Set {
                    holder: record.holder_identity.clone(),
                    window: lease_duration(record),
                });
            }
            // A renewal (or another write) since the read: read again and ask again.
            Put::Conflict => {}
            Put::NotFound => {
                return Err(anyhow::anyhow!(
                    "lease {lease} was deleted meanwhile: nothing to yield"
                )
                .into());
            }
        }
    }
    Err(anyhow::anyhow!(
        "lease {lease} was written {WRITE_ATTEMPTS} times while setting preferredHolder; not set"
    )
    .into())
}

/// What a PUT guarded by a resourceVersion did.
enum Put {
    Written,
    /// Another write came first (409 Conflict).
    Conflict,
    /// The Lease is gone.
    NotFound,
}

/// Writes `record` guarded by `version`, bounded by [`REQUEST_TIMEOUT`]; `doing` ("setting", "clearing")
/// preferredHolder names the write in errors.
async fn put(
    lock: &dyn LeaseLock,
    record: &LeaderElectionRecord,
    version: &str,
    doing: &str,
) -> Result<Put, Failure> {
    let lease = lock.describe();
    match timeout(REQUEST_TIMEOUT, lock.update(record, version)).await {
        Ok(Ok(_)) => Ok(Put::Written),
        Ok(Err(LockError::Conflict)) => Ok(Put::Conflict),
        Ok(Err(LockError::NotFound)) => Ok(Put::NotFound),
        Ok(Err(err)) => Err(anyhow::anyhow!("{doing} preferredHolder on {lease}: {err}").into()),
        Err(_) => Err(anyhow::anyhow!(
            "{doing} preferredHolder on {lease}: no answer within {} s; it may or may not be written \
             (see leader-elect status)",
            REQUEST_TIMEOUT.as_secs()
        )
        .into()),
    }
}
