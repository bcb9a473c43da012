//! `leader-elect run`: join the election with the controller layer; run CMD only while leading.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use leaderelection::{CandidateConfig, KubeLeaseLock};
use leaderelection_controller::runtime::Builder;
use leaderelection_controller::settings::{
    DEFAULT_NAMESPACE, ElectionMode, Environment, Overrides, Settings, SettingsError,
};
use leaderelection_controller::signals::Signals;
use leaderelection_controller::{Policy, Runtime, RuntimeError, SupervisorError};
use tokio_util::sync::CancellationToken;

use crate::child::{ChildSpec, Groups, Guardian, Reaper, run_for_term, stop_children_on_sigtstp};
use crate::client::{Connection, ServerArgs, await_api_server, generated_identity};
use crate::failure::Failure;
use crate::proxy::FenceProxy;

/// The `reportingController` of the Events recorded with `--events`.
const REPORTING_CONTROLLER: &str = "leader-elect";

/// What to do when the child exits on its own while this replica leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnChildExit {
    /// Step down: release the Lease and exit 1 (the orchestrator restarts us; another replica leads).
    Release,
    /// Restart the child (backoff from 500 ms to 30 s) and keep leading; a failure to start counts as
    /// an exit. The 5th exit within 5 minutes steps down: the child's group is stopped, the Lease
    /// released (another replica leads at once), and this replica contends again after a retry period.
    Restart,
}

/// `leader-elect run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The Lease's name (or controller.leader_election.lease_name in --config).
    #[arg(long)]
    lease_name: Option<String>,
    /// The Lease's namespace (or controller.leader_election.lease_namespace in --config). Default:
    /// POD_NAMESPACE, the kubeconfig context's, the service-account namespace, then "default".
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
    /// Record Kubernetes Events on the Lease ("IDENTITY became leader", "IDENTITY stopped leading"),
    /// reported by "leader-elect" (or controller.leader_election.events: true in --config). Needs RBAC
    /// events.k8s.io events: create, patch; a failure to record is logged and never affects the election.
    #[arg(long)]
    events: bool,
    /// A label given to the Lease when this candidate creates it, KEY=VALUE (repeat for more; wins over
    /// controller.leader_election.lease_labels in --config). A Lease that exists keeps its own labels.
    #[arg(long = "lease-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    lease_labels: Vec<(String, String)>,
    /// An annotation given to the Lease when this candidate creates it, KEY=VALUE (repeat for more; wins
    /// over controller.leader_election.lease_annotations in --config).
    #[arg(long = "lease-annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    lease_annotations: Vec<(String, String)>,
    /// Poll the Lease every retry period instead of watching it (client-go's behaviour; for comparison).
    #[arg(long)]
    no_watch: bool,
    /// Coordinated leader election (KEP-4355; or controller.leader_election.coordinated: true in
    /// --config): register a coordination.k8s.io/v1beta1 LeaseCandidate named after the identity, answer
    /// the election controller's pings, and lead only when it assigns the Lease; never create or take a
    /// coordinated Lease on our own; delete the LeaseCandidate on shutdown. Where the API server does not
    /// serve LeaseCandidates: one WARN, then an ordinary election. Needs RBAC coordination.k8s.io
    /// leasecandidates: get, create, update, delete, list, watch.
    #[arg(long)]
    coordinated: bool,
    /// With --coordinated: the LeaseCandidate's binaryVersion, MAJOR.MINOR.PATCH without "v" (default:
    /// this leader-elect's version).
    #[arg(long, value_name = "VERSION")]
    binary_version: Option<String>,
    /// With --coordinated: the LeaseCandidate's emulationVersion, at most the binary version (default: the
    /// binary version). The election controller prefers the lowest, then the lowest binary version, then the
    /// oldest candidate.
    #[arg(long, value_name = "VERSION")]
    emulation_version: Option<String>,
    /// Serve the child a loopback Kubernetes API proxy (KUBECONFIG in its environment: 127.0.0.1, a random
    /// port, a token of its term; none of leader-elect's credentials) that forwards with leader-elect's
    /// client through the write gate of the child's term: reads pass; writes (create, update, patch,
    /// delete) outside the term are answered 403 Forbidden without reaching the API server; the objects of
    /// JSON writes get the annotations leaderelection.dev/term and leaderelection.dev/lease. Needs a
    /// command and an election (not the disabled mode).
    #[arg(long)]
    fence: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The command to run while leading, in a process group of its own; gets LEADER_ELECT_TERM,
    /// LEADER_ELECT_IDENTITY, LEADER_ELECT_LEASE (and /dev/null as stdin when ours is a terminal).
    #[arg(last = true)]
    command: Vec<OsString>,
}

pub(crate) async fn run(args: RunArgs) -> Result<(), Failure> {
    // Caught from here on, before any await: a signal during start-up (kubeconfig, a credential plugin,
    // the guardian) is then a clean stop, not death by the signal. The first SIGTERM or SIGINT cancels
    // `shutdown`, the second `skip_grace` (SIGKILL to the child's group without the rest of its grace).
    let signals = Signals::install()
        .inspect_err(|err| {
            tracing::error!(%err, "cannot install signal handlers; stop with SIGKILL only");
        })
        .ok();
    let (shutdown, skip_grace) = match &signals {
        Some(signals) => (signals.shutdown(), signals.skip_grace()),
        None => (CancellationToken::new(), CancellationToken::new()),
    };
    let settings = match &args.config {
        Some(path) => Settings::from_path(path).map_err(|e| Failure::Usage(e.into()))?,
        None => Settings::default(),
    };
    let env = Environment::from_process();
    let events = args.events || settings.leader_election().events();
    let mut metadata = settings
        .leader_election()
        .lease_metadata()
        .map_err(|e| Failure::Usage(e.into()))?;
    metadata.labels.extend(args.lease_labels.iter().cloned());
    metadata
        .annotations
        .extend(args.lease_annotations.iter().cloned());
    let candidate = candidate_config(&settings, &args).map_err(|e| Failure::Usage(e.into()))?;
    let enabled = settings.leader_election().enabled();
    // The namespace named by the flag or the file; else, when elected, the client configuration's
    // (kubectl's rules), known only once it is loaded: "default" stands in until then, so that every
    // usage error is found before the kubeconfig is read.
    let given_namespace = args.namespace.clone().or_else(|| {
        settings
            .leader_election()
            .lease_namespace()
            .map(str::to_owned)
    });
    let overrides = Overrides {
        // Last in the identity precedence (flag, file, POD_NAME): a generated, unique one.
        fallback_identity: Some(generated_identity()),
        identity: args.identity.clone(),
        lease_name: args.lease_name.clone(),
        lease_namespace: if enabled {
            Some(
                given_namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            )
        } else {
            args.namespace.clone()
        },
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    let mut mode = settings
        .to_election_mode(&env, &overrides)
        .map_err(|e| Failure::Usage(e.into()))?;
    mode.config_mut().watch = !args.no_watch;
    let mode = match mode {
        ElectionMode::Elected(mut config) => {
            let connection = args.server.connect().await?;
            config.lease_namespace = connection.namespace(given_namespace.as_deref(), &env);
            config.validate().map_err(|e| Failure::Usage(e.into()))?;
            Mode::Elected(config, Box::new(connection))
        }
        // Standalone makes no API call: it builds no client and needs no kubeconfig.
        ElectionMode::Standalone(config) => Mode::Standalone(config),
    };
    let config = mode.config();
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

    let policy = match args.on_child_exit {
        OnChildExit::Release => Policy::FailProcess,
        OnChildExit::Restart => Policy::default(),
    };
    let reaper =
        Reaper::new().context("becoming a child subreaper (prctl PR_SET_CHILD_SUBREAPER)")?;
    let guardian = (!args.command.is_empty())
        .then(Guardian::spawn)
        .transpose()
        .context("starting the guardian process")?
        .map(Arc::new);
    let identity = config.identity.clone();
    let lease = format!("{}/{}", config.lease_namespace, config.lease_name);

    let reaper = Arc::new(reaper);
    let groups = guardian.is_some().then(|| Arc::new(Groups::default()));
    let mut child = guardian
        .zip(groups.clone())
        .map(|(guardian, groups)| ChildSpec {
            command: Arc::new(args.command.clone()),
            identity,
            lease,
            grace_period,
            skip_grace: skip_grace.clone(),
            guardian,
            reaper: reaper.clone(),
            groups,
            proxy: None,
        });
    if args.fence && child.is_none() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--fence gates a child's API requests: give a command after --"
        )));
    }
    let proxy_stop = CancellationToken::new();
    let mut proxy_serve = None;

    let elected = matches!(mode, Mode::Elected(..));
    let builder = match mode {
        Mode::Elected(config, connection) => {
            let client = connection.client.clone();
            if let Some(spec) = child.as_mut().filter(|_| args.fence) {
                let (proxy, serve) = FenceProxy::bind(client.clone(), proxy_stop.clone()).await?;
                spec.proxy = Some(proxy);
                proxy_serve = Some(serve);
            }
            let (namespace, name) = (config.lease_namespace.clone(), config.lease_name.clone());
            // Wait until the API server answers (admin endpoints up, /readyz not ready), and exit 1 on a
            // refusal (401, 403) rather than retry it forever.
            let check_lock = KubeLeaseLock::new(client.clone(), &namespace, &name);
            let (server, check_config, stop) =
                (connection.describe(), config.clone(), shutdown.clone());
            let lock = KubeLeaseLock::new(client.clone(), &namespace, &name)
                .with_metadata(metadata)
                .map_err(|e| Failure::Usage(e.into()))?;
            let mut builder = Runtime::builder_with_lock(lock, config);
            if let Some(candidate) = candidate {
                builder = builder.coordinated(client.clone(), candidate);
            }
            if events {
                builder = builder.events(client, REPORTING_CONTROLLER);
            }
            builder.preflight(async move {
                await_api_server(&check_lock, &server, &check_config, &stop)
                    .await
                    .map_err(|(Failure::Usage(err) | Failure::Runtime(err))| err.into())
            })
        }
        // Standalone makes no API call: it builds no client and needs no kubeconfig.
        Mode::Standalone(_) if args.fence => {
            return Err(Failure::Usage(anyhow::anyhow!(
                "--fence needs an election: the disabled mode has no term to fence and no API client"
            )));
        }
        Mode::Standalone(config) => Runtime::standalone(config),
    };
    let runtime = build(builder, policy, args.admin_listen, child)?;
    // Every task is awaited here: the runtime's, the reaper and the SIGTSTP handler, with the signal
    // handlers listening until they are done.
    let aux_stop = CancellationToken::new();
    let tasks = async {
        let (result, (), (), ()) = tokio::join!(
            async {
                let result = runtime.run(shutdown.clone()).await;
                aux_stop.cancel();
                proxy_stop.cancel();
                result
            },
            async {
                if let Some(serve) = proxy_serve {
                    serve.await;
                }
            },
            reaper.clone().run(aux_stop.clone()),
            async {
                if let Some(groups) = groups {
                    stop_children_on_sigtstp(groups, aux_stop.clone()).await;
                }
            },
        );
        result
    };
    let result = match signals {
        Some(signals) => signals.run(tasks).await,
        None => tasks.await,
    };
    match result {
        Ok(()) => Ok(()),
        // Standalone holds no Lease: there is nothing to release.
        Err(RuntimeError::Supervisor(SupervisorError::Failed(failure))) if elected => {
            Err(Failure::Runtime(anyhow::anyhow!(
                "{failure}; stepped down and released the lease"
            )))
        }
        Err(RuntimeError::Supervisor(SupervisorError::Failed(failure))) => Err(Failure::Runtime(
            anyhow::anyhow!("{failure}; election disabled: no lease to release"),
        )),
        Err(err) => Err(Failure::Runtime(err.into())),
    }
}

/// The election mode, with the connection an election uses.
enum Mode {
    Elected(leaderelection::Config, Box<Connection>),
    Standalone(leaderelection::Config),
}

impl Mode {
    fn config(&self) -> &leaderelection::Config {
        match self {
            Self::Elected(config, _) | Self::Standalone(config) => config,
        }
    }
}

/// The LeaseCandidate to register: `--coordinated`, `--binary-version` and `--emulation-version` over
/// the file's keys; the binary version defaults to this leader-elect's.
fn candidate_config(
    settings: &Settings,
    args: &RunArgs,
) -> Result<Option<CandidateConfig>, SettingsError> {
    let mut le = settings.leader_election().clone();
    le.coordinated = Some(args.coordinated || le.coordinated());
    if let Some(version) = &args.binary_version {
        le.binary_version = Some(version.clone());
    }
    if let Some(version) = &args.emulation_version {
        le.emulation_version = Some(version.clone());
    }
    le.candidate_config(env!("CARGO_PKG_VERSION"))
        .map_err(|err| match err {
            // Name the flag when the value came from one.
            SettingsError::Invalid { key, value, rule } => {
                let flag = [
                    ("binary_version", &args.binary_version, "--binary-version"),
                    (
                        "emulation_version",
                        &args.emulation_version,
                        "--emulation-version",
                    ),
                ]
                .into_iter()
                .find(|(field, given, _)| key.ends_with(field) && given.is_some())
                .map(|(_, _, flag)| flag.to_string());
                SettingsError::Invalid {
                    key: flag.unwrap_or(key),
                    value,
                    rule,
                }
            }
            other => other,
        })
}

/// `--lease-label KEY=VALUE`: a label by Kubernetes' rules (apimachinery `IsQualifiedName`,
/// `IsValidLabelValue`).
fn parse_label(arg: &str) -> Result<(String, String), String> {
    let (key, value) = split_key_value(arg)?;
    leaderelection::metadata::validate_label(&key, &value).map_err(|e| e.to_string())?;
    Ok((key, value))
}

/// `--lease-annotation KEY=VALUE`: an annotation whose key is a qualified name (the value is free).
fn parse_annotation(arg: &str) -> Result<(String, String), String> {
    let (key, value) = split_key_value(arg)?;
    leaderelection::metadata::validate_key(&key).map_err(|e| e.to_string())?;
    Ok((key, value))
}

fn split_key_value(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| "expected KEY=VALUE".to_string())
}

/// The runtime of `builder` with the child-exit `policy`, the admin endpoints on `admin`, and the
/// `child` run during each term.
fn build(
    builder: Builder,
    policy: Policy,
    admin: Option<SocketAddr>,
    child: Option<ChildSpec>,
) -> Result<Runtime, Failure> {
    let mut builder = builder.policy(policy);
    if let Some(spec) = child {
        builder = builder.leader_only("child", move |lead| run_for_term(spec.clone(), lead));
    }
    if let Some(addr) = admin {
        builder = builder.admin(addr);
    }
    builder.build().map_err(|e| Failure::Usage(e.into()))
}
