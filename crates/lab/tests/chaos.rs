//! `leader-elect-lab chaos` as CI runs it: a short profile (fixed seeds, then one random seed that it prints)
//! that must find no violation, a deliberately broken candidate that it must catch, and the demo's
//! timeline.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_leader-elect-lab");

/// The short profile: lease 1s / renew deadline 500ms / retry period 100ms, 6 faults over 2 s per run.
fn chaos(runs: u64, seed: u64, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "chaos",
            "--runs",
            &runs.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--lease-duration", "1s", "--renew-deadline", "500ms"])
        .args([
            "--retry-period",
            "100ms",
            "--fault-window",
            "2s",
            "--faults",
            "6",
        ])
        .arg("--work-dir")
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after `label` on the summary line that starts with it.
fn summary(text: &str, label: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

#[test]
fn the_ci_profile_finds_no_violation() {
    let (ok, text) = chaos(16, 1, &[]);
    assert!(ok, "fixed seeds 1..16:\n{text}");
    assert_eq!(summary(&text, "violations: "), 0, "{text}");
    assert_eq!(summary(&text, "runs: "), 16);
    assert!(summary(&text, "faults injected: ") >= 16 * 3, "{text}");

    let seed: u64 = rand::random::<u32>().into();
    println!("random seed: {seed} (replay: leader-elect-lab chaos --runs 4 --seed {seed} ...)");
    let (ok, text) = chaos(4, seed, &[]);
    assert!(ok, "random seed {seed}:\n{text}");
    assert_eq!(summary(&text, "violations: "), 0, "seed {seed}: {text}");
}

/// The identity and frozen-elector faults alone, each of which found two holders at once (or a request storm)
/// before the fixes: a second process under a cut-off candidate's identity, two live processes under one
/// identity, SIGSTOP of leader-elect alone, Ctrl-Z.
#[test]
fn the_identity_and_stopped_elector_faults_find_no_violation() {
    let kinds = [
        "identity-reuse",
        "duplicate-identity",
        "stop-elector",
        "tstp-elector",
    ];
    let args: Vec<&str> = kinds.iter().flat_map(|k| ["--kind", k]).collect();
    let (ok, text) = chaos(4, 18, &args);
    assert!(ok, "seeds 18..21:\n{text}");
    assert_eq!(summary(&text, "violations: "), 0, "{text}");
    let injected = text
        .lines()
        .find(|l| l.starts_with("faults injected: "))
        .unwrap_or_else(|| panic!("no faults line in:\n{text}"));
    for kind in kinds {
        assert!(
            injected.contains(&format!("{kind} ")),
            "{kind} never injected: {text}"
        );
    }
}

/// A child that starts a copy of itself outside its process group keeps working after its term: the
/// checks must see the overlap and the orphan, and print how to replay the run.
#[test]
fn a_broken_candidate_is_caught() {
    let (ok, text) = chaos(1, 5, &["--broken-child"]);
    assert!(!ok, "{text}");
    assert!(summary(&text, "violations: ") > 0, "{text}");
    assert!(text.contains("VIOLATION: overlap: term"), "{text}");
    assert!(text.contains("VIOLATION: orphan process"), "{text}");
    assert!(
        text.contains("replay: leader-elect-lab chaos --runs 1 --seed 5 "),
        "{text}"
    );
    assert!(text.contains("timeline: "), "{text}");
}

#[test]
fn the_demo_draws_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("demo.svg");
    let out = Command::new(BIN)
        .args([
            "demo",
            "--lease-duration",
            "1s",
            "--renew-deadline",
            "500ms",
        ])
        .args(["--retry-period", "100ms", "--timeline"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let class = |c: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(c))
            .count()
    };
    assert_eq!(class("row"), 3, "a row per candidate");
    assert!(class("term") >= 3, "the first term and two failovers");
    let faults: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("fault"))
        .filter_map(|g| g.children().find(|n| n.has_tag_name("text")))
        .filter_map(|t| t.text())
        .collect();
    assert_eq!(faults, ["SIGKILL", "SIGTERM", "partition"]);
}

/// The count before `what` on the summary's "guarded writes:" line.
fn guarded_writes(text: &str, what: &str) -> u64 {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("guarded writes: "))
        .unwrap_or_else(|| panic!("no guarded writes line in:\n{text}"));
    line.split([',', ';'])
        .find_map(|part| part.trim().strip_suffix(what))
        .and_then(|n| n.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
}

/// `--mode fenced-writer`: the children write a guarded object through `leader-elect run --fence`; frozen
/// children (SIGSTOP of a candidate's groups) and children still draining after their term write outside
/// it, and the write gate refuses those writes: the summary counts them.
#[test]
fn the_fenced_writer_mode_counts_the_writes_the_gate_refused() {
    let (ok, text) = chaos(
        4,
        1,
        &[
            "--mode",
            "fenced-writer",
            "--kind",
            "sigstop",
            "--kind",
            "sigterm",
        ],
    );
    assert!(ok, "seeds 1..4:\n{text}");
    assert_eq!(summary(&text, "violations: "), 0, "{text}");
    assert!(guarded_writes(&text, "landed") > 0, "{text}");
    assert!(guarded_writes(&text, "refused by the gate") > 0, "{text}");
}
