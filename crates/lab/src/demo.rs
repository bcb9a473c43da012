//! `leader-elect-lab demo`: a whole election on the embedded fake API server. Real `leader-elect run` processes
//! (one listener each, so one can be cut off alone), each running a leader-only `sleep`; then a crash
//! (SIGKILL), a graceful handover (SIGTERM) and a partition, each measured from the candidates' own logs.

use std::path::PathBuf;
use std::time::Duration;

use fake_apiserver::Faults;
use jiff::Timestamp;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::failure::Failure;
use crate::harness::{Cluster, Timings, What, is_child_start, secs};
use crate::timeline::{Bar, Mark, Timeline};

/// `leader-elect-lab demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Number of candidate processes (at least 2).
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    #[command(flatten)]
    timings: Timings,
    /// How long a phase may take to recover before the demo counts it as failed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    phase_timeout: Duration,
    /// Draw the demo as SVG to this file: a row per candidate, a bar per term, the injected faults.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// The fake API server serves TLS, as kube-apiserver does (the candidates trust its CA through a
    /// kubeconfig).
    #[arg(long)]
    tls: bool,
}
/// Whether process `pid` is gone (polls for up to `within`).
async fn gone(pid: i32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if kill(Pid::from_raw(pid), None).is_err() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One line of the summary table.
struct Row {
    name: &'static str,
    measured: Option<String>,
    bound: String,
    ok: bool,
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    if args.candidates < 2 {
        return Err(Failure::Usage(anyhow::anyhow!(
            "invalid --candidates {}: must be at least 2",
            args.candidates
        )));
    }
    let timings = args.timings.clone();
    timings.validate()?;
    let lease = timings.lease_duration;
    let failover_bound = lease + 2 * timings.retry_period;
    let timeout = args.phase_timeout;
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let mut cluster = Cluster::new(args.candidates, timings.clone(), Vec::new(), args.tls).await?;
    println!(
        "leader-elect-lab demo: {} candidates on the embedded fake API server {} (lease {}, renew deadline {}, \
         retry period {}); each runs `sleep 3600` only while it leads\n",
        args.candidates,
        cluster.server.url(),
        fmt(lease),
        fmt(timings.renew_deadline),
        fmt(timings.retry_period)
    );
    for i in 0..args.candidates {
        cluster.spawn(i)?;
    }
    let mut rows = Vec::new();
    let mut killed_at = Vec::new();
    // Faults for the timeline: (candidate, from, until, label).
    let mut marks: Vec<(usize, Timestamp, Option<Timestamp>, &str)> = Vec::new();

    println!("== election");
    let Some(first) = cluster.next(timeout, is_child_start).await else {
        cluster.stop_all().await;
        return Err(anyhow::anyhow!("no candidate became leader within {}", fmt(timeout)).into());
    };

    // Phase 1: crash.
    let crashed = first.candidate;
    let orphan = match first.what {
        What::ChildStarted { pid, .. } => pid,
        _ => 0,
    };
    println!("\n== crash: SIGKILL candidate-{crashed}'s leader-elect (not its child)");
    let t0 = Timestamp::now();
    cluster.signal(crashed, Signal::SIGKILL);
    killed_at.push((crashed, t0));
    marks.push((crashed, t0, None, "SIGKILL"));
    let expires = cluster.lease_expiry().await.ok();
    let _ = cluster.wait_exit(crashed, Duration::from_secs(5)).await;
    let orphan_killed = gone(orphan, Duration::from_secs(2)).await;
    let next = cluster
        .next(timeout, |s| is_child_start(s) && s.candidate != crashed)
        .await;
    let crash = next.as_ref().map(|s| s.at.duration_since(t0));
    rows.push(Row {
        name: "crash failover (SIGKILL -> next child started)",
        measured: crash.map(|d| format!("{:.3}s", secs(d))),
        bound: format!(
            "lease {} + 2 x retry period = {}",
            fmt(lease),
            fmt(failover_bound)
        ),
        ok: crash.is_some(),
    });
    // From the Lease's expiry as the dead leader last wrote it, not from the kill: it renewed up to a
    // retry period before dying.
    let after_expiry = next
        .as_ref()
        .zip(expires)
        .map(|(next, expires)| next.at.duration_since(expires));
    rows.push(Row {
        name: "  of which after the lease expired",
        measured: after_expiry.map(|d| format!("{:.3}s", secs(d))),
        bound: "target <= 0.250s".into(),
        ok: after_expiry.is_some(),
    });
    rows.push(Row {
        name: "orphaned child killed with its leader-elect",
        measured: Some(if orphan_killed { "yes" } else { "NO" }.into()),
        bound: "parent-death signal".into(),
        ok: orphan_killed,
    });
    cluster.spawn(crashed)?;

    // Phase 2: graceful handover.
    let mut ok = next.is_some();
    let mut leader = next.map(|s| s.candidate);
    if let Some(stopping) = leader {
        println!(
            "\n== graceful handover: SIGTERM candidate-{stopping} (stops its child, releases the lease)"
        );
        let t0 = Timestamp::now();
        cluster.signal(stopping, Signal::SIGTERM);
        marks.push((stopping, t0, None, "SIGTERM"));
        let next = cluster
            .next(timeout, |s| is_child_start(s) && s.candidate != stopping)
            .await;
        let handover = next.as_ref().map(|s| s.at.duration_since(t0));
        let exit = cluster.wait_exit(stopping, timeout).await;
        rows.push(Row {
            name: "graceful handover (SIGTERM -> next child started)",
            measured: handover.map(|d| format!("{:.3}s", secs(d))),
            bound: "no waiting for expiry (watch)".into(),
            ok: handover.is_some(),
        });
        rows.push(Row {
            name: "  stopped leader exited with code",
            measured: Some(match exit {
                Some(Some(code)) => code.to_string(),
                Some(None) => "signal".into(),
                None => "running".into(),
            }),
            bound: "0".into(),
            ok: exit == Some(Some(0)),
        });
        ok &= handover.is_some();
        leader = next.map(|s| s.candidate);
        cluster.spawn(stopping)?;
    }

    // Phase 3: partition.
    if let Some(cut) = leader {
        println!("\n== partition: candidate-{cut}'s API requests are black-holed");
        let t0 = Timestamp::now();
        cluster.listeners[cut].set_faults(Faults::partition());
        let (mut stepped_down, mut taken_over) = (None, None);
        while stepped_down.is_none() || taken_over.is_none() {
            let Some(seen) = cluster
                .next(timeout, |s| {
                    (s.candidate == cut && matches!(s.what, What::ChildExited { .. }))
                        || (s.candidate != cut && is_child_start(s))
                })
                .await
            else {
                break;
            };
            if seen.candidate == cut {
                stepped_down.get_or_insert(seen.at.duration_since(t0));
            } else {
                taken_over.get_or_insert(seen.at.duration_since(t0));
            }
        }
        rows.push(Row {
            name: "partition: old leader's child stopped after",
            measured: stepped_down.map(|d| format!("{:.3}s", secs(d))),
            bound: format!("renew deadline {}", fmt(timings.renew_deadline)),
            ok: stepped_down.is_some(),
        });
        rows.push(Row {
            name: "partition: new leader's child started after",
            measured: taken_over.map(|d| format!("{:.3}s", secs(d))),
            bound: format!(
                "lease {} + 2 x retry period = {}",
                fmt(lease),
                fmt(failover_bound)
            ),
            ok: taken_over.is_some(),
        });
        println!(
            "\n== partition healed: candidate-{cut} reaches the API again and must stay a follower"
        );
        cluster.listeners[cut].clear_faults();
        marks.push((cut, t0, Some(Timestamp::now()), "partition"));
        let reclaimed = cluster
            .next(2 * lease, |s| s.candidate == cut && is_child_start(s))
            .await
            .is_some();
        rows.push(Row {
            name: "partition healed: old leader stayed a follower",
            measured: Some(if reclaimed { "NO" } else { "yes" }.into()),
            bound: "the new leader keeps renewing".into(),
            ok: !reclaimed,
        });
        ok &= stepped_down.is_some() && taken_over.is_some();
    }

    println!("\n== shutdown: SIGTERM every candidate");
    cluster.stop_all().await;
    let overlaps = cluster.overlaps(&killed_at);
    for (a, b) in &overlaps {
        println!(
            "  OVERLAP: candidate-{} {a:?} and candidate-{} {b:?}",
            a.candidate, b.candidate
        );
    }
    rows.push(Row {
        name: "moments when two children ran at once",
        measured: Some(overlaps.len().to_string()),
        bound: "0".into(),
        ok: overlaps.is_empty(),
    });
    print_summary(&rows);
    if let Some(path) = &args.timeline {
        draw(&cluster, &killed_at, &marks).write(path)?;
        println!("\ntimeline: {}", path.display());
    }
    cluster.server.shutdown().await;
    if ok && rows.iter().all(|r| r.ok) {
        println!("\ndemo passed: one leader at a time, every phase recovered");
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "demo failed: see the rows marked FAIL above"
        )))
    }
}

/// The demo as a timeline: each child's run as a bar of its term, each fault as a mark.
fn draw(
    cluster: &Cluster,
    killed_at: &[(usize, Timestamp)],
    marks: &[(usize, Timestamp, Option<Timestamp>, &str)],
) -> Timeline {
    let mut timeline = Timeline::new(
        format!(
            "leader-elect-lab demo: {} candidates",
            cluster.listeners.len()
        ),
        cluster.started,
        Timestamp::now(),
    );
    for i in 0..cluster.listeners.len() {
        timeline.row(&format!("candidate-{i}"));
    }
    for interval in cluster.intervals(killed_at) {
        timeline.bars.push(Bar {
            row: interval.candidate,
            from: interval.start,
            to: interval.end,
            term: interval.term,
        });
    }
    for &(row, from, to, label) in marks {
        timeline.marks.push(Mark {
            row: Some(row),
            from,
            to,
            label: label.to_owned(),
        });
    }
    timeline
}

fn print_summary(rows: &[Row]) {
    println!("\n== summary");
    println!(
        "  {:<50} {:>12}  {:<44} result",
        "measured", "value", "bound or target"
    );
    for row in rows {
        println!(
            "  {:<50} {:>12}  {:<44} {}",
            row.name,
            row.measured.as_deref().unwrap_or("-"),
            row.bound,
            if row.ok { "ok" } else { "FAIL" }
        );
    }
}
