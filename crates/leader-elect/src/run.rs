//! `leader-elect run`: join the election with the controller layer; run CMD only while leading.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use leaderelection::{Callbacks, KubeLeaseLock, Observer};
use leaderelection_controller::settings::{Environment, Overrides, Settings};
use leaderelection_controller::{
    Admin, Component, EventBus, Metrics, Policy, Supervisor, SupervisorError,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::child::{ChildSpec, Guardian, Reaper, run_for_term};
use crate::client::{DisabledLock, ServerArgs, await_api_server, generated_identity};

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
    /// Time the child's process group gets between SIGTERM and SIGKILL when the term ends. Default and
    /// maximum: lease duration - renew deadline - margin (4s with the defaults), so that the group is
    /// gone before a follower may take over; SIGKILL comes sooner if the Lease is known to be someone
    /// else's. A second SIGTERM or SIGINT to leader-elect skips the rest of it.
    #[arg(long, value_parser = humantime::parse_duration)]
    grace_period: Option<Duration>,
    /// What to do when the child exits on its own while leading.
    #[arg(long, value_enum, default_value_t = OnChildExit::Release)]
    on_child_exit: OnChildExit,
    /// Poll the Lease every retry period instead of watching it (client-go's behaviour; for comparison).
    #[arg(long)]
    no_watch: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The command to run while leading, in a process group of its own; gets LEADER_ELECT_TERM,
    /// LEADER_ELECT_IDENTITY, LEADER_ELECT_LEASE (and /dev/null as stdin when ours is a terminal).
    #[arg(last = true)]
    command: Vec<OsString>,
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
    config.watch = !args.no_watch;
    // The elector's stop timeout stays the whole stop window (`None`): its abort of the term's task
    // never comes before the child's SIGKILL, which the grace period and the work deadline bound.
    let grace_period = match args.grace_period {
        Some(grace_period) => {
            config
                .check_fits_stop_window("grace_period", grace_period)
                .map_err(|e| Failure::Usage(e.into()))?;
            grace_period
        }
        None => config.stop_window(),
    };

    // Disabled mode makes no API call: it builds no client and needs no kubeconfig.
    let client = match config.enabled {
        true => Some(args.server.client().await?),
        false => None,
    };

    let policy = match args.on_child_exit {
        OnChildExit::Release => Policy::FailProcess,
        OnChildExit::Restart => Policy::default(),
    };
    let supervisor = Supervisor::new(policy);
    let reaper = Arc::new(
        Reaper::new().context("becoming a child subreaper (prctl PR_SET_CHILD_SUBREAPER)")?,
    );
    let guardian = (!args.command.is_empty())
        .then(Guardian::spawn)
        .transpose()
        .context("starting the guardian process")?
        .map(Arc::new);
    let identity = config.identity.clone();
    let lease = format!("{}/{}", config.lease_namespace, config.lease_name);

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, &config.lease_name);
    let bus = EventBus::default();
    let (namespace, name) = (config.lease_namespace.clone(), config.lease_name.clone());
    let callbacks = supervisor.callbacks(Callbacks::new());
    let observer: Option<Arc<dyn Observer>> = Some(Arc::new(metrics.clone()));
    let component = match &client {
        Some(client) => {
            let lock = KubeLeaseLock::new(client.clone(), &namespace, &name);
            Component::with_observer(config, lock, bus.clone(), callbacks, observer)
        }
        None => {
            let lock = DisabledLock::new(&namespace, &name);
            Component::with_observer(config, lock, bus.clone(), callbacks, observer)
        }
    }
    .map_err(|e| Failure::Usage(e.into()))?;
    let skip_grace = CancellationToken::new();
    if let Some(guardian) = guardian {
        // Registered after the component exists, for its state channel: the supervisor reads its
        // leader-only components at the start of each term, and no term starts before `run`.
        let spec = ChildSpec {
            command: Arc::new(args.command.clone()),
            identity,
            lease,
            grace_period,
            state: component.subscribe(),
            skip_grace: skip_grace.clone(),
            guardian,
            reaper: reaper.clone(),
        };
        let _ = supervisor.clone().leader_only("child", move |term, token| {
            run_for_term(spec.clone(), term, token)
        });
    }
    let reaper_stop = CancellationToken::new();
    let reaping = tokio::spawn(reaper.run(reaper_stop.clone()));
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
    tokio::spawn(stop_on_signals(shutdown.clone(), skip_grace));

    // After the admin server is up (so /healthz answers and /readyz says not ready while the API server
    // is unreachable) and the signals are handled (a SIGTERM ends the wait).
    let answered = match &client {
        Some(client) => {
            let lock = KubeLeaseLock::new(client.clone(), &namespace, &name);
            await_api_server(&lock, &args.server, component.config(), &shutdown).await
        }
        None => Ok(()),
    };
    let result = match answered {
        Err(failure) => Err(failure),
        Ok(()) if shutdown.is_cancelled() => Ok(()),
        Ok(()) => supervisor
            .run(&component, shutdown)
            .await
            .map_err(|err| match err {
                SupervisorError::Failed(failure) => Failure::Runtime(anyhow::anyhow!(
                    "{failure}; stepped down and released the lease"
                )),
                err => Failure::Runtime(err.into()),
            }),
    };
    commentator_stop.cancel();
    let _ = commentator.await;
    reaper_stop.cancel();
    let _ = reaping.await;
    result
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT, and `skip_grace` on the second.
async fn stop_on_signals(shutdown: CancellationToken, skip_grace: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL only");
        return;
    };
    let mut next = async || {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    let signal = next().await;
    tracing::info!(
        signal,
        "shutting down: stopping the child, then releasing the lease"
    );
    shutdown.cancel();
    let signal = next().await;
    tracing::warn!(
        signal,
        "second signal: SIGKILL to the child's process group, without the rest of its grace period"
    );
    skip_grace.cancel();
}
