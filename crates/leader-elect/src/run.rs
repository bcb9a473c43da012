//! `leader-elect run`: join the election with the controller layer; run CMD only while leading.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use leaderelection::{Callbacks, KubeLeaseLock};
use leaderelection_controller::settings::{Environment, Overrides, Settings};
use leaderelection_controller::{
    Admin, Component, EventBus, Metrics, Policy, Supervisor, SupervisorError,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::child::{ChildSpec, run_for_term};
use crate::client::{ServerArgs, generated_identity, preflight};

/// What to do when the child exits on its own while this replica leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnChildExit {
    /// Step down: release the Lease and exit 1 (the orchestrator restarts us; another replica leads).
    Release,
    /// Restart the child (backoff from 500 ms to 30 s) and keep leading.
    Restart,
}

/// `leader-elect run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The Lease's name (or controller.leader_election.lease_name in --config).
    #[arg(long)]
    lease_name: Option<String>,
    /// The Lease's namespace. Default: POD_NAMESPACE, the service-account namespace, then "default".
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// This candidate's identity. Default: POD_NAME, then the hostname plus a random suffix.
    #[arg(long)]
    identity: Option<String>,
    /// A YAML file with controller.leader_election settings (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// leaseDurationSeconds, whole seconds (default 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_duration: Option<Duration>,
    /// How long the leader keeps trying to renew before it steps down (default 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_deadline: Option<Duration>,
    /// Time between renewals and retries (default 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    retry_period: Option<Duration>,
    /// Serve /healthz, /readyz, /metrics and /debug/vars on this address (e.g. 0.0.0.0:8080).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Time the child gets between SIGTERM and SIGKILL when the term ends.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    grace_period: Duration,
    /// What to do when the child exits on its own while leading.
    #[arg(long, value_enum, default_value_t = OnChildExit::Release)]
    on_child_exit: OnChildExit,
    /// Poll the Lease every retry period instead of watching it (client-go's behaviour; for comparison).
    #[arg(long)]
    no_watch: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The command to run while leading; gets LEADER_ELECT_TERM, LEADER_ELECT_IDENTITY, LEADER_ELECT_LEASE.
    #[arg(last = true)]
    command: Vec<String>,
}

pub(crate) async fn run(args: RunArgs) -> Result<(), Failure> {
    let settings = match &args.config {
        Some(path) => Settings::from_path(path).map_err(|e| Failure::Usage(e.into()))?,
        None => Settings::default(),
    };
    let mut env = Environment::from_process();
    // Last in the identity precedence (flag, file, POD_NAME): a generated, unique one.
    env.pod_name.get_or_insert_with(generated_identity);
    let overrides = Overrides {
        identity: args.identity.clone(),
        lease_name: args.lease_name.clone(),
        lease_namespace: args.namespace.clone(),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    let mut config = settings
        .to_elector_config(&env, &overrides)
        .map_err(|e| Failure::Usage(e.into()))?;
    config.stop_timeout = Some(args.grace_period + Duration::from_secs(5));
    config.watch = !args.no_watch;

    let client = args.server.client().await?;
    let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
    if config.enabled {
        preflight(&lock, &args.server).await?;
    }

    let policy = match args.on_child_exit {
        OnChildExit::Release => Policy::FailProcess,
        OnChildExit::Restart => Policy::default(),
    };
    let mut supervisor = Supervisor::new(policy);
    if !args.command.is_empty() {
        let spec = ChildSpec {
            command: Arc::new(args.command.clone()),
            identity: config.identity.clone(),
            lease: format!("{}/{}", config.lease_namespace, config.lease_name),
            grace_period: args.grace_period,
        };
        supervisor = supervisor.leader_only("child", move |term, token| {
            run_for_term(spec.clone(), term, token)
        });
    }

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, &config.lease_name);
    let bus = EventBus::default();
    let component = Component::with_observer(
        config,
        lock,
        bus.clone(),
        supervisor.callbacks(Callbacks::new()),
        Some(Arc::new(metrics.clone())),
    )
    .map_err(|e| Failure::Usage(e.into()))?;
    let commentator_stop = CancellationToken::new();
    let commentator = tokio::spawn(leaderelection_controller::commentator::run(
        bus.subscribe(),
        commentator_stop.clone(),
    ));
    tokio::spawn(metrics.clone().run(component.clone()));

    let shutdown = CancellationToken::new();
    if let Some(addr) = args.admin_listen {
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --admin-listen {addr}"))?;
        let bound = socket.local_addr().context("reading the admin address")?;
        tracing::info!(address = %bound, "admin endpoints: /healthz /readyz /metrics /debug/vars");
        let admin = Admin::new(component.clone(), Duration::from_secs(5), registry, metrics);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = leaderelection_controller::admin::serve(socket, admin, stop).await {
                tracing::error!(%err, "admin server failed");
            }
        });
    }
    tokio::spawn(stop_on_signals(shutdown.clone()));

    let result = supervisor.run(&component, shutdown).await;
    commentator_stop.cancel();
    let _ = commentator.await;
    match result {
        Ok(()) => Ok(()),
        Err(SupervisorError::Failed(failure)) => Err(Failure::Runtime(anyhow::anyhow!(
            "{failure}; stepped down and released the lease"
        ))),
        Err(err) => Err(Failure::Runtime(err.into())),
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL only");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: stopping the child, then releasing the lease"
    );
    shutdown.cancel();
}
