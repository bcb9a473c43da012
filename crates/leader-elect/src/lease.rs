//! `leader-elect status` and `leader-elect release`.

use clap::ValueEnum;
use leaderelection::{KubeLeaseLock, LeaseLock, LockError};
use leaderelection_controller::settings::Environment;
use serde_json::json;

use crate::Failure;
use crate::client::{ServerArgs, namespace, preflight};

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
    /// The Lease's namespace (default: POD_NAMESPACE, the service-account namespace, "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

/// `leader-elect release`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// The Lease's name.
    #[arg(long)]
    lease_name: String,
    /// The Lease's namespace (default: POD_NAMESPACE, the service-account namespace, "default").
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The identity that holds the Lease; the release is refused if another holds it.
    #[arg(long)]
    identity: String,
    #[command(flatten)]
    server: ServerArgs,
}

async fn open(
    lease_name: &str,
    ns: Option<&str>,
    server: &ServerArgs,
) -> Result<KubeLeaseLock, Failure> {
    if let Some(rule) = leaderelection::Config::new("x", lease_name, "default")
        .validate()
        .err()
    {
        return Err(Failure::Usage(rule.into()));
    }
    let ns = namespace(ns, &Environment::from_process());
    let lock = KubeLeaseLock::new(server.client().await?, &ns, lease_name);
    preflight(&lock, server).await?;
    Ok(lock)
}

pub(crate) async fn status(args: StatusArgs) -> Result<(), Failure> {
    let lock = open(&args.lease_name, args.namespace.as_deref(), &args.server).await?;
    let observed = lock
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("reading lease {}: {e}", lock.describe()))?
        .ok_or_else(|| anyhow::anyhow!("lease {} not found", lock.describe()))?;
    let r = &observed.record;
    let now = jiff::Timestamp::now();
    let expires = r
        .renew_time
        .map(|t| t + jiff::SignedDuration::from_secs(i64::from(r.lease_duration_seconds)));
    // A released Lease (no holder) is free now, whatever its timings say.
    let expired = !r.is_held() || expires.is_none_or(|e| e <= now);
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "lease": lock.describe(),
                "holder": r.holder_identity,
                "held": r.is_held(),
                "term": r.lease_transitions,
                "acquire_time": r.acquire_time.map(|t| t.to_string()),
                "renew_time": r.renew_time.map(|t| t.to_string()),
                "lease_duration_seconds": r.lease_duration_seconds,
                "expired": expired,
                "resource_version": observed.resource_version,
            })
        ),
        Output::Text => {
            let ago = |t: Option<jiff::Timestamp>| match t {
                Some(t) => format!("{t} ({} ago)", human(now.duration_since(t))),
                None => "-".into(),
            };
            let holder = if r.is_held() {
                r.holder_identity.as_str()
            } else {
                "<none> (released)"
            };
            println!("Lease:     {}", lock.describe());
            println!("Holder:    {holder}");
            println!("Term:      {} (leaseTransitions)", r.lease_transitions);
            println!("Acquired:  {}", ago(r.acquire_time));
            println!("Renewed:   {}", ago(r.renew_time));
            println!("Duration:  {}s", r.lease_duration_seconds);
            match expires {
                Some(e) if !expired => println!(
                    "Expired:   no (expires in {}, by this machine's clock)",
                    human(e.duration_since(now))
                ),
                _ if !r.is_held() => println!("Expired:   yes (released)"),
                _ => println!("Expired:   yes (by this machine's clock)"),
            }
        }
    }
    Ok(())
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
    let fresh = lock
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("reading lease {}: {e}", lock.describe()))?
        .ok_or_else(|| anyhow::anyhow!("lease {} not found", lock.describe()))?;
    if fresh.record.holder_identity != args.identity {
        let holder = if fresh.record.is_held() {
            fresh.record.holder_identity.as_str()
        } else {
            "nobody"
        };
        return Err(Failure::Runtime(anyhow::anyhow!(
            "lease {} is held by {holder}, not {}: refusing to release",
            lock.describe(),
            args.identity
        )));
    }
    let released = fresh.record.released(jiff::Timestamp::now());
    match lock.update(&released, &fresh.resource_version).await {
        Ok(_) => {
            println!(
                "released {} (term {})",
                lock.describe(),
                released.lease_transitions
            );
            Ok(())
        }
        Err(LockError::Conflict) => Err(Failure::Runtime(anyhow::anyhow!(
            "lease {} changed while releasing (renewed or taken); not released",
            lock.describe()
        ))),
        Err(err) => Err(Failure::Runtime(anyhow::anyhow!(
            "releasing {}: {err}",
            lock.describe()
        ))),
    }
}
