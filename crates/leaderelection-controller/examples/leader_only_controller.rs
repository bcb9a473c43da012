//! A kube-runtime `Controller` that reconciles only while this replica leads: it runs as a leader-only
//! component of [`Runtime`], stops when its term ends (`Controller::graceful_shutdown_on`) and runs again
//! when this replica leads again, stamping its term into every status it writes.
//!
//! Against a cluster, install the CRD, start a replica per terminal and create a `Greeting`:
//!
//! ```text
//! cargo run -p leaderelection-controller --example leader_only_controller -- crd | kubectl apply -f -
//! POD_NAME=pod-a cargo run -p leaderelection-controller --example leader_only_controller
//! POD_NAME=pod-b ADMIN_ADDR=0.0.0.0:8081 cargo run -p leaderelection-controller --example leader_only_controller
//! kubectl create -f - <<'EOF'
//! {"apiVersion": "demo.example.com/v1", "kind": "Greeting", "metadata": {"name": "world"}, "spec": {"name": "World"}}
//! EOF
//! kubectl get greeting world -o jsonpath='{.status}'   # reply, observedGeneration, observedTerm, reconciledBy
//! ```
//!
//! Stop the leader (Ctrl-C, or SIGTERM as the kubelet sends): its controller stops, the Lease is released,
//! and the other replica's controller rewrites the status with the next term; a second Ctrl-C exits at
//! once, leaving the Lease to expire. Install the CRD first: kube-runtime holds
//! reconciliations until its first list of Greetings succeeds, and a controller whose list keeps failing
//! (404 without the CRD) does not finish a graceful shutdown; the elector then aborts it at its stop
//! deadline ([`leaderelection::Config::stop_timeout`]) before releasing the Lease. `tests/leader_only_controller.rs` runs this file's
//! [`controller`] in two replicas on fake-apiserver.
//!
//! RBAC: `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch` in `POD_NAMESPACE`;
//! `demo.example.com` `greetings`: `list`, `watch`, and `greetings/status`: `update`, in every namespace.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use leaderelection::{Config, KubeLeaseLock, Term};
use leaderelection_controller::signals::Signals;
use leaderelection_controller::{BoxError, LeaderContext, Runtime};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A `Greeting` asks the controller for a reply to `spec.name`.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "demo.example.com",
    version = "v1",
    kind = "Greeting",
    namespaced
)]
#[kube(status = "GreetingStatus")]
pub struct GreetingSpec {
    /// Whom to greet.
    pub name: String,
}

/// What the controller wrote, and in which term.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GreetingStatus {
    /// `Hello, <spec.name>!`.
    pub reply: String,
    /// The `metadata.generation` the reply answers.
    pub observed_generation: i64,
    /// The writer's term: the Lease's `leaseTransitions` when it became leader.
    pub observed_term: i32,
    /// The writer's identity (the Lease's `holderIdentity` in that term).
    pub reconciled_by: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("crd") {
        print!("{}", serde_saphyr::to_string(&Greeting::crd())?);
        return Ok(());
    }
    tracing_subscriber::fmt::init();
    let signals = Signals::install()?;
    let identity = std::env::var("POD_NAME")?;
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
    let admin = std::env::var("ADMIN_ADDR").unwrap_or_else(|_| "0.0.0.0:8080".into());
    // The kubeconfig or the in-cluster service account, with kube's own retries off (the elector's).
    let client = KubeLeaseLock::client(kube::Config::infer().await?)?;
    let config = Config::new(identity, "greeting-controller", namespace);

    let runtime = Runtime::builder(client.clone(), config)
        .leader_only(
            "greeting-controller",
            move |LeaderContext { term, token, .. }| controller(client.clone(), term, token),
        )
        .admin(admin.parse()?)
        .build()?;
    // Returns once the controller has stopped and the Lease is released (or at a second signal).
    let shutdown = signals.shutdown();
    signals.run_or_abandon(runtime.run(shutdown)).await??;
    Ok(())
}

/// The leader-only component: runs the `Greeting` controller for one term, until `token` is cancelled
/// (the term ended, or shutdown), then lets the reconciliations in flight finish and returns.
///
/// # Errors
///
/// None: a failed reconciliation is retried by the controller ([`error_policy`]).
pub async fn controller(
    client: Client,
    term: Term,
    token: CancellationToken,
) -> Result<(), BoxError> {
    tracing::info!(term = term.transitions, "greeting controller starting");
    let context = Arc::new(Context {
        client: client.clone(),
        term,
    });
    Controller::new(Api::<Greeting>::all(client), watcher::Config::default())
        .graceful_shutdown_on(token.cancelled_owned())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::warn!(%error, "reconciliation failed");
            }
        })
        .await;
    tracing::info!("greeting controller stopped");
    Ok(())
}

/// What every reconciliation of one term shares.
struct Context {
    client: Client,
    term: Term,
}

/// Writes the reply and this term into `status`, unless it is there already or a newer term wrote it.
async fn reconcile(greeting: Arc<Greeting>, context: Arc<Context>) -> Result<Action, kube::Error> {
    let Context { client, term } = &*context;
    let current = greeting.status.as_ref();
    // Fencing: a newer leader's status is never overwritten from this (older) term's cache.
    // leaseTransitions only grows while the Lease exists.
    if current.is_some_and(|status| status.observed_term > term.transitions) {
        return Ok(Action::await_change());
    }
    let desired = GreetingStatus {
        reply: format!("Hello, {}!", greeting.spec.name),
        observed_generation: greeting.metadata.generation.unwrap_or_default(),
        observed_term: term.transitions,
        reconciled_by: term.holder.clone(),
    };
    if current != Some(&desired) {
        let mut updated = Greeting::clone(&greeting);
        updated.status = Some(desired);
        // Sent with the cached resourceVersion: 409 Conflict (retried) if anyone wrote since.
        let namespace = greeting.namespace().unwrap_or_default();
        Api::<Greeting>::namespaced(client.clone(), &namespace)
            .replace_status(&greeting.name_any(), &PostParams::default(), &updated)
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Retries a failed reconciliation after a second.
fn error_policy(_: Arc<Greeting>, _: &kube::Error, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(1))
}
