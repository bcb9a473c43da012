//! Coordinated leader election (KEP-4355) against the fake API server and the real kube client: the
//! LeaseCandidate's registration, renewal, answer to pings and deletion; the fallback when LeaseCandidates
//! are not served; and elections run by the fake's election controller.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams};
use leaderelection::{
    Callbacks, Candidate, CandidateConfig, CandidateStatus, Config, Coordination, Elector,
    ElectorHandle, KubeLeaseLock,
};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

/// Short timings: 2 s Lease, 1 s renew deadline, 200 ms retry period.
fn config(identity: &str) -> Config {
    Config::new(identity, "l1", NS)
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(Duration::from_millis(200))
}

/// Polls every 5 ms until `f` gives `Some`, for at most 5 s.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn status_becomes(coordination: &Coordination, status: CandidateStatus) {
    eventually(&format!("{status:?}"), || async {
        (coordination.status() == status).then_some(())
    })
    .await;
}

fn renew_time(candidate: &LeaseCandidate) -> jiff::Timestamp {
    candidate
        .spec
        .as_ref()
        .unwrap()
        .renew_time
        .as_ref()
        .unwrap()
        .0
}

/// The candidate creates its LeaseCandidate (name = identity, leaseName, versions, strategy, renewTime),
/// renews it every renew interval, answers a ping through its watch (the renew interval is an hour, so
/// only the watch can make it answer), and deletes it on shutdown.
#[tokio::test]
async fn a_candidate_registers_renews_answers_pings_and_withdraws() {
    let server = FakeApiServer::start().await.unwrap();
    let client = client(&server.url());
    let api: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);

    // Renewed every 300 ms without pings.
    let candidate = Candidate::new(
        client.clone(),
        &config("pod-a"),
        CandidateConfig::new("1.34.1")
            .with_emulation_version("1.33.0")
            .with_renew_interval(Duration::from_millis(300)),
    )
    .unwrap();
    let coordination = candidate.coordination();
    assert_eq!(coordination.status(), CandidateStatus::Pending);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(candidate.run(shutdown.clone()));
    status_becomes(&coordination, CandidateStatus::Registered).await;
    let registered = api.get("pod-a").await.unwrap();
    let spec = registered.spec.clone().unwrap();
    assert_eq!(
        (
            spec.lease_name.as_str(),
            spec.binary_version.as_str(),
            spec.emulation_version.as_deref(),
            spec.strategy.as_str()
        ),
        ("l1", "1.34.1", Some("1.33.0"), "OldestEmulationVersion")
    );
    let first = renew_time(&registered);
    eventually("a renewal", || async {
        (renew_time(&api.get("pod-a").await.unwrap()) > first).then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(coordination.status(), CandidateStatus::Withdrawn);
    assert!(
        api.get_opt("pod-a").await.unwrap().is_none(),
        "deleted on shutdown"
    );

    // Renewed only when pinged.
    let candidate = Candidate::new(
        client.clone(),
        &config("pod-b"),
        CandidateConfig::new("1.34.0").with_renew_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    let coordination = candidate.coordination();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(candidate.run(shutdown.clone()));
    status_becomes(&coordination, CandidateStatus::Registered).await;
    // The watch opens from the registration's resourceVersion: it sees the ping even if it opens later.
    let ping = jiff::Timestamp::now();
    let patch = serde_json::json!({"spec": {"pingTime": MicroTime(ping)}});
    api.patch("pod-b", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let pinged_at = Instant::now();
    let answered = eventually("the answer to the ping", || async {
        let candidate = api.get("pod-b").await.unwrap();
        (renew_time(&candidate) > ping).then_some(candidate)
    })
    .await;
    println!("ping answered after {:?}", pinged_at.elapsed());
    assert_eq!(
        answered.spec.unwrap().ping_time.map(|t| t.0),
        Some(jiff::Timestamp::from_microsecond(ping.as_microsecond()).unwrap()),
        "pingTime kept"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(api.get_opt("pod-b").await.unwrap().is_none());
}

/// Captures log lines for one test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logs (this test's: its runtime is current-thread) while the guard lives.
///
/// tracing-core (0.1.36, `callsite.rs`) caches each callsite's interest for the whole process, and while
/// only one dispatcher is registered (`has_just_one`) it asks just the thread that first hits a callsite:
/// a test running in parallel, with no subscriber, would then mute our callsites for good (a log line
/// missing here, depending on which tests the harness runs together). A second registered dispatcher, kept
/// alive with the guard, makes it ask every dispatcher.
fn capture_logs() -> (Logs, (tracing::subscriber::DefaultGuard, tracing::Dispatch)) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let second = tracing::Dispatch::new(tracing_subscriber::registry());
    (logs, (guard, second))
}

/// Where LeaseCandidates are not served (404 on coordination.k8s.io/v1beta1), the candidate says so in one
/// WARN line and the elector runs an ordinary election: it creates the Lease and leads.
#[tokio::test(flavor = "current_thread")]
async fn without_lease_candidates_the_election_is_ordinary_and_says_so_once() {
    let (logs, _capture) = capture_logs();

    let server = FakeApiServer::builder()
        .without_lease_candidates()
        .start()
        .await
        .unwrap();
    let client = client(&server.url());
    let config = config("pod-a");
    let candidate =
        Candidate::new(client.clone(), &config, CandidateConfig::new("1.34.0")).unwrap();
    let coordination = candidate.coordination();
    let lock = KubeLeaseLock::new(client.clone(), NS, "l1");
    let driver = Elector::builder(config, lock)
        .coordination(coordination.clone())
        .build()
        .unwrap();
    let elector = driver.handle();
    let shutdown = CancellationToken::new();
    let registration = tokio::spawn(candidate.run(shutdown.clone()));
    let election = tokio::spawn(driver.run(shutdown.clone()));
    eventually("leadership", || async { elector.is_leader().then_some(()) }).await;
    assert_eq!(coordination.status(), CandidateStatus::Unsupported);
    let leases: Api<Lease> = Api::namespaced(client, NS);
    let spec = leases.get("l1").await.unwrap().spec.unwrap();
    assert_eq!(
        (spec.holder_identity.as_deref(), spec.strategy),
        (Some("pod-a"), None)
    );
    // Renew a few times, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    registration.await.unwrap().unwrap();
    election.await.unwrap().unwrap();
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("leasecandidates"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("falling back to ordinary leader election"),
        "{}",
        warnings[0]
    );
}

/// One entry of a [`WorkLog`]: when, whose work, `started` or `stopped`.
type WorkEntry = (Instant, String, &'static str);

/// When each candidate's leader-only work started and stopped.
#[derive(Clone, Default)]
struct WorkLog(Arc<Mutex<Vec<WorkEntry>>>);

impl WorkLog {
    fn callbacks(&self, identity: &str) -> Callbacks {
        let (log, identity) = (self.clone(), identity.to_owned());
        Callbacks::new().on_started_leading(move |_term, token| {
            let (log, identity) = (log.clone(), identity.clone());
            async move {
                log.push(&identity, "started");
                token.cancelled().await;
                log.push(&identity, "stopped");
                Ok(())
            }
        })
    }

    fn push(&self, identity: &str, what: &'static str) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), identity.to_owned(), what));
    }

    fn entries(&self) -> Vec<WorkEntry> {
        self.0.lock().unwrap().clone()
    }
}

/// A coordinated candidate (LeaseCandidate registration and elector) running in this process.
struct Running {
    elector: ElectorHandle,
    coordination: Coordination,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(client: &kube::Client, identity: &str, version: &str, log: &WorkLog) -> Self {
        let config = config(identity);
        let candidate =
            Candidate::new(client.clone(), &config, CandidateConfig::new(version)).unwrap();
        let coordination = candidate.coordination();
        let lock = KubeLeaseLock::new(client.clone(), NS, "l1");
        let driver = Elector::builder(config, lock)
            .callbacks(log.callbacks(identity))
            .coordination(coordination.clone())
            .build()
            .unwrap();
        let elector = driver.handle();
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move { candidate.run(shutdown).await.unwrap() }
            }),
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move { driver.run(shutdown).await.unwrap() }
            }),
        ];
        status_becomes(&coordination, CandidateStatus::Registered).await;
        Self {
            elector,
            coordination,
            shutdown,
            tasks,
        }
    }

    /// A clean shutdown: work stopped, LeaseCandidate deleted, Lease released.
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        assert_eq!(self.coordination.status(), CandidateStatus::Withdrawn);
    }
}

/// Waits until the fake's controller has run the election that `identity`'s registration started: its
/// LeaseCandidate answered the ping (renewTime after pingTime) and the Lease then names `holder` with no
/// preferredHolder.
async fn settled(client: &kube::Client, identity: &str, holder: &str) {
    let candidates: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    eventually(&format!("{identity}'s ping answered"), || async {
        let spec = candidates.get(identity).await.unwrap().spec?;
        (spec.renew_time?.0 > spec.ping_time?.0).then_some(())
    })
    .await;
    eventually(
        &format!("{holder} leading after {identity} joined"),
        || async {
            let spec = leases.get_opt("l1").await.unwrap()?.spec?;
            (spec.holder_identity.as_deref() == Some(holder) && spec.preferred_holder.is_none())
                .then_some(())
        },
    )
    .await;
}

/// A fake API server running the election controller, with a 300 ms election window.
async fn with_election_controller() -> FakeApiServer {
    FakeApiServer::builder()
        .coordinated_election(
            fake_apiserver::ElectionTimings::default().election_window(Duration::from_millis(300)),
        )
        .start()
        .await
        .unwrap()
}

/// Coordinated election under rule 12 (`docs/design.md`, "An identity is not an incarnation"): the
/// election controller judges a holder's expiry by its renewTime against the server's clock, so a holder
/// whose clock runs 10 s behind (its renewTime 10 s in the past) is replaced 5 s into its 15 s Lease, while
/// it may still work. The candidate the controller assigns takes the Lease only once that holder's record,
/// as the candidate first saw it, has expired by its own clock: 15 s after it started, not 5 s.
#[tokio::test]
async fn an_assignment_waits_for_the_replaced_holders_lease_to_expire_by_the_candidates_clock() {
    let server = with_election_controller().await;
    let client = client(&server.url());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let behind = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(10);
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "l1", "namespace": NS},
        "spec": {
            "holderIdentity": "ghost",
            "leaseDurationSeconds": 15,
            "acquireTime": MicroTime(behind),
            "renewTime": MicroTime(behind),
            "strategy": "OldestEmulationVersion",
        },
    }))
    .unwrap();
    leases.create(&Default::default(), &lease).await.unwrap();
    let started = Instant::now();
    let log = WorkLog::default();
    let a = Running::start(&client, "pod-a", "1.33.0", &log).await;
    // A liveness bound only (it leads after about 15 s); the figure asserted is the lower bound below.
    let mut state = a.elector.subscribe();
    tokio::time::timeout(Duration::from_secs(40), state.wait_for(|s| s.is_leader()))
        .await
        .expect("pod-a never led within 40 s")
        .unwrap();
    let led = started.elapsed();
    println!("pod-a led {led:?} after it started");
    assert!(
        led >= Duration::from_secs(15),
        "pod-a led {led:?} after it started, before ghost's 15 s Lease expired by its clock"
    );
    a.stop().await;
}

/// The "Done when" of coordinated election: a rolling upgrade under the fake's election controller. Two
/// candidates of emulation version 1.33.0, then two of 1.34.0 replacing them one by one: the leader is an
/// old one while one exists, then the oldest new one; no leader's work overlaps the next one's; and no
/// candidate ever takes the Lease on its own (every change of holder is the controller's assignment,
/// which writes no acquireTime).
#[tokio::test]
async fn a_rolling_upgrade_keeps_the_oldest_emulation_version_leading() {
    let server = with_election_controller().await;
    let client = client(&server.url());
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    // Every version of the Lease, from before the first candidate.
    let from = leases
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let history = Arc::new(Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let (leases, history) = (leases.clone(), history.clone());
        async move {
            use futures::StreamExt;
            let params = kube::api::WatchParams::default().fields("metadata.name=l1");
            let mut events = leases.watch(&params, &from).await.unwrap().boxed();
            while let Some(Ok(event)) = events.next().await {
                if let kube::api::WatchEvent::Added(lease)
                | kube::api::WatchEvent::Modified(lease) = event
                {
                    history.lock().unwrap().push(lease.spec.unwrap_or_default());
                }
            }
        }
    });
    let log = WorkLog::default();

    let old_a = Running::start(&client, "old-a", "1.33.0", &log).await;
    let old_b = Running::start(&client, "old-b", "1.33.0", &log).await;
    eventually("old-a leading", || async {
        old_a.elector.is_leader().then_some(())
    })
    .await;
    settled(&client, "old-b", "old-a").await;

    let new_a = Running::start(&client, "new-a", "1.34.0", &log).await;
    settled(&client, "new-a", "old-a").await;
    assert!(old_a.elector.is_leader(), "an old version keeps leading");

    old_a.stop().await;
    eventually("old-b leading", || async {
        old_b.elector.is_leader().then_some(())
    })
    .await;
    assert!(!new_a.elector.is_leader());

    let new_b = Running::start(&client, "new-b", "1.34.0", &log).await;
    settled(&client, "new-b", "old-b").await;
    assert!(
        old_b.elector.is_leader(),
        "the last old version leads while it exists"
    );

    old_b.stop().await;
    eventually("new-a leading", || async {
        new_a.elector.is_leader().then_some(())
    })
    .await;
    assert!(!new_b.elector.is_leader());
    settled(&client, "new-b", "new-a").await;

    // Work: one at a time, in the order old-a, old-b, new-a.
    let entries = log.entries();
    let order: Vec<String> = entries
        .iter()
        .map(|(_, who, what)| format!("{who}:{what}"))
        .collect();
    assert_eq!(
        order,
        [
            "old-a:started",
            "old-a:stopped",
            "old-b:started",
            "old-b:stopped",
            "new-a:started"
        ],
        "work overlapped or ran out of order"
    );
    for pair in entries.windows(2) {
        assert!(pair[0].0 <= pair[1].0);
    }

    // The Lease's history up to new-a's term (its last version reaches the watch a moment after the read).
    let history = eventually("the history up to new-a", || async {
        let history = history.lock().unwrap().clone();
        let last = history.last()?.holder_identity.as_deref()?;
        (last == "new-a").then_some(history)
    })
    .await;
    recorder.abort();
    new_a.stop().await;
    new_b.stop().await;
    let holder = |spec: &k8s_openapi::api::coordination::v1::LeaseSpec| {
        spec.holder_identity.clone().unwrap_or_default()
    };
    let mut assignments = Vec::new();
    let mut previous = String::new();
    for spec in &history {
        let now = holder(spec);
        assert_eq!(
            spec.strategy.as_deref(),
            Some("OldestEmulationVersion"),
            "the Lease stays coordinated: {spec:?}"
        );
        if !now.is_empty() && now != previous {
            assert!(
                spec.acquire_time.is_none(),
                "{now} took the Lease on its own: {spec:?}"
            );
            assignments.push(now.clone());
        }
        previous = now;
    }
    assert_eq!(assignments, ["old-a", "old-b", "new-a"]);
}

/// With an election controller, no candidate warns that none answered: `pod-a` is pinged and assigned
/// the Lease, then leads unpinged for longer than the election window (5 s) while `pod-b` joins and
/// follows. Without a controller the WARN comes (`crates/leader-elect/tests/cli.rs`,
/// `a_coordinated_candidate_without_an_election_controller_says_so_and_keeps_waiting`).
#[tokio::test(flavor = "current_thread")]
async fn with_an_election_controller_no_candidate_warns_that_none_answered() {
    let (logs, _capture) = capture_logs();

    let server = with_election_controller().await;
    let client = client(&server.url());
    let log = WorkLog::default();
    let a = Running::start(&client, "pod-a", "1.33.0", &log).await;
    eventually("pod-a leading", || async {
        a.elector.is_leader().then_some(())
    })
    .await;
    let b = Running::start(&client, "pod-b", "1.34.0", &log).await;
    settled(&client, "pod-b", "pod-a").await;
    // Past one election window after both registered: the WARN would be out by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(a.elector.is_leader());
    b.stop().await;
    a.stop().await;
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("registered as a LeaseCandidate"), "{logs}");
    assert!(!logs.contains("no election controller answered"), "{logs}");
}
