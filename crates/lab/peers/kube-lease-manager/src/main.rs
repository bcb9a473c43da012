//! A candidate over kube-lease-manager for `leader-elect-lab peers`: `LeaseManager::watch`, `started
//! leading` on stdout when the channel says `true`, `stopped leading` when it says `false`; on SIGTERM it
//! drops the receiver, which makes the manager's task release the Lease, and waits for that task.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::signal::unix::{SignalKind, signal};

/// A kube-lease-manager candidate.
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
    /// leaseDurationSeconds (the crate's `duration`; its `grace` stays at its default, 5 s).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&args.identity)
        .with_duration(args.lease_duration_seconds)
        .build()
        .await
        .context("building the LeaseManager")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let (mut leading, task) = manager.watch().await;
    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            changed = leading.changed() => {
                if changed.is_err() {
                    break;
                }
                if *leading.borrow_and_update() {
                    println!("started leading");
                } else {
                    println!("stopped leading");
                }
            }
        }
    }
    drop(leading);
    task.await?.context("the LeaseManager's task")?;
    Ok(())
}
