//! `claim-coordinator`: run a replica, print the CustomResourceDefinitions, run the demo or the benchmark.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Leader-batched claims of pooled hosts by priority.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes the CustomResourceDefinitions (PhysicalHost, HostClaim) as YAML files into a directory.
    Crds {
        /// Directory to write `physicalhosts.yaml` and `hostclaims.yaml` into.
        #[arg(long, default_value = "deploy/crds")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, yaml) in claim_coordinator::resources::crd_files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}
