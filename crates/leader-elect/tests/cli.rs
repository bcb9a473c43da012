//! The `leader-elect` binary on bad input: one clear line naming the problem, exit code 2 for usage and
//! configuration errors and 1 for runtime failures, never a panic trace; and `status` / `release` against
//! the fake API server.

use std::process::Output;

use fake_apiserver::{FakeApiServer, Faults};

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect");

async fn leader_elect(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code and the one error line.
fn failure(out: &Output) -> (i32, String) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "a panic trace: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:") || l.starts_with("leader-elect: error:"))
        .unwrap_or_else(|| panic!("no error line in: {err}"))
        .to_owned();
    (out.status.code().unwrap(), line)
}

#[tokio::test]
async fn unknown_flag_is_a_usage_error() {
    let out = leader_elect(&["run", "--lease-name", "x", "--no-such-flag"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("unexpected argument '--no-such-flag'"),
        "{line}"
    );
}

#[tokio::test]
async fn invalid_duration_is_a_usage_error() {
    let out = leader_elect(&["run", "--lease-name", "x", "--lease-duration", "15 parsecs"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("'15 parsecs'") && line.contains("--lease-duration"),
        "{line}"
    );
}

#[tokio::test]
async fn rule_breaking_timings_name_the_field() {
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--server",
        "http://127.0.0.1:9",
        "--lease-duration",
        "5s",
        "--renew-deadline",
        "10s",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(line.contains("invalid lease_duration \"5s\""), "{line}");
}

/// A grace period longer than lease duration - renew deadline - margin (15s - 10s - 1s = 4s here) would let
/// the child outlive its term into the next leader's: refused, not clamped.
#[tokio::test]
async fn a_grace_period_that_does_not_fit_the_stop_window_is_refused() {
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--server",
        "http://127.0.0.1:9",
        "--grace-period",
        "5s",
        "--",
        "true",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("invalid grace_period \"5s\": must fit in leaseDuration - renewDeadline - margin (15s - 10s - 1s = 4s)"),
        "{line}"
    );
}

#[tokio::test]
async fn invalid_lease_name_is_a_usage_error() {
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "Not_A_Name",
        "--identity",
        "a",
        "--server",
        "http://127.0.0.1:9",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(line.contains("invalid lease_name \"Not_A_Name\""), "{line}");
    let out = leader_elect(&[
        "status",
        "--lease-name",
        "Not_A_Name",
        "--server",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(failure(&out).0, 2);
}

#[tokio::test]
async fn missing_lease_name_is_a_usage_error() {
    let out = leader_elect(&["run", "--identity", "a", "--server", "http://127.0.0.1:9"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(line.contains("lease_name"), "{line}");
}

#[tokio::test]
async fn unreachable_server_is_a_runtime_error() {
    // Port 9 (discard) is closed on loopback: connection refused.
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--server",
        "http://127.0.0.1:9",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(
        line.contains("cannot reach the API server at http://127.0.0.1:9"),
        "{line}"
    );
    let out = leader_elect(&[
        "status",
        "--lease-name",
        "x",
        "--server",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(failure(&out).0, 1);
}

#[tokio::test]
async fn rbac_denial_is_a_runtime_error_naming_the_verbs() {
    let server = FakeApiServer::start().await.unwrap();
    server.default_listener().set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        ..Faults::default()
    });
    let url = server.url();
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--server",
        &url,
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(
        line.contains("RBAC denies reading lease default/x"),
        "{line}"
    );
    assert!(line.contains("get, create, update, list, watch"), "{line}");
    server.shutdown().await;
}

#[tokio::test]
async fn status_and_release_of_a_held_lease() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let out = leader_elect(&["status", "--lease-name", "held", "--server", &url]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(line.contains("lease default/held not found"), "{line}");

    // A candidate takes the lease (a `run` without a command), then is SIGKILLed: the lease stays held.
    let mut candidate = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--lease-name",
            "held",
            "--identity",
            "pod-a",
            "--server",
            &url,
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let json = loop {
        let out = leader_elect(&[
            "status",
            "--lease-name",
            "held",
            "--server",
            &url,
            "-o",
            "json",
        ])
        .await;
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    candidate.kill().await.unwrap();
    assert_eq!(json["holder"], "pod-a");
    assert_eq!(json["term"], 0);
    assert_eq!(json["lease_duration_seconds"], 15);
    assert_eq!(json["expired"], false);

    let out = leader_elect(&[
        "release",
        "--lease-name",
        "held",
        "--identity",
        "pod-b",
        "--server",
        &url,
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(
        line.contains("is held by pod-a, not pod-b: refusing to release"),
        "{line}"
    );

    let out = leader_elect(&[
        "release",
        "--lease-name",
        "held",
        "--identity",
        "pod-a",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "released default/held (term 0)"
    );
    let out = leader_elect(&["status", "--lease-name", "held", "--server", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Holder:    <none> (released)"), "{text}");
    assert!(text.contains("Expired:   yes"), "{text}");
    server.shutdown().await;
}
