//! What runs around the leader elector in a highly available controller:
//!
//! - [`EventBus`] and the four leader-election [`Event`]s;
//! - [`Component`], the event adapter: wraps the [`leaderelection::Elector`] and publishes each event
//!   before the user's callback;
//! - [`Metrics`] (prometheus-client) and the [`commentator`] (tracing logs), both fed from the bus;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/debug/vars`;
//! - [`Supervisor`]: all-replica components on every replica, leader-only components during terms;
//! - [`settings`]: the YAML configuration and the environment (`POD_NAME`, `POD_NAMESPACE`).
//!
//! # Examples
//!
//! ```no_run
//! use leaderelection::{Callbacks, Config, MemoryLeaseStore};
//! use leaderelection_controller::{Component, EventBus, Metrics, Policy, Supervisor};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let supervisor = Supervisor::new(Policy::default())
//!     .all_replica("watcher", |token| async move { token.cancelled().await; Ok(()) })
//!     .leader_only("deployer", |term, token| async move {
//!         // write, fenced by term.transitions, until the term ends
//!         token.cancelled().await;
//!         Ok(())
//!     });
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = Metrics::new(&mut registry, "my-controller");
//! let bus = EventBus::default();
//! let config = Config::new("pod-a", "my-controller", "default");
//! let lock = MemoryLeaseStore::new().lock("pod-a"); // or KubeLeaseLock / Component::with_client
//! let component = Component::with_observer(
//!     config, lock, bus.clone(), supervisor.callbacks(Callbacks::new()), Some(std::sync::Arc::new(metrics.clone())),
//! )?;
//! tokio::spawn(metrics.run(component.clone()));
//! tokio::spawn(leaderelection_controller::commentator::run(bus.subscribe(), CancellationToken::new()));
//! supervisor.run(&component, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod commentator;
mod component;
mod events;
mod metrics;
pub mod runtime;
pub mod settings;
mod supervisor;

pub use crate::admin::Admin;
pub use crate::component::Component;
pub use crate::events::{Event, EventBus, Received, Subscription};
pub use crate::metrics::Metrics;
pub use crate::runtime::{Runtime, RuntimeError};
pub use crate::supervisor::{BoxError, Failure, Policy, Supervisor, SupervisorError};
