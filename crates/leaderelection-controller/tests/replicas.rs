//! Integration tests: three replicas over real HTTP against the fake API server, each with a
//! supervisor, metrics and an admin server. Only the leader runs leader-only components (checked at every
//! start and stop, and by sampling), failover after the leader is cut off, every replica runs the
//! all-replica components, and the admin endpoints tell the truth while leading, following and after
//! losing leadership.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Faults, Listener};
use leaderelection::{Callbacks, Config};
use leaderelection_controller::{
    Admin, Election, ElectionHandle, LeaderContext, Metrics, Policy, Supervisor, SupervisorError,
};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(500);

/// Leader-only activity across all replicas: how many run now, the most that ever ran at once, and the
/// start/stop log.
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    max_active: AtomicUsize,
    log: Mutex<Vec<(usize, &'static str, Instant)>>,
}

struct Replica {
    component: ElectionHandle,
    listener: Listener,
    stop: CancellationToken,
    run: JoinHandle<Result<(), SupervisorError>>,
    all_replica_running: Arc<AtomicBool>,
    admin: SocketAddr,
}

async fn start_replica(server: &FakeApiServer, index: usize, activity: Arc<Activity>) -> Replica {
    let listener = server.add_listener().await.unwrap();
    let client = leaderelection::KubeLeaseLock::client_for_url(&listener.url()).unwrap();
    let all_replica_running = Arc::new(AtomicBool::new(false));
    let supervisor = Supervisor::new(Policy::default())
        .all_replica("watcher", {
            let flag = all_replica_running.clone();
            move |token| {
                let flag = flag.clone();
                async move {
                    flag.store(true, Ordering::SeqCst);
                    token.cancelled().await;
                    flag.store(false, Ordering::SeqCst);
                    Ok(())
                }
            }
        })
        .leader_only("deployer", move |LeaderContext { token, .. }| {
            let activity = activity.clone();
            async move {
                let now = activity.active.fetch_add(1, Ordering::SeqCst) + 1;
                activity.max_active.fetch_max(now, Ordering::SeqCst);
                activity
                    .log
                    .lock()
                    .unwrap()
                    .push((index, "start", Instant::now()));
                token.cancelled().await;
                activity
                    .log
                    .lock()
                    .unwrap()
                    .push((index, "stop", Instant::now()));
                activity.active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        });
    let config = Config::new(format!("replica-{index}"), "controller", "default")
        .with_lease_duration(LEASE)
        .with_renew_deadline(RENEW)
        .with_retry_period(RETRY);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, "controller");
    let lock = leaderelection::KubeLeaseLock::new(client, "default", "controller");
    let (callbacks, supervised) = supervisor.bind(Callbacks::new());
    let election = Election::builder(config, lock)
        .callbacks(callbacks)
        .observer(Arc::new(metrics.clone()))
        .build()
        .unwrap();
    let component = election.handle();
    tokio::spawn(metrics.clone().run(
        component.bus().subscribe(),
        component.subscribe(),
        CancellationToken::new(),
    ));
    let stop = CancellationToken::new();
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = socket.local_addr().unwrap();
    tokio::spawn(leaderelection_controller::admin::serve(
        socket,
        Admin::new(component.clone(), Duration::from_secs(1), registry, metrics),
        stop.clone(),
    ));
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { supervised.run(election, stop).await }
    });
    Replica {
        component,
        listener,
        stop,
        run,
        all_replica_running,
        admin,
    }
}

async fn start(server: &FakeApiServer, activity: &Arc<Activity>) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start_replica(server, i, activity.clone()).await);
    }
    replicas
}

/// The first replica other than `except` that leads, within 10 lease durations (a regression fails
/// instead of hanging).
async fn wait_for_leader(replicas: &[Replica], except: Option<usize>) -> usize {
    let bound = Instant::now() + 10 * LEASE;
    loop {
        if let Some(i) = replicas
            .iter()
            .enumerate()
            .position(|(i, r)| Some(i) != except && r.component.is_leader())
        {
            return i;
        }
        assert!(
            Instant::now() < bound,
            "no leader (other than {except:?}) within {:?}",
            10 * LEASE
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn shutdown(replicas: Vec<Replica>) {
    for r in &replicas {
        r.listener.clear_faults();
        r.stop.cancel();
    }
    for r in replicas {
        r.run.await.unwrap().unwrap();
    }
}

/// `GET path` over HTTP/1.0; (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Parses OpenMetrics text into (series, value) pairs.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metric(text: &str, series: &str) -> f64 {
    parse_metrics(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_leader_runs_leader_only_components() {
    let server = FakeApiServer::start().await.unwrap();
    let activity = Arc::new(Activity::default());
    let replicas = start(&server, &activity).await;
    let leader = wait_for_leader(&replicas, None).await;
    for _ in 0..200 {
        let leaders = replicas.iter().filter(|r| r.component.is_leader()).count();
        assert!(leaders <= 1, "{leaders} replicas lead at once");
        assert!(activity.active.load(Ordering::SeqCst) <= 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        replicas[leader].component.is_leader(),
        "the leader kept its lease"
    );
    assert_eq!(
        activity.active.load(Ordering::SeqCst),
        1,
        "the leader runs its leader-only component"
    );
    shutdown(replicas).await;
    assert_eq!(activity.max_active.load(Ordering::SeqCst), 1);
    assert_eq!(
        activity.active.load(Ordering::SeqCst),
        0,
        "stopped on shutdown"
    );
    server.shutdown().await;
}

/// Churn for more than 3 lease durations: every round, the leader is cut off the API server (a crash, as
/// far as the cluster can tell: it must stop its work by its own deadline) or stopped gracefully, while
/// two new replicas start concurrently. At every start of a leader-only component no other runs (exact,
/// from the start/stop counter), and an independent task samples `is_leader()` of every replica every
/// 5 ms: never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_leader_runs_leader_only_components_under_churn() {
    let server = FakeApiServer::start().await.unwrap();
    let activity = Arc::new(Activity::default());
    let replicas = Arc::new(Mutex::new(start(&server, &activity).await));
    let two_leaders = Arc::new(Mutex::new(Vec::new()));
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (replicas, two_leaders, stop) =
            (replicas.clone(), two_leaders.clone(), stop_sampling.clone());
        async move {
            while !stop.is_cancelled() {
                let leaders: Vec<usize> = replicas
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.component.is_leader())
                    .map(|(i, _)| i)
                    .collect();
                if leaders.len() > 1 {
                    two_leaders.lock().unwrap().push(leaders);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let started = Instant::now();
    let (mut leaders, mut cut, mut round) = (Vec::new(), Vec::new(), 0);
    while started.elapsed() < 3 * LEASE + RENEW || round < 4 {
        assert!(round < 20, "churn did not end: {:?}", started.elapsed());
        let leader = {
            let bound = Instant::now() + 10 * LEASE;
            loop {
                let found = replicas
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .position(|(i, r)| {
                        r.component.is_leader() && !r.stop.is_cancelled() && !cut.contains(&i)
                    });
                if let Some(found) = found {
                    break found;
                }
                assert!(Instant::now() < bound, "no leader within {:?}", 10 * LEASE);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        leaders.push(leader);
        {
            let replicas = replicas.lock().unwrap();
            if round % 2 == 0 {
                // Cut off for good, still running: dead to the cluster, it must stop its component by
                // its own deadline.
                replicas[leader].listener.set_faults(Faults::partition());
                cut.push(leader);
            } else {
                replicas[leader].stop.cancel();
            }
        }
        let count = replicas.lock().unwrap().len();
        let (a, b) = tokio::join!(
            start_replica(&server, count, activity.clone()),
            start_replica(&server, count + 1, activity.clone()),
        );
        replicas.lock().unwrap().extend([a, b]);
        round += 1;
    }
    stop_sampling.cancel();
    tokio::time::timeout(Duration::from_secs(10), sampler)
        .await
        .expect("the sampler did not stop")
        .unwrap();
    let replicas = Arc::into_inner(replicas).unwrap().into_inner().unwrap();
    tokio::time::timeout(3 * LEASE, shutdown(replicas))
        .await
        .expect("replicas did not shut down within 3 lease durations");
    let log = activity.log.lock().unwrap().clone();
    assert_eq!(
        activity.max_active.load(Ordering::SeqCst),
        1,
        "two leader-only components ran at once: {log:?}"
    );
    let two_leaders = two_leaders.lock().unwrap().clone();
    assert!(
        two_leaders.is_empty(),
        "is_leader() true for {two_leaders:?}"
    );
    // Every leader ran its component: one start per round at least.
    for leader in &leaders {
        assert!(
            log.iter()
                .any(|(i, what, _)| i == leader && *what == "start"),
            "leader {leader} never started its component: {log:?}"
        );
    }
    assert!(leaders.len() >= 4, "{leaders:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_run_all_replica_components() {
    let server = FakeApiServer::start().await.unwrap();
    let activity = Arc::new(Activity::default());
    let replicas = start(&server, &activity).await;
    let leader = wait_for_leader(&replicas, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, r) in replicas.iter().enumerate() {
        assert!(
            r.all_replica_running.load(Ordering::SeqCst),
            "replica {i} runs its all-replica component"
        );
        assert_eq!(r.component.is_leader(), i == leader);
        assert_eq!(
            r.component.leader().as_deref(),
            Some(format!("replica-{leader}").as_str())
        );
    }
    let flags: Vec<_> = replicas
        .iter()
        .map(|r| r.all_replica_running.clone())
        .collect();
    shutdown(replicas).await;
    assert!(
        flags.iter().all(|f| !f.load(Ordering::SeqCst)),
        "all-replica components stop on shutdown"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_leader_is_cut_off() {
    let server = FakeApiServer::start().await.unwrap();
    let activity = Arc::new(Activity::default());
    let replicas = start(&server, &activity).await;
    let old = wait_for_leader(&replicas, None).await;
    let follower = (old + 1) % 3;

    // Admin endpoints while leading and following.
    let (code, text) = get(replicas[old].admin, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "leader_election_is_leader"), 1.0);
    assert_eq!(
        metric(&text, "leader_election_master_status{name=\"controller\"}"),
        1.0
    );
    let (_, text) = get(replicas[follower].admin, "/metrics").await;
    assert_eq!(metric(&text, "leader_election_is_leader"), 0.0);
    let (code, vars) = get(replicas[old].admin, "/debug/vars").await;
    assert_eq!(code, 200);
    let vars: serde_json::Value = serde_json::from_str(&vars).unwrap();
    assert_eq!(vars["leader_election"]["is_leader"], true);
    assert_eq!(vars["leader_election"]["enabled"], true);
    assert_eq!(
        vars["leader_election"]["identity"],
        format!("replica-{old}")
    );
    assert_eq!(
        vars["leader_election"]["lease_holder"],
        format!("replica-{old}")
    );
    assert_eq!(vars["leader_election"]["transitions"], 1);
    for r in &replicas {
        assert_eq!(get(r.admin, "/healthz").await.0, 200);
        assert_eq!(get(r.admin, "/readyz").await.0, 200);
    }
    assert_eq!(get(replicas[old].admin, "/nothing-else").await.0, 404);

    // Cut the leader off the API: its requests are never answered.
    replicas[old].listener.set_faults(Faults::partition());
    let cut = Instant::now();
    let new = wait_for_leader(&replicas, Some(old)).await;
    let takeover = cut.elapsed();
    assert!(
        takeover <= LEASE + 2 * RETRY,
        "a new leader within lease_duration + 2 x retry_period; took {takeover:?}"
    );
    assert!(
        !replicas[old].component.is_leader(),
        "the cut-off leader stepped down"
    );

    // The new leader's leader-only component started only after the old one's stopped. Its task starts
    // just after the state says it leads: wait for it (bounded).
    let started = |log: &[(usize, &str, Instant)]| {
        log.iter().any(|(i, what, _)| *i == new && *what == "start")
    };
    let bound = Instant::now() + Duration::from_secs(10);
    while !started(&activity.log.lock().unwrap()) && Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let log = activity.log.lock().unwrap().clone();
    let old_stop = log
        .iter()
        .find(|(i, what, _)| *i == old && *what == "stop")
        .expect("old leader stopped");
    let new_start = log
        .iter()
        .find(|(i, what, _)| *i == new && *what == "start")
        .expect("new leader started");
    assert!(old_stop.2 <= new_start.2, "{log:?}");
    assert_eq!(activity.max_active.load(Ordering::SeqCst), 1);

    // The old leader's admin endpoints after losing leadership.
    let (_, text) = get(replicas[old].admin, "/metrics").await;
    assert_eq!(metric(&text, "leader_election_is_leader"), 0.0);
    assert_eq!(metric(&text, "leader_election_transitions_total"), 1.0);
    assert!(metric(&text, "leader_election_time_as_leader_seconds_total") > 0.0);
    let (_, vars) = get(replicas[old].admin, "/debug/vars").await;
    let vars: serde_json::Value = serde_json::from_str(&vars).unwrap();
    assert_eq!(vars["leader_election"]["is_leader"], false);
    assert_eq!(vars["leader_election"]["time_as_leader"], "0s");
    let (_, text) = get(replicas[new].admin, "/metrics").await;
    assert_eq!(metric(&text, "leader_election_is_leader"), 1.0);
    shutdown(replicas).await;
    server.shutdown().await;
}
