//! The `claim-coordinator` binary: a bad flag is refused naming it. (`run` binding claims against the fake
//! API server is tested in the lab: `crates/lab/tests/claim_cli.rs`.)

const BIN: &str = env!("CARGO_BIN_EXE_claim-coordinator");

/// `claim-coordinator run` against a closed port with `flag`, its settings refused before any request.
fn run_with(flag: &str) -> std::process::Output {
    std::process::Command::new(BIN)
        .args([
            "run",
            "--server",
            "http://127.0.0.1:1",
            "--identity",
            "pod-a",
            flag,
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn a_bad_duration_is_refused_naming_the_setting() {
    let output = run_with("--claim-coordinator-retry-period=soon");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("retryPeriod") && err.contains("soon"), "{err}");
}

/// The two settings with a flag of their own since the Helm chart (which passes every setting as a flag):
/// each is read, and a bad value refused naming the setting.
#[test]
fn lease_name_and_max_wait_flags_are_read_and_checked() {
    for (flag, expected) in [
        ("--claim-coordinator-max-wait=0s", "maxWait"),
        ("--claim-coordinator-lease-name=My_Lease", "lease_name"),
    ] {
        let output = run_with(flag);
        assert!(!output.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&output.stderr);
        let value = flag.split_once('=').unwrap().1;
        assert!(
            err.contains(expected) && err.contains(value),
            "{flag}: {err}"
        );
    }
}

/// `crds --dir -` prints both CustomResourceDefinitions as one YAML stream (for `kubectl apply -f -`),
/// the same documents as the files it writes.
#[test]
fn crds_print_to_stdout_as_one_yaml_stream() {
    let output = std::process::Command::new(BIN)
        .args(["crds", "--dir", "-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stream = String::from_utf8(output.stdout).unwrap();
    let docs: Vec<&str> = stream.split("---\n").collect();
    let files = claim_coordinator::resources::crd_files().unwrap();
    assert_eq!(docs.len(), files.len(), "{stream}");
    for (doc, (file, yaml)) in docs.iter().zip(&files) {
        assert_eq!(*doc, yaml, "{file}");
        let crd: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        assert_eq!(crd["kind"], "CustomResourceDefinition", "{file}");
    }
}
