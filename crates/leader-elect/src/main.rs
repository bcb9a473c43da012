//! `leader-elect`: run any process as a Kubernetes singleton, inspect, release and hand over Leases.
//!
//! Exit codes: 0 success; 1 a runtime failure (unreachable server, RBAC denial, a refused release);
//! 2 a usage or configuration error (unknown flag, invalid duration or name).
//!
//! The demo, the benchmarks and the chaos runs live in the lab (`leader-elect-lab`), which runs this
//! binary as a user would.

mod child;
mod client;
mod failure;
mod fencing_policy;
mod install;
mod lease;
mod logging;
mod preferred;
mod proxy;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::failure::Failure;
use crate::logging::LogFormat;

/// Kubernetes leader election for any process.
#[derive(Debug, Parser)]
#[command(name = "leader-elect", version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the election; run CMD only while this replica leads.
    Run(Box<run::RunArgs>),
    /// Show a Lease's holder, term and timings.
    Status(lease::StatusArgs),
    /// Step down a Lease this identity holds.
    Release(lease::ReleaseArgs),
    /// Hand the Lease to another candidate (spec.preferredHolder); exit 1 if it has not taken over within
    /// one lease duration, or under coordinated election.
    #[command(name = "yield")]
    Yield(preferred::YieldArgs),
    /// Print the admission policy that makes the API server refuse writes of a stale term (YAML).
    FencingPolicy(fencing_policy::FencingPolicyArgs),
    /// Copy this binary into a directory (the Helm chart's wrap mode: an initContainer fills an emptyDir).
    Install(install::InstallArgs),
    /// (internal) Arm the parent-death signal, then exec the command.
    #[command(hide = true)]
    ExecChild(child::ExecChildArgs),
    /// (internal) Kill each armed process group at its deadline, and all when leader-elect dies (end of stdin).
    #[command(hide = true)]
    Guardian,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    match cli.command {
        // Helpers of `run`, before any thread exists: the shim arms the parent-death signal and becomes
        // the command; the guardian waits for leader-elect to go.
        Command::ExecChild(args) => return child::exec_child(&args),
        Command::Guardian => return child::guard(),
        _ => {}
    }
    let logging = logging::Logging::init(cli.log_format);
    // One thread: the child is spawned from the main thread, which lives as long as the process, so the
    // parent-death signal fires exactly when leader-elect dies. Nothing on it blocks: logs are queued
    // (`logging`), and the child's SIGKILL deadline has a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            logging.error_line(&anyhow::Error::new(err).context("starting the runtime"));
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Status(args) => lease::status(args).await,
            Command::Release(args) => lease::release(args).await,
            Command::Yield(args) => preferred::yield_lease(args).await,
            Command::Install(args) => install::install(&args),
            Command::FencingPolicy(args) => fencing_policy::fencing_policy(&args),
            Command::ExecChild(_) | Command::Guardian => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            logging.error_line(&err);
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            logging.error_line(&err);
            ExitCode::from(1)
        }
    }
}
