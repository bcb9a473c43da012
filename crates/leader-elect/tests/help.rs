//! What ships: `leader-elect --help` lists the product's commands only (the demo, the benchmarks, the chaos
//! runs and the fake API server live in the lab and in `fake-apiserver`).

use std::process::Command;

#[test]
fn the_help_lists_only_the_products_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_leader-elect"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "run",
            "status",
            "release",
            "yield",
            "fencing-policy",
            "install",
            "help"
        ],
        "{help}"
    );
}
