//! The `claim-coordinator` binary: a bad flag is refused naming it. (`run` binding claims against the fake
//! API server is tested in the lab: `crates/lab/tests/claim_cli.rs`.)

const BIN: &str = env!("CARGO_BIN_EXE_claim-coordinator");

#[test]
fn a_bad_duration_is_refused_naming_the_setting() {
    let output = std::process::Command::new(BIN)
        .args([
            "run",
            "--server",
            "http://127.0.0.1:1",
            "--identity",
            "pod-a",
            "--claim-coordinator-retry-period=soon",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("retryPeriod") && err.contains("soon"), "{err}");
}
