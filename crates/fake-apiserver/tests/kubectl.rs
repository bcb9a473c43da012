//! A real kubectl against the fake API server: apply (validated with the OpenAPI documents, create then
//! update), get (table, `-o yaml`, `-A`), explain, patch, delete. Skipped, with the reason printed, where
//! kubectl is not installed.

use std::process::Output;

use fake_apiserver::{FakeApiServer, ResourceType};

/// `kubectl --server <url> <args>` with no kubeconfig and a cache of this run and server only (kubectl caches
/// discovery and OpenAPI answers per host and port).
fn kubectl_command(url: &str, args: &[&str]) -> tokio::process::Command {
    let cache = format!(
        "{}/kubectl-cache/{}-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id(),
        url.rsplit(':').next().unwrap_or_default()
    );
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--server")
        .arg(url)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("KUBECONFIG", "/dev/null");
    cmd
}

async fn kubectl(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = kubectl_command(url, &[&["--request-timeout=10s"], args].concat());
    cmd.stdin(std::process::Stdio::piped())
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

/// A server that also serves the custom resource `claims.example.com/v1` `Claim`.
async fn claims_server() -> FakeApiServer {
    FakeApiServer::builder()
        .custom_resource(ResourceType::custom(
            "claims.example.com",
            "v1",
            "Claim",
            "claims",
            true,
        ))
        .start()
        .await
        .unwrap()
}

/// `kubectl patch --type merge` of my-lease's holderIdentity to `holder` (kubectl's manager `kubectl-patch`).
async fn holder_patched_to(url: &str, holder: &str) -> Output {
    let patch = format!(r#"{{"spec":{{"holderIdentity":"{holder}"}}}}"#);
    kubectl(
        url,
        &[
            "patch", "lease", "my-lease", "-n", "team-a", "--type", "merge", "-p", &patch,
        ],
        None,
    )
    .await
}

/// my-lease's holderIdentity, as `kubectl get -o jsonpath` prints it.
async fn holder(url: &str) -> String {
    let jsonpath = "jsonpath={.spec.holderIdentity}";
    let out = kubectl(
        url,
        &["get", "lease", "my-lease", "-n", "team-a", "-o", jsonpath],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

    let out = kubectl(&url, &["apply", "-f", "-"], Some(LEASE)).await;
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

    // Change it with a merge patch.
    let out = holder_patched_to(&url, "pod-b").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("patched"),
        "{}",
        text(&out)
    );
    assert_eq!(holder(&url).await, "pod-b");

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

/// `kubectl get leases -w` keeps the HOLDER column for the changes it watches: watch events carry the Table
/// form too. (Without it kubectl falls back to NAME and AGE, printing a new header.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_leases_watch_prints_the_new_holder() {
    use tokio::io::AsyncBufReadExt;
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let out = kubectl(&url, &["apply", "-f", "-"], Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));

    let mut watch = kubectl_command(&url, &["get", "leases", "-n", "team-a", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl starts");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        // A bound on a hung kubectl, not a wait for something to happen.
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("kubectl prints a line")
            .unwrap()
            .expect("kubectl is still watching");
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(next_line().await, ["NAME", "HOLDER", "AGE"]);
    assert_eq!(next_line().await[..2], ["my-lease", "pod-a"]);

    let changed = LEASE.replace("holderIdentity: pod-a", "holderIdentity: pod-b");
    let out = kubectl(&url, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(out.status.success(), "{}", text(&out));
    let line = next_line().await;
    assert_eq!(line.len(), 3, "{line:?}");
    assert_eq!(line[..2], ["my-lease", "pod-b"]);
    watch.kill().await.unwrap();
    server.shutdown().await;
}

/// `kubectl apply` validates against the OpenAPI v3 documents (no `--validate=false`): it creates the Lease,
/// then a second `apply` of a changed manifest updates it with the strategic merge patch it computes from the
/// Lease schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_then_updates_a_lease() {
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let out = kubectl(&url, &["apply", "-f", "-"], Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lease.coordination.k8s.io/my-lease created"),
        "{}",
        text(&out)
    );

    let changed = LEASE.replace("holderIdentity: pod-a", "holderIdentity: pod-b");
    let out = kubectl(&url, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("lease.coordination.k8s.io/my-lease configured"),
        "{}",
        text(&out)
    );
    let patches: Vec<_> = server
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "patch")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert_eq!(patches[0].code, Some(200), "{patches:#?}");
    let out = kubectl(
        &url,
        &[
            "get",
            "lease",
            "my-lease",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseDurationSeconds}",
        ],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pod-b 15",
        "{}",
        text(&out)
    );

    let out = kubectl(&url, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("lease.coordination.k8s.io/my-lease unchanged"),
        "{}",
        text(&out)
    );
    server.shutdown().await;
}

/// `kubectl apply` of a Lease with a field Leases do not have fails, as against kube-apiserver: kubectl sends
/// `fieldValidation=Strict` (the OpenAPI documents say the server validates) and the server refuses the
/// unknown field with a 400 `BadRequest`, on create and on the patch of a second `apply`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_refuses_an_unknown_lease_field() {
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let typo = LEASE.replace("holderIdentity: pod-a", "holder: pod-a");
    let out = kubectl(&url, &["apply", "-f", "-"], Some(&typo)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Lease in version \"v1\" cannot be handled as a Lease: strict decoding error: unknown field \"spec.holder\""
        ),
        "{}",
        text(&out)
    );
    let out = kubectl(&url, &["get", "lease", "my-lease", "-n", "team-a"], None).await;
    assert!(!out.status.success(), "nothing was created: {}", text(&out));

    let out = kubectl(&url, &["apply", "-f", "-"], Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));
    let typo = LEASE.replace("leaseDurationSeconds: 15", "leaseDuration: 20");
    let out = kubectl(&url, &["apply", "-f", "-"], Some(&typo)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("strict decoding error: unknown field \"spec.leaseDuration\""),
        "{}",
        text(&out)
    );
    server.shutdown().await;
}

/// `kubectl apply` of a custom resource, created then updated (a merge patch: kubectl computes one for kinds
/// it does not know), validated against the permissive schema the server publishes for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_then_updates_a_custom_resource() {
    if !kubectl_installed() {
        return;
    }
    let server = claims_server().await;
    let url = server.url();
    let claim = "apiVersion: claims.example.com/v1
kind: Claim
metadata:
  name: shard-0
  namespace: team-a
spec:
  shard: 0
";
    let out = kubectl(&url, &["apply", "-f", "-"], Some(claim)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("claim.claims.example.com/shard-0 created"),
        "{}",
        text(&out)
    );
    let changed = claim.replace("shard: 0", "shard: 1");
    let out = kubectl(&url, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("claim.claims.example.com/shard-0 configured"),
        "{}",
        text(&out)
    );
    let out = kubectl(
        &url,
        &[
            "get",
            "claim",
            "shard-0",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.spec.shard}",
        ],
        None,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1", "{}", text(&out));
    server.shutdown().await;
}

/// `kubectl explain` finds the Lease schema in the OpenAPI v3 document, with its fields and descriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_lease_shows_the_lease_schema() {
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let out = kubectl(&server.url(), &["explain", "lease.spec"], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "KIND:       Lease",
        "LeaseSpec is a specification of a Lease.",
        "holderIdentity\t<string>",
        "leaseDurationSeconds\t<integer>",
        "renewTime\t<string>",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in {}", text(&out));
    }
    server.shutdown().await;
}

/// `kubectl apply` stores a ValidatingAdmissionPolicy and its binding (cluster-scoped kinds found through
/// discovery), which then refuse a write: kubectl prints kube-apiserver's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_installs_an_admission_policy_that_refuses_a_write() {
    if !kubectl_installed() {
        return;
    }
    let server = claims_server().await;
    let url = server.url();
    let policy = "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: small-shards
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [claims.example.com]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [claims]
  validations:
  - expression: object.spec.shard < 10
    message: shards are numbered below 10
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: small-shards
spec:
  policyName: small-shards
  validationActions: [Deny]
";
    let out = kubectl(&url, &["apply", "-f", "-"], Some(policy)).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "validatingadmissionpolicy.admissionregistration.k8s.io/small-shards created"
        ) && stdout.contains(
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/small-shards created"
        ),
        "{}",
        text(&out)
    );
    let claim = "apiVersion: claims.example.com/v1
kind: Claim
metadata:
  name: shard-12
  namespace: team-a
spec:
  shard: 12
";
    let out = kubectl(&url, &["apply", "-f", "-"], Some(claim)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "ValidatingAdmissionPolicy 'small-shards' with binding 'small-shards' denied request: shards \
             are numbered below 10"
        ),
        "{}",
        text(&out)
    );
    server.shutdown().await;
}

/// `kubectl apply --server-side` (kubectl's field manager, `kubectl`): creates the Lease, then refuses to
/// take a field another manager changed since (kube-apiserver's conflict message), and takes it with
/// `--force-conflicts`.
#[tokio::test]
async fn kubectl_server_side_apply_creates_conflicts_and_forces() {
    if !kubectl_installed() {
        return;
    }
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let apply = ["apply", "--server-side", "-f", "-"];
    let out = kubectl(&url, &apply, Some(LEASE)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("lease.coordination.k8s.io/my-lease serverside-applied"),
        "{}",
        text(&out)
    );
    let out = holder_patched_to(&url, "pod-b").await;
    assert!(out.status.success(), "{}", text(&out));

    let changed = LEASE.replace("holderIdentity: pod-a", "holderIdentity: pod-c");
    let out = kubectl(&url, &apply, Some(&changed)).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using coordination.k8s.io/v1: \
             .spec.holderIdentity"
        ),
        "{}",
        text(&out)
    );
    let forced = ["apply", "--server-side", "--force-conflicts", "-f", "-"];
    let out = kubectl(&url, &forced, Some(&changed)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(holder(&url).await, "pod-c");
    server.shutdown().await;
}
