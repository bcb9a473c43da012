//! What runs around the leader elector in a highly available controller, composed by one [`Runtime`]:
//!
//! - [`Runtime`], the composition root: the election, the components, metrics, logs and the admin
//!   server, each run by [`Runtime::run`] and none detached;
//! - [`Election`]: wraps the [`leaderelection::Elector`] and publishes each event on the [`EventBus`]
//!   before the user's callback;
//! - [`Supervisor`]: all-replica components on every replica, leader-only components during terms, each in
//!   its own task, restarted within a failure budget ([`Policy`]), then stepping down;
//! - [`Metrics`] (prometheus-client) and the [`commentator`] (tracing logs), both fed from the bus;
//! - the [`recorder`]: Kubernetes Events on the Lease (`<identity> became leader`), opt-in with
//!   [`runtime::Builder::events`], fed from the bus;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/debug/vars`;
//! - [`settings`]: the YAML configuration and the environment (`POD_NAME`, `POD_NAMESPACE`);
//! - [`kubeconfig`]: the client configuration and default namespace by kubectl's rules (`--kubeconfig`,
//!   `--context`, `--server`, the context's namespace, in-cluster);
//! - [`signals`]: the first SIGTERM or SIGINT shuts down, the second skips the grace.
//!
//! # Examples
//!
//! A leader-only reconciler with metrics, logs and admin endpoints (a complete kube-runtime `Controller`
//! is `examples/leader_only_controller.rs`):
//!
//! ```no_run
//! use leaderelection::Config;
//! use leaderelection_controller::Runtime;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::new(std::env::var("POD_NAME")?, "my-controller", "default");
//! Runtime::builder(client, config)
//!     .leader_only("reconciler", |lead| async move {
//!         // reconcile, fencing writes with lead.term.transitions, until the term ends
//!         lead.token.cancelled().await;
//!         Ok(())
//!     })
//!     .admin("0.0.0.0:8080".parse()?)
//!     .build()?
//!     .run(CancellationToken::new()) // signals::Signals cancels it on SIGTERM: work stops, Lease released
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! Each optional module is behind a feature of its name (as kubert gates its modules); the defaults build
//! them all.
//!
//! | feature | default | what it builds | what it pulls in |
//! | --- | --- | --- | --- |
//! | `runtime` | yes | [`Runtime`] and [`runtime::Builder`], the composition root, and the [`recorder`] of Kubernetes Events on the Lease it runs ([`runtime::Builder::events`]) | the feature `admin`, whose server it runs; kube's `runtime` feature (kube-runtime's event recorder) |
//! | `admin` | via `runtime` | the [`admin`] server (`/healthz`, `/readyz`, `/metrics`, `/debug/vars`) and [`Admin`] | `axum` (HTTP/1 only), `serde_json` |
//! | `settings` | yes | [`settings`]: the YAML configuration and the environment (`POD_NAME`, `POD_NAMESPACE`); [`kubeconfig`]: the client configuration by kubectl's rules | `serde`, `serde-saphyr` (kube's YAML library), `http` |
//! | `rustls-tls`, `ring` | yes | nothing of its own: the kube client's TLS stack, passed through to `leaderelection`'s features of the same names (kube's defaults) | kube's `rustls-tls` and `ring` |
//! | `openssl-tls`, `aws-lc-rs` | no | likewise, for an application that turns the defaults off to choose its TLS stack | kube's `openssl-tls`, `aws-lc-rs` |
//!
//! Always built: [`Election`], [`Supervisor`], the [`EventBus`], the [`commentator`] and [`Metrics`]
//! (prometheus-client): the supervisor counts its restarts into [`Metrics`], so metrics have no feature
//! of their own. The Events recorder has none either: only the [`Runtime`] runs it. `--no-default-features`
//! leaves the election, the supervisor, the event bus, metrics and logs, for a program that serves its own
//! HTTP and reads its own configuration.
//!
//! # RBAC
//!
//! `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch`. With
//! [`runtime::Builder::events`], also `events.k8s.io` `events`: `create`, `patch`. With
//! [`runtime::Builder::coordinated`], also `coordination.k8s.io` `leasecandidates`: `get`, `create`,
//! `update`, `delete`, `list`, `watch`.

#[cfg(feature = "admin")]
pub mod admin;
pub mod commentator;
mod election;
mod events;
#[cfg(feature = "settings")]
pub mod kubeconfig;
mod metrics;
#[cfg(feature = "runtime")]
pub mod recorder;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "settings")]
pub mod settings;
pub mod signals;
mod supervisor;

#[cfg(feature = "admin")]
pub use crate::admin::Admin;
pub use crate::election::{Election, ElectionBuilder, ElectionHandle};
pub use crate::events::{Event, EventBus, Received, Subscription};
pub use crate::metrics::Metrics;
#[cfg(feature = "runtime")]
pub use crate::runtime::{Runtime, RuntimeError};
pub use crate::supervisor::{
    BoxError, BudgetSpent, Failure, LeaderContext, Policy, Supervised, Supervisor, SupervisorError,
};
