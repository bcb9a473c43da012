//! A candidate over kube-leader-election for `leader-elect-lab peers`: polls `try_acquire_or_renew` every
//! retry period (the crate has no task of its own: its caller polls), prints `started leading` on stdout
//! when it acquires the Lease and `stopped leading` when it loses it, and on SIGTERM steps down (holder
//! `""`, `leaseDurationSeconds: 1`) if it leads, then exits.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::signal::unix::{SignalKind, signal};

/// A kube-leader-election candidate.
#[derive(Debug, Parser)]
struct Args {
    /// The kubeconfig naming the API server (and its CA).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This candidate's holderIdentity.
    #[arg(long)]
    identity: String,
    #[arg(long)]
    lease_name: String,
    #[arg(long)]
    namespace: String,
    /// leaseDurationSeconds (the crate's `lease_ttl`).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Milliseconds between two `try_acquire_or_renew` calls (client-go's RetryPeriod, 2 s).
    #[arg(long, default_value_t = 2000)]
    retry_period_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let lock = LeaseLock::new(
        client,
        &args.namespace,
        LeaseLockParams {
            lease_name: args.lease_name.clone(),
            holder_id: args.identity.clone(),
            lease_ttl: Duration::from_secs(args.lease_duration_seconds),
        },
    );
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut ticks = tokio::time::interval(Duration::from_millis(args.retry_period_ms));
    let mut leading = false;
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = ticks.tick() => match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) if !leading => {
                    leading = true;
                    println!("started leading");
                }
                Ok(LeaseLockResult::NotAcquired(_)) if leading => {
                    leading = false;
                    println!("stopped leading");
                }
                Ok(_) => {}
                Err(err) => eprintln!("try_acquire_or_renew: {err}"),
            },
        }
    }
    if leading {
        lock.step_down().await.context("step_down")?;
    }
    Ok(())
}
