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

/// Whether kubectl can be run here; prints why a test is skipped when not.
fn kubectl_installed() -> bool {
    let installed = std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok();
    if !installed {
        println!("skipped: kubectl is not installed on this machine");
    }
    installed
}

/// The whitespace-separated cells of each line of kubectl's table output, header first.
fn table_lines(out: &Output) -> Vec<Vec<String>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_delete() {
    if !kubectl_installed() {
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

/// `kubectl get leases` prints the columns of kube-apiserver's Lease printer (NAME, HOLDER, AGE), from the
/// Table the server answers; `-A` adds kubectl's NAMESPACE column from each row's object metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_leases_prints_the_holder_column() {
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let out = kubectl(&url, &["apply", "--validate=false", "-f", "-"], Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));

    let out = kubectl(&url, &["get", "leases", "-n", "team-a"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let lines = table_lines(&out);
    assert_eq!(lines.len(), 2, "{}", text(&out));
    assert_eq!(lines[0], ["NAME", "HOLDER", "AGE"], "{}", text(&out));
    assert_eq!(lines[1][..2], ["my-lease", "pod-a"], "{}", text(&out));
    assert!(
        lines[1][2].ends_with('s'),
        "an age in seconds: {}",
        text(&out)
    );

    let out = kubectl(&url, &["get", "lease", "my-lease", "-n", "team-a"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        table_lines(&out)[0],
        ["NAME", "HOLDER", "AGE"],
        "{}",
        text(&out)
    );

    let out = kubectl(&url, &["get", "leases", "-A"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let lines = table_lines(&out);
    assert_eq!(
        lines[0],
        ["NAMESPACE", "NAME", "HOLDER", "AGE"],
        "{}",
        text(&out)
    );
    assert_eq!(
        lines[1][..3],
        ["team-a", "my-lease", "pod-a"],
        "{}",
        text(&out)
    );
    server.shutdown().await;
}
