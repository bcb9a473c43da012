//! Real `leader-elect run` processes against the fake API server.
//!
//! Elections: each child records its pid; exactly one child runs at a time; SIGKILL of the leader -> its
//! child dies with it and a new child starts after the old lease expired (never before) and within
//! lease_duration + 2 x retry_period; SIGTERM -> handover without waiting for expiry; SIGSTOP of the
//! leader past its renew deadline -> a new leader, and on SIGCONT the old leader-elect stops its child at
//! once and never claims again.
//!
//! The child's term: a child ignoring SIGTERM is SIGKILLed by its work deadline before the next leader's
//! child starts; grandchildren die with the term, with SIGTERM and with SIGKILL of leader-elect; orphans
//! are reaped when leader-elect is PID 1; a second SIGTERM skips the grace period; a stderr nobody reads
//! or that is closed changes none of that; a variable that is not UTF-8 and a binary replaced on disk
//! still start the child.
//!
//! Outside what can be frozen (rule 13): SIGSTOP of leader-elect alone, or Ctrl-Z, for 3 x lease duration
//! while a follower takes over: the guardian kills the child at its work deadline, no two children work
//! at once, and the continued leader-elect follows; Ctrl-Z stops the child with leader-elect and SIGCONT
//! before the deadline continues both; the guardian binary kills at a deadline while its input is open.
//!
//! Startup: disabled mode starts the child without any kubeconfig; an API server that is unreachable or
//! answers 503 / 429 is waited out (one WARN, not ready meanwhile, SIGTERM ends the wait with exit 0) and
//! the candidate leads once it answers; a 401 or 403 after the outage exits 1 naming the verb and resource.
//! Over TLS, with the server and its CA in a kubeconfig, candidates lead and hand over on SIGTERM.
//!
//! Nothing here sleeps and hopes: every wait polls a fact (a file, a pid, an exit code) with a generous
//! bound, and the children's overlap is judged from the timestamps they write themselves (one machine,
//! one clock).

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Faults};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect");

struct Timings {
    lease: Duration,
    renew: Duration,
    retry: Duration,
}

const FAST: Timings = Timings {
    lease: Duration::from_secs(2),
    renew: Duration::from_secs(1),
    retry: Duration::from_millis(250),
};

/// Long enough that nothing ends by the clock while a test acts (stop window 9s: 30 - 20 - 1).
const SLOW: Timings = Timings {
    lease: Duration::from_secs(30),
    renew: Duration::from_secs(20),
    retry: Duration::from_secs(5),
};

/// The arguments of `leader-elect run` for candidate `identity` on `url`, up to the command.
fn run_args(url: &str, identity: &str, t: &Timings) -> Vec<String> {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    [
        "run",
        "--lease-name",
        "proc",
        "--namespace",
        "default",
        "--server",
        url,
        "--identity",
        identity,
        "--lease-duration",
        &d(t.lease),
        "--renew-deadline",
        &d(t.renew),
        "--retry-period",
        &d(t.retry),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Candidate `identity` running `sh -c script` while it leads, with `$DIR` set to `dir`; in its own
/// process group, killed when dropped.
fn candidate(
    url: &str,
    identity: &str,
    t: &Timings,
    dir: &Path,
    script: &str,
) -> tokio::process::Command {
    command_with(run_args(url, identity, t), dir, script)
}

/// `leader-elect` with `args` and `-- sh -c script`, with `$DIR` set to `dir`; in its own process group,
/// killed when dropped.
fn command_with(args: Vec<String>, dir: &Path, script: &str) -> tokio::process::Command {
    let mut command = hermetic(BIN);
    command
        .args(args)
        .args(["--", "sh", "-c", script])
        .env("DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Records its pid in `$DIR/c<i>-<term>.pid`, then sleeps.
const PID_SCRIPT: &str =
    r#"echo $$ > "$DIR/$LEADER_ELECT_IDENTITY-$LEADER_ELECT_TERM.pid"; exec sleep 3600"#;

fn spawn_with(url: &str, dir: &Path, i: usize, t: &Timings, script: &str) -> tokio::process::Child {
    candidate(url, &format!("c{i}"), t, dir, script)
        .spawn()
        .unwrap()
}

/// Keeps its own record: its start time (ns, `date +%s%N`) in `$DIR/c<i>-<term>.start` before anything
/// else, its pid in `.pid`; on SIGTERM it drains for 0.5 s, then writes its exit time in `.exit` as its
/// last act. A child SIGKILLed instead never writes `.exit`.
const RECORDING_SCRIPT: &str = r#"at="$DIR/$LEADER_ELECT_IDENTITY-$LEADER_ELECT_TERM"; date +%s%N > "$at.start"
trap 'sleep 0.5; date +%s%N > "$at.exit"; exit 0' TERM; echo $$ > "$at.pid"
while :; do sleep 0.05; done"#;

/// Asserts that `earlier` came before `later` (both ns since the epoch, as the children record them),
/// printing the gap; returns it in ms.
fn assert_before(earlier: u128, later: u128, first: &str, then: &str) -> f64 {
    let gap_ms = (later as f64 - earlier as f64) / 1e6;
    println!("{first} came {gap_ms:.1} ms before {then}");
    assert!(
        earlier < later,
        "{then} came {:.1} ms before {first}: both ran at once",
        -gap_ms
    );
    gap_ms
}

/// The time candidate `i`'s child of `term` recorded in `$DIR/c<i>-<term>.<what>`, once written whole.
fn recorded(dir: &Path, i: usize, term: i64, what: &str) -> Option<u128> {
    std::fs::read_to_string(dir.join(format!("c{i}-{term}.{what}")))
        .ok()?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// Ignores SIGTERM (and so do the processes it starts), records its pid in `$DIR/<identity>.pid`, and
/// appends a timestamp (ns, `date +%s%N`) to `$DIR/<identity>.stamps` every 10 ms.
const STUBBORN_SCRIPT: &str = r#"trap '' TERM; echo $$ > "$DIR/$LEADER_ELECT_IDENTITY.pid"
while :; do date +%s%N >> "$DIR/$LEADER_ELECT_IDENTITY.stamps"; sleep 0.01; done"#;

/// Starts two sleeping grandchildren and records their pids in `$DIR/a.pid` and `$DIR/b.pid`.
const GRANDCHILDREN_SCRIPT: &str =
    r#"sleep 1000 & echo $! > "$DIR/a.pid"; sleep 1000 & echo $! > "$DIR/b.pid"; wait"#;

/// A pid is running if it exists and is not a zombie.
fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// State and parent pid of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The zombies whose parent is `parent`.
fn zombies_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| stat(pid) == Some(('Z', parent)))
        .collect()
}

/// The pid written in `path`, once it is there.
fn pid_in(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Every whole timestamp line in `path`.
fn stamps(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn pid(child: &tokio::process::Child) -> Pid {
    Pid::from_raw(child.id().unwrap() as i32)
}

async fn exit_code(child: &mut tokio::process::Child, within: Duration) -> Option<i32> {
    let status = tokio::time::timeout(within, child.wait())
        .await
        .ok()?
        .unwrap();
    status.code()
}

/// `leader-elect` (the binary at `exe`) with an empty kubeconfig: never the kubeconfig of the machine
/// running the tests, whose context namespace and credentials would apply to `--server`.
fn hermetic(exe: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(exe);
    command.env("KUBECONFIG", "/dev/null");
    command
}

/// The Lease as `leader-elect status -o json` prints it.
async fn status(url: &str) -> serde_json::Value {
    let out = hermetic(BIN)
        .args([
            "status",
            "--lease-name",
            "proc",
            "--namespace",
            "default",
            "--server",
            url,
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Lease's holder as `leader-elect status` reads it ("" once released).
async fn holder(url: &str) -> String {
    status(url).await["holder"].as_str().unwrap().to_owned()
}

/// (candidate index, term, pid) of every child that ever started.
fn children(dir: &Path) -> Vec<(usize, i64, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".pid") else {
            continue;
        };
        let Some((id, term)) = stem.split_once('-') else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(pid) = text.trim().parse() else {
            continue;
        };
        found.push((id[1..].parse().unwrap(), term.parse().unwrap(), pid));
    }
    found
}

fn alive(dir: &Path) -> Vec<(usize, i64, i32)> {
    children(dir).into_iter().filter(|c| running(c.2)).collect()
}

async fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn gone(pids: &[i32], within: Duration) -> bool {
    wait_for(within, || pids.iter().all(|&p| !running(p)).then_some(()))
        .await
        .is_some()
}

/// Starts three candidates; returns them and the first leader's (candidate, term, pid).
async fn three(
    url: &str,
    dir: &Path,
    t: &Timings,
) -> (Vec<tokio::process::Child>, (usize, i64, i32)) {
    three_with(url, dir, t, PID_SCRIPT).await
}

/// [`three`], each candidate running `script`.
async fn three_with(
    url: &str,
    dir: &Path,
    t: &Timings,
    script: &str,
) -> (Vec<tokio::process::Child>, (usize, i64, i32)) {
    let procs: Vec<_> = (0..3).map(|i| spawn_with(url, dir, i, t, script)).collect();
    let first = wait_for(Duration::from_secs(20), || alive(dir).first().copied())
        .await
        .expect("a leader");
    (procs, first)
}

async fn stop_all(procs: &mut [tokio::process::Child]) {
    for p in procs.iter() {
        if let Some(pid) = p.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for p in procs.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(10), p.wait()).await;
    }
}

/// Over TLS, as against kube-apiserver: the candidates find the server and trust its CA through a kubeconfig
/// (`KUBECONFIG`, no `--server`), lead, and hand over on SIGTERM without waiting for expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_kubeconfig_sigterm_hands_over() {
    let server = FakeApiServer::builder().tls(true).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(server.default_listener())).unwrap();
    let mut procs: Vec<_> = (0..2)
        .map(|i| {
            let mut args = run_args("", &format!("c{i}"), &SLOW);
            let server_flag = args.iter().position(|a| a == "--server").unwrap();
            args.drain(server_flag..server_flag + 2);
            command_with(args, dir.path(), PID_SCRIPT)
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("LEADER_ELECT_SERVER")
                .spawn()
                .unwrap()
        })
        .collect();
    let (leader, _, child) = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).first().copied()
    })
    .await
    .expect("a leader over TLS");
    let stopped = Instant::now();
    kill(pid(&procs[leader]), Signal::SIGTERM).unwrap();
    let next = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).into_iter().find(|c| c.0 != leader)
    })
    .await
    .expect("a new leader's child");
    let handover = stopped.elapsed();
    assert!(!running(child), "the old child had exited");
    // Polling would take a retry period (5 s), expiry the lease duration (30 s).
    assert!(handover < SLOW.retry, "handover waited {handover:?}");
    assert_eq!(next.0, 1 - leader);
    stop_all(&mut procs).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_fails_over_after_expiry_and_kills_the_orphan() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, (leader, _, child)) = three(&server.url(), dir.path(), &FAST).await;
    for _ in 0..50 {
        assert_eq!(
            alive(dir.path()).len(),
            1,
            "exactly one child runs: {:?}",
            children(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let killed = Instant::now();
    procs[leader].start_kill().unwrap();
    let orphan_gone = wait_for(Duration::from_secs(2), || (!running(child)).then_some(())).await;
    assert!(
        orphan_gone.is_some(),
        "the child died with its leader-elect (parent-death signal)"
    );
    let (next, _, _) = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).into_iter().find(|c| c.0 != leader)
    })
    .await
    .expect("a new leader's child");
    let failover = killed.elapsed();
    println!("crash failover: {failover:?} (lease {:?})", FAST.lease);
    assert_ne!(next, leader);
    // The last renew was at most one retry period before the kill: the lease cannot have expired earlier.
    assert!(
        failover >= FAST.lease - FAST.retry,
        "took over before the lease expired: {failover:?}"
    );
    assert!(
        failover <= FAST.lease + 2 * FAST.retry,
        "failover took {failover:?}"
    );
    stop_all(&mut procs).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_without_waiting_for_expiry() {
    let slow = Timings {
        lease: Duration::from_secs(30),
        renew: Duration::from_secs(20),
        retry: Duration::from_secs(5),
    };
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, (leader, term, child)) =
        three_with(&server.url(), dir.path(), &slow, RECORDING_SCRIPT).await;
    let stopped = Instant::now();
    kill(
        Pid::from_raw(procs[leader].id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let next = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).into_iter().find(|c| c.0 != leader)
    })
    .await
    .expect("a new leader's child");
    let handover = stopped.elapsed();
    println!("graceful handover: {handover:?}");
    assert!(
        !running(child),
        "the old child had exited before the new one started"
    );
    // From the children's own records: the old child got SIGTERM (not a SIGKILL), drained, and exited
    // before the new child started.
    let old_exit = wait_for(Duration::from_secs(5), || {
        recorded(dir.path(), leader, term, "exit")
    })
    .await
    .expect("the old child recorded its exit: it was stopped by SIGTERM, not killed");
    let new_start = recorded(dir.path(), next.0, next.1, "start").expect("the new child's start");
    assert_before(
        old_exit,
        new_start,
        "the old child's exit",
        "the new child's start",
    );
    // Polling would take a retry period (5 s), expiry the lease duration (30 s).
    assert!(handover < slow.retry, "handover waited {handover:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), procs[leader].wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(alive(dir.path()), vec![next]);
    stop_all(&mut procs).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_past_the_renew_deadline_then_sigcont_stops_the_old_child() {
    let server = FakeApiServer::start().await.unwrap();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, (leader, _, child)) = three(&url, dir.path(), &FAST).await;
    // leader-elect and its child's process group freeze together, as in a paused VM or container.
    let group = pid(&procs[leader]);
    let child_group = Pid::from_raw(child);
    killpg(group, Signal::SIGSTOP).unwrap();
    killpg(child_group, Signal::SIGSTOP).unwrap();
    let next = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).into_iter().find(|c| c.0 != leader)
    })
    .await
    .expect("a new leader while the old one is frozen");
    killpg(group, Signal::SIGCONT).unwrap();
    // Often already gone: the resumed leader-elect SIGKILLs it at once, stopped or not.
    let _ = killpg(child_group, Signal::SIGCONT);
    let resumed = Instant::now();
    wait_for(Duration::from_secs(5), || (!running(child)).then_some(()))
        .await
        .expect("the old child is stopped after SIGCONT");
    println!("old child lived {:?} after SIGCONT", resumed.elapsed());
    // The old leader never claims again while the new one renews.
    tokio::time::sleep(2 * FAST.lease).await;
    let started_by_old: Vec<_> = children(dir.path())
        .into_iter()
        .filter(|c| c.0 == leader && c.2 != child)
        .collect();
    assert!(
        started_by_old.is_empty(),
        "the old leader started {started_by_old:?}"
    );
    assert_eq!(alive(dir.path()), vec![next]);
    assert_eq!(holder(&url).await, format!("c{}", next.0));
    stop_all(&mut procs).await;
    server.shutdown().await;
}

/// Item: the child's SIGKILL comes from its term's work deadline (`sent_at + lease_duration - margin`),
/// not from the SIGTERM plus a grace period. A leader cut off from the API, whose child ignores SIGTERM:
/// its child's last timestamp is older than the new leader's child's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_ignoring_sigterm_is_killed_by_the_work_deadline_before_the_next_child_starts() {
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _a = candidate(&server.url(), "a", &FAST, d, STUBBORN_SCRIPT)
        .spawn()
        .unwrap();
    let a_child = wait_for(Duration::from_secs(20), || pid_in(&d.join("a.pid")))
        .await
        .expect("a leads");
    b_takes_over_from_a_cut_off(&server, &spare, d, a_child).await;
}

/// Starts candidate `b` (stubborn child) on `spare`, cuts the leader `a` (whose child is `a_child`) off
/// the API on the default listener, and asserts that a's child was gone before b's child's first write.
async fn b_takes_over_from_a_cut_off(
    server: &FakeApiServer,
    spare: &fake_apiserver::Listener,
    d: &Path,
    a_child: i32,
) {
    let _b = candidate(&spare.url(), "b", &FAST, d, STUBBORN_SCRIPT)
        .spawn()
        .unwrap();
    server.default_listener().set_faults(Faults::partition());
    wait_for(Duration::from_secs(20), || pid_in(&d.join("b.pid")))
        .await
        .expect("b takes over");
    assert_gone_before_the_next_worked(d, a_child, "a", "b").await;
}

/// Asserts that the child `old_child`, heartbeating into `$DIR/<old>.stamps`, is gone, and that its last
/// heartbeat came before the first one in `$DIR/<new>.stamps`.
async fn assert_gone_before_the_next_worked(d: &Path, old_child: i32, old: &str, new: &str) {
    assert!(
        gone(&[old_child], Duration::from_secs(20)).await,
        "{old}'s child is still running"
    );
    let old_last = stamps(&d.join(format!("{old}.stamps")))
        .into_iter()
        .max()
        .unwrap();
    let new_first = wait_for(Duration::from_secs(5), || {
        stamps(&d.join(format!("{new}.stamps"))).into_iter().min()
    })
    .await
    .unwrap();
    assert_before(
        old_last,
        new_first,
        &format!("{old}'s child's last write"),
        &format!("{new}'s child's first"),
    );
}

/// client-go's default timings (15 s / 10 s / 2 s).
const DEFAULT: Timings = Timings {
    lease: Duration::from_secs(15),
    renew: Duration::from_secs(10),
    retry: Duration::from_secs(2),
};

/// Ignores SIGTERM (and so do the processes it starts), records its pid in `$DIR/$INCARNATION.pid`, and
/// appends a timestamp (ns, `date +%s%N`) to `$DIR/$INCARNATION.stamps` every 10 ms: one file per process,
/// whatever the identity.
const INCARNATION_SCRIPT: &str = r#"trap '' TERM; echo $$ > "$DIR/$INCARNATION.pid"
while :; do date +%s%N >> "$DIR/$INCARNATION.stamps"; sleep 0.01; done"#;

/// Process `incarnation` of candidate `x` on `url`, running [`INCARNATION_SCRIPT`] while it leads.
fn incarnation(url: &str, t: &Timings, dir: &Path, incarnation: &str) -> tokio::process::Command {
    let mut command = candidate(url, "x", t, dir, INCARNATION_SCRIPT);
    command.env("INCARNATION", incarnation).env("NO_COLOR", "1");
    command
}

/// Rule 12, the force-deleted StatefulSet pod: leader `x` is cut off from the API (its node unreachable,
/// its listener black-holed) and a second process starts with the same identity, as the recreated pod
/// does. The new one waits for the Lease to expire by its own clock: from the children's own records
/// (both ignore SIGTERM), the old child's last heartbeat comes before the new child's first.
async fn a_reused_identity_waits_for_the_cut_off_incarnation(t: &Timings) {
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _old = incarnation(&server.url(), t, d, "old").spawn().unwrap();
    let old_child = wait_for(Duration::from_secs(20), || pid_in(&d.join("old.pid")))
        .await
        .expect("the old incarnation leads");
    server.default_listener().set_faults(Faults::partition());
    let cut_off = Instant::now();
    let _new = incarnation(&spare.url(), t, d, "new").spawn().unwrap();
    wait_for(3 * t.lease + Duration::from_secs(20), || {
        pid_in(&d.join("new.pid"))
    })
    .await
    .expect("the new incarnation leads once the old one's Lease expired");
    println!(
        "the new incarnation led {:?} after the cut",
        cut_off.elapsed()
    );
    assert_gone_before_the_next_worked(d, old_child, "old", "new").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_12_a_reused_identity_waits_for_the_cut_off_incarnation_at_short_timings() {
    a_reused_identity_waits_for_the_cut_off_incarnation(&FAST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_12_a_reused_identity_waits_for_the_cut_off_incarnation_at_default_timings() {
    a_reused_identity_waits_for_the_cut_off_incarnation(&DEFAULT).await;
}

/// The Lease's term (`leaseTransitions`) as `leader-elect status` reads it.
async fn term(url: &str) -> i64 {
    status(url).await["term"].as_i64().unwrap()
}

/// Rule 12, two live processes with one identity `x` (a copied `--identity`) for 30 s, each on its own
/// listener: one leads, the other waits and writes nothing; each sends at most one Lease request per
/// retry period (after a few to start), the term changes at most once, and the waiting one logs an
/// ERROR naming the identity, at most once per lease duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_12_two_live_processes_with_one_identity_neither_storm_nor_fight() {
    const RUN: Duration = Duration::from_secs(30);
    let t = &FAST;
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut first = incarnation(&server.url(), t, d, "first").spawn().unwrap();
    wait_for(Duration::from_secs(20), || pid_in(&d.join("first.pid")))
        .await
        .expect("the first process leads");
    let term_before = term(&server.url()).await;
    server.reset_counts();
    let second = incarnation(&spare.url(), t, d, "second")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(RUN).await;
    let counts = server.counts();
    let term_after = term(&server.url()).await;
    let lease_requests = |listener: usize| -> u64 {
        counts
            .iter()
            .filter(|c| c.listener == listener && c.resource == "leases")
            .map(|c| c.count)
            .sum()
    };
    let bound = u64::try_from(RUN.as_millis() / t.retry.as_millis()).unwrap() + 5;
    for (who, listener) in [("first", 0), ("second", spare.id())] {
        let requests = lease_requests(listener);
        println!("{who}: {requests} Lease requests in {RUN:?}");
        assert!(
            requests <= bound,
            "{who} sent {requests} Lease requests in {RUN:?} (at most {bound}): {counts:?}"
        );
    }
    assert!(
        term_after - term_before <= 1,
        "the term went from {term_before} to {term_after}"
    );
    kill(pid(&second), Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), second.wait_with_output())
        .await
        .expect("the second process exits on SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                && l.contains("another process holds the lease under this candidate's identity x")
        })
        .collect();
    println!("{} ERROR lines: {errors:#?}", errors.len());
    let most = usize::try_from(RUN.as_secs() / t.lease.as_secs()).unwrap() + 2;
    assert!(
        (1..=most).contains(&errors.len()),
        "{} ERROR lines naming the identity (1 to {most} expected):\n{stderr}",
        errors.len()
    );
    // Before the ERRORs, one WARN for the first record: it might have been an earlier run's.
    let warned = stderr
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains(
                    "the lease names this candidate's identity but another process wrote it",
                )
        })
        .count();
    assert_eq!(warned, 1, "{stderr}");
    stop_all(std::slice::from_mut(&mut first)).await;
    server.shutdown().await;
}

/// A fake API server and candidate `a` leading with `GRANDCHILDREN_SCRIPT`: the server, the directory
/// (removed on drop), leader-elect, and the two grandchildren's pids.
async fn leading_with_grandchildren(
    t: &Timings,
) -> (
    FakeApiServer,
    tempfile::TempDir,
    tokio::process::Child,
    [i32; 2],
) {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let le = candidate(&server.url(), "a", t, d, GRANDCHILDREN_SCRIPT)
        .spawn()
        .unwrap();
    let grandchildren = wait_for(Duration::from_secs(20), || {
        Some([pid_in(&d.join("a.pid"))?, pid_in(&d.join("b.pid"))?])
    })
    .await
    .expect("a leads");
    (server, dir, le, grandchildren)
}

/// Item: the child's own children die when the term ends (here: the leader is cut off from the API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_are_gone_when_the_term_ends() {
    let (server, _dir, mut le, grandchildren) = leading_with_grandchildren(&FAST).await;
    server.default_listener().set_faults(Faults::partition());
    assert!(
        gone(&grandchildren, Duration::from_secs(10)).await,
        "grandchildren outlived the term: {grandchildren:?}"
    );
    assert_eq!(
        le.try_wait().unwrap(),
        None,
        "leader-elect stays a candidate"
    );
}

/// Item: SIGTERM to leader-elect stops the child's whole group before leader-elect exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_are_gone_when_leader_elect_exits_on_sigterm() {
    let (server, _dir, mut le, grandchildren) = leading_with_grandchildren(&SLOW).await;
    kill(pid(&le), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut le, Duration::from_secs(20)).await, Some(0));
    let left: Vec<_> = grandchildren.into_iter().filter(|&p| running(p)).collect();
    assert!(
        left.is_empty(),
        "grandchildren outlived leader-elect: {left:?}"
    );
    assert_eq!(
        holder(&server.url()).await,
        "",
        "released after the group was gone"
    );
}

/// Item: SIGKILL of leader-elect kills the child's whole group (the guardian), not only the direct
/// child (the parent-death signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_are_gone_when_leader_elect_is_sigkilled() {
    let (_server, _dir, mut le, grandchildren) = leading_with_grandchildren(&SLOW).await;
    le.kill().await.unwrap();
    assert!(
        gone(&grandchildren, Duration::from_secs(10)).await,
        "grandchildren outlived leader-elect: {grandchildren:?}"
    );
}

/// Item: as PID 1 of a PID namespace (a container), leader-elect reaps the orphans that end up as its
/// children: some still in the child's process group, some that left it (`setsid`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_when_leader_elect_is_pid_1() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.01 &); (setsid sleep 0.01 &); done
sleep 0.5; echo $$ > "$DIR/ready"; exec sleep 1000"#;
    let mut ns = tokio::process::Command::new("unshare");
    // --user: also where only unprivileged user namespaces are allowed; --kill-child: dies with the test.
    ns.args([
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--kill-child",
        BIN,
    ])
    .args(run_args(&server.url(), "a", &SLOW))
    .args(["--", "sh", "-c", script])
    .env("DIR", d)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let unshare = ns.spawn().expect("unshare (util-linux) runs");
    let unshare_pid = unshare.id().unwrap() as i32;
    wait_for(Duration::from_secs(20), || pid_in(&d.join("ready")))
        .await
        .expect("the child ran inside the namespace");
    let le = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&p| stat(p).is_some_and(|(_, ppid)| ppid == unshare_pid))
        .expect("leader-elect, PID 1 of the namespace");
    let reaped = wait_for(Duration::from_secs(10), || {
        zombies_of(le).is_empty().then_some(())
    })
    .await;
    assert!(
        reaped.is_some(),
        "zombies left under leader-elect: {:?}",
        zombies_of(le)
    );
}

/// Item: a second SIGTERM to leader-elect SIGKILLs the child's group at once, without waiting for the
/// rest of the grace period (9s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_skips_the_grace_period() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script =
        r#"trap 'echo > "$DIR/sigterm"' TERM; echo $$ > "$DIR/pid"; while :; do sleep 0.05; done"#;
    let mut le = candidate(&server.url(), "a", &SLOW, d, script)
        .args(["--grace-period", "9s"])
        .spawn()
        .unwrap();
    let child = wait_for(Duration::from_secs(20), || pid_in(&d.join("pid")))
        .await
        .expect("a leads");
    kill(pid(&le), Signal::SIGTERM).unwrap();
    wait_for(Duration::from_secs(10), || {
        d.join("sigterm").exists().then_some(())
    })
    .await
    .expect("the child got SIGTERM and ignored it");
    let second = Instant::now();
    kill(pid(&le), Signal::SIGTERM).unwrap();
    assert!(
        gone(&[child], Duration::from_secs(4)).await,
        "the child outlived a second SIGTERM by 4s of its 9s grace period"
    );
    println!("child gone {:?} after the second SIGTERM", second.elapsed());
    assert_eq!(exit_code(&mut le, Duration::from_secs(20)).await, Some(0));
}

/// Item: a stderr pipe that is full (its reader paused) blocks no deadline: the cut-off leader's child,
/// which ignores SIGTERM, is gone before the new leader's child starts, and leader-elect still exits 0
/// on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_pipe_delays_neither_the_kill_nor_the_exit() {
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_reader, writer) = nix::unistd::pipe().unwrap();
    // A second open file description of the pipe, non-blocking for the test only: leader-elect's
    // stderr stays a blocking pipe, as a real one is.
    let mut filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/self/fd/{}", writer.as_raw_fd()))
        .unwrap();
    let mut a = candidate(&server.url(), "a", &FAST, d, STUBBORN_SCRIPT)
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let a_child = wait_for(Duration::from_secs(20), || pid_in(&d.join("a.pid")))
        .await
        .expect("a leads");
    while filler.write(&[b'.'; 4096]).is_ok() {}
    b_takes_over_from_a_cut_off(&server, &spare, d, a_child).await;
    kill(pid(&a), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut a, Duration::from_secs(20)).await, Some(0));
}

/// Item: a stderr whose reader is gone (writes fail with EPIPE) neither panics leader-elect nor skips
/// the stop: SIGTERM stops the child, releases the Lease, exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_panics_nor_skips_the_release() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut le = candidate(&server.url(), "c0", &SLOW, d, PID_SCRIPT)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(le.stderr.take());
    let child = wait_for(Duration::from_secs(20), || alive(d).first().map(|c| c.2))
        .await
        .expect("a leads");
    kill(pid(&le), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut le, Duration::from_secs(20)).await, Some(0));
    assert!(!running(child), "the child outlived leader-elect");
    assert_eq!(holder(&server.url()).await, "", "released");
}

/// Item: an environment variable that is not UTF-8 reaches the child unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_environment_variable_reaches_the_child() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"printf %s "$NOT_UTF8" > "$DIR/value.tmp"; mv "$DIR/value.tmp" "$DIR/value"; exec sleep 1000"#;
    let _le = candidate(&server.url(), "a", &SLOW, d, script)
        .env("NOT_UTF8", OsStr::from_bytes(b"caf\xe9"))
        .spawn()
        .unwrap();
    let value = wait_for(Duration::from_secs(20), || {
        std::fs::read(d.join("value")).ok()
    })
    .await
    .expect("the child ran");
    assert_eq!(value, b"caf\xe9");
}

/// Item: the binary leader-elect was started from is removed and another file put at its path (a
/// package upgrade): the next term's child still starts, from the binary that runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_replaced_on_disk_still_starts_the_next_term() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = d.join("leader-elect");
    std::fs::copy(BIN, &exe).unwrap();
    let mut le = hermetic(&exe)
        .args(run_args(&server.url(), "c0", &FAST))
        .args(["--", "sh", "-c", PID_SCRIPT])
        .env("DIR", d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (_, first_term, first) = wait_for(Duration::from_secs(20), || alive(d).first().copied())
        .await
        .expect("c0 leads");
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A new term: cut off past the renew deadline, then back.
    server.default_listener().set_faults(Faults::partition());
    assert!(
        gone(&[first], Duration::from_secs(10)).await,
        "the first term ended"
    );
    server.default_listener().clear_faults();
    let next = wait_for(Duration::from_secs(20), || {
        alive(d).into_iter().find(|c| c.1 != first_term)
    })
    .await;
    assert!(
        next.is_some(),
        "no child in the next term: {:?}",
        children(d)
    );
    assert_eq!(le.try_wait().unwrap(), None, "leader-elect still runs");
}

/// Fenced heartbeats: ignores SIGTERM, records its pid in `$DIR/<identity>-<term>.child`, and appends a
/// timestamp (ns) every 10 ms to `$DIR/<identity>-<term>.beats`: one file per term's child.
const FENCED_SCRIPT: &str = r#"trap '' TERM; at="$DIR/$LEADER_ELECT_IDENTITY-$LEADER_ELECT_TERM"
echo $$ > "$at.child"; while :; do date +%s%N >> "$at.beats"; sleep 0.01; done"#;

/// (term, first beat, last beat) of every child that wrote heartbeats, by term.
fn terms(dir: &Path) -> Vec<(i64, u128, u128)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let Some((_, term)) = name
            .strip_suffix(".beats")
            .and_then(|stem| stem.rsplit_once('-'))
        else {
            continue;
        };
        let beats = stamps(&entry.path());
        if let (Some(first), Some(last)) = (beats.iter().min(), beats.iter().max()) {
            found.push((term.parse().unwrap(), *first, *last));
        }
    }
    found.sort_unstable();
    found
}

/// Candidate `a` leads (on the default listener), `b` follows (on its own); `act` takes the Lease from
/// the live leader; then a child of a new term must start only after every beat of the old one, and its
/// term must be higher. Returns the gap between them, in ms.
async fn no_overlap_when_the_lease_is_taken_from_a_live_leader(
    act: impl AsyncFnOnce(&FakeApiServer),
) -> f64 {
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _a = candidate(&server.url(), "a", &SLOW, d, FENCED_SCRIPT)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), || terms(d).first().copied())
        .await
        .expect("a leads");
    let _b = candidate(&spare.url(), "b", &SLOW, d, FENCED_SCRIPT)
        .spawn()
        .unwrap();
    act(&server).await;
    let all = wait_for(Duration::from_secs(20), || {
        let all = terms(d);
        (all.len() == 2).then_some(all)
    })
    .await
    .expect("a new term's child started");
    // Once the old term's child is dead, its last beat is final.
    let old = all[0].0;
    let old_children: Vec<i32> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{old}.child"))
        })
        .filter_map(|e| pid_in(&e.path()))
        .collect();
    assert!(!old_children.is_empty());
    assert!(
        gone(&old_children, Duration::from_secs(20)).await,
        "term {old}'s child is still running"
    );
    let all = terms(d);
    let (new, new_first) = (all[1].0, all[1].1);
    let old_last = all[0].2;
    assert!(new > old, "terms went from {old} to {new}");
    assert_before(
        old_last,
        new_first,
        &format!("term {old}'s child's last beat"),
        &format!("term {new}'s first"),
    )
}

/// Item: `leader-elect release --force` of a live holder. The holder sees the release through the watch on
/// its own Lease and kills its child at once, before the next leader's child starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_release_of_a_live_leader_kills_its_child_before_the_next_term_starts() {
    no_overlap_when_the_lease_is_taken_from_a_live_leader(async |server| {
        let status = hermetic(BIN)
            .args([
                "release",
                "--force",
                "--lease-name",
                "proc",
                "--namespace",
                "default",
            ])
            .args(["--identity", "a", "--server", &server.url()])
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
    })
    .await;
}

/// Item: the Lease deleted under a live leader (`kubectl delete lease`). The leader kills its child at
/// once, and the Lease is created again with a term above the old one, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_kills_the_leaders_child_and_comes_back_with_a_higher_term() {
    no_overlap_when_the_lease_is_taken_from_a_live_leader(async |server| {
        let mut http = std::net::TcpStream::connect(server.addr()).unwrap();
        write!(
            http,
            "DELETE /apis/coordination.k8s.io/v1/namespaces/default/leases/proc HTTP/1.1\r\n\
             Host: {}\r\nConnection: close\r\n\r\n",
            server.addr()
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut http, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
    .await;
}

/// The pid recorded by the fenced child of candidate `identity` (its first term's).
fn fenced_child(dir: &Path, identity: &str) -> Option<i32> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{identity}-")) && name.ends_with(".child")
        })
        .find_map(|e| pid_in(&e.path()))
}

/// Candidate `a` on `url` with fenced heartbeats in `d`, once it leads and its child wrote a beat: its
/// leader-elect and its child's pid.
async fn fenced_leader_a(url: &str, t: &Timings, d: &Path) -> (tokio::process::Child, i32) {
    let a = candidate(url, "a", t, d, FENCED_SCRIPT).spawn().unwrap();
    let child = wait_for(Duration::from_secs(20), || {
        terms(d).first()?;
        fenced_child(d, "a")
    })
    .await
    .expect("a leads");
    (a, child)
}

/// Whether `pid` is stopped (state `T`) within a generous bound. Only for leader-elect: a member of the
/// child's group may be in `D` instead while stopped (a shell whose `vfork`ed child was stopped before
/// its `exec` waits uninterruptibly for it), so the children's stop is judged from their beats.
async fn stopped(pid: Pid) -> bool {
    wait_for(Duration::from_secs(20), || {
        stat(pid.as_raw()).is_some_and(|s| s.0 == 'T').then_some(())
    })
    .await
    .is_some()
}

/// Rule 13: candidate `a` leads with fenced heartbeats (FAST timings,
/// on the default listener), `b` follows (on its own). `a`'s leader-elect alone, not its child's group
/// nor the guardian's, gets `signal` and stays stopped for 3 x lease duration; `once_stopped(a's child)`
/// runs once it is. While `a` is stopped, `b`'s child starts and `a`'s child is gone: nothing in `a` can
/// have killed it. No beat of `a`'s child comes after the first of `b`'s. Continued, `a` neither exits
/// nor takes the Lease back. Returns the gap between the two children, in ms.
async fn frozen_leader_elect_lets_no_two_children_work_at_once(
    signal: Signal,
    once_stopped: impl AsyncFnOnce(i32),
) -> f64 {
    let server = FakeApiServer::start().await.unwrap();
    let spare = server.add_listener().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut a, a_child) = fenced_leader_a(&server.url(), &FAST, d).await;
    let b = candidate(&spare.url(), "b", &FAST, d, FENCED_SCRIPT)
        .spawn()
        .unwrap();
    let a_pid = pid(&a);
    kill(a_pid, signal).unwrap();
    let since = Instant::now();
    assert!(stopped(a_pid).await, "a's leader-elect stops");
    once_stopped(a_child).await;
    wait_for(Duration::from_secs(20), || fenced_child(d, "b"))
        .await
        .expect("b takes over while a is stopped");
    assert!(
        gone(&[a_child], Duration::from_secs(20)).await,
        "a's child still runs while a's leader-elect is stopped"
    );
    assert_eq!(
        stat(a_pid.as_raw()).map(|s| s.0),
        Some('T'),
        "a's leader-elect stayed stopped"
    );
    tokio::time::sleep((3 * FAST.lease).saturating_sub(since.elapsed())).await;
    kill(a_pid, Signal::SIGCONT).unwrap();
    let all = wait_for(Duration::from_secs(20), || {
        let all = terms(d);
        (all.len() >= 2).then_some(all)
    })
    .await
    .expect("b's child beats");
    assert_eq!(all.len(), 2, "{all:?}");
    let gap = assert_before(
        all[0].2,
        all[1].1,
        "a's child's last beat",
        "b's child's first",
    );
    // Continued past its deadline, a follows: it neither exits nor claims while b renews.
    tokio::time::sleep(2 * FAST.lease).await;
    assert!(a.try_wait().unwrap().is_none(), "a exited after SIGCONT");
    assert_eq!(terms(d).len(), 2, "a started another child");
    assert_eq!(holder(&server.url()).await, "b");
    stop_all(&mut [a, b]).await;
    server.shutdown().await;
    gap
}

/// Item (rule 13): SIGSTOP of leader-elect alone (a debugger's attach, `kill -STOP PID`) freezes its
/// renewals and its own kill thread, not its child: the guardian kills the child at its work deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_13_sigstop_of_leader_elect_alone_lets_no_two_children_work_at_once() {
    frozen_leader_elect_lets_no_two_children_work_at_once(Signal::SIGSTOP, async |_| {}).await;
}

/// Item (rule 13): Ctrl-Z (SIGTSTP to leader-elect, which alone is in the terminal's foreground group)
/// stops the child's process group with leader-elect; the guardian kills it at its work deadline, and a
/// leader-elect continued past that deadline never lets it run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_13_ctrl_z_stops_the_child_with_leader_elect_and_past_the_deadline_it_never_resumes() {
    frozen_leader_elect_lets_no_two_children_work_at_once(Signal::SIGTSTP, async |child| {
        // Stopped (`T`, or `D` behind a stopped `vfork` child), then killed by the guardian: a zombie
        // its stopped parent cannot reap. Never working on.
        let stopped_or_killed = wait_for(Duration::from_secs(20), || {
            stat(child).is_none_or(|s| s.0 == 'Z').then_some(())
        });
        assert!(
            stopped_or_killed.await.is_some(),
            "Ctrl-Z stops the child with leader-elect"
        );
    })
    .await;
}

/// Item (rule 13): Ctrl-Z, then SIGCONT (`fg`) before the work deadline: the child stops with
/// leader-elect and goes on working when it is continued; the term goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_z_then_sigcont_before_the_deadline_continues_the_child_and_the_term() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut a, child) = fenced_leader_a(&server.url(), &SLOW, d).await;
    let a_pid = pid(&a);
    kill(a_pid, Signal::SIGTSTP).unwrap();
    assert!(stopped(a_pid).await, "Ctrl-Z stops leader-elect");
    // Its child was stopped first: no beat while leader-elect is stopped.
    let last = terms(d)[0].2;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        terms(d)[0].2,
        last,
        "the child works while leader-elect is stopped"
    );
    assert!(running(child));
    kill(a_pid, Signal::SIGCONT).unwrap();
    let continued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    wait_for(Duration::from_secs(20), || {
        terms(d)
            .first()
            .is_some_and(|t| t.2 > continued)
            .then_some(())
    })
    .await
    .expect("the child works again once leader-elect is continued");
    assert_eq!(terms(d).len(), 1, "the term went on");
    assert_eq!(holder(&server.url()).await, "a");
    stop_all(std::slice::from_mut(&mut a)).await;
    server.shutdown().await;
}

/// Item (rule 13): the guardian process itself kills an armed group at its deadline, on
/// `CLOCK_BOOTTIME`, while its input stays open (leader-elect alive, but frozen or stalled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_13_the_guardian_kills_an_armed_group_at_its_deadline_while_leader_elect_lives() {
    let mut guardian = tokio::process::Command::new(BIN)
        .arg("guardian")
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut work = tokio::process::Command::new("sleep")
        .arg("3600")
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    let at = Duration::from(boot) + Duration::from_millis(500);
    let line = format!("arm {} {}\n", pid(&work), at.as_nanos());
    let mut input = guardian.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut input, line.as_bytes())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), work.wait())
        .await
        .expect("the guardian kills the group at its deadline")
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        guardian.try_wait().unwrap().is_none(),
        "the guardian goes on"
    );
    drop(input);
    assert_eq!(
        exit_code(&mut guardian, Duration::from_secs(20)).await,
        Some(0)
    );
}

/// A loopback address nothing listens on (bound, then closed: the port is free until someone takes it).
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// (level, message) of every whole JSON log line in `path` (`--log-format json`).
fn log_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (text(&v["level"]), text(&v["fields"]["message"]))
        })
        .collect()
}

/// Status code and body of `GET path` on `addr`, `None` while nothing answers there.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut http = std::net::TcpStream::connect(addr).ok()?;
    write!(
        http,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut http, &mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// `leader-elect run` as candidate `c0` on the Lease `default/proc` at `url` (FAST timings), logging JSON at
/// debug level (its own lines) into `$DIR/log`, running PID_SCRIPT while it leads.
fn logged_candidate(url: &str, dir: &Path, extra: &[&str]) -> tokio::process::Child {
    let log = std::fs::File::create(dir.join("log")).unwrap();
    hermetic(BIN)
        .args(run_args(url, "c0", &FAST))
        .args(["--log-format", "json"])
        .args(extra)
        .args(["--", "sh", "-c", PID_SCRIPT])
        .env("DIR", dir)
        .env("LEADER_ELECT_LOG", "info,leader_elect=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `leader-elect` has failed to reach the API server at `url` at least `failures` times in
/// one streak; returns the streak's WARN lines.
async fn unreachable_streak(dir: &Path, url: &str, failures: usize) -> Vec<String> {
    let text = format!("cannot reach the API server at {url}");
    let log = dir.join("log");
    let counted = wait_for(Duration::from_secs(20), || {
        let lines = log_lines(&log);
        let failed = lines.iter().filter(|(_, m)| m.contains(&text)).count();
        (failed >= failures).then_some(lines)
    })
    .await;
    let lines = counted.unwrap_or_else(|| {
        panic!(
            "fewer than {failures} failed reads logged: {:?}",
            log_lines(&log)
        )
    });
    lines
        .into_iter()
        .filter(|(level, m)| level == "WARN" && m.contains(&text))
        .map(|(_, m)| m)
        .collect()
}

/// Item: disabled mode (`controller.leader_election.enabled: false`) makes no API call, so it needs no
/// kubeconfig: with an empty HOME, no KUBECONFIG, no --server and no in-cluster service account, `run`
/// starts its child at once, and stops it on SIGTERM with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_mode_starts_the_child_without_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = d.join("home");
    std::fs::create_dir(&home).unwrap();
    let config = d.join("c.yaml");
    std::fs::write(
        &config,
        "controller:\n  leader_election:\n    enabled: false\n",
    )
    .unwrap();
    let mut le = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--lease-name", "x", "--", "sh", "-c"])
        .arg(r#"echo $$ > "$DIR/child.pid"; exec sleep 3600"#)
        .env("DIR", d)
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .env_remove("LEADER_ELECT_SERVER")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let child = wait_for(Duration::from_secs(20), || pid_in(&d.join("child.pid"))).await;
    assert!(
        child.is_some(),
        "no child started; leader-elect exited with {:?}",
        le.try_wait().unwrap()
    );
    kill(pid(&le), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut le, Duration::from_secs(10)).await, Some(0));
    assert!(gone(&[child.unwrap()], Duration::from_secs(10)).await);
}

/// Item: `run` started before its API server does not die of it. While nothing listens it
/// keeps running, logs one WARN for the whole streak of failed reads, and is not ready; once the API server
/// starts on that address it says so, leads (its child starts) and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_before_the_api_server_leads_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api, admin) = (free_addr(), free_addr());
    let url = format!("http://{api}");
    let mut le = logged_candidate(&url, d, &["--admin-listen", &admin.to_string()]);
    let warnings = unreachable_streak(d, &url, 4).await;
    assert_eq!(warnings.len(), 1, "one WARN per streak: {warnings:?}");
    assert_eq!(le.try_wait().unwrap(), None, "leader-elect still runs");
    let readyz = wait_for(Duration::from_secs(10), || http_get(admin, "/readyz")).await;
    assert_eq!(
        readyz,
        Some((503, "no lease holder observed yet\n".to_owned())),
        "not ready before the API server answers"
    );
    assert_eq!(http_get(admin, "/healthz").map(|h| h.0), Some(200));

    let server = FakeApiServer::builder().listen(api).start().await.unwrap();
    let child = wait_for(Duration::from_secs(20), || alive(d).first().copied()).await;
    assert!(child.is_some(), "no child once the API server answers");
    assert!(
        log_lines(&d.join("log"))
            .iter()
            .any(|(level, m)| level == "INFO"
                && m.contains(&format!("the API server at {url} answered after"))),
        "the recovery is logged"
    );
    assert_eq!(holder(&url).await, "c0");
    assert_eq!(http_get(admin, "/readyz").map(|r| r.0), Some(200));
    stop_all(std::slice::from_mut(&mut le)).await;
    server.shutdown().await;
}

/// Answers every request on `listener` with `code` and a Kubernetes `Status` (as kube-apiserver refuses a
/// token, 401, or RBAC denies a verb, 403).
async fn refuse_all(listener: tokio::net::TcpListener, code: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reason = if code == 401 {
        "Unauthorized"
    } else {
        "Forbidden"
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("refused by the test ({code})"), "reason": reason, "code": code,
    })
    .to_string();
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

/// Item: a refusal stays an error when it is the first answer after an outage: 401 and 403 end `run` with
/// exit 1 and one line naming the verb and the resource; no child starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_an_outage_exits_1_naming_the_verb_and_resource() {
    for (code, what) in [
        (401, "refused our credentials reading lease default/proc"),
        (403, "RBAC denies reading lease default/proc"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let api = free_addr();
        let url = format!("http://{api}");
        let mut le = logged_candidate(&url, d, &[]);
        unreachable_streak(d, &url, 2).await;
        let refusing = tokio::spawn(refuse_all(
            tokio::net::TcpListener::bind(api).await.unwrap(),
            code,
        ));
        assert_eq!(
            exit_code(&mut le, Duration::from_secs(20)).await,
            Some(1),
            "{code}"
        );
        let log = std::fs::read_to_string(d.join("log")).unwrap();
        let line = log
            .lines()
            .find(|l| l.starts_with("leader-elect: error:"))
            .unwrap_or_else(|| panic!("{code}: no error line in {log}"));
        assert!(line.contains(what), "{code}: {line}");
        assert!(
            line.contains("verb get, resource leases.coordination.k8s.io"),
            "{code}: {line}"
        );
        assert!(children(d).is_empty(), "{code}: no child started");
        refusing.abort();
    }
}

/// Item: 503 and 429 answers at start are waited out like an unreachable API server: one WARN for the
/// streak, then the candidate leads once the API server answers normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_at_start_are_waited_out() {
    for (code, reason) in [(503, "ServiceUnavailable"), (429, "TooManyRequests")] {
        let server = FakeApiServer::start().await.unwrap();
        server.default_listener().set_faults(Faults {
            error_rate: 1.0,
            error_code: code,
            ..Faults::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let url = server.url();
        let mut le = logged_candidate(&url, d, &[]);
        let text = format!("the API server at {url} answered {code} {reason}");
        let log = d.join("log");
        let lines = wait_for(Duration::from_secs(20), || {
            let lines = log_lines(&log);
            let failed = lines.iter().filter(|(_, m)| m.contains(&text)).count();
            (failed >= 3).then_some(lines)
        })
        .await
        .unwrap_or_else(|| panic!("{code}: fewer than 3 answers logged: {:?}", log_lines(&log)));
        let warnings = lines
            .iter()
            .filter(|(level, m)| level == "WARN" && m.contains(&text))
            .count();
        assert_eq!(warnings, 1, "{code}: one WARN per streak: {lines:?}");
        assert_eq!(
            le.try_wait().unwrap(),
            None,
            "{code}: leader-elect still runs"
        );
        server.default_listener().clear_faults();
        let child = wait_for(Duration::from_secs(20), || alive(d).first().copied()).await;
        assert!(
            child.is_some(),
            "{code}: no child once the API server answers"
        );
        stop_all(std::slice::from_mut(&mut le)).await;
        server.shutdown().await;
    }
}

/// Item: SIGTERM while `run` waits for its API server ends the wait: exit 0, no child started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_the_api_server_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = format!("http://{}", free_addr());
    let mut le = logged_candidate(&url, d, &[]);
    unreachable_streak(d, &url, 2).await;
    kill(pid(&le), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut le, Duration::from_secs(10)).await, Some(0));
    assert!(children(d).is_empty(), "no child started");
}

/// The notes of the `events.k8s.io/v1` Events regarding Lease `default/proc`, reported by leader-elect.
async fn lease_event_notes(url: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let client = leaderelection::KubeLeaseLock::client_for_url(url).unwrap();
    let events: kube::Api<Event> = kube::Api::namespaced(client, "default");
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("LeaderElection")
                && e.reporting_controller.as_deref() == Some("leader-elect")
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Lease")
                        && r.api_version.as_deref() == Some("coordination.k8s.io/v1")
                        && r.name.as_deref() == Some("proc")
                })
        })
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_events_records_became_leader_and_stopped_leading_on_the_lease() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut proc = hermetic(BIN)
        .args(run_args(&server.url(), "c0", &SLOW))
        .args(["--events", "--", "sh", "-c", PID_SCRIPT])
        .env("DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut notes = Vec::new();
    while Instant::now() < deadline && !notes.contains(&"c0 became leader".to_owned()) {
        notes = lease_event_notes(&server.url()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(notes, vec!["c0 became leader".to_owned()]);

    kill(pid(&proc), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut proc, Duration::from_secs(20)).await, Some(0));
    let mut notes = lease_event_notes(&server.url()).await;
    notes.sort();
    assert_eq!(notes, ["c0 became leader", "c0 stopped leading"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_the_lease_it_creates_the_labels_and_annotations_of_its_flags() {
    use k8s_openapi::api::coordination::v1::Lease;
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut proc = hermetic(BIN)
        .args(run_args(&server.url(), "c0", &SLOW))
        .args([
            "--lease-label",
            "app.kubernetes.io/part-of=my-app",
            "--lease-label",
            "team=a",
            "--lease-annotation",
            "argocd.argoproj.io/sync-options=Prune=false",
            "--",
            "sh",
            "-c",
            PID_SCRIPT,
        ])
        .env("DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        alive(dir.path()).first().copied()
    })
    .await
    .expect("the candidate leads");
    let client = leaderelection::KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let lease = kube::Api::<Lease>::namespaced(client, "default")
        .get("proc")
        .await
        .unwrap();
    let labels = lease.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("my-app")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(
        lease
            .metadata
            .annotations
            .unwrap_or_default()
            .get("argocd.argoproj.io/sync-options")
            .map(String::as_str),
        Some("Prune=false")
    );
    kill(pid(&proc), Signal::SIGTERM).unwrap();
    assert_eq!(exit_code(&mut proc, Duration::from_secs(20)).await, Some(0));
    server.shutdown().await;
}
