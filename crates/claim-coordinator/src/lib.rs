//! Leader-batched claims of pooled hosts by priority.
//!
//! Many consumers need hosts (`PhysicalHost`) from a shared pool. Each writes a `HostClaim` and waits until
//! it is `Bound`: the claims are the queue. The elected leader (through [`leaderelection_controller::Runtime`],
//! Lease `claim-coordinator-leader`) takes the pending claims in priority order ([`priority`]) and binds
//! each to an eligible host ([`selection`]) in conditional, idempotent steps, host first, as
//! kube-controller-manager's PersistentVolume binder (`pkg/controller/volume/persistentvolume/pv_controller.go`):
//!
//! 1. the host's `spec.consumerRef` (the single truth: one consumer per host) with the term (the Lease's
//!    `leaseTransitions`) as an annotation, guarded by the host's resourceVersion;
//! 2. the host's `status.state: Claimed`;
//! 3. the claim's `status` `phase: Bound`, `hostRef`, `boundTerm`, guarded by the claim's resourceVersion.
//!
//! Every term starts from the hosts: it finishes the binds a previous leader left half-done, so a leader
//! killed between steps never gives a claim two hosts. Writes stop when the term ends: they go through the
//! term's write gate (`leaderelection::fencing::Fence`, [`Binder::gated`]), stamped with the term, so that
//! the fencing policy for the hosts (`leader-elect fencing-policy`) refuses one that lands after a newer
//! term began.
//!
//! The binder is generic over the provider's kinds ([`provider::Host`], [`provider::Claim`]): our
//! `PhysicalHost` and `HostClaim` are one implementation, a provider's own host kind (Metal3's
//! `BareMetalHost`) another; hosts may live in a pool namespace and claims in tenant namespaces
//! ([`Pool::with_namespaces`]).
//!
//! Without a leader, a consumer can claim directly ([`claimer::Mode`]): it records its choice on the claim
//! first (`status.selectedHost`, conditional), then claims the host, then binds, as
//! openshift/cluster-api-provider-baremetal#275 fixed double claims. Deleting a claim releases its host
//! (the claim carries a finalizer until then).
//!
//! ## RBAC
//!
//! `claim-coordinator run` (the binder, or the fallback): `coordination.k8s.io` `leases`: `get`, `create`,
//! `update`, `list`, `watch`; `claims.leaderelection.dev` `physicalhosts` and `hostclaims`: `list`, `watch`,
//! `update`, and their `/status`: `update`; `events.k8s.io` `events`: `create`, `patch` (the claims'
//! Events, [`events`]). No `get`: it lists. Rule by rule, with the call that needs each, in the repository's
//! `docs/claim-coordinator.md` (Installing); the Helm chart `deploy/helm/claim-coordinator` grants exactly
//! these. A consumer ([`Claimer`]) also needs `hostclaims` `get`, `create`, `delete` and `watch`, and
//! `leases` `get` (whether a leader binds); claiming directly, the binder's rules on hosts and claims.

pub mod binder;
mod cache;
pub mod claimer;
pub mod coordinator;
pub mod debounce;
pub mod events;
pub mod metrics;
pub mod priority;
pub mod provider;
pub mod resources;
pub mod selection;
pub mod selector;
pub mod settings;
pub mod steps;

pub use crate::binder::Binder;
pub use crate::claimer::{ClaimError, ClaimState, Claimer, Mode};
pub use crate::metrics::Metrics;
pub use crate::provider::{Claim, Host};
pub use crate::settings::Settings;
pub use crate::steps::{Fence, Pool, StepError};

pub use crate::resources::{
    ClaimPhase, ConsumerRef, HostClaim, HostClaimSpec, HostClaimStatus, HostState, PhysicalHost,
    PhysicalHostSpec, PhysicalHostStatus,
};
