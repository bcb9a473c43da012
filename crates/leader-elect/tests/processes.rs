//! Real `leader-elect run` processes against the fake API server, each running a child that records its
//! pid: exactly one child runs at a time; SIGKILL of the leader -> its child dies with it and a new child
//! starts after the old lease expired (never before) and within lease_duration + 2 x retry_period; SIGTERM
//! -> handover without waiting for expiry; SIGSTOP of the leader's process group past its renew deadline
//! -> a new leader, and on SIGCONT the old leader-elect stops its child at once and never claims again.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
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

fn spawn(url: &str, dir: &Path, i: usize, t: &Timings) -> tokio::process::Child {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    tokio::process::Command::new(BIN)
        .args(["run", "--lease-name", "proc", "--namespace", "default", "--server", url])
        .args(["--identity", &format!("c{i}")])
        .args(["--lease-duration", &d(t.lease), "--renew-deadline", &d(t.renew), "--retry-period", &d(t.retry)])
        .args(["--grace-period", "2s", "--", "sh", "-c"])
        .arg(r#"echo $$ > "$PID_DIR/$LEADER_ELECT_IDENTITY-$LEADER_ELECT_TERM.pid"; exec sleep 3600"#)
        .env("PID_DIR", dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A pid is running if it exists and is not a zombie.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
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

/// Starts three candidates; returns them and the first leader's (candidate, term, pid).
async fn three(
    url: &str,
    dir: &Path,
    t: &Timings,
) -> (Vec<tokio::process::Child>, (usize, i64, i32)) {
    let procs: Vec<_> = (0..3).map(|i| spawn(url, dir, i, t)).collect();
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
    let (mut procs, (leader, _, child)) = three(&server.url(), dir.path(), &slow).await;
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
    let group = Pid::from_raw(procs[leader].id().unwrap() as i32);
    killpg(group, Signal::SIGSTOP).unwrap();
    let next = wait_for(Duration::from_secs(20), || {
        alive(dir.path()).into_iter().find(|c| c.0 != leader)
    })
    .await
    .expect("a new leader while the old one is frozen");
    killpg(group, Signal::SIGCONT).unwrap();
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
    let out = tokio::process::Command::new(BIN)
        .args([
            "status",
            "--lease-name",
            "proc",
            "--namespace",
            "default",
            "--server",
            &url,
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["holder"], format!("c{}", next.0));
    stop_all(&mut procs).await;
    server.shutdown().await;
}
