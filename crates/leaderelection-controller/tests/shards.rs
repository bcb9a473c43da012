//! Per-shard work through the runtime: a `ShardSet` given to `Builder::shards` runs beside the election
//! (real HTTP against the fake API server), and stops with the runtime: each shard's work stopped, then its
//! Lease released.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use leaderelection::{Config, MemoryLeaseStore, ShardConfig, ShardSet};
use leaderelection_controller::Runtime;
use tokio_util::sync::CancellationToken;

/// One replica runs every shard's work while the runtime runs; after shutdown no work runs and every
/// shard's Lease is released (empty holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_per_shard_work_and_releases_the_shards_on_shutdown() {
    let server = FakeApiServer::start().await.unwrap();
    let client = leaderelection::KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let timings = |c: Config| {
        c.with_lease_duration(Duration::from_secs(2))
            .with_renew_deadline(Duration::from_secs(1))
            .with_retry_period(Duration::from_millis(250))
    };
    let working: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let set = ShardSet::new(
        ShardConfig::new(timings(Config::new("a", "work", "default")), 4),
        client.clone(),
        {
            let working = working.clone();
            move |shard, _term, token| {
                let working = working.clone();
                async move {
                    working.lock().unwrap().insert(shard);
                    token.cancelled().await;
                    working.lock().unwrap().remove(&shard);
                    Ok(())
                }
            }
        },
    )
    .unwrap();
    let mut state = set.subscribe();
    let store = MemoryLeaseStore::new();
    let runtime = Runtime::builder_with_lock(
        store.lock("a"),
        timings(Config::new("a", "runtime", "default")),
    )
    .shards(set)
    .build()
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runtime.run(shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.held.len() == 4),
    )
    .await
    .expect("the replica holds the 4 shards within 10 s")
    .unwrap();
    // A shard's work starts in its own task after its term is published: wait for the four.
    tokio::time::timeout(Duration::from_secs(10), async {
        while *working.lock().unwrap() != BTreeSet::from([0, 1, 2, 3]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every shard's work runs within 10 s");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the runtime stops within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        working.lock().unwrap().is_empty(),
        "every shard's work stopped"
    );
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "default");
    for shard in 0..4 {
        let lease = leases.get(&format!("work-{shard}")).await.unwrap();
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        assert_eq!(holder, "", "work-{shard} released");
    }
    server.shutdown().await;
}
