//! The `leader-elect` binary on bad input: one clear line naming the problem, exit code 2 for usage and
//! configuration errors and 1 for runtime failures, never a panic trace; and `status` / `release` against
//! the fake API server, with Lease holders elected through the library in this process.

use std::process::Output;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Faults};
use leaderelection::{
    Callbacks, Elector, KubeLeaseLock, LeaderElectionRecord, LeaderState, LeaseLock,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect");

/// `leader-elect ARGS` without POD_NAME, POD_NAMESPACE or a kubeconfig.
fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env("KUBECONFIG", "/nonexistent")
        .kill_on_drop(true);
    command
}

async fn leader_elect(args: &[&str]) -> Output {
    command(args).output().await.unwrap()
}

/// As [`leader_elect`], for a command that must end on its own: killed, and the test failed, if it is still
/// running after `bound` (a generous liveness bound: what it checks is a wait that never ends).
async fn leader_elect_within(args: &[&str], bound: Duration) -> Output {
    tokio::time::timeout(bound, command(args).output())
        .await
        .unwrap_or_else(|_| panic!("leader-elect {args:?} still running after {bound:?}"))
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
async fn a_bad_lease_label_or_annotation_is_a_usage_error_naming_the_flag_and_value() {
    let out = leader_elect(&["run", "--lease-name", "x", "--lease-label", "team=a b"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("'team=a b'") && line.contains("--lease-label"),
        "{line}"
    );
    assert!(
        line.contains("invalid value \"a b\" of label \"team\""),
        "{line}"
    );

    let out = leader_elect(&["run", "--lease-name", "x", "--lease-label", "team"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("'team'") && line.contains("expected KEY=VALUE"),
        "{line}"
    );

    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--lease-annotation",
        "bad key=x",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("'bad key=x'") && line.contains("--lease-annotation"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "controller: {leader_election: {lease_name: x, lease_labels: {-team: a}}}",
    )
    .unwrap();
    let out = leader_elect(&["run", "--config", path.to_str().unwrap()]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("invalid controller.leader_election.lease_labels \"-team\""),
        "{line}"
    );
}

#[tokio::test]
async fn missing_lease_name_is_a_usage_error() {
    let out = leader_elect(&["run", "--identity", "a", "--server", "http://127.0.0.1:9"]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(line.contains("lease_name"), "{line}");
}

/// `status` gives up on an unreachable API server; `run` waits for it (see
/// `run_started_before_the_api_server_leads_once_it_answers` in `processes.rs`).
#[tokio::test]
async fn unreachable_server_is_a_runtime_error_for_status() {
    // Port 9 (discard) is closed on loopback: connection refused.
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

/// A client of the fake API server, as `--server URL` makes one.
fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

/// The election record of Lease `default/name`.
async fn lease(url: &str, name: &str) -> LeaderElectionRecord {
    KubeLeaseLock::new(client(url), "default", name)
        .get()
        .await
        .unwrap()
        .unwrap()
        .record
}

/// `leader-elect status -o json` of Lease `default/name` on `url`, which must succeed.
async fn status_json(url: &str, name: &str) -> serde_json::Value {
    let out = leader_elect(&[
        "status",
        "--lease-name",
        name,
        "--server",
        url,
        "-o",
        "json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A candidate elected through the library in this process; it renews every retry period until aborted.
struct Candidate {
    task: tokio::task::JoinHandle<()>,
    state: watch::Receiver<LeaderState>,
}

impl Candidate {
    /// Starts `identity` on Lease `default/name` and waits until it leads.
    async fn leading(
        url: &str,
        name: &str,
        identity: &str,
        config: leaderelection::Config,
    ) -> Self {
        let config = leaderelection::Config {
            identity: identity.into(),
            lease_name: name.into(),
            lease_namespace: "default".into(),
            ..config
        };
        let lock = KubeLeaseLock::new(client(url), "default", name);
        let elector = Elector::new(config, lock, Callbacks::new()).unwrap();
        let mut state = elector.handle().subscribe();
        let task = tokio::spawn(async move {
            elector.run(CancellationToken::new()).await.unwrap();
        });
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(LeaderState::is_leader),
        )
        .await
        .expect("the candidate leads within 10 s")
        .unwrap();
        Self { task, state }
    }

    /// Kills it: no more renewals, no release (as SIGKILL of its process).
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts `identity` on Lease `default/name` through the library, and waits until it sees `leader` lead.
async fn follower(
    url: &str,
    name: &str,
    identity: &str,
    config: leaderelection::Config,
    leader: &str,
) -> (
    watch::Receiver<LeaderState>,
    tokio::task::JoinHandle<Result<(), leaderelection::Error>>,
) {
    let elector = Elector::new(
        leaderelection::Config {
            identity: identity.into(),
            lease_name: name.into(),
            lease_namespace: "default".into(),
            ..config
        },
        KubeLeaseLock::new(client(url), "default", name),
        Callbacks::new(),
    )
    .unwrap();
    let mut state = elector.handle().subscribe();
    let task = tokio::spawn(elector.run(CancellationToken::new()));
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.leader.as_deref() == Some(leader)),
    )
    .await
    .unwrap()
    .unwrap();
    (state, task)
}

#[tokio::test]
async fn status_and_release_of_a_held_lease() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let out = leader_elect(&["status", "--lease-name", "held", "--server", &url]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(line.contains("lease default/held not found"), "{line}");

    // A candidate takes the lease, then crashes: the lease stays held until it expires.
    let fast = leaderelection::Config::default()
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(Duration::from_millis(250));
    let candidate = Candidate::leading(&url, "held", "pod-a", fast).await;
    let json = status_json(&url, "held").await;
    candidate.crash().await;
    assert_eq!(json["holder"], "pod-a");
    assert_eq!(json["term"], 0);
    assert_eq!(json["lease_duration_seconds"], 2);
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

#[tokio::test]
async fn release_of_a_live_holder_is_refused_and_changes_nothing() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    // client-go's timings (15 s / 10 s / 2 s): it renews every 2 s.
    let candidate =
        Candidate::leading(&url, "live", "pod-a", leaderelection::Config::default()).await;
    let before = lease(&url, "live").await;

    let out = leader_elect(&[
        "release",
        "--lease-name",
        "live",
        "--identity",
        "pod-a",
        "--server",
        &url,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (_, line) = failure(&out);
    assert!(
        line.contains(
            "lease default/live is held by \"pod-a\", which is still renewing (renewed during the"
        ) && line.contains("or pass --force to take the Lease from a live holder"),
        "{line}"
    );
    assert!(
        stderr(&out).contains(
            "watching lease default/live for up to 15 s (its leaseDurationSeconds) to see whether \
             \"pod-a\" still renews"
        ),
        "{}",
        stderr(&out)
    );
    // The same holder in the same term, and it still leads.
    let after = lease(&url, "live").await;
    assert_eq!(after.holder_identity, "pod-a");
    assert_eq!(after.lease_transitions, before.lease_transitions);
    assert_eq!(after.acquire_time, before.acquire_time);
    let term = candidate.state.borrow().current_term().cloned();
    assert_eq!(term.map(|t| t.transitions), Some(before.lease_transitions));
    candidate.crash().await;
    server.shutdown().await;
}

#[tokio::test]
async fn forced_release_of_a_live_holder_releases_it_and_ends_its_term() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let mut candidate =
        Candidate::leading(&url, "forced", "pod-a", leaderelection::Config::default()).await;
    let before = lease(&url, "forced").await;

    let out = leader_elect(&[
        "release",
        "--lease-name",
        "forced",
        "--identity",
        "pod-a",
        "--force",
        "--server",
        &url,
    ])
    .await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "released default/forced (term {})",
            before.lease_transitions
        )
    );
    assert!(
        err.contains(
            "--force: releasing lease default/forced from \"pod-a\" without checking whether it \
             still renews"
        ) && err.contains("another candidate may take over at once"),
        "{err}"
    );
    assert!(!err.contains("watching lease"), "{err}");
    // The holder learns of it (at its next renewal, 2 s at most) and its term ends.
    tokio::time::timeout(
        Duration::from_secs(30),
        candidate.state.wait_for(|s| {
            s.current_term()
                .is_none_or(|t| t.transitions != before.lease_transitions)
        }),
    )
    .await
    .expect("the holder's term ends")
    .unwrap();
    candidate.crash().await;
    server.shutdown().await;
}

#[tokio::test]
async fn release_of_a_dead_holder_waits_one_lease_duration_then_releases() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    // Written once by a holder that is gone: nobody renews it.
    let now = jiff::Timestamp::now();
    KubeLeaseLock::new(client(&url), "default", "dead")
        .create(&LeaderElectionRecord {
            holder_identity: "pod-gone".into(),
            lease_duration_seconds: 2,
            acquire_time: Some(now),
            renew_time: Some(now),
            lease_transitions: 3,
            ..LeaderElectionRecord::default()
        })
        .await
        .unwrap();

    let started = Instant::now();
    let out = leader_elect(&[
        "release",
        "--lease-name",
        "dead",
        "--identity",
        "pod-gone",
        "--server",
        &url,
    ])
    .await;
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("watching lease default/dead for up to 2 s")
            && err.contains("\"pod-gone\" did not renew lease default/dead in 2 s"),
        "{err}"
    );
    assert!(took >= Duration::from_secs(2), "released after {took:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "released default/dead (term 3)"
    );
    let released = lease(&url, "dead").await;
    assert_eq!(released.holder_identity, "");
    assert_eq!(released.lease_transitions, 3);
    assert_eq!(released.lease_duration_seconds, 1);

    // Released already: nothing to do, and that is a success.
    let out = leader_elect(&[
        "release",
        "--lease-name",
        "dead",
        "--identity",
        "pod-gone",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "lease default/dead is already released (holderIdentity is empty): nothing to do"
    );
    server.shutdown().await;
}

/// `install DIR` puts a working, executable copy of leader-elect in DIR (the chart's wrap mode needs no
/// `cp` in the image); a missing DIR is a runtime error naming it.
#[tokio::test]
async fn install_copies_a_working_binary_into_a_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().to_str().unwrap();
    let out = leader_elect(&["install", target]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let installed = dir.path().join("leader-elect");
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let version = tokio::process::Command::new(&installed)
        .arg("--version")
        .output()
        .await
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("leader-elect "));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );

    let missing = dir.path().join("missing");
    let (code, message) = failure(&leader_elect(&["install", missing.to_str().unwrap()]).await);
    assert_eq!(code, 1);
    assert!(message.contains(missing.to_str().unwrap()), "{message}");
}

#[tokio::test]
async fn a_bad_candidate_version_is_a_usage_error_naming_the_flag() {
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--coordinated",
        "--binary-version",
        "v1.34",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("--binary-version")
            && line.contains("\"v1.34\"")
            && line.contains("MAJOR.MINOR.PATCH"),
        "{line}"
    );
    let out = leader_elect(&[
        "run",
        "--lease-name",
        "x",
        "--identity",
        "a",
        "--coordinated",
        "--binary-version",
        "1.33.0",
        "--emulation-version",
        "1.34.0",
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("--emulation-version") && line.contains("at most binaryVersion"),
        "{line}"
    );
}

/// Polls every 10 ms until `f` gives `Some`, for at most 10 s.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fake API server running the election controller of coordinated leader election, with a 300 ms
/// election window (kube-apiserver's is 5 s).
async fn coordinated_server() -> FakeApiServer {
    FakeApiServer::builder()
        .coordinated_election(
            fake_apiserver::ElectionTimings::default().election_window(Duration::from_millis(300)),
        )
        .start()
        .await
        .unwrap()
}

/// `run --coordinated` against the fake's election controller: registers its LeaseCandidate (with the
/// versions given), leads once the controller assigns it the Lease it created (strategy kept), and on
/// SIGTERM deletes the LeaseCandidate and releases the Lease.
#[tokio::test]
async fn run_coordinated_registers_leads_when_assigned_and_withdraws_on_sigterm() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let server = coordinated_server().await;
    let url = server.url();
    let mut le = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--coordinated",
            "--binary-version",
            "1.34.0",
            "--emulation-version",
            "1.33.0",
            "--lease-name",
            "l1",
            "--identity",
            "pod-a",
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "200ms",
            "--server",
            &url,
        ])
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let candidates: kube::Api<LeaseCandidate> = kube::Api::namespaced(client(&url), "default");
    let leases: kube::Api<Lease> = kube::Api::namespaced(client(&url), "default");
    let spec = eventually("the LeaseCandidate", || async {
        candidates
            .get_opt("pod-a")
            .await
            .unwrap()
            .and_then(|c| c.spec)
    })
    .await;
    assert_eq!(
        (
            spec.lease_name.as_str(),
            spec.binary_version.as_str(),
            spec.emulation_version.as_deref()
        ),
        ("l1", "1.34.0", Some("1.33.0"))
    );
    // Held by pod-a and renewed by it (its own write sets acquireTime, the controller's does not).
    let held = eventually("pod-a's own renewal of the assigned Lease", || async {
        let spec = leases.get_opt("l1").await.unwrap()?.spec?;
        (spec.holder_identity.as_deref() == Some("pod-a") && spec.acquire_time.is_some())
            .then_some(spec)
    })
    .await;
    assert_eq!(held.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(held.lease_duration_seconds, Some(2));

    kill(Pid::from_raw(le.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), le.wait())
        .await
        .expect("leader-elect exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success());
    assert!(
        candidates.get_opt("pod-a").await.unwrap().is_none(),
        "LeaseCandidate deleted"
    );
    let released = leases.get("l1").await.unwrap().spec.unwrap();
    assert_eq!(released.holder_identity.as_deref(), Some(""));
    server.shutdown().await;
}

#[tokio::test]
async fn yield_needs_an_identity_and_an_existing_lease() {
    let out = leader_elect(&["yield", "--lease-name", "x", "--to", ""]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2);
    assert!(
        line.contains("--to") && line.contains("must not be empty"),
        "{line}"
    );
    let server = FakeApiServer::start().await.unwrap();
    let out = leader_elect(&[
        "yield",
        "--lease-name",
        "missing",
        "--to",
        "pod-b",
        "--server",
        &server.url(),
    ])
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(
        line.contains("lease default/missing not found: nothing to yield"),
        "{line}"
    );
    server.shutdown().await;
}

/// `yield --to pod-b` on a Lease pod-a holds (an uncoordinated one): preferredHolder is set with the
/// strategy Kubernetes requires for it, pod-a hands over, pod-b leads; `status` shows the strategy, the
/// preferred holder and the LeaseCandidates of the Lease.
#[tokio::test]
async fn yield_hands_the_lease_to_the_preferred_candidate_and_status_shows_it() {
    use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};

    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let fast = leaderelection::Config::default()
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(Duration::from_millis(250));
    let a = Candidate::leading(&url, "y", "pod-a", fast.clone()).await;
    let (mut b_state, b_task) = follower(&url, "y", "pod-b", fast, "pod-a").await;

    let out = leader_elect(&[
        "yield",
        "--lease-name",
        "y",
        "--to",
        "pod-b",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("asked \"pod-a\" to hand lease default/y to \"pod-b\" (preferredHolder set)"),
        "{}",
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("\"pod-b\" leads lease default/y (term "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        b_state.wait_for(LeaderState::is_leader),
    )
    .await
    .expect("pod-b leads after the yield")
    .unwrap();
    assert!(!a.state.borrow().is_leader());
    let record = lease(&url, "y").await;
    assert_eq!(record.holder_identity, "pod-b");
    assert_eq!(
        (record.preferred_holder, record.strategy),
        (None, None),
        "pod-b's first write clears both"
    );

    let out = leader_elect(&[
        "yield",
        "--lease-name",
        "y",
        "--to",
        "pod-b",
        "--server",
        &url,
    ])
    .await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already held by \"pod-b\""));

    // A LeaseCandidate of this Lease and one of another, for status.
    let candidates: kube::Api<LeaseCandidate> = kube::Api::namespaced(client(&url), "default");
    for (name, lease) in [("pod-b", "y"), ("other", "z")] {
        let candidate = LeaseCandidate {
            metadata: kube::core::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseCandidateSpec {
                lease_name: lease.into(),
                binary_version: "1.34.0".into(),
                emulation_version: Some("1.33.0".into()),
                strategy: "OldestEmulationVersion".into(),
                ..Default::default()
            }),
        };
        candidates
            .create(&Default::default(), &candidate)
            .await
            .unwrap();
    }

    // Status of a Lease asked to yield (written here as `yield` writes it, on a Lease nobody renews).
    let lock = KubeLeaseLock::new(client(&url), "default", "s");
    lock.create(&LeaderElectionRecord {
        holder_identity: "pod-a".into(),
        lease_duration_seconds: 15,
        strategy: Some("OldestEmulationVersion".into()),
        preferred_holder: Some("pod-b".into()),
        ..LeaderElectionRecord::default()
    })
    .await
    .unwrap();
    let out = leader_elect(&[
        "status",
        "--lease-name",
        "y",
        "--server",
        &url,
        "-o",
        "json",
    ])
    .await;
    let json = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    let names: Vec<&str> = json["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pod-b"], "{json}");
    assert_eq!(json["candidates"][0]["emulation_version"], "1.33.0");
    // Under coordinated election (LeaseCandidates name the Lease, or it has a strategy of its own) yield
    // refuses up front and writes nothing.
    for (lease, because) in [
        ("y", "LeaseCandidates pod-b"),
        ("s", "spec.strategy OldestEmulationVersion"),
    ] {
        let before = self::lease(&url, lease).await;
        let out = leader_elect(&[
            "yield",
            "--lease-name",
            lease,
            "--to",
            "pod-c",
            "--server",
            &url,
        ])
        .await;
        let (code, line) = failure(&out);
        assert_eq!(code, 1, "{line}");
        assert!(
            line.contains(&format!("coordinated leader election ({because})")),
            "{line}"
        );
        assert!(
            line.contains("election controller chooses the holder"),
            "{line}"
        );
        // (Lease y's holder renews it meanwhile: its preferredHolder and strategy tell what yield wrote.)
        let after = self::lease(&url, lease).await;
        assert_eq!(
            (after.preferred_holder, after.strategy),
            (before.preferred_holder, before.strategy),
            "nothing written"
        );
    }
    let out = leader_elect(&["status", "--lease-name", "s", "--server", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Strategy:  OldestEmulationVersion"), "{text}");
    assert!(text.contains("Preferred: pod-b"), "{text}");
    assert!(text.contains("Candidates: <none>"), "{text}");
    b_task.abort();
    a.crash().await;
    server.shutdown().await;

    let server = FakeApiServer::builder()
        .without_lease_candidates()
        .start()
        .await
        .unwrap();
    let url = server.url();
    KubeLeaseLock::new(client(&url), "default", "s")
        .create(&LeaderElectionRecord {
            holder_identity: "pod-a".into(),
            lease_duration_seconds: 15,
            ..LeaderElectionRecord::default()
        })
        .await
        .unwrap();
    let out = leader_elect(&["status", "--lease-name", "s", "--server", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Strategy:  <none> (not coordinated)"),
        "{text}"
    );
    assert!(text.contains("Preferred: <none>"), "{text}");
    assert!(text.contains("Candidates: <not served>"), "{text}");
    server.shutdown().await;
}

/// A coordinated leader that steps down because its child exited (`--on-child-exit release`) deletes its
/// LeaseCandidate before it releases the Lease (the fake's resourceVersion is one counter across kinds,
/// so the two events' versions order them), so the controller cannot assign the released Lease back to a
/// replica that is leaving.
#[tokio::test]
async fn a_coordinated_step_down_withdraws_the_candidate_before_releasing() {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;
    use kube::api::{WatchEvent, WatchParams};

    let server = coordinated_server().await;
    let url = server.url();
    let candidates: kube::Api<LeaseCandidate> = kube::Api::namespaced(client(&url), "default");
    let leases: kube::Api<Lease> = kube::Api::namespaced(client(&url), "default");
    let from = server.resource_version().to_string();
    let mut candidate_events = candidates
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let mut lease_events = leases
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        leader_elect(&[
            "run",
            "--coordinated",
            "--lease-name",
            "l1",
            "--identity",
            "pod-a",
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "200ms",
            "--server",
            &url,
            "--",
            "true",
        ]),
    )
    .await
    .expect("leader-elect steps down within 20 s");
    let (code, line) = failure(&out);
    assert_eq!(code, 1, "{line}");
    let rv = |meta: &kube::core::ObjectMeta| -> u64 {
        meta.resource_version.as_deref().unwrap().parse().unwrap()
    };
    let deleted = loop {
        match candidate_events.next().await.unwrap().unwrap() {
            WatchEvent::Deleted(c) => break rv(&c.metadata),
            _ => continue,
        }
    };
    let released = loop {
        match lease_events.next().await.unwrap().unwrap() {
            WatchEvent::Modified(l)
                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some("")
                    && l.spec
                        .as_ref()
                        .and_then(|s| s.acquire_time.as_ref())
                        .is_some() =>
            {
                break rv(&l.metadata);
            }
            _ => continue,
        }
    };
    assert!(
        deleted < released,
        "LeaseCandidate deleted at resourceVersion {deleted}, Lease released at {released}"
    );
    server.shutdown().await;
}

/// A SIGTERM during start-up is a clean stop: `run` catches SIGTERM from its first line on. The
/// kubeconfig's exec credential plugin holds start-up (kube-client runs it while building the client)
/// until the test has sent SIGTERM; leader-elect then exits 0 rather than dying of the signal, and holds
/// no Lease.
#[tokio::test]
async fn a_sigterm_during_start_up_is_a_clean_exit() {
    use k8s_openapi::api::coordination::v1::Lease;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::os::unix::process::ExitStatusExt;

    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    let plugin = dir.path().join("plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            "touch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.02; done\n\
             echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
             \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"t\"}}}}'\n",
            started.display(),
            go.display()
        ),
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: plugin\n\
             users:\n- name: plugin\n  user:\n    exec:\n      \
             apiVersion: client.authentication.k8s.io/v1beta1\n      command: /bin/sh\n      \
             args: ['{}']\n      interactiveMode: Never\n",
            plugin.display()
        ),
    )
    .unwrap();
    let mut le = tokio::process::Command::new(BIN)
        .args(["run", "--lease-name", "l1", "--identity", "pod-a", "--"])
        .args(["sleep", "60"])
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env("KUBECONFIG", &kubeconfig)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the credential plugin to start", || async {
        started.exists().then_some(())
    })
    .await;
    kill(Pid::from_raw(le.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    std::fs::write(&go, "").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), le.wait())
        .await
        .expect("leader-elect exits within 10 s of SIGTERM")
        .unwrap();
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "exit 0, not death by the signal"
    );
    let leases: kube::Api<Lease> = kube::Api::namespaced(client(&url), "default");
    let holder = leases
        .get_opt("l1")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity);
    assert!(
        holder.as_deref().unwrap_or_default().is_empty(),
        "no Lease held: {holder:?}"
    );
    server.shutdown().await;
}

/// The liveness bound of the start-up failures below: they come before or at the first request, and a
/// wait that never ends is what they check.
const STARTUP: Duration = Duration::from_secs(30);

/// The error line of `leader-elect ARGS`, which must exit with `code` within [`STARTUP`].
async fn fails_at_startup(args: &[&str], code: i32) -> String {
    let out = leader_elect_within(args, STARTUP).await;
    let (got, line) = failure(&out);
    assert_eq!(got, code, "{line}");
    line
}

/// A retry period below 100 ms is refused, naming the field, the value and the bound: each candidate
/// makes about one request per retry period.
#[tokio::test]
async fn a_retry_period_below_the_bound_is_a_usage_error_naming_the_bound() {
    let line = fails_at_startup(
        &[
            "run",
            "--lease-name",
            "x",
            "--identity",
            "a",
            "--server",
            "http://127.0.0.1:9",
            "--retry-period",
            "1ms",
        ],
        2,
    )
    .await;
    assert!(
        line.contains("invalid retry_period \"1ms\": retryPeriod must be at least 100ms"),
        "{line}"
    );
}

/// The arguments of `run --coordinated` for candidate `identity` of Lease `default/x` on `url`.
fn coordinated_run<'a>(identity: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--coordinated",
        "--lease-name",
        "x",
        "--identity",
        identity,
        "--server",
        url,
    ]
}

/// Under `--coordinated` the identity names the LeaseCandidate; one that is not a DNS-1123 subdomain would
/// be refused by kube-apiserver (422) on every try: a usage error at start-up instead, naming the rule.
#[tokio::test]
async fn a_coordinated_identity_that_cannot_name_a_lease_candidate_is_a_usage_error() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let line = fails_at_startup(&coordinated_run("Pod_A", &url), 2).await;
    assert!(
        line.contains("invalid identity \"Pod_A\"")
            && line.contains("names the LeaseCandidate")
            && line.contains("DNS-1123 subdomain"),
        "{line}"
    );
    server.shutdown().await;
}

/// A Role without `leasecandidates` (the chart's default Role without `coordinated.enabled`) under
/// `--coordinated`: exit 1 naming the verb, the resource and the grant, after one refused request; not a
/// retry every retry period.
#[tokio::test]
async fn a_coordinated_candidate_denied_leasecandidates_exits_1_naming_the_grant() {
    let server = FakeApiServer::start().await.unwrap();
    server.default_listener().set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        resources: vec!["leasecandidates".into()],
        ..Faults::default()
    });
    let url = server.url();
    let mut args = coordinated_run("pod-a", &url);
    args.extend([
        "--lease-duration",
        "2s",
        "--renew-deadline",
        "1s",
        "--retry-period",
        "250ms",
    ]);
    let line = fails_at_startup(&args, 1).await;
    assert!(
        line.contains("RBAC denies reading leasecandidate default/pod-a")
            && line.contains("(verb get, resource leasecandidates.coordination.k8s.io)")
            && line.contains("grant get, create, update, delete, list, watch on coordination.k8s.io leasecandidates"),
        "{line}"
    );
    let refused: u64 = server
        .answer_counts()
        .iter()
        .filter(|a| a.resource == "leasecandidates" && a.code == 403)
        .map(|a| a.count)
        .sum();
    assert_eq!(refused, 1, "one refused request, no retry");
    server.shutdown().await;
}

/// LeaseCandidates served but no election controller running: once the candidate has been registered for
/// one election window (5 s, kube-apiserver's electionDuration) without a ping and with no leader, a WARN
/// says that no election controller answered; the candidate keeps waiting (it never takes a coordinated
/// Lease on its own), and says so.
#[tokio::test]
async fn a_coordinated_candidate_without_an_election_controller_says_so_and_keeps_waiting() {
    use k8s_openapi::api::coordination::v1::Lease;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::io::AsyncBufReadExt;

    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let mut le = command(&coordinated_run("pod-a", &url))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(le.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("stderr open");
            if line.contains("no election controller answered") {
                return line;
            }
        }
    })
    .await
    .expect("the WARN within 60 s");
    assert!(
        warning.contains("WARN") && warning.contains("still waiting"),
        "{warning}"
    );
    assert!(le.try_wait().unwrap().is_none(), "it keeps waiting");
    let leases: kube::Api<Lease> = kube::Api::namespaced(client(&url), "default");
    assert!(
        leases.get_opt("x").await.unwrap().is_none(),
        "no Lease taken"
    );
    kill(Pid::from_raw(le.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), le.wait())
        .await
        .expect("leader-elect exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success());
    server.shutdown().await;
}

/// A Lease whose renewTime + leaseDurationSeconds passes year 9999 (any writer may leave one): `status`
/// shows it as not expired, exit 0, in both formats.
#[tokio::test]
async fn status_of_a_lease_expiring_past_year_9999_exits_0() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let far: jiff::Timestamp = "9999-12-30T00:00:00Z".parse().unwrap();
    KubeLeaseLock::new(client(&url), "default", "far")
        .create(&LeaderElectionRecord {
            holder_identity: "pod-far".into(),
            lease_duration_seconds: i32::MAX,
            acquire_time: Some(far),
            renew_time: Some(far),
            lease_transitions: i32::MAX,
            ..LeaderElectionRecord::default()
        })
        .await
        .unwrap();
    let out = leader_elect(&["status", "--lease-name", "far", "--server", &url]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Holder:    pod-far"), "{text}");
    assert!(text.contains("Expired:   no"), "{text}");
    let json = status_json(&url, "far").await;
    assert_eq!(json["expired"], false);
    assert_eq!(json["lease_duration_seconds"], i32::MAX);
    server.shutdown().await;
}

/// With election disabled there is no Lease: a child that fails ends the process without a word about
/// releasing one.
#[tokio::test]
async fn disabled_mode_does_not_say_it_released_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("off.yaml");
    std::fs::write(
        &config,
        "controller:\n  leader_election:\n    enabled: false\n",
    )
    .unwrap();
    let out = leader_elect_within(
        &["run", "--config", config.to_str().unwrap(), "--", "false"],
        STARTUP,
    )
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("the child exited on its own"), "{line}");
    assert!(!line.contains("released the lease"), "{line}");
    assert!(line.contains("no lease to release"), "{line}");
}

/// An unknown key in --config is reported once, with its path, its value and the keys there are.
#[tokio::test]
async fn an_unknown_config_key_is_named_once_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("typo.yaml");
    std::fs::write(
        &config,
        "controller:\n  leader_election:\n    lease_name: x\n    lease_nmae: my-lease\n",
    )
    .unwrap();
    let out = leader_elect(&["run", "--config", config.to_str().unwrap()]).await;
    let (code, line) = failure(&out);
    assert_eq!(code, 2, "{line}");
    assert_eq!(line.matches("lease_nmae").count(), 1, "{line}");
    assert!(
        line.contains(
            "controller.leader_election.lease_nmae \"my-lease\": unknown key (line 4, column 5)"
        ),
        "{line}"
    );
}

/// `yield --to` a candidate nobody runs: after one lease duration yield exits 1 naming who leads, and the
/// leader that released the Lease for the missing candidate leads again (a new term, its work interrupted
/// for about the released record's 1 s): the other candidate, which waits one lease duration for it, never
/// takes it.
#[tokio::test]
async fn yield_to_nobody_exits_1_and_the_leader_leads_again() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    // A lease duration of 4 s: the follower waits that long for the yielding leader to take the Lease
    // back, which it does after 1 s; 3 s of margin for a loaded machine.
    let config = leaderelection::Config::default()
        .with_lease_duration(Duration::from_secs(4))
        .with_renew_deadline(Duration::from_secs(2))
        .with_retry_period(Duration::from_millis(500));
    let a = Candidate::leading(&url, "n", "pod-a", config.clone()).await;
    let term = lease(&url, "n").await.lease_transitions;
    let (c_state, c_task) = follower(&url, "n", "pod-c", config, "pod-a").await;

    let out = leader_elect_within(
        &[
            "yield",
            "--lease-name",
            "n",
            "--to",
            "nobody",
            "--server",
            &url,
        ],
        STARTUP,
    )
    .await;
    let (code, line) = failure(&out);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains(
            "\"nobody\" did not take over lease default/n within 4 s (one lease duration)"
        ),
        "{line}"
    );
    // pod-a leads again: said by yield, or (on a loaded machine) soon after.
    let mut a_state = a.state.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        a_state.wait_for(LeaderState::is_leader),
    )
    .await
    .expect("pod-a leads again")
    .unwrap();
    let record = lease(&url, "n").await;
    assert_eq!(record.holder_identity, "pod-a");
    // One term later: pod-c held no term in between.
    assert_eq!(record.lease_transitions, term + 1, "{record:?}");
    assert_eq!((record.preferred_holder, record.strategy), (None, None));
    assert!(!c_state.borrow().is_leader());
    c_task.abort();
    a.crash().await;
    server.shutdown().await;
}
