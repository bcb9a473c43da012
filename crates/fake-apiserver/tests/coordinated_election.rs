//! The coordinated leader election controller (`Builder::coordinated_election`) against the real kube client:
//! candidates that answer pings, the `OldestEmulationVersion` choice, `preferredHolder` on a held Lease, a
//! candidate that does not answer, and a released Lease.

use std::time::{Duration, Instant};

use fake_apiserver::{ElectionTimings, FakeApiServer};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NS: &str = "ns1";

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

async fn server(window: Duration) -> FakeApiServer {
    FakeApiServer::builder()
        .coordinated_election(ElectionTimings::default().election_window(window))
        .start()
        .await
        .unwrap()
}

async fn register(client: &kube::Client, name: &str, emulation_version: &str) {
    let api: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);
    let candidate = LeaseCandidate {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseCandidateSpec {
            lease_name: "l1".into(),
            binary_version: "1.34.0".into(),
            emulation_version: Some(emulation_version.into()),
            strategy: "OldestEmulationVersion".into(),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseCandidateSpec::default()
        }),
    };
    api.create(&PostParams::default(), &candidate)
        .await
        .unwrap();
}

/// Candidates `names` answering pings as client-go's: when `pingTime` is newer than `renewTime`, each sets
/// `renewTime` to now. Runs until `stop`.
fn answer_pings(
    client: &kube::Client,
    names: &[&str],
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let api: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);
    let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    let stop = stop.clone();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            for name in &names {
                let spec = api.get(name).await.unwrap().spec.unwrap();
                if spec
                    .ping_time
                    .as_ref()
                    .is_some_and(|p| spec.renew_time.as_ref().is_none_or(|r| r.0 <= p.0))
                {
                    let patch = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Polls the Lease `l1` until `done` holds (at most 3 s) and returns it.
async fn lease_until(client: &kube::Client, done: impl Fn(&LeaseSpec) -> bool) -> LeaseSpec {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let spec = api.get_opt("l1").await.unwrap().and_then(|l| l.spec);
        match spec {
            Some(spec) if done(&spec) => return spec,
            spec => assert!(
                Instant::now() < deadline,
                "lease l1 never matched: {spec:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn holder(spec: &LeaseSpec) -> &str {
    spec.holder_identity.as_deref().unwrap_or("")
}

async fn create_held_lease(client: &kube::Client, holder: &str) {
    create_lease(client, holder, 30, Some("OldestEmulationVersion")).await;
}

async fn create_lease(client: &kube::Client, holder: &str, seconds: i32, strategy: Option<&str>) {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("l1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(Timestamp::now())),
            strategy: strategy.map(str::to_owned),
            ..LeaseSpec::default()
        }),
    };
    api.create(&PostParams::default(), &lease).await.unwrap();
}

#[tokio::test]
async fn the_older_emulation_version_gets_the_new_lease() {
    let server = server(Duration::from_secs(1)).await;
    let client = client(&server.url());
    // Both registered before either answers: one election round sees both.
    register(&client, "a", "1.34.0").await;
    register(&client, "b", "1.33.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["a", "b"], &stop);
    let spec = lease_until(&client, |s| !holder(s).is_empty()).await;
    assert_eq!(holder(&spec), "b");
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(spec.lease_duration_seconds, Some(5));
    assert!(spec.renew_time.is_some());
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_valid_lease_held_by_another_gets_the_electee_as_preferred_holder() {
    let server = server(Duration::from_secs(1)).await;
    let client = client(&server.url());
    create_held_lease(&client, "a").await;
    register(&client, "a", "1.34.0").await;
    register(&client, "b", "1.33.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["a", "b"], &stop);
    let spec = lease_until(&client, |s| s.preferred_holder.is_some()).await;
    assert_eq!(spec.preferred_holder.as_deref(), Some("b"));
    assert_eq!(
        holder(&spec),
        "a",
        "the holder is asked to yield, not replaced"
    );
    assert_eq!(spec.lease_duration_seconds, Some(30));
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_candidate_that_does_not_answer_the_ping_is_not_elected() {
    let server = server(Duration::from_millis(300)).await;
    let client = client(&server.url());
    // "c" has the oldest version but never answers.
    register(&client, "c", "1.32.0").await;
    register(&client, "a", "1.34.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["a"], &stop);
    let spec = lease_until(&client, |s| !holder(s).is_empty()).await;
    assert_eq!(holder(&spec), "a");
    let candidates: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);
    let c = candidates.get("c").await.unwrap().spec.unwrap();
    let (ping, renew) = (c.ping_time.expect("c was pinged"), c.renew_time.unwrap());
    assert!(renew.0 < ping.0, "c never answered: {renew:?} < {ping:?}");
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_released_lease_goes_to_the_electee_at_once() {
    // The default 5 s window: an assignment within the 3 s bound of `lease_until` did not wait for pings.
    let server = server(Duration::from_secs(5)).await;
    let client = client(&server.url());
    create_held_lease(&client, "a").await;
    register(&client, "a", "1.34.0").await;
    register(&client, "b", "1.33.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["a", "b"], &stop);
    lease_until(&client, |s| s.preferred_holder.as_deref() == Some("b")).await;

    // "a" yields as client-go's releaseOnCancel under coordination: holder "", strategy kept.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let release = json!({"spec": {"holderIdentity": ""}});
    leases
        .patch("l1", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    let spec = lease_until(&client, |s| !holder(s).is_empty()).await;
    assert_eq!(holder(&spec), "b");
    assert_eq!(spec.preferred_holder, None);
    assert_eq!(spec.acquire_time, None);
    assert_eq!(spec.lease_duration_seconds, Some(5));
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_lease_goes_to_the_electee() {
    let server = server(Duration::from_secs(1)).await;
    let client = client(&server.url());
    // Held by "a" for 1 s, never renewed.
    create_lease(&client, "a", 1, Some("OldestEmulationVersion")).await;
    register(&client, "a", "1.34.0").await;
    register(&client, "b", "1.33.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["a", "b"], &stop);
    let spec = lease_until(&client, |s| holder(s) == "b").await;
    assert_eq!(spec.preferred_holder, None);
    assert_eq!(spec.lease_duration_seconds, Some(5));
    let renewed = spec
        .renew_time
        .expect("the new term starts with a renewTime")
        .0;
    assert!(
        renewed > Timestamp::now() - Duration::from_secs(2),
        "{renewed}"
    );
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_lease_without_strategy_is_not_coordinated() {
    let server = server(Duration::from_millis(300)).await;
    let client = client(&server.url());
    create_lease(&client, "", 30, None).await;
    register(&client, "b", "1.33.0").await;
    let stop = CancellationToken::new();
    let answering = answer_pings(&client, &["b"], &stop);
    // Once "b" answered a ping, its election has run; the Lease is still unheld.
    let candidates: Api<LeaseCandidate> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let spec = candidates.get("b").await.unwrap().spec.unwrap();
        if let (Some(ping), Some(renew)) = (spec.ping_time, spec.renew_time)
            && renew.0 > ping.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "b was never pinged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The renew that answered triggers one more (immediate) election: give it the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let spec = leases.get("l1").await.unwrap().spec.unwrap();
    assert_eq!(holder(&spec), "");
    assert_eq!(spec.preferred_holder, None);
    stop.cancel();
    answering.await.unwrap();
    server.shutdown().await;
}
