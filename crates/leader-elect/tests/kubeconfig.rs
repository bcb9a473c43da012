//! Kubeconfig handling as kubectl does it, against the fake API server: the context's namespace is the
//! default namespace of `run` and `status`, `--context` chooses another context, and `--server` replaces
//! only the cluster URL, keeping the kubeconfig's bearer token.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use leaderelection::{KubeLeaseLock, LeaderElectionRecord, LeaseLock};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect");
const TOKEN: &str = "t0ken-from-the-kubeconfig";

/// A kubeconfig with contexts `team-a` (current, namespace `team-a`) and `team-b` (namespace `team-b`),
/// both on cluster `server` with a user whose bearer token is [`TOKEN`].
fn kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: team-a\n\
             clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
             users:\n- name: alice\n  user:\n    token: {TOKEN}\n\
             contexts:\n\
             - name: team-a\n  context:\n    cluster: fake\n    user: alice\n    namespace: team-a\n\
             - name: team-b\n  context:\n    cluster: fake\n    user: alice\n    namespace: team-b\n"
        ),
    )
    .unwrap();
    path
}

/// `leader-elect ARGS` with `kubeconfig` as KUBECONFIG, without POD_NAME or POD_NAMESPACE.
fn command(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("LEADER_ELECT_SERVER")
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true);
    command
}

/// `leader-elect ARGS` with `kubeconfig`: its output and its stderr.
async fn output(kubeconfig: &Path, args: &[&str]) -> (Output, String) {
    let out = command(kubeconfig, args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// `leader-elect status -o json ARGS`, which must succeed without a warning.
async fn status(kubeconfig: &Path, args: &[&str]) -> serde_json::Value {
    let (out, stderr) = output(kubeconfig, &[&["status", "-o", "json"], args].concat()).await;
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("using \"default\""),
        "no namespace was guessed: {stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn client(url: &str) -> kube::Client {
    KubeLeaseLock::client_for_url(url).unwrap()
}

async fn hold(url: &str, namespace: &str, name: &str, holder: &str) {
    KubeLeaseLock::new(client(url), namespace, name)
        .create(&LeaderElectionRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            ..LeaderElectionRecord::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn status_and_run_use_the_kubeconfig_context_namespace_and_context_flag() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &url);
    hold(&url, "team-a", "app", "pod-a").await;
    hold(&url, "team-b", "app", "pod-b").await;
    server.reset_counts();

    let json = status(&kubeconfig, &["--lease-name", "app"]).await;
    assert_eq!(
        (&json["lease"], &json["holder"]),
        (&"team-a/app".into(), &"pod-a".into())
    );
    let json = status(&kubeconfig, &["--lease-name", "app", "--context", "team-b"]).await;
    assert_eq!(json["lease"], "team-b/app");
    // -n wins over the context's namespace.
    let json = status(&kubeconfig, &["--lease-name", "app", "-n", "team-b"]).await;
    assert_eq!(json["lease"], "team-b/app");
    // The kubeconfig's credentials went with every request.
    let log = server.request_log();
    assert!(!log.is_empty());
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        log.iter()
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str())),
        "{log:?}"
    );

    // run: the Lease is created in the context's namespace.
    let run = command(
        &kubeconfig,
        &[
            "run",
            "--lease-name",
            "runner",
            "--identity",
            "pod-r",
            "--context",
            "team-b",
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let lock = KubeLeaseLock::new(client(&url), "team-b", "runner");
    // A generous liveness bound: leading takes one round trip.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = lock.get().await.unwrap().map(|l| l.record.holder_identity);
        if held.as_deref() == Some("pod-r") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod-r leads team-b/runner within 30 s: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill(Pid::from_raw(run.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), run.wait_with_output())
        .await
        .expect("run exits within 30 s of SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("using \"default\""),
        "no namespace was guessed: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a redirected log: {stderr:?}"
    );
    let none = KubeLeaseLock::new(client(&url), "team-a", "runner");
    assert!(none.get().await.unwrap().is_none(), "nothing in team-a");
    server.shutdown().await;
}

#[tokio::test]
async fn server_flag_keeps_the_kubeconfig_bearer_token() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    // The kubeconfig's cluster URL goes nowhere: only --server can reach the fake.
    let kubeconfig = kubeconfig(dir.path(), "http://127.0.0.1:1");
    hold(&url, "team-a", "app", "pod-a").await;
    server.reset_counts();
    let json = status(&kubeconfig, &["--lease-name", "app", "--server", &url]).await;
    assert_eq!(json["holder"], "pod-a");
    let bearer = format!("Bearer {TOKEN}");
    let log = server.request_log();
    let lease_reads: Vec<_> = log.iter().filter(|r| r.resource == "leases").collect();
    assert!(!lease_reads.is_empty(), "{log:?}");
    assert!(
        lease_reads
            .iter()
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str())),
        "{log:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn without_any_namespace_source_one_warning_names_the_guess() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    hold(&url, "default", "app", "pod-a").await;
    let (out, stderr) = output(
        Path::new("/nonexistent"),
        &["status", "--lease-name", "app", "--server", &url],
    )
    .await;
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("using \"default\"").count(),
        1,
        "one warning: {stderr}"
    );
    server.shutdown().await;
}

/// A kubeconfig or context that cannot be used is a usage error (exit 2) naming it, each cause said once.
#[tokio::test]
async fn an_unusable_kubeconfig_or_context_is_a_usage_error_naming_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), "http://127.0.0.1:1");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    for (config, args, names) in [
        (
            Path::new("/nonexistent"),
            vec!["--context", "team-a"],
            "--context \"team-a\": no kubeconfig",
        ),
        (
            kubeconfig.as_path(),
            vec!["--context", "team-c"],
            "kubeconfig context \"team-c\"",
        ),
        (
            kubeconfig.as_path(),
            vec!["--kubeconfig", missing],
            "kubeconfig ",
        ),
    ] {
        let (out, stderr) = output(
            config,
            &[&["status", "--lease-name", "app"], &args[..]].concat(),
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("leader-elect: error: "))
            .unwrap_or_else(|| panic!("{args:?}: {stderr}"));
        assert!(line.contains(names), "{line}");
        if args[0] == "--kubeconfig" {
            assert!(line.contains(missing), "{line}");
            assert_eq!(
                line.matches("No such file or directory").count(),
                1,
                "{line}"
            );
        }
    }
}
