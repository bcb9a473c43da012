//! Fencing: the term (`leaseTransitions`) checked where the writes land.
//!
//! A leader's writes carry its term and its Lease as two annotations on the object written
//! ([`TERM_ANNOTATION`], [`LEASE_ANNOTATION`]). A client-side write gate refuses a leader's mutating
//! requests once its term has ended; an admission policy installed in the cluster refuses any write whose
//! term is older than the Lease's `spec.leaseTransitions`, so a write that was already on the wire, or a
//! frozen writer that resumes, cannot land after the next leader's term began.
//!
//! [`Fence`] is the write gate: a `tower` layer on a `kube::Client` bound to one term, which also stamps
//! the objects written. [`FencingPolicy`] builds that policy and its binding for one Lease
//! (`leader-elect fencing-policy` prints them as YAML). Where each is checked, and what stays open:
//! `docs/design.md`, "Fencing".

mod gate;
mod policy;

pub use self::gate::{Fence, FenceLayer, FenceReason, FenceService, Fenced};
pub use self::policy::{FencingPolicy, GuardedResource, Mode, policy, validations};

/// The annotation carrying the writer's term: the decimal `spec.leaseTransitions` of the Lease it led when
/// it wrote (for example `"7"`).
pub const TERM_ANNOTATION: &str = "leaderelection.dev/term";

/// The annotation naming the Lease whose term [`TERM_ANNOTATION`] counts, as `<namespace>/<name>` (for
/// example `"jobs/my-controller"`).
pub const LEASE_ANNOTATION: &str = "leaderelection.dev/lease";
