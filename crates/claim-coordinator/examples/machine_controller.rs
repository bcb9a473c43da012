//! A reconciler that gets hosts through the claim coordinator: a kube-runtime `Controller` of `Machine`s
//! (a small custom resource standing for a provider's machine kind) calls [`Claimer::ensure_owned`] in
//! every reconciliation, which creates the machine's `HostClaim` when missing and returns its state at
//! once, and writes that state into the machine's status. It never waits for a host: the claim is owned
//! by the machine (`metadata.ownerReferences`), so the controller is triggered again when the binder
//! writes the claim's status (`Controller::owns`), and the bound host appears in `status.host`.
//!
//! Against a cluster where `claim-coordinator run` serves the pool (CRDs in `deploy/crds/`):
//!
//! ```text
//! cargo run -p claim-coordinator --example machine_controller -- crd | kubectl apply -f -
//! cargo run -p claim-coordinator --example machine_controller     # the kubeconfig's namespace
//! kubectl create -f - <<'EOF'
//! {"apiVersion": "example.claims.leaderelection.dev/v1alpha1", "kind": "Machine",
//!  "metadata": {"name": "m-1"}, "spec": {"imageUrl": "http://images/os.iso", "minCpuCores": 8}}
//! EOF
//! kubectl get machine m-1 -o jsonpath='{.status}'   # phase Bound, host, reason
//! kubectl get hostclaim m-1                         # the machine's claim: PHASE, HOST
//! ```
//!
//! Deleting the machine deletes its claim (Kubernetes' garbage collector follows the owner reference),
//! and the claim's finalizer has the binder free the host first. The machine and its claim share a name
//! and a namespace (an owner reference cannot cross namespaces). Run one replica of this controller, or
//! elect a leader for it (`leaderelection-controller`'s `leader_only_controller` example): two replicas
//! would both write the machines' status. `tests/machine_controller.rs` runs this file's [`controller`]
//! and a coordinator replica on fake-apiserver.
//!
//! RBAC, in the namespace: `example.claims.leaderelection.dev` `machines`: `get`, `list`, `watch`, and
//! `machines/status`: `patch`; `claims.leaderelection.dev` `hostclaims`: `get`, `list`, `watch`, `create`;
//! `coordination.k8s.io` `leases`: `get` (the coordinator Lease, to know whether a leader binds: mode
//! `auto`); and for claiming directly when no leader binds (the optimistic path): `physicalhosts`: `get`,
//! `list`, `update`, `physicalhosts/status` and `hostclaims/status`: `update`.

use std::sync::Arc;
use std::time::Duration;

use claim_coordinator::resources::{HostClaim, HostClaimSpec};
use claim_coordinator::{ClaimError, ClaimState, Claimer, Metrics, Settings};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use leaderelection::KubeLeaseLock;
use leaderelection_controller::signals::Signals;
use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A `Machine` needs a host of the pool with at least `minCpuCores` cores, booting `imageUrl`.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "example.claims.leaderelection.dev",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The image to boot on the host.
    pub image_url: String,
    /// Minimum CPU cores (0: any).
    #[serde(default)]
    pub min_cpu_cores: u32,
}

/// The state of the machine's claim, as [`Claimer::ensure_owned`] returned it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// `Pending`, `Bound` or `Failed` (the claim's phase).
    pub phase: String,
    /// The bound host's name (in the pool namespace), once bound.
    pub host: Option<String>,
    /// Why the claim waits or failed (its `Bound` condition's reason, e.g. `NoHostAvailable`).
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

// === impl MachineStatus ===

impl MachineStatus {
    fn of(state: ClaimState) -> Self {
        match state {
            ClaimState::Bound { host } => Self {
                phase: "Bound".into(),
                host: Some(host),
                ..Self::default()
            },
            ClaimState::Failed { reason, message } => Self {
                phase: "Failed".into(),
                host: None,
                reason,
                message,
            },
            ClaimState::Pending { reason, message } => Self {
                phase: "Pending".into(),
                host: None,
                reason,
                message,
            },
            // `ClaimState` may grow: wait as for a pending claim.
            _ => Self {
                phase: "Pending".into(),
                ..Self::default()
            },
        }
    }
}

/// Why a reconciliation failed (retried after [`Context::retry_after`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine has no uid yet (not read from the API server), so no owner reference.
    #[error("machine {0} has no uid")]
    NoUid(String),
    /// Ensuring the claim failed.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Writing the machine's status failed.
    #[error("machine {name}: writing its status: {source}")]
    StatusFailed {
        /// The machine.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// What every reconciliation shares.
#[derive(Debug)]
pub struct Context {
    /// Writes the machines' claims (in the machines' namespace) and reads their state.
    pub claimer: Claimer,
    /// The machines (same namespace).
    pub machines: Api<Machine>,
    /// When to look again at a pending claim that did not change: a safety net, since the claim's own
    /// changes trigger the reconciliation (5 minutes in `main`).
    pub pending_requeue: Duration,
    /// When to retry a failed reconciliation (5 s in `main`).
    pub retry_after: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("crd") {
        print!("{}", serde_saphyr::to_string(&Machine::crd())?);
        return Ok(());
    }
    tracing_subscriber::fmt::init();
    let signals = Signals::install()?;
    // The kubeconfig (its context's namespace) or the in-cluster service account.
    let config = kube::Config::infer().await?;
    let namespace = config.default_namespace.clone();
    let client = KubeLeaseLock::client(config)?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "machine-controller".into());
    // Mode `auto`: the coordinator's leader binds; without one for a lease duration, claim directly.
    let claimer = Claimer::new(
        client.clone(),
        &namespace,
        &identity,
        &Settings::default(),
        Metrics::new(&mut Registry::default()),
    );
    let context = Context {
        claimer,
        machines: Api::namespaced(client, &namespace),
        pending_requeue: Duration::from_secs(300),
        retry_after: Duration::from_secs(5),
    };
    let shutdown = signals.shutdown();
    signals.run(controller(context, shutdown)).await;
    Ok(())
}

/// Runs the `Machine` controller until `shutdown` is cancelled, then lets the reconciliations in flight
/// finish and returns. It watches the machines of `context.machines` and the claims of
/// `context.claimer`'s namespace, and reconciles a machine when it or the claim it owns changes.
pub async fn controller(context: Context, shutdown: CancellationToken) {
    let claims: Api<HostClaim> = context.claimer.pool().claims.clone();
    Controller::new(context.machines.clone(), watcher::Config::default())
        .owns(claims, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::warn!(%error, "reconciliation failed");
            }
        })
        .await;
}

/// Ensures the machine's claim and writes its state into the machine's status (when it changed). A
/// bound or failed claim needs nothing more until the machine or its claim changes; a pending one is
/// looked at again on the claim's next change (the binder writes its status), or after
/// [`Context::pending_requeue`].
///
/// # Errors
///
/// [`Error`]: the claim could not be ensured, or the status not written.
pub async fn reconcile(machine: Arc<Machine>, context: Arc<Context>) -> Result<Action, Error> {
    let name = machine.name_any();
    if machine.meta().deletion_timestamp.is_some() {
        // The garbage collector deletes the claim, whose finalizer frees the host.
        return Ok(Action::await_change());
    }
    let owner = machine
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NoUid(name.clone()))?;
    let spec = HostClaimSpec {
        image_url: machine.spec.image_url.clone(),
        min_cpu_cores: machine.spec.min_cpu_cores,
        ..HostClaimSpec::default()
    };
    let state = context.claimer.ensure_owned(&name, spec, owner).await?;
    let status = MachineStatus::of(state);
    let action = if status.phase == "Pending" {
        Action::requeue(context.pending_requeue)
    } else {
        Action::await_change()
    };
    if machine.status.as_ref() != Some(&status) {
        tracing::info!(machine = %name, phase = %status.phase, host = ?status.host, reason = %status.reason, "machine's claim");
        let patch = serde_json::json!({ "status": status });
        context
            .machines
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::StatusFailed { name, source })?;
    }
    Ok(action)
}

/// Retries a failed reconciliation after [`Context::retry_after`].
fn error_policy(machine: Arc<Machine>, error: &Error, context: Arc<Context>) -> Action {
    tracing::warn!(machine = %machine.name_any(), %error, "retrying");
    Action::requeue(context.retry_after)
}
