//! `leader-elect apiserver`: the fake Kubernetes API server, until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use fake_apiserver::{ElectionTimings, FakeApiServer};
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// `leader-elect apiserver`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiserverArgs {
    /// Address to listen on (plain HTTP; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Run kube-apiserver's coordinated leader election controller (KEP-4355, `CoordinatedLeaderElection`):
    /// it elects among the `coordination.k8s.io/v1beta1` LeaseCandidates of each Lease by
    /// OldestEmulationVersion, with a 5s election window and 5s leaseDurationSeconds.
    #[arg(long)]
    coordinated_election: bool,
}

pub(crate) async fn run(args: ApiserverArgs) -> Result<(), Failure> {
    let mut builder = FakeApiServer::builder().listen(args.listen);
    if args.coordinated_election {
        builder = builder.coordinated_election(ElectionTimings::default());
    }
    let server = builder
        .start()
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let url = server.url();
    println!("fake API server listening on {url}");
    println!("try: kubectl --server {url} get leases -A");
    println!("     leader-elect run --server {url} --lease-name demo -- sleep 3600");
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal as unix_signal};
        if let (Ok(mut term), Ok(mut int)) = (
            unix_signal(SignalKind::terminate()),
            unix_signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        signal.cancel();
    });
    server.run_until(stop).await;
    Ok(())
}
