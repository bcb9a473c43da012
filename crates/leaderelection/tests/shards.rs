//! `ShardSet` over real HTTP against the fake API server: replicas split K shards evenly, a new replica
//! gets its share, a departing or partitioned replica's shards are taken over, and no shard's work ever
//! runs in two replicas at once, and a lagging watch never rewinds a shard's Lease. Timings 2 s / 1 s /
//! 250 ms unless a test says otherwise; every wait is bounded and waits on state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Faults, Listener};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{WatchEvent, WatchParams};
use leaderelection::{Config, ROLE_LABEL, SHARD_SET_LABEL, ShardConfig, ShardSet, ShardState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One interval during which a replica's work for a shard ran: (shard, replica, start, end).
type Interval = (u32, String, Instant, Option<Instant>);

#[derive(Clone, Default)]
struct WorkLog(Arc<Mutex<Vec<Interval>>>);

/// Records the end of an interval when the work's future ends or is dropped (aborted).
struct EndOnDrop {
    log: WorkLog,
    index: usize,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.log.0.lock().unwrap()[self.index].3 = Some(Instant::now());
    }
}

impl WorkLog {
    /// No two replicas' work for one shard overlapped in time (an interval still open ends now).
    fn assert_no_overlap(&self) {
        let mut intervals = self.0.lock().unwrap().clone();
        intervals.sort_by_key(|i| (i.0, i.2));
        for pair in intervals.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.0 != b.0 {
                continue;
            }
            let a_end = a.3.unwrap_or_else(Instant::now);
            assert!(
                b.2 >= a_end,
                "shard {}: {} started while {}'s work still ran",
                a.0,
                b.1,
                a.1
            );
        }
    }

    fn intervals(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn snapshot(&self) -> Vec<Interval> {
        self.0.lock().unwrap().clone()
    }
}

struct Replica {
    listener: Listener,
    state: watch::Receiver<ShardState>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    fn held(&self) -> usize {
        self.state.borrow().held.len()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("a replica stops within 10 s")
            .unwrap();
    }
}

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

/// The timings of most tests: 2 s / 1 s / 250 ms.
fn fast(identity: &str) -> Config {
    Config::new(identity, "work", "default")
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(Duration::from_millis(250))
}

async fn replica(server: &FakeApiServer, identity: &str, shards: u32, log: &WorkLog) -> Replica {
    replica_with(server, fast(identity), shards, log, Faults::none()).await
}

/// A replica of set "work" with `election`'s identity and timings, on a listener of its own with `faults`.
async fn replica_with(
    server: &FakeApiServer,
    election: Config,
    shards: u32,
    log: &WorkLog,
    faults: Faults,
) -> Replica {
    let listener = server.add_listener().await.unwrap();
    listener.set_faults(faults);
    let client = client(&listener.url());
    let log = log.clone();
    let id = election.identity.clone();
    let set = ShardSet::new(
        ShardConfig::new(election, shards),
        client,
        move |shard, _term, token| {
            let log = log.clone();
            let index = {
                let mut entries = log.0.lock().unwrap();
                entries.push((shard, id.clone(), Instant::now(), None));
                entries.len() - 1
            };
            async move {
                let _end = EndOnDrop { log, index };
                token.cancelled().await;
                Ok(())
            }
        },
    )
    .unwrap();
    let state = set.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(set.run(shutdown.clone()));
    Replica {
        listener,
        state,
        shutdown,
        task,
    }
}

/// Waits (at most `within`) until the replicas hold the shares `expected` (in order), checking at every
/// change; panics with what they hold otherwise.
async fn until_held(replicas: &[&Replica], expected: &[usize], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held: Vec<usize> = replicas.iter().map(|r| r.held()).collect();
        if held == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "held {held:?}, expected {expected:?} within {within:?}"
        );
        let mut states: Vec<_> = replicas.iter().map(|r| r.state.clone()).collect();
        let changed = futures::future::select_all(
            states
                .iter_mut()
                .map(|s| Box::pin(async move { s.changed().await })),
        );
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

/// A replica alone holds all K shards; a second one joins and gets half (the first releases its surplus,
/// stopping each shard's work before the release); a third joins and the shares become 3/3/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_gets_its_share() {
    let server = FakeApiServer::start().await.unwrap();
    let log = WorkLog::default();
    let a = replica(&server, "a", 8, &log).await;
    until_held(&[&a], &[8], Duration::from_secs(10)).await;
    let b = replica(&server, "b", 8, &log).await;
    until_held(&[&a, &b], &[4, 4], Duration::from_secs(10)).await;
    let c = replica(&server, "c", 8, &log).await;
    until_held(&[&a, &b, &c], &[3, 3, 2], Duration::from_secs(10)).await;
    log.assert_no_overlap();
    assert!(
        log.intervals() >= 8 + 4 + 2,
        "shards moved between replicas"
    );
    for r in [a, b, c] {
        r.stop().await;
    }
    log.assert_no_overlap();
    server.shutdown().await;
}

/// A replica that stops releases its shards (after their work stopped) and its heartbeat: the others take
/// them at once. A replica cut off from the API server (every request unanswered) stops its work by the
/// renew deadline; the others take its shards once they expire. No shard's work ever ran twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departing_replicas_shards_are_taken_over() {
    let server = FakeApiServer::start().await.unwrap();
    let log = WorkLog::default();
    let a = replica(&server, "a", 9, &log).await;
    let b = replica(&server, "b", 9, &log).await;
    let c = replica(&server, "c", 9, &log).await;
    until_held(&[&a, &b, &c], &[3, 3, 3], Duration::from_secs(15)).await;
    c.stop().await;
    until_held(&[&a, &b], &[5, 4], Duration::from_secs(10)).await;
    b.listener.set_faults(Faults::partition());
    until_held(&[&a], &[9], Duration::from_secs(15)).await;
    // The partitioned replica's own view: it stopped believing it leads any shard.
    assert_eq!(b.held(), 0, "a partitioned replica holds nothing");
    log.assert_no_overlap();
    b.listener.clear_faults();
    until_held(&[&a, &b], &[5, 4], Duration::from_secs(15)).await;
    for r in [a, b] {
        r.stop().await;
    }
    log.assert_no_overlap();
    server.shutdown().await;
}

/// Faults on every replica's connection in turn (latency beyond the renew deadline, 503 bursts, lost
/// responses to applied writes, a black hole), for 12 s: shards move, and no shard's work ever runs in two
/// replicas at once. Once the faults stop, the replicas are balanced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shard_runs_twice_under_faults() {
    let server = FakeApiServer::start().await.unwrap();
    let log = WorkLog::default();
    let a = replica(&server, "a", 6, &log).await;
    let b = replica(&server, "b", 6, &log).await;
    let c = replica(&server, "c", 6, &log).await;
    until_held(&[&a, &b, &c], &[2, 2, 2], Duration::from_secs(15)).await;
    let faults = [
        Faults {
            latency: Duration::from_millis(1200),
            ..Faults::none()
        },
        Faults {
            error_rate: 0.5,
            error_code: 503,
            ..Faults::none()
        },
        Faults {
            commit_then_drop: true,
            ..Faults::none()
        },
        Faults::partition(),
    ];
    let replicas = [&a, &b, &c];
    for round in 0..8 {
        let target = replicas[round % 3];
        target
            .listener
            .set_faults(faults[round % faults.len()].clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        target.listener.clear_faults();
    }
    log.assert_no_overlap();
    until_held(&[&a, &b, &c], &[2, 2, 2], Duration::from_secs(20)).await;
    for r in [a, b, c] {
        r.stop().await;
    }
    log.assert_no_overlap();
    assert!(log.intervals() > 6, "shards moved under the faults");
    server.shutdown().await;
}

/// Rule 14, a lock never rewinds: every replica's watch delivers each write 300 ms after it was committed
/// (kube-apiserver's watch cache answers the writer first; a loaded one lags more), longer than the
/// 250 ms retry period, so a shard's lock hears of its own earlier renewals after it made newer ones. Two
/// replicas of 4 shards stay balanced 2/2 for 30 s: every write of every Lease keeps the set's labels (a
/// Lease that lost them would leave the label-selected list+watch), no shard's term ends, both replicas
/// see both members, and the list+watch does not relist. The lease duration and renew deadline (4 s /
/// 2 s) leave a loaded machine room to renew in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watch_never_rewinds_a_shards_lease() {
    let server = FakeApiServer::start().await.unwrap();
    let log = WorkLog::default();
    let lagging = Faults {
        watch_delay: Duration::from_millis(300),
        ..Faults::none()
    };
    let timings = |identity: &str| {
        fast(identity)
            .with_lease_duration(Duration::from_secs(4))
            .with_renew_deadline(Duration::from_secs(2))
    };
    let a = replica_with(&server, timings("a"), 4, &log, lagging.clone()).await;
    let b = replica_with(&server, timings("b"), 4, &log, lagging).await;
    until_held(&[&a, &b], &[2, 2], Duration::from_secs(20)).await;

    // Every write of the window, as an unlagged watch of all Leases (no selector) sees it.
    let api: kube::Api<Lease> = kube::Api::namespaced(client(&server.url()), "default");
    let from = server.resource_version().to_string();
    let writes = api
        .watch(&WatchParams::default().timeout(60), &from)
        .await
        .unwrap();
    let before = log.snapshot();
    server.reset_counts();
    let window = Duration::from_secs(30);
    let mut written: Vec<Lease> = Vec::new();
    let mut writes = writes.boxed();
    let _ = tokio::time::timeout(window, async {
        while let Some(event) = writes.next().await {
            match event.unwrap() {
                WatchEvent::Added(lease) | WatchEvent::Modified(lease) => written.push(lease),
                WatchEvent::Deleted(lease) => panic!("{:?} deleted", lease.metadata.name),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(status) => panic!("the watch failed: {status:?}"),
            }
        }
    })
    .await;

    assert!(
        written.len() >= 6 * 30,
        "every held Lease is renewed every retry period: {} writes in 30 s",
        written.len()
    );
    for lease in &written {
        let labels = lease.metadata.labels.clone().unwrap_or_default();
        assert!(
            labels.get(SHARD_SET_LABEL).map(String::as_str) == Some("work")
                && labels.contains_key(ROLE_LABEL),
            "{:?} at resourceVersion {:?} was written without the set's labels: {labels:?}",
            lease.metadata.name,
            lease.metadata.resource_version
        );
    }
    assert_eq!(
        log.snapshot(),
        before,
        "no shard's term ended or started in the window"
    );
    for r in [&a, &b] {
        let state = r.state.borrow().clone();
        assert_eq!(state.members, ["a", "b"], "each replica sees both members");
        assert_eq!(state.held.len(), 2, "balanced 2/2");
    }
    let lists: u64 = server
        .counts()
        .iter()
        .filter(|c| c.verb == "list" && c.resource == "leases")
        .map(|c| c.count)
        .sum();
    assert!(
        lists <= 4,
        "{lists} lists in 30 s: the list+watch relisted (a replica's watch is resumed, not relisted)"
    );
    for r in [a, b] {
        r.stop().await;
    }
    log.assert_no_overlap();
    server.shutdown().await;
}
