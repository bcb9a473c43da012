//! The `claim-coordinator` binary: `run` as a real process against the fake API server binds claims,
//! serves the seed's metrics, and on SIGTERM or SIGINT stops its binder and releases the Lease.

use std::process::Stdio;
use std::time::Duration;

use claim_coordinator::provider::{Claim as _, Host as _};
use claim_coordinator::resources::HostClaimSpec;
use claim_coordinator::settings::DEFAULT_LEASE_NAME;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use leaderelection_lab::claim_sim::{Cluster, HostPlan, NAMESPACE};
use leaderelection_lab::products::{Product, locate};

/// A liveness bound only, generous for a loaded machine.
const LIVENESS: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_binds_claims_as_leader_and_serves_the_metrics() {
    let cluster = Cluster::start().await.unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let child = start_leading(
        &cluster,
        &[
            "--claim-coordinator-lease-duration=2s",
            "--claim-coordinator-renew-deadline=1s",
            "--claim-coordinator-retry-period=200ms",
            "--admin",
            &admin_addr.to_string(),
        ],
    )
    .await;
    let metrics = get(&format!("http://{admin_addr}/metrics")).await;
    for line in [
        "claim_coordinator_leader_election_total{namespace=\"default\",event_type=\"started_leading\"} 1",
        "claim_coordinator_results_total{namespace=\"default\",result_type=\"success\"} 1",
        "host_claim_attempts_total{namespace=\"default\",outcome=\"success\",conflict_reason=\"none\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // SIGINT, as Ctrl-C: the replica stops its binder, releases the Lease and exits 0.
    kill(&child, "INT");
    let output = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    for line in [
        "New leader elected for claim coordination",
        "Became leader for claim coordination",
        "Processing claim as leader",
        "Lost leadership for claim coordination",
    ] {
        assert!(logs.contains(line), "missing {line:?} in\n{logs}");
    }
    cluster.server.shutdown().await;
}

/// SIGTERM, as the kubelet sends a pod it deletes (not SIGINT, which Ctrl-C sends and `run` used to be
/// the only one to catch: SIGTERM killed it, holding the Lease until it expired): the replica stops its
/// binder, releases the Lease and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_sigterm_stops_its_binder_and_releases_the_lease() {
    let cluster = Cluster::start().await.unwrap();
    // A lease duration far longer than the test waits: only a release can clear the holder.
    let child = start_leading(&cluster, &["--claim-coordinator-lease-duration=60s"]).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let holder = |lease: Lease| lease.spec.and_then(|spec| spec.holder_identity);
    let before = leases.get(DEFAULT_LEASE_NAME).await.unwrap();
    assert_eq!(holder(before).as_deref(), Some("pod-a"), "pod-a leads");

    kill(&child, "TERM");
    let output = tokio::time::timeout(LIVENESS, child.wait_with_output())
        .await
        .expect("claim-coordinator exits after SIGTERM")
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "exit 0, not death by the signal ({:?})\n{logs}",
        output.status
    );
    let after = leases.get(DEFAULT_LEASE_NAME).await.unwrap();
    assert_eq!(
        holder(after).unwrap_or_default(),
        "",
        "the Lease is released (empty holderIdentity) at exit\n{logs}"
    );
    // The binder logs this line when its term's token is cancelled and it has stopped.
    let stopped = logs.find("Lost leadership for claim coordination");
    assert!(
        stopped.is_some_and(|at| logs[..at].contains("Became leader for claim coordination")),
        "the binder started, then stopped\n{logs}"
    );
    cluster.server.shutdown().await;
}

/// Issue 23: `run` with leader election off, or with `mode=optimistic`, serves claims through the fallback
/// coordinator (intent first: `selectedHost` recorded, `BoundOptimistically`) and releases the host of a
/// deleted claim; it used to bind nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_a_binder_serves_claims_through_the_fallback() {
    let bin = locate(Product::ClaimCoordinator, None).unwrap();
    for flags in [
        [
            "--enable-claim-coordinator-leader-election=false",
            "--claim-coordinator-mode=auto",
        ],
        [
            "--enable-claim-coordinator-leader-election=true",
            "--claim-coordinator-mode=optimistic",
        ],
    ] {
        let cluster = Cluster::start().await.unwrap();
        cluster
            .add_host(&HostPlan {
                name: "host-1".into(),
                tags: Default::default(),
                cpu_cores: 8,
                memory_gib: 32,
            })
            .await
            .unwrap();
        let child = tokio::process::Command::new(&bin)
            .args([
                "run",
                "--server",
                &cluster.server.url(),
                "--identity",
                "pod-a",
                "--namespace",
                NAMESPACE,
                "--claim-coordinator-lease-duration=2s",
                "--claim-coordinator-renew-deadline=1s",
                "--claim-coordinator-retry-period=200ms",
                "--claim-coordinator-processing-interval=100ms",
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        cluster
            .add_claim(
                "claim-1",
                HostClaimSpec {
                    image_url: "http://images.example/os.iso".into(),
                    ..HostClaimSpec::default()
                },
            )
            .await
            .unwrap();
        let claim = tokio::time::timeout(LIVENESS, async {
            loop {
                let claim = cluster.claims().get("claim-1").await.unwrap();
                if claim.host_ref().is_some() {
                    return claim;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{flags:?}: bound within the liveness bound"));
        let status = claim.status.unwrap();
        assert_eq!(status.host_ref.as_deref(), Some("host-1"), "{flags:?}");
        assert_eq!(status.selected_host.as_deref(), Some("host-1"), "{flags:?}");
        assert_eq!(
            status.conditions[0].reason, "BoundOptimistically",
            "{flags:?}"
        );
        cluster
            .claims()
            .delete("claim-1", &Default::default())
            .await
            .unwrap();
        tokio::time::timeout(LIVENESS, async {
            while cluster.claims().get_opt("claim-1").await.unwrap().is_some()
                || !cluster.hosts().get("host-1").await.unwrap().is_available()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{flags:?}: released within the liveness bound"));
        kill(&child, "INT");
        let output = child.wait_with_output().await.unwrap();
        let logs = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{flags:?}: {logs}");
        assert!(
            logs.contains("Using fallback coordinator (no leader or leader election disabled)"),
            "{flags:?}: {logs}"
        );
        cluster.server.shutdown().await;
    }
}

/// Starts `claim-coordinator run` as `pod-a` with `extra` flags on a cluster with one host, and returns
/// it once its binder has bound a claim to that host: it leads, and its binder runs.
async fn start_leading(cluster: &Cluster, extra: &[&str]) -> tokio::process::Child {
    // Under cargo this builds the binary first, blocking the test's thread a while.
    let bin = locate(Product::ClaimCoordinator, None).unwrap();
    cluster
        .add_host(&HostPlan {
            name: "host-1".into(),
            tags: Default::default(),
            cpu_cores: 8,
            memory_gib: 32,
        })
        .await
        .unwrap();
    let child = tokio::process::Command::new(bin)
        .args([
            "run",
            "--server",
            &cluster.server.url(),
            "--identity",
            "pod-a",
            "--namespace",
            NAMESPACE,
            "--enable-claim-coordinator-leader-election=true",
            "--claim-coordinator-processing-interval=100ms",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    cluster
        .add_claim(
            "claim-1",
            HostClaimSpec {
                image_url: "http://images.example/os.iso".into(),
                ..HostClaimSpec::default()
            },
        )
        .await
        .unwrap();
    let bound = tokio::time::timeout(LIVENESS, async {
        loop {
            let claim = cluster.claims().get("claim-1").await.unwrap();
            if let Some(host) = claim.host_ref() {
                return host.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bound within the liveness bound");
    assert_eq!(bound, "host-1");
    child
}

/// Sends `signal` (`"TERM"`, `"INT"`) to `child`.
fn kill(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A GET through a plain TCP connection (HTTP/1.0, the whole answer until close).
async fn get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}
