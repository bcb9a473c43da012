//! `leader-elect install DIR`: copies this binary into a directory, for the Helm chart's wrap mode (an
//! initContainer puts `leader-elect` into an `emptyDir` that the user's container then runs it from), so
//! the image needs no other program.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;

use crate::child::SELF_EXE;
use crate::failure::Failure;

/// `leader-elect install`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// The directory to put `leader-elect` in; it must exist (e.g. an emptyDir volume mounted there).
    dir: PathBuf,
}

/// Copies the running binary to `DIR/leader-elect` (mode 0755), through a temporary file renamed into
/// place, so a reader never sees a half-written binary.
pub(crate) fn install(args: &InstallArgs) -> Result<(), Failure> {
    let target = args.dir.join("leader-elect");
    let partial = args.dir.join(".leader-elect.partial");
    std::fs::copy(SELF_EXE, &partial)
        .with_context(|| format!("copying leader-elect into {}", args.dir.display()))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", partial.display()))?;
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving the copy to {}", target.display()))?;
    println!("installed {}", target.display());
    Ok(())
}
