//! `leader-elect run --fence` against the fake API server: the child's requests go through the loopback
//! proxy with its term's kubeconfig, its writes are stamped with the term and the Lease, and a writer
//! frozen (SIGSTOP) across a takeover that resumes and writes is refused by the proxy (403), leaving the
//! next leader's write in place.
//!
//! The children are shell scripts with curl, reading the server from `$KUBECONFIG`, and kubectl: `$KUBECTL`
//! (which `.ci/run` sets, installing kubectl where it is missing), else `kubectl` on PATH; without either
//! the kubectl test is skipped with the reason printed. Every wait polls a fact (a file, the object) with
//! a generous bound.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect");

/// `curl` of the guarded Lease through the proxy named in `$KUBECONFIG` (its server URL carries the term's
/// token): `$1` the method, `$2` the merge
/// patch; prints the HTTP status code.
const CURL: &str = r#"
request() {
    server=$(sed -n 's/^ *server: //p' "$KUBECONFIG")
    curl -s -o /dev/null -w '%{http_code}' -X "$1" \
        -H 'Content-Type: application/merge-patch+json' --data "$2" \
        "$server/apis/coordination.k8s.io/v1/namespaces/default/leases/guarded"
}
"#;

fn client(server: &FakeApiServer) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(&server.url()).unwrap()
}

/// `leader-elect run --fence` as candidate "a" of Lease `default/proc`, running `sh -c script` with `$DIR`;
/// timings long enough that no term ends by the clock while a test acts.
fn fenced_candidate(server: &FakeApiServer, dir: &Path, script: &str) -> tokio::process::Child {
    fenced_candidate_command(server, dir, script)
        .spawn()
        .unwrap()
}

fn fenced_candidate_command(
    server: &FakeApiServer,
    dir: &Path,
    script: &str,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args([
            "run",
            "--lease-name",
            "proc",
            "--namespace",
            "default",
            "--identity",
            "a",
        ])
        .args(["--server", &server.url(), "--fence"])
        .args([
            "--lease-duration",
            "30s",
            "--renew-deadline",
            "20s",
            "--retry-period",
            "5s",
        ])
        .args(["--", "sh", "-c", &format!("{CURL}\n{script}")])
        .env("DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Polls `f` every 50 ms for at most 60 s.
async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 60 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILLs a process group when dropped (the writer outlives leader-elect by design).
struct KillGroup(Pid);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

async fn create_guarded(server: &FakeApiServer) -> Api<Lease> {
    let leases: Api<Lease> = Api::namespaced(client(server), "default");
    let guarded = serde_json::from_value(json!({"metadata": {"name": "guarded"}})).unwrap();
    leases
        .create(&PostParams::default(), &guarded)
        .await
        .unwrap();
    leases
}

fn annotation(lease: &Lease, key: &str) -> Option<String> {
    lease.metadata.annotations.as_ref()?.get(key).cloned()
}

async fn term(leases: &Api<Lease>) -> i32 {
    leases
        .get("proc")
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_childs_writes_go_through_the_proxy_stamped_with_its_term() {
    let server = FakeApiServer::start().await.unwrap();
    let leases = create_guarded(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let script = r#"cp "$KUBECONFIG" "$DIR/kubeconfig"
request GET '' > "$DIR/read"
request PATCH '{"metadata":{"annotations":{"written-by":"child"}}}' > "$DIR/code.tmp"
mv "$DIR/code.tmp" "$DIR/code"
exec sleep 3600"#;
    let mut leader = fenced_candidate(&server, dir.path(), script);
    let code = wait_for("the child's write", async || read(&dir.path().join("code"))).await;
    assert_eq!(code, "200");
    assert_eq!(read(&dir.path().join("read")).as_deref(), Some("200"));
    let guarded = leases.get("guarded").await.unwrap();
    assert_eq!(annotation(&guarded, "written-by").as_deref(), Some("child"));
    let term = term(&leases).await.to_string();
    assert_eq!(annotation(&guarded, "leaderelection.dev/term"), Some(term));
    assert_eq!(
        annotation(&guarded, "leaderelection.dev/lease").as_deref(),
        Some("default/proc")
    );
    let kubeconfig = read(&dir.path().join("kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("server: http://127.0.0.1:"),
        "{kubeconfig}"
    );
    assert!(
        !kubeconfig.contains(&server.url()),
        "leader-elect's own server is not the child's"
    );

    leader.start_kill().unwrap();
    leader.wait().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_frozen_across_a_takeover_that_resumes_and_writes_is_refused_by_the_proxy() {
    let server = FakeApiServer::start().await.unwrap();
    let leases = create_guarded(&server).await;
    let dir = tempfile::tempdir().unwrap();
    // The writer leaves the child's process group (setsid), so that the end of the term does not kill
    // it: it stands for any writer that outlives its term's kill (a frozen VM, an escaped daemon).
    let writer = format!(
        r#"{CURL}
i=0
while :; do
    i=$((i + 1))
    request PATCH "{{\"metadata\":{{\"annotations\":{{\"written-by\":\"writer-$i\"}}}}}}" >> "$DIR/codes"
    echo >> "$DIR/codes"
    sleep 0.1
done"#
    );
    std::fs::write(dir.path().join("writer.sh"), writer).unwrap();
    let script = r#"setsid sh -c 'echo $$ > "$DIR/writer.pid"; exec sh "$DIR/writer.sh"' </dev/null >/dev/null 2>&1 &
echo $$ > "$DIR/child.pid"
exec sleep 3600"#;
    let mut leader = fenced_candidate(&server, dir.path(), script);
    let codes = || read(&dir.path().join("codes")).unwrap_or_default();
    wait_for("the writer's first write", async || {
        codes().contains("200").then_some(())
    })
    .await;
    let writer = Pid::from_raw(
        read(&dir.path().join("writer.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    );
    let _writer_killed = KillGroup(writer);
    killpg(writer, Signal::SIGSTOP).unwrap();

    // Another candidate takes the Lease; leader-elect ends its term (its child is gone) and the next
    // leader writes the guarded object in its own term.
    let child: i32 = read(&dir.path().join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let next = term(&leases).await + 1;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let takeover = json!({"spec": {"holderIdentity": "b", "leaseTransitions": next,
        "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 3600}});
    leases
        .patch("proc", &PatchParams::default(), &Patch::Merge(takeover))
        .await
        .unwrap();
    wait_for("the old term's child to be gone", async || {
        (nix::sys::signal::kill(Pid::from_raw(child), None).is_err()).then_some(())
    })
    .await;
    let next_write = json!({"metadata": {"annotations": {"written-by": "next-leader",
        "leaderelection.dev/term": next.to_string(), "leaderelection.dev/lease": "default/proc"}}});
    leases
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(next_write),
        )
        .await
        .unwrap();

    let resumed_at = codes().len();
    killpg(writer, Signal::SIGCONT).unwrap();
    let after = wait_for("a write of the resumed writer refused", async || {
        let after = codes()[resumed_at..].to_owned();
        after.contains("403").then_some(after)
    })
    .await;
    let guarded = leases.get("guarded").await.unwrap();
    assert_eq!(
        annotation(&guarded, "written-by").as_deref(),
        Some("next-leader"),
        "the stale writer's writes never landed (its answers after resuming: {after:?})"
    );
    assert_eq!(
        annotation(&guarded, "leaderelection.dev/term"),
        Some(next.to_string())
    );

    leader.start_kill().unwrap();
    leader.wait().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_annotate_under_fence_goes_through_the_proxy_stamped_with_its_term() {
    let kubectl = match std::env::var("KUBECTL") {
        Ok(kubectl) => kubectl,
        Err(_)
            if std::process::Command::new("kubectl")
                .arg("version")
                .arg("--client")
                .output()
                .is_ok() =>
        {
            "kubectl".to_owned()
        }
        Err(_) => {
            eprintln!("skipped: no $KUBECTL and no kubectl on PATH (.ci/run installs it)");
            return;
        }
    };
    let server = FakeApiServer::start().await.unwrap();
    let leases = create_guarded(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let script = r#""$KUBECTL_BIN" --cache-dir "$DIR/cache" annotate lease guarded written-by=kubectl > "$DIR/out" 2>&1
echo $? > "$DIR/rc.tmp"
mv "$DIR/rc.tmp" "$DIR/rc"
exec sleep 3600"#;
    let mut command = fenced_candidate_command(&server, dir.path(), script);
    let mut leader = command.env("KUBECTL_BIN", kubectl).spawn().unwrap();
    let rc = wait_for("kubectl annotate", async || read(&dir.path().join("rc"))).await;
    let out = read(&dir.path().join("out")).unwrap_or_default();
    assert_eq!(rc.trim(), "0", "kubectl annotate failed: {out}");
    let guarded = leases.get("guarded").await.unwrap();
    assert_eq!(
        annotation(&guarded, "written-by").as_deref(),
        Some("kubectl")
    );
    let term = term(&leases).await.to_string();
    assert_eq!(annotation(&guarded, "leaderelection.dev/term"), Some(term));
    assert_eq!(
        annotation(&guarded, "leaderelection.dev/lease").as_deref(),
        Some("default/proc")
    );

    leader.start_kill().unwrap();
    leader.wait().await.unwrap();
    server.shutdown().await;
}
