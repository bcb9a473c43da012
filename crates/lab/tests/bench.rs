//! `leader-elect-lab bench` drives the shipped binary: every process scenario, cut short, runs to its end,
//! and the yield scenario hands the Lease over with `leader-elect yield` run as a process.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect-lab");

#[test]
fn the_process_scenarios_run_leader_elect_yield_as_a_process() {
    let out = Command::new(BIN)
        .args(["bench", "--handover-runs", "1", "--crash-runs", "1"])
        .args(["--load-window", "1s", "--yield-runs", "2"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let yields = text
        .lines()
        .find(|l| l.starts_with("yield to a preferred holder (leader-elect yield;"))
        .unwrap_or_else(|| panic!("no yield line in:\n{text}"));
    assert!(yields.contains(", 2 runs: median "), "{yields}");
    assert!(yields.contains("overlapping children 0"), "{yields}");
    for scenario in [
        "graceful handover (SIGTERM -> next child started), 15s/10s/2s, 1 runs",
        "crash failover (SIGKILL -> next child started), lease 2s / renew 1s / retry 250ms, 1 runs",
        "steady-state API load, 15s/10s/2s, polling",
    ] {
        assert!(text.contains(scenario), "no {scenario:?} in:\n{text}");
    }
}
