//! The elector's own client (`KubeLeaseLock::client`) over TLS against the fake API server (`Builder::tls`),
//! issue 22: a request on a new connection is not held by Nagle's algorithm, a watching candidate keeps a
//! spare connection so that its takeover write opens none, and handovers stay far under the server's
//! delayed-ACK timer.

use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Listener};
use k8s_openapi::api::coordination::v1::Lease;
use leaderelection::{Callbacks, Config, Elector, ElectorHandle, KubeLeaseLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

/// Load only adds time: the fastest of several tries is compared with a bound far under the delayed-ACK
/// timer (40 ms on Linux) that Nagle's algorithm would add to every one.
const TRIES: usize = 6;
const BOUND: Duration = Duration::from_millis(25);

/// A client of `listener` as a process given the fake's kubeconfig makes it (`KUBECONFIG`,
/// `Config::infer`).
async fn client(server: &FakeApiServer, listener: &Listener) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig(listener)).unwrap();
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

/// A candidate on Lease `default/handover` with its own client (its own connections) on `listener`. Timings
/// long enough that nothing but the release moves the Lease during a handover.
async fn candidate(server: &FakeApiServer, listener: &Listener, id: &str) -> Running {
    let config = Config::new(id, "handover", "default")
        .with_lease_duration(Duration::from_secs(300))
        .with_renew_deadline(Duration::from_secs(200))
        .with_retry_period(Duration::from_secs(100));
    let lock = KubeLeaseLock::new(client(server, listener).await, "default", "handover");
    let elector = Elector::new(config, lock, Callbacks::new()).unwrap();
    let stop = CancellationToken::new();
    let handle = elector.handle();
    let run = tokio::spawn(elector.run(stop.clone()));
    Running { handle, stop, run }
}

/// A request written after the client's TLS Finished waits for the server's delayed ACK unless the client
/// sets `TCP_NODELAY` (kube's own client does not): kube-apiserver (Go's crypto/tls), like the fake, sends
/// nothing that would acknowledge the Finished sooner. Every first request of a new connection pays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_on_a_new_tls_connection_is_not_held_by_nagles_algorithm() {
    let server = FakeApiServer::builder().tls(true).start().await.unwrap();
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let mut firsts = Vec::new();
    for _ in 0..TRIES {
        let leases: kube::Api<Lease> =
            kube::Api::namespaced(client(&server, server.default_listener()).await, "default");
        let started = Instant::now();
        bounded(leases.get_opt("none")).await.unwrap();
        firsts.push(started.elapsed());
    }
    server.shutdown().await;
    let fastest = firsts.iter().min().copied().unwrap();
    assert!(
        fastest < BOUND,
        "the fastest of {TRIES} first requests (TCP and TLS handshake, GET) took {fastest:?} (all: \
         {firsts:?}); Nagle's algorithm with the server's delayed ACK adds about 40 ms to each"
    );
}

/// Waits until the watching candidate on `listener` has its spare connection: its `GET /version`, sent once
/// its watch is answered, was answered (within 60 s, else fails). Counting accepted connections is not
/// enough: when the candidate's first GET has not yet given its connection back to the pool as the watch
/// starts, the watch opens a second one and the spare is the third.
async fn spare(server: &FakeApiServer, listener: &Listener) {
    let answered = async {
        while !server.request_log().iter().any(|r| {
            r.listener == listener.id()
                && r.verb == "discovery"
                && r.resource == "/version"
                && r.code == Some(200)
        }) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), answered)
        .await
        .is_err()
    {
        panic!(
            "the watching candidate on listener {} sent no answered GET /version in 60 s: no spare beside \
             its watch",
            listener.id()
        );
    }
}

/// Over HTTP/1.1 a watch holds its connection while it streams; the follower's takeover write must not
/// wait for a new TCP and TLS handshake: its client keeps a spare connection beside the watch (one
/// `GET /version` when the watch starts), and the takeover and the renewals after it go through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_follower_takes_over_on_its_spare_connection() {
    let server = FakeApiServer::builder().tls(true).start().await.unwrap();
    let (one, two) = (
        server.add_listener().await.unwrap(),
        server.add_listener().await.unwrap(),
    );
    let leader = candidate(&server, &one, "leader").await;
    bounded(leader.handle.subscribe().wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    let follower = candidate(&server, &two, "follower").await;
    let mut state = follower.handle.subscribe();
    bounded(state.wait_for(|s| s.leader.as_deref() == Some("leader")))
        .await
        .unwrap();
    // The watch's connection and the spare.
    spare(&server, &two).await;
    let before = two.connections_accepted();
    leader.stop.cancel();
    bounded(leader.run).await.unwrap().unwrap();
    bounded(state.wait_for(|s| s.is_leader())).await.unwrap();
    // After the takeover the new leader opens its own watch (on a new connection, as the watch it had
    // ended): only the takeover's connection counts.
    let takeover = server
        .request_log()
        .into_iter()
        .find(|r| r.listener == two.id() && r.verb == "update" && r.code == Some(200))
        .expect("the takeover write is logged");
    assert!(
        takeover.connection <= before,
        "the takeover went on connection {} of the follower's listener, opened after the release ({before} \
         before it): no spare beside the watch",
        takeover.connection
    );
    follower.stop.cancel();
    bounded(follower.run).await.unwrap().unwrap();
    server.shutdown().await;
}

/// Rule 5 (release on shutdown) end to end over TLS: the leader releases, the settled follower's watch sees
/// it and takes over; on loopback a few milliseconds, far under the delayed-ACK timer that Nagle's algorithm
/// adds to a request on a new connection (without the spare connection and `TCP_NODELAY` both, every
/// handover would pay it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_over_tls_takes_milliseconds() {
    const HANDOVERS: usize = TRIES;
    let server = FakeApiServer::builder().tls(true).start().await.unwrap();
    let mut leader = candidate(&server, server.default_listener(), "candidate-0").await;
    let mut state = leader.handle.subscribe();
    bounded(state.wait_for(|s| s.is_leader())).await.unwrap();
    let mut handovers = Vec::new();
    for i in 1..=HANDOVERS {
        let listener = server.add_listener().await.unwrap();
        let follower = candidate(&server, &listener, &format!("candidate-{i}")).await;
        let mut follower_state = follower.handle.subscribe();
        let holder = format!("candidate-{}", i - 1);
        bounded(follower_state.wait_for(|s| s.leader.as_deref() == Some(holder.as_str())))
            .await
            .unwrap();
        // Settled: watching, with its spare connection.
        spare(&server, &listener).await;
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
         algorithm on a new connection adds about 40 ms to each"
    );
}
