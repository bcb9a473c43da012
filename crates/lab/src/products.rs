//! Where the lab finds the product binaries it drives (`leader-elect`, `claim-coordinator`): it runs them
//! as processes, as a user would, never links them.
//!
//! In order: the path given (a flag), the environment variable ([`Product::env_var`]), then the binary
//! beside the running executable (a test executable in `target/<profile>/deps` looks in its parent too).
//! When run by cargo (`cargo run`, `cargo test` set `CARGO`), the product is first built with
//! `$CARGO build -p <product>` in the profile of the running executable, so one `cargo run` command works
//! on a fresh clone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A product binary of this workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// `leader-elect` (package `leader-elect`).
    LeaderElect,
    /// `claim-coordinator` (package `claim-coordinator`).
    ClaimCoordinator,
}

/// Why a product binary was not found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The path given (flag or environment variable) names no file.
    #[error("{product} not found at {path} (given by {source_of_path})")]
    NotAtGivenPath {
        /// The binary's name.
        product: &'static str,
        /// The path given.
        path: PathBuf,
        /// Where the path came from: a flag or an environment variable.
        source_of_path: String,
    },
    /// `$CARGO build -p <product>` could not be run or failed.
    #[error("building {product} with `{command}` failed: {reason}")]
    BuildFailed {
        /// The binary's name.
        product: &'static str,
        /// The command run.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// Not given, and not beside the running executable.
    #[error(
        "{product} not found (looked in {looked}): build it with `cargo build --release -p {product}` \
         (or run the lab through cargo, which builds it), or give its path in {env_var}"
    )]
    NotFound {
        /// The binary's name.
        product: &'static str,
        /// The directories looked in, comma-separated.
        looked: String,
        /// The environment variable that names it.
        env_var: &'static str,
    },
}

// === impl Product ===

impl Product {
    /// The binary's name, also its package's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::LeaderElect => "leader-elect",
            Self::ClaimCoordinator => "claim-coordinator",
        }
    }

    /// The environment variable that gives the binary's path: `LEADER_ELECT`, `CLAIM_COORDINATOR`.
    #[must_use]
    pub fn env_var(self) -> &'static str {
        match self {
            Self::LeaderElect => "LEADER_ELECT",
            Self::ClaimCoordinator => "CLAIM_COORDINATOR",
        }
    }
}

/// The path of `product`'s binary: `given` (a flag), else the environment variable, else beside the running
/// executable; built first by cargo when the lab runs under cargo (see the module's documentation). Blocks
/// while cargo builds.
///
/// # Errors
///
/// [`LocateError`]: a given path that names no file, a failed build, or no binary beside this one.
pub fn locate(product: Product, given: Option<&Path>) -> Result<PathBuf, LocateError> {
    let from_env = std::env::var_os(product.env_var()).map(PathBuf::from);
    let given = match (given, from_env) {
        (Some(path), _) => Some((path.to_owned(), format!("--{}", product.name()))),
        (None, Some(path)) => Some((path, product.env_var().to_owned())),
        (None, None) => None,
    };
    if let Some((path, source_of_path)) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LocateError::NotAtGivenPath {
                product: product.name(),
                path,
                source_of_path,
            })
        };
    }
    let exe = std::env::current_exe().ok();
    if let Some(cargo) = std::env::var_os("CARGO") {
        return build(product, Path::new(&cargo), exe.as_deref());
    }
    let dirs = exe.as_deref().map(search_dirs).unwrap_or_default();
    dirs.iter()
        .map(|dir| dir.join(product.name()))
        .find(|path| path.is_file())
        .ok_or_else(|| LocateError::NotFound {
            product: product.name(),
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            env_var: product.env_var(),
        })
}

/// The directories where a product built beside `exe` is: `exe`'s own, and its parent when `exe` is a test
/// executable in `target/<profile>/deps`.
fn search_dirs(exe: &Path) -> Vec<PathBuf> {
    let Some(dir) = exe.parent() else {
        return Vec::new();
    };
    let mut dirs = vec![dir.to_owned()];
    if dir.file_name().is_some_and(|name| name == "deps")
        && let Some(parent) = dir.parent()
    {
        dirs.push(parent.to_owned());
    }
    dirs
}

/// The cargo profile that built `exe`, from its directory: `target/<profile-dir>/[deps/]exe`, where the
/// `dev` profile's directory is `debug`.
fn profile_of(exe: &Path) -> Option<String> {
    let dir = search_dirs(exe).pop()?;
    let name = dir.file_name()?.to_str()?;
    Some(if name == "debug" { "dev" } else { name }.to_owned())
}

/// Runs `cargo build -p <product>` in the workspace this lab was built from, in `exe`'s profile, and returns
/// the binary's path as cargo reports it (so a `--target-dir` or `CARGO_TARGET_DIR` is followed).
fn build(product: Product, cargo: &Path, exe: Option<&Path>) -> Result<PathBuf, LocateError> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let profile = exe.and_then(profile_of).unwrap_or_else(|| "dev".to_owned());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", product.name(), "--bin", product.name()])
        .args(["--profile", &profile])
        .args(["--message-format", "json-render-diagnostics"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let shown = format!(
        "cargo build --manifest-path {} -p {} --profile {profile}",
        manifest.display(),
        product.name()
    );
    let failed = |reason: String| LocateError::BuildFailed {
        product: product.name(),
        command: shown.clone(),
        reason,
    };
    let output = command.output().map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!("{} (its errors are above)", output.status)));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == product.name()
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| failed("cargo reported no executable".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_executable_also_looks_in_the_profile_directory() {
        let dirs = search_dirs(Path::new("/w/target/debug/deps/chaos-0123abcd"));
        assert_eq!(
            dirs,
            [
                PathBuf::from("/w/target/debug/deps"),
                PathBuf::from("/w/target/debug")
            ]
        );
        assert_eq!(
            search_dirs(Path::new("/w/target/release/leader-elect-lab")),
            [PathBuf::from("/w/target/release")]
        );
    }

    #[test]
    fn the_profile_is_read_from_the_target_directory() {
        assert_eq!(
            profile_of(Path::new("/w/target/debug/deps/chaos-0123abcd")).as_deref(),
            Some("dev")
        );
        assert_eq!(
            profile_of(Path::new("/w/target/release/leader-elect-lab")).as_deref(),
            Some("release")
        );
    }

    #[test]
    fn a_given_path_that_names_no_file_is_refused_naming_it() {
        let err = locate(
            Product::LeaderElect,
            Some(Path::new("/nonexistent/leader-elect")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "leader-elect not found at /nonexistent/leader-elect (given by --leader-elect)"
        );
    }
}
