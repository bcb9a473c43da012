//! `leader-elect apiserver`: the fake Kubernetes API server, until SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use fake_apiserver::FakeApiServer;
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// `leader-elect apiserver`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiserverArgs {
    /// Address to listen on (plain HTTP; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
}

pub(crate) async fn run(args: ApiserverArgs) -> Result<(), Failure> {
    let server = FakeApiServer::builder()
        .listen(args.listen)
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
