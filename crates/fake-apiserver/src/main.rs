//! `fake-apiserver`: the fake Kubernetes API server, until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after SIGINT or SIGTERM; 1 when it cannot listen; 2 on a usage error (clap's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fake_apiserver::{ElectionTimings, FakeApiServer};
use tokio_util::sync::CancellationToken;

/// An in-memory Kubernetes API server (Leases, custom resources, discovery, watches) with fault injection
/// under `/fake/`. Plain HTTP (or TLS with `--tls`), no authentication: keep it on loopback.
#[derive(Debug, Parser)]
#[command(name = "fake-apiserver", version, about)]
struct ApiserverArgs {
    /// Address to listen on (no authentication: keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Serve TLS, as kube-apiserver does, with a CA and serving certificate generated at start; the CA is
    /// in the kubeconfig written to --kubeconfig.
    #[arg(long)]
    tls: bool,
    /// Write a kubeconfig for the server (with the CA under --tls) to this file, for `KUBECONFIG=FILE
    /// kubectl ...` or `leader-elect run` without --server. Default with --tls: `fake-apiserver.kubeconfig`
    /// in the current directory.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Run kube-apiserver's coordinated leader election controller (KEP-4355, `CoordinatedLeaderElection`):
    /// it elects among the `coordination.k8s.io/v1beta1` LeaseCandidates of each Lease by
    /// OldestEmulationVersion, with a 5s election window and 5s leaseDurationSeconds.
    #[arg(long)]
    coordinated_election: bool,
}

fn main() -> ExitCode {
    let args = ApiserverArgs::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fake-apiserver: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: ApiserverArgs) -> anyhow::Result<()> {
    let mut builder = FakeApiServer::builder().listen(args.listen).tls(args.tls);
    if args.coordinated_election {
        builder = builder.coordinated_election(ElectionTimings::default());
    }
    let server = builder
        .start()
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let url = server.url();
    println!("fake API server listening on {url}");
    let kubeconfig = args
        .kubeconfig
        .or_else(|| args.tls.then(|| PathBuf::from("fake-apiserver.kubeconfig")));
    match kubeconfig {
        Some(path) => {
            std::fs::write(&path, server.kubeconfig(server.default_listener()))
                .with_context(|| format!("writing --kubeconfig {}", path.display()))?;
            let path = path.display();
            println!("kubeconfig written to {path}");
            println!("try: KUBECONFIG={path} kubectl get leases -A");
            println!("     KUBECONFIG={path} leader-elect run --lease-name demo -- sleep 3600");
        }
        None => {
            println!("try: kubectl --server {url} get leases -A");
            println!("     leader-elect run --server {url} --lease-name demo -- sleep 3600");
        }
    }
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
