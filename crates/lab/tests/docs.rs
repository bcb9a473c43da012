//! The flag references are complete and true: every flag that a command's `--help` lists is documented in
//! that command's section (or the binary's "every command" section) of its reference page, and every flag
//! a section documents is in that command's `--help`. Pages: `docs/configuration.md` for `leader-elect`
//! and `leader-elect-lab`, `docs/claim-coordinator.md` for `claim-coordinator`.
//!
//! A section belongs to a command when its heading starts with the command in backticks
//! (``## `leader-elect run [FLAGS]` ``; ``## `leader-elect` (every command)`` for the flags every command
//! takes); a `###` heading without backticks stays in its section, a `##` one leaves it. The flags a
//! section documents are those in the first cell of its table rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use leaderelection_lab::products::{Product, locate};

/// A binary, its reference page, and its `--help`'s visible subcommands.
struct Binary {
    name: &'static str,
    path: PathBuf,
    page: &'static str,
}

fn docs(page: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The long flags in `text`: `--name` where `name` is `[a-z0-9-]+` starting with a letter.
fn long_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let starts_word =
            at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '-');
        if starts_word && name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.insert(format!("--{name}"));
        }
        rest = &after[name.len()..];
    }
    flags
}

/// `BIN ARGS --help`: the flags of its Options (each option line starts with `-x, --name` or `--name`)
/// and its visible subcommands.
fn help(bin: &Path, args: &[&str]) -> (BTreeSet<String>, Vec<String>) {
    let out = Command::new(bin).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{} {args:?} --help", bin.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let flags = text
        .lines()
        .map(str::trim_start)
        .filter_map(|line| {
            let line = line
                .strip_prefix('-')
                .filter(|l| !l.starts_with('-'))
                .map_or(line, |l| l.get(3..).unwrap_or(""));
            line.strip_prefix("--")?;
            long_flags(line.split_whitespace().next()?)
                .into_iter()
                .next()
        })
        .collect();
    let commands = text
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    (flags, commands)
}

/// The flags each section of `page` documents, by command (`""`: the binary's every-command section).
fn documented(page: &str, binary: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        if let Some(heading) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            let named = heading
                .strip_prefix('`')
                .and_then(|h| h.split('`').next())
                .and_then(|h| {
                    let mut words = h.split_whitespace();
                    (words.next()? == binary).then(|| {
                        words
                            .next()
                            .filter(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
                            .unwrap_or("")
                            .to_owned()
                    })
                });
            match named {
                Some(command) => {
                    sections.entry(command.clone()).or_default();
                    current = Some(command);
                }
                None if line.starts_with("## ") => current = None,
                None => {}
            }
            continue;
        }
        let (Some(command), Some(row)) = (&current, line.strip_prefix('|')) else {
            continue;
        };
        let first_cell = row.split('|').next().unwrap_or("");
        sections
            .entry(command.clone())
            .or_default()
            .extend(long_flags(first_cell));
    }
    sections
}

fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            name: "leader-elect",
            path: locate(Product::LeaderElect, None).unwrap(),
            page: "configuration.md",
        },
        Binary {
            name: "leader-elect-lab",
            path: env!("CARGO_BIN_EXE_leader-elect-lab").into(),
            page: "configuration.md",
        },
        Binary {
            name: "claim-coordinator",
            path: locate(Product::ClaimCoordinator, None).unwrap(),
            page: "claim-coordinator.md",
        },
    ]
}

#[test]
fn every_flag_in_help_is_documented_and_every_documented_flag_exists() {
    let mut problems = Vec::new();
    for binary in binaries() {
        let page = docs(binary.page);
        let sections = documented(&page, binary.name);
        let (global_help, commands) = help(&binary.path, &[]);
        let global_docs = sections.get("").cloned().unwrap_or_default();
        for flag in global_docs.difference(&global_help) {
            problems.push(format!(
                "{} {}: documented for every command, not in `{} --help`",
                binary.page, flag, binary.name
            ));
        }
        assert!(!commands.is_empty(), "{}: no commands", binary.name);
        for command in &commands {
            let (in_help, _) = help(&binary.path, &[command]);
            let Some(in_docs) = sections.get(command) else {
                problems.push(format!(
                    "{}: no section for `{} {command}`",
                    binary.page, binary.name
                ));
                continue;
            };
            for flag in in_help.difference(in_docs) {
                if !global_docs.contains(flag) {
                    problems.push(format!(
                        "{}: `{} {command} {flag}` is not documented",
                        binary.page, binary.name
                    ));
                }
            }
            for flag in in_docs.difference(&in_help) {
                problems.push(format!(
                    "{}: documents `{} {command} {flag}`, which its --help does not list",
                    binary.page, binary.name
                ));
            }
        }
        for section in sections.keys() {
            if !section.is_empty() && !commands.contains(section) {
                problems.push(format!(
                    "{}: a section for `{} {section}`, which is not a command",
                    binary.page, binary.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parsing above finds what it must: a flag with a short form, one with a value, a flag named in a
/// table's first cell among others, and none in prose or in other cells.
#[test]
fn the_flag_parsers_find_flags_in_help_lines_and_first_cells_only() {
    assert_eq!(
        long_flags("`--namespace NS`, `-n` and --lease-name, not x--y or ---"),
        ["--lease-name", "--namespace"].map(str::to_owned).into()
    );
    let page = "## `b run`\n\n| `--a X`, `-a` | `--not-this` |\nprose --nor-this\n### More\n| `--b` | |\n\
                ## Other\n| `--c` | |\n## `b` (every command)\n| `--d` | |\n";
    let sections = documented(page, "b");
    assert_eq!(sections["run"], ["--a", "--b"].map(str::to_owned).into());
    assert_eq!(sections[""], ["--d"].map(str::to_owned).into());
    assert_eq!(sections.len(), 2);
    // A section without a table documents no flag, and is still the command's section.
    assert_eq!(
        documented("## `b install DIR`\nprose\n", "b")["install"],
        BTreeSet::new()
    );
}
