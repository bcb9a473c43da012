//! `leader-elect-lab`: the demo, the benchmarks and the chaos runs of `leader-elect`, and the claim
//! coordinator's demo and benchmark, on the fake API server.
//!
//! Exit codes: 0 success; 1 a runtime failure (a failed demo, a chaos run with a violation, a product
//! binary not found); 2 a usage error (unknown flag, invalid duration).

mod bench;
mod chaos;
mod claim_bench;
mod claim_demo;
mod demo;
mod failure;
mod harness;
mod peers;
mod timeline;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leaderelection_lab::products::{self, Product};

use crate::failure::Failure;

/// The lab of leader-elect and the claim coordinator: demos, benchmarks and chaos runs on the fake API
/// server, driving the product binaries as a user would.
#[derive(Debug, Parser)]
#[command(name = "leader-elect-lab", version, about, propagate_version = true)]
struct Cli {
    /// The `leader-elect` binary to run [env: LEADER_ELECT]. Default: the one beside this binary (built
    /// first when the lab runs through `cargo run` or `cargo test`).
    #[arg(long, global = true, value_name = "PATH")]
    leader_elect: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole election on the embedded fake API server, with crashes, handovers and a partition.
    Demo(demo::DemoArgs),
    /// Measure handover, crash failover, yield, API load and footprint over many runs (build with
    /// --release).
    Bench(bench::BenchArgs),
    /// Graceful handover side by side: leader-elect and the peer candidates present (kube-leader-election,
    /// kube-lease-manager, kubert, the Python client), one table.
    Peers(peers::PeersArgs),
    /// Real candidates under random faults from a seed, checked from the outside on every run.
    Chaos(chaos::ChaosArgs),
    /// The claim coordinator: three replicas, 50 hosts, 40 claims and a leader killed mid-batch on the
    /// embedded fake API server.
    ClaimDemo,
    /// The claim coordinator's six arms under a steady and a burst load: optimistic as Beskar7, optimistic
    /// with intent first, leader-batched, the leader killed, and the original as deployed (one replica,
    /// intent first or its own retry loop); conflicts, writes, time to claim and the invariants of each.
    ClaimBench(claim_bench::BenchArgs),
    /// (internal) The child of a `chaos` candidate: appends fenced heartbeats to a work log.
    #[command(hide = true)]
    ChaosWorker(chaos::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(_) | Command::Bench(_) | Command::Chaos(_) | Command::Peers(_) => {
            init_logs("info,kube_client::client::builder=off");
            match products::locate(Product::LeaderElect, cli.leader_elect.as_deref()) {
                Ok(path) => {
                    harness::LEADER_ELECT.get_or_init(|| path);
                    // Two threads: the candidates are processes of their own.
                    run(
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .enable_all()
                            .build(),
                        cli.command,
                    )
                }
                Err(err) => Err(Failure::Runtime(err.into())),
            }
        }
        Command::ClaimDemo | Command::ClaimBench(_) => {
            init_logs("error");
            run(tokio::runtime::Runtime::new(), cli.command)
        }
        // The child of a candidate: one thread, nothing logged.
        Command::ChaosWorker(_) => run(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            cli.command,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(err)) => {
            eprintln!("leader-elect-lab: error: {err:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(err)) => {
            eprintln!("leader-elect-lab: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs `command` on `runtime`.
fn run(runtime: std::io::Result<tokio::runtime::Runtime>, command: Command) -> Result<(), Failure> {
    let runtime = runtime
        .map_err(|e| Failure::Runtime(anyhow::Error::new(e).context("starting the runtime")))?;
    runtime.block_on(async move {
        match command {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Chaos(args) => chaos::run(args).await,
            Command::Peers(args) => peers::run(args).await,
            Command::ClaimDemo => Ok(claim_demo::run().await?),
            Command::ClaimBench(args) => Ok(claim_bench::run(args).await?),
            Command::ChaosWorker(args) => chaos::worker(args).await,
        }
    })
}

/// Logs of the lab's own process on stderr: `RUST_LOG`, else `default`.
fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
