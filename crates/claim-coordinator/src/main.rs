//! `claim-coordinator`: run a replica, or write the CustomResourceDefinitions.
//!
//! `run` stops on SIGTERM (pod deletion) or SIGINT: the binder stops, the Lease is released, exit 0. A
//! second one exits 1 at once, without waiting for that (`leaderelection_controller::signals`).
//!
//! The demo and the benchmark live in the lab (`leader-elect-lab claim-demo`, `claim-bench`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use claim_coordinator::settings::{Mode, Overrides};
use claim_coordinator::{Pool, Settings};
use clap::{Args, Parser, Subcommand};
use leaderelection::KubeLeaseLock;
use leaderelection_controller::kubeconfig::ClientOptions;
use leaderelection_controller::settings::Environment;
use leaderelection_controller::signals::Signals;
use prometheus_client::registry::Registry;

/// Leader-batched claims of pooled hosts by priority.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one coordinator replica: campaigns for the coordinator Lease and, while leading, binds the
    /// pending HostClaims of its namespace to PhysicalHosts.
    Run(Box<RunArgs>),
    /// Writes the CustomResourceDefinitions (PhysicalHost, HostClaim) as YAML files into a directory, or
    /// to stdout (`--dir -`, for `| kubectl apply -f -`).
    Crds {
        /// Directory to write `physicalhosts.yaml` and `hostclaims.yaml` into; `-`: stdout, as one YAML
        /// stream of two documents.
        #[arg(long, default_value = "deploy/crds")]
        dir: PathBuf,
    },
}

/// `run`'s flags (Beskar7's names), each overriding the YAML settings file.
#[derive(Debug, Args)]
struct RunArgs {
    /// API server URL. Replaces only the kubeconfig context's cluster URL (its credentials and CA are
    /// kept, as kubectl does); without a kubeconfig, no credentials. Default: the kubeconfig's, then the
    /// in-cluster service account.
    #[arg(long, env = "CLAIM_COORDINATOR_SERVER")]
    server: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config; none: the in-cluster service
    /// account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context); its namespace is the default
    /// namespace, as with kubectl.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// This replica's identity (unique per replica).
    #[arg(long, env = "POD_NAME")]
    identity: String,
    /// Namespace of the Lease, and of the hosts and claims unless --host-namespace, --claim-namespace or
    /// --all-claim-namespaces say otherwise. Default: POD_NAMESPACE, the kubeconfig context's, the
    /// service-account namespace, then "default".
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Namespace of the PhysicalHosts (the pool namespace); default: --namespace.
    #[arg(long)]
    host_namespace: Option<String>,
    /// Namespace of the HostClaims; default: --namespace.
    #[arg(long, conflicts_with = "all_claim_namespaces")]
    claim_namespace: Option<String>,
    /// Serve HostClaims of every namespace (tenant namespaces); needs a ClusterRole on hostclaims.
    #[arg(long)]
    all_claim_namespaces: bool,
    /// YAML settings file (keys under `claimCoordinator:`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Elect a leader to bind claims (default true).
    #[arg(long)]
    enable_claim_coordinator_leader_election: Option<bool>,
    /// The coordinator Lease's name (default claim-coordinator-leader); consumers in auto mode read the
    /// same Lease.
    #[arg(long, value_name = "NAME")]
    claim_coordinator_lease_name: Option<String>,
    /// LeaseDuration, e.g. 15s.
    #[arg(long)]
    claim_coordinator_lease_duration: Option<String>,
    /// RenewDeadline, e.g. 10s.
    #[arg(long)]
    claim_coordinator_renew_deadline: Option<String>,
    /// RetryPeriod, e.g. 2s.
    #[arg(long)]
    claim_coordinator_retry_period: Option<String>,
    /// How often the leader serves pending claims, e.g. 1s.
    #[arg(long)]
    claim_coordinator_processing_interval: Option<String>,
    /// How consumers get hosts: leader, optimistic or auto.
    #[arg(long, value_enum)]
    claim_coordinator_mode: Option<Mode>,
    /// A claim pending this long goes first, e.g. 10m.
    #[arg(long)]
    claim_coordinator_max_wait: Option<String>,
    /// Serve /healthz, /readyz and /metrics here.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Crds { dir } => write_crds(&dir),
        Command::Run(args) => {
            init_logs("info");
            rt.block_on(run(*args))
        }
    }
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only at a terminal: redirected logs stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn write_crds(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir == std::path::Path::new("-") {
        let docs: Vec<String> = claim_coordinator::resources::crd_files()?
            .into_iter()
            .map(|(_, yaml)| yaml)
            .collect();
        print!("{}", docs.join("---\n"));
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, yaml) in claim_coordinator::resources::crd_files()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Before any await: a SIGTERM during start-up (the kubeconfig, a credential plugin) is a clean stop.
    let signals = Signals::install()?;
    let flags = Overrides {
        leader_election: args.enable_claim_coordinator_leader_election,
        lease_name: args.claim_coordinator_lease_name,
        lease_duration: args.claim_coordinator_lease_duration,
        renew_deadline: args.claim_coordinator_renew_deadline,
        retry_period: args.claim_coordinator_retry_period,
        processing_interval: args.claim_coordinator_processing_interval,
        mode: args.claim_coordinator_mode,
        max_wait: args.claim_coordinator_max_wait,
    };
    let settings = match &args.config {
        Some(path) => Settings::from_path(path, &flags)?,
        None => Settings::resolve(None, &flags)?,
    };
    let cluster = ClientOptions {
        kubeconfig: args.kubeconfig,
        context: args.context,
        server: args.server,
    }
    .load()
    .await?;
    let namespace = cluster.namespace(args.namespace.as_deref(), &Environment::from_process());
    let client = KubeLeaseLock::client(cluster.config)?;
    let host_namespace = args.host_namespace.as_deref().unwrap_or(&namespace);
    let claim_namespace = if args.all_claim_namespaces {
        None
    } else {
        Some(args.claim_namespace.as_deref().unwrap_or(&namespace))
    };
    let pool: Pool = Pool::with_namespaces(
        client.clone(),
        host_namespace,
        claim_namespace,
        &args.identity,
    );
    let (runtime, _metrics) = claim_coordinator::coordinator::replica_of(
        pool,
        client,
        &settings,
        &args.identity,
        &namespace,
        Registry::default(),
        args.admin,
    )?;
    // SIGTERM (pod deletion) or SIGINT: the binder stops, then the Lease is released, so another replica
    // binds at once. A second one: exit without waiting (the Lease then expires).
    let shutdown = signals.shutdown();
    signals.run_or_abandon(runtime.run(shutdown)).await??;
    Ok(())
}
