//! A real kubectl against the fake API server: apply, get (table, `-o yaml`, `-A`), delete. Skipped, with
//! the reason printed, where kubectl is not installed.

use std::process::Output;

use fake_apiserver::FakeApiServer;

async fn kubectl(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--server")
        .arg(url)
        .arg("--request-timeout=10s")
        .args(args)
        .env("KUBECONFIG", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl starts");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const LEASE: &str = "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: my-lease
  namespace: team-a
spec:
  holderIdentity: pod-a
  leaseDurationSeconds: 15
  renewTime: \"2026-05-01T12:00:00.123456Z\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_delete() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        println!("skipped: kubectl is not installed on this machine");
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();

    let out = kubectl(&url, &["apply", "--validate=false", "-f", "-"], Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lease.coordination.k8s.io/my-lease created"),
        "{}",
        text(&out)
    );

    let out = kubectl(&url, &["get", "leases", "-A"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("team-a") && stdout.contains("my-lease"),
        "{}",
        text(&out)
    );

    let out = kubectl(
        &url,
        &["get", "lease", "my-lease", "-n", "team-a", "-o", "yaml"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("holderIdentity: pod-a"), "{}", text(&out));
    assert!(
        stdout.contains("renewTime: \"2026-05-01T12:00:00.123456Z\""),
        "{}",
        text(&out)
    );

    // Change it with a merge patch (`kubectl apply` of an existing object needs OpenAPI, which is not served).
    let patch = r#"{"spec":{"holderIdentity":"pod-b"}}"#;
    let out = kubectl(
        &url,
        &[
            "patch", "lease", "my-lease", "-n", "team-a", "--type", "merge", "-p", patch,
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("patched"),
        "{}",
        text(&out)
    );
    let out = kubectl(
        &url,
        &[
            "get",
            "lease",
            "my-lease",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pod-b",
        "{}",
        text(&out)
    );

    let out = kubectl(&url, &["delete", "lease", "my-lease", "-n", "team-a"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = kubectl(&url, &["get", "lease", "my-lease", "-n", "team-a"], None).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("leases.coordination.k8s.io \"my-lease\" not found"),
        "{}\n{:#?}",
        text(&out),
        server
            .request_log()
            .iter()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
    );
    server.shutdown().await;
}
