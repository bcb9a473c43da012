//! `leader-elect yield`: asks the Lease's holder to hand it to another candidate, by setting
//! `spec.preferredHolder` (KEP-4355).

use leaderelection::{LeaderElectionRecord, LeaseLock, LockError, OLDEST_EMULATION_VERSION};
use tokio::time::timeout;

use crate::client::ServerArgs;
use crate::failure::Failure;
use crate::lease::{REQUEST_TIMEOUT, WRITE_ATTEMPTS, open, read};

const YIELD_HELP: &str = "\
What happens next:
  The holder (leader-elect run, or any program built on the leaderelection crate) sees preferredHolder
  through the watch on its own Lease, stops its work as on a graceful stop (SIGTERM, grace period) while it
  keeps renewing, then releases the Lease with preferredHolder kept. The preferred candidate, watching,
  takes it at once; the other candidates leave it to that one for the released record's duration (1 s),
  after which anyone may take it (a preferred candidate that is not running never strands the Lease).

  Kubernetes accepts preferredHolder only on a Lease whose spec.strategy is set, so yield sets strategy
  OldestEmulationVersion on a Lease that has none; the new holder's first write clears both. Under
  coordinated leader election (leader-elect run --coordinated) kube-apiserver's election controller
  chooses the holder and may set preferredHolder back to its own choice.

  A client-go holder does not release: it stops renewing, and the Lease changes hands once it expires
  (one lease duration).";

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
    let lock = open(&args.lease_name, args.namespace.as_deref(), &args.server).await?;
    let lease = lock.describe();
    let to = args.to.as_str();
    match ask(&lock, to).await? {
        Asked::AlreadyHeld => println!("lease {lease} is already held by \"{to}\": nothing to do"),
        Asked::Set { holder } if holder.is_empty() => {
            println!("lease {lease} is released; \"{to}\" may take it first (preferredHolder set)");
        }
        Asked::Set { holder } => {
            println!("asked \"{holder}\" to hand lease {lease} to \"{to}\" (preferredHolder set)")
        }
    }
    Ok(())
}

/// What [`ask`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `to` holds the Lease already: nothing written.
    AlreadyHeld,
    /// `preferredHolder` was written on the Lease held by `holder` (`""`: released).
    Set { holder: String },
}

/// Sets `preferredHolder: to` (and a strategy where none) on the Lease, with a PUT guarded by the
/// resourceVersion read; a write in between (a renewal) makes it read and ask again, at most
/// [`WRITE_ATTEMPTS`] times.
pub(crate) async fn ask(lock: &dyn LeaseLock, to: &str) -> Result<Asked, Failure> {
    let lease = lock.describe();
    for _ in 0..WRITE_ATTEMPTS {
        let read = read(lock)
            .await?
            .ok_or_else(|| anyhow::anyhow!("lease {lease} not found: nothing to yield"))?;
        let record = &read.record;
        if record.holder_identity == to {
            return Ok(Asked::AlreadyHeld);
        }
        let asked = LeaderElectionRecord {
            preferred_holder: Some(to.to_owned()),
            // Kubernetes' Lease validation: preferredHolder only with a strategy.
            strategy: record
                .strategy
                .clone()
                .or_else(|| Some(OLDEST_EMULATION_VERSION.to_owned())),
            ..record.clone()
        };
        match timeout(REQUEST_TIMEOUT, lock.update(&asked, &read.resource_version)).await {
            Ok(Ok(_)) => {
                return Ok(Asked::Set {
                    holder: record.holder_identity.clone(),
                });
            }
            // A renewal (or another write) since the read: read again and ask again.
            Ok(Err(LockError::Conflict)) => {}
            Ok(Err(LockError::NotFound)) => {
                return Err(anyhow::anyhow!(
                    "lease {lease} was deleted meanwhile: nothing to yield"
                )
                .into());
            }
            Ok(Err(err)) => {
                return Err(anyhow::anyhow!("setting preferredHolder on {lease}: {err}").into());
            }
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "setting preferredHolder on {lease}: no answer within {} s; it may or may not be set \
                     (see leader-elect status)",
                    REQUEST_TIMEOUT.as_secs()
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
