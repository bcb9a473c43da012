//! Kubernetes leader election over a `coordination.k8s.io/v1` Lease: the pure elector.
//!
//! client-go's algorithm (`tools/leaderelection`), kept where it is right and fixed where it is not:
//!
//! 1. **Conditional writes only**: create is a POST, every update a PUT carrying the `resourceVersion` read.
//! 2. **Expiry by our own clock**: a follower takes an unchanged Lease only after `leaseDurationSeconds` (the
//!    record's, not ours) has passed on its own monotonic clock since it first saw that version.
//! 3. **A leader stops believing before anyone may take over**: leadership is valid until the send time of
//!    the last successful renew plus `renew_deadline`, even while a request hangs.
//! 4. **Stop the work, then release**: leader-only work is cancelled and awaited before the Lease is released.
//! 5. **Release only what we hold**: a fresh GET, then a guarded write only if the Lease still names us.
//! 6. **Never die of a transient error**: retries forever with jittered backoff.
//! 7. **Followers watch** the one Lease, so a release is taken over at once; they poll only where watching is
//!    forbidden.
//! 8. **Fencing**: the term number (`leaseTransitions`) is published with our leadership;
//!    [`fencing::Fence`] gates a `kube::Client` to one term (writes outside it refused, objects stamped),
//!    and [`fencing::FencingPolicy`] makes the API server refuse writes stamped with an older one.
//! 9. **Faithful wire format**: Leases written are readable by client-go and kubectl, and any Lease they write
//!    is read.
//!
//! A `preferredHolder` naming another candidate is honoured at once (the term ends as on a graceful stop,
//! then the Lease is released for that candidate), and coordinated leader election (KEP-4355) is supported
//! through a [`Candidate`] and [`ElectorBuilder::coordination`].
//! Many candidates on one Lease stagger their takeover of a released Lease, so a handover costs a few
//! requests whatever their number; [`ShardSet`] splits K Leases among replicas with one list+watch each.
//!
//! The crate has no event bus, HTTP server or metrics registry: those live in `leaderelection-controller`.
//! Measurements reach callers through [`Observer`].
//!
//! # Examples
//!
//! ```no_run
//! use leaderelection::{Callbacks, Config, Elector, KubeLeaseLock};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = KubeLeaseLock::client(kube::Config::infer().await?)?;
//! let config = Config::new(std::env::var("POD_NAME")?, "my-controller", "default");
//! let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
//! let elector = Elector::new(
//!     config,
//!     lock,
//!     Callbacks::new().on_started_leading(|term, token| async move {
//!         // reconcile, stamping writes with term.transitions, until the term ends; an `Err` ends
//!         // the term as `StopReason::WorkFailed`
//!         token.cancelled().await;
//!         Ok(())
//!     }),
//! )?;
//! let shutdown = CancellationToken::new();
//! elector.run(shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `rustls-tls` and `ring` (on by default, as in kube): the kube client's TLS stack, passed through to
//!   kube's features of the same names; `openssl-tls` and `aws-lc-rs` (off) likewise. This crate chooses no
//!   TLS stack and no crypto provider of its own: with `default-features = false` the choice is the
//!   application's (kube's `openssl-tls`, or `rustls-tls` with `aws-lc-rs` or a provider it installs).
//! - `test-util` (off by default): the test doubles `MemoryLeaseStore` and `MemoryLeaseLock`, an in-memory
//!   Lease with kube-apiserver's outcomes (global resourceVersion, 409 Conflict, watches, 410 Gone), and
//!   the faults and call log they inject and record (`LockFault`, `LockCall`). For tests and simulations:
//!   enable it in `[dev-dependencies]`.
//!
//! # RBAC
//!
//! The ServiceAccount needs, on `coordination.k8s.io` `leases`: `get`, `create`, `update` (required), and
//! `list`, `watch` (to watch the Lease, and to find a version to resume from when the watch's is too old;
//! without them followers poll every retry period).
//!
//! ```yaml
//! - apiGroups: ["coordination.k8s.io"]
//!   resources: ["leases"]
//!   verbs: ["get", "create", "update", "list", "watch"]
//! ```
//!
//! For coordinated leader election ([`Candidate`], KEP-4355), also:
//!
//! ```yaml
//! - apiGroups: ["coordination.k8s.io"]
//!   resources: ["leasecandidates"]
//!   verbs: ["get", "create", "update", "delete", "list", "watch"]
//! ```

mod callbacks;
mod candidate;
mod config;
mod elector;
pub mod fencing;
mod healthz;
mod lock;
mod rbac;
mod record;
mod shards;
mod state;

pub use crate::callbacks::{Callbacks, NoopObserver, Observer, Phase, Request};
pub use crate::candidate::{
    Candidate, CandidateConfig, CandidateError, CandidateStatus, Coordination,
    DEFAULT_RENEW_INTERVAL, OLDEST_EMULATION_VERSION,
};
pub use crate::config::{Config, ConfigError, JITTER_FACTOR, MIN_RETRY_PERIOD};
pub use crate::elector::{Elector, ElectorBuilder, ElectorHandle, Error};
pub use crate::healthz::{Unhealthy, Watchdog};
pub use crate::lock::metadata;
pub use crate::lock::{
    ClientError, KubeLeaseLock, LeaseEvent, LeaseEventStream, LeaseLock, LeaseMetadata,
    ListedLease, LockError, MetadataError, ObservedLease,
};
#[cfg(any(test, feature = "test-util"))]
pub use crate::lock::{LockCall, LockFault, MemoryLeaseLock, MemoryLeaseStore};
pub use crate::rbac::Denied;
pub use crate::record::LeaderElectionRecord;
pub use crate::shards::{
    MAX_SHARDS, ROLE_LABEL, SHARD_SET_LABEL, ShardConfig, ShardSet, ShardState,
};
pub use crate::state::{BoxError, LeaderState, StopReason, Term, WorkError};
