//! A candidate over kubert's `lease` module for `leader-elect-lab peers`: creates the Lease if it is
//! missing (kubert requires it to exist, as linkerd2 creates its own), then `LeaseManager::spawn`;
//! `started leading` on stdout when the published claim becomes ours, `stopped leading` when it stops
//! being ours; on SIGTERM it drops the receiver, which makes the task vacate the Lease, and waits for it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube_client::api::{ObjectMeta, PostParams};
use kubert::lease::{ClaimParams, LeaseManager};
use tokio::signal::unix::{SignalKind, signal};

/// A kubert candidate.
#[derive(Debug, Parser)]
struct Args {
    /// The kubeconfig naming the API server (and its CA).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This candidate's holderIdentity (kubert's claimant).
    #[arg(long)]
    identity: String,
    #[arg(long)]
    lease_name: String,
    #[arg(long)]
    namespace: String,
    /// leaseDurationSeconds (`ClaimParams::lease_duration`; `renew_grace_period` stays at its default,
    /// 1 s).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kubeconfig = kube_client::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config =
        kube_client::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube_client::Client::try_from(config)?;
    let api = kube_client::Api::<Lease>::namespaced(client, &args.namespace);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(args.lease_name.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(_) => {}
        Err(kube_client::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(err).context("creating the Lease"),
    }
    let manager = LeaseManager::init(api, &args.lease_name)
        .await
        .context("LeaseManager::init")?;
    let params = ClaimParams {
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        ..ClaimParams::default()
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let (mut claims, task) = manager
        .spawn(&args.identity, params)
        .await
        .context("LeaseManager::spawn")?;
    let mut leading = false;
    loop {
        let ours = claims.borrow_and_update().is_current_for(&args.identity);
        if ours != leading {
            leading = ours;
            println!(
                "{}",
                if ours {
                    "started leading"
                } else {
                    "stopped leading"
                }
            );
        }
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            changed = claims.changed() => if changed.is_err() { break },
        }
    }
    drop(claims);
    task.await?.context("the lease task")?;
    Ok(())
}
