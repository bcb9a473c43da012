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
    KubeLeaseLock,
};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

fn client(url: &str) -> kube::Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
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
    task.await.unwrap();
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
    task.await.unwrap();
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

/// Where LeaseCandidates are not served (404 on coordination.k8s.io/v1beta1), the candidate says so in one
/// WARN line and the elector runs an ordinary election: it creates the Lease and leads.
#[tokio::test(flavor = "current_thread")]
async fn without_lease_candidates_the_election_is_ordinary_and_says_so_once() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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
    let elector = Elector::new(config, lock, Callbacks::new())
        .unwrap()
        .with_coordination(coordination.clone());
    let shutdown = CancellationToken::new();
    let registration = tokio::spawn(candidate.run(shutdown.clone()));
    let election = tokio::spawn(elector.clone().run(shutdown.clone()));
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
    registration.await.unwrap();
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
