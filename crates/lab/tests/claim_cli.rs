//! The `claim-coordinator` binary: `run` as a real process against the fake API server binds claims and
//! serves the seed's metrics.

use std::process::Stdio;
use std::time::Duration;

use claim_coordinator::resources::HostClaimSpec;
use leaderelection_lab::claim_sim::{Cluster, HostPlan};
use leaderelection_lab::products::{Product, locate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_binds_claims_as_leader_and_serves_the_metrics() {
    // First: under cargo this builds the binary, blocking the test's thread a while.
    let bin = locate(Product::ClaimCoordinator, None).unwrap();
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
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let child = tokio::process::Command::new(bin)
        .args([
            "run",
            "--server",
            &cluster.server.url(),
            "--identity",
            "pod-a",
            "--namespace",
            "default",
            "--enable-claim-coordinator-leader-election=true",
            "--claim-coordinator-lease-duration=2s",
            "--claim-coordinator-renew-deadline=1s",
            "--claim-coordinator-retry-period=200ms",
            "--claim-coordinator-processing-interval=100ms",
            "--admin",
            &admin_addr.to_string(),
        ])
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
    let bound = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let claim = cluster.claims().get("claim-1").await.unwrap();
            if let Some(host) = claim.host_ref() {
                return host.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bound within 20 s");
    assert_eq!(bound, "host-1");
    let metrics = get(&format!("http://{admin_addr}/metrics")).await;
    for line in [
        "claim_coordinator_leader_election_total{event_type=\"started_leading\"} 1",
        "claim_coordinator_results_total{result_type=\"success\"} 1",
        "host_claim_attempts_total{outcome=\"success\",conflict_reason=\"none\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    nix_kill(&child);
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

/// SIGINT, as Ctrl-C: the replica stops its binder, releases the Lease and exits 0.
fn nix_kill(child: &tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
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
