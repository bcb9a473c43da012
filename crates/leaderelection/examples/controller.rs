//! A kube-rs controller that does its reconciling only while it leads.
//!
//! Run it against a cluster (or `fake-apiserver`) with `POD_NAME` set:
//! `POD_NAME=pod-a cargo run -p leaderelection --example controller`.

use std::time::Duration;

use leaderelection::{Callbacks, Config, Elector, KubeLeaseLock};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let identity = std::env::var("POD_NAME")?;
    // The kubeconfig or the in-cluster service account, with kube's own retries off (the elector's).
    let client = KubeLeaseLock::client(kube::Config::infer().await?)?;
    let config = Config::new(identity, "example-controller", "default");
    let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);

    let callbacks = Callbacks::new()
        .on_started_leading(|term, token| async move {
            println!("leading, term {}", term.transitions);
            // Leader-only work: stop when the token fires. Stamp writes with `term.transitions` so that
            // a stale leader's writes can be rejected downstream.
            while !token.is_cancelled() {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => println!("reconciling"),
                }
            }
            println!("stopped reconciling");
            Ok(())
        })
        .on_stopped_leading(|reason| println!("stopped leading: {reason}"))
        .on_new_leader(|identity| println!("{identity} leads"));

    let elector = Elector::new(config, lock, callbacks)?;
    let shutdown = CancellationToken::new();
    let ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    // Returns after the work has stopped and the Lease was released.
    elector.run(shutdown).await?;
    Ok(())
}
