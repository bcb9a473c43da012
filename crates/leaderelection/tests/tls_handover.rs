//! Handovers over TLS against the fake API server (`Builder::tls`), with the elector's own client
//! (`KubeLeaseLock::client`): the takeover write is not held by Nagle's algorithm (issue 22).

use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use leaderelection::{Callbacks, Config, Elector, ElectorHandle, KubeLeaseLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

/// A client as a process given the fake's kubeconfig makes it (`KUBECONFIG`, `Config::infer`).
async fn client(server: &FakeApiServer) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig(server.default_listener())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    KubeLeaseLock::client(config).unwrap()
}

struct Running {
    handle: ElectorHandle,
    stop: CancellationToken,
    run: JoinHandle<Result<(), leaderelection::Error>>,
}

/// A candidate on Lease `default/handover` with its own client (its own connections). Timings long enough
/// that nothing but the release moves the Lease during a handover.
async fn candidate(server: &FakeApiServer, id: &str) -> Running {
    let config = Config::new(id, "handover", "default")
        .with_lease_duration(Duration::from_secs(300))
        .with_renew_deadline(Duration::from_secs(200))
        .with_retry_period(Duration::from_secs(100));
    let lock = KubeLeaseLock::new(client(server).await, "default", "handover");
    let elector = Elector::new(config, lock, Callbacks::new()).unwrap();
    let stop = CancellationToken::new();
    let handle = elector.handle();
    let run = tokio::spawn(elector.run(stop.clone()));
    Running { handle, stop, run }
}

/// Rule 5 (release on shutdown) and issue 22: the follower's only connection is busy with its watch, so its
/// takeover write opens a new TLS connection, and a request written after the client's Finished waits for
/// the server's delayed ACK (40 ms on Linux) unless the client sets `TCP_NODELAY` (kube's own client does
/// not). On loopback a handover is a few milliseconds; Nagle's algorithm adds about 40 ms to every one.
/// Load only adds time, so the fastest of several handovers is compared with the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_over_tls_is_not_held_by_nagles_algorithm() {
    const HANDOVERS: usize = 6;
    const BOUND: Duration = Duration::from_millis(25);
    let server = FakeApiServer::builder().tls(true).start().await.unwrap();
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let mut leader = candidate(&server, "candidate-0").await;
    let mut state = leader.handle.subscribe();
    bounded(state.wait_for(|s| s.is_leader())).await.unwrap();
    let mut handovers = Vec::new();
    for i in 1..=HANDOVERS {
        let follower = candidate(&server, &format!("candidate-{i}")).await;
        let mut follower_state = follower.handle.subscribe();
        let holder = format!("candidate-{}", i - 1);
        bounded(follower_state.wait_for(|s| s.leader.as_deref() == Some(holder.as_str())))
            .await
            .unwrap();
        let released = Instant::now();
        leader.stop.cancel();
        bounded(follower_state.wait_for(|s| s.is_leader()))
            .await
            .unwrap();
        handovers.push(released.elapsed());
        bounded(leader.run).await.unwrap().unwrap();
        leader = follower;
    }
    leader.stop.cancel();
    bounded(leader.run).await.unwrap().unwrap();
    server.shutdown().await;
    let fastest = handovers.iter().min().copied().unwrap();
    assert!(
        fastest < BOUND,
        "the fastest of {HANDOVERS} handovers over TLS took {fastest:?} (all: {handovers:?}); Nagle's \
         algorithm with the server's delayed ACK adds about 40 ms to each"
    );
}
