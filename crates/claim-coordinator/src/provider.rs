//! The seam to a provider's own types: what the binder needs of "a host" ([`Host`]) and of "a claim"
//! ([`Claim`]). Our `PhysicalHost` and `HostClaim` are one implementation; a provider implements [`Host`]
//! for its host kind (Metal3's `BareMetalHost`, Beskar7's `PhysicalHost`) so that the host's own
//! `consumerRef` stays the single truth, with no mirror kind. Both are namespaced `kube::Resource`s; hosts
//! and claims may live in different namespaces (a pool namespace, tenant namespaces).

use std::fmt::Debug;

use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::resources::{ClaimPhase, ConsumerRef, Hardware, HostClaimStatus, Unavailable};
use crate::selection::Requirements;
use crate::selector::SelectorError;

/// What every object the binder reads and writes is: a namespaced resource of a static type, sent and
/// received as JSON.
pub trait Object:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A pooled host of a provider's kind.
///
/// The binder writes the host's spec (through [`Host::set_consumer`], one PUT guarded by the
/// resourceVersion) and, when [`Host::set_claimed_state`] says the status changes, its `/status` (a second
/// PUT). A kind whose status belongs to another controller (Metal3's `BareMetalHost`, owned by the
/// baremetal-operator) leaves its status alone: `set_claimed_state` returns `false`.
pub trait Host: Object {
    /// The consumer reference (`spec.consumerRef`), `None` while the host is free.
    fn consumer(&self) -> Option<ConsumerRef>;

    /// Sets (or clears, with `None`) the consumer reference and the image the host boots.
    fn set_consumer(&mut self, consumer: Option<ConsumerRef>, image: Option<String>);

    /// The provider's own reasons to skip the host (paused, erroring, unhealthy, not in an available
    /// state); the consumer and `metadata.deletionTimestamp` are checked by [`Host::unavailable`].
    fn skip(&self) -> Option<Unavailable>;

    /// CPU cores and memory (zero when unknown).
    fn capacity(&self) -> Hardware;

    /// Records in the host's status that it is claimed (`true`) or free (`false`); returns whether the
    /// status changed (then the binder writes `/status`). The default records nothing.
    fn set_claimed_state(&mut self, claimed: bool) -> bool {
        let _ = claimed;
        false
    }

    /// Why the host cannot be claimed now, `None` when it can: a consumer, being deleted, then
    /// [`Host::skip`].
    fn unavailable(&self) -> Option<Unavailable> {
        if self.consumer().is_some() {
            return Some(Unavailable::Consumed);
        }
        if self.meta().deletion_timestamp.is_some() {
            return Some(Unavailable::Deleting);
        }
        self.skip()
    }

    /// Claimable now.
    fn is_available(&self) -> bool {
        self.unavailable().is_none()
    }

    /// Whether the consumer reference names `claim` (by uid: a claim created again under the same name is
    /// another claim).
    fn is_consumed_by<C: Claim>(&self, claim: &C) -> bool {
        self.consumer()
            .is_some_and(|c| Some(&c.uid) == claim.meta().uid.as_ref())
    }

    /// Whether the host's status already records that it is claimed.
    fn claimed_state_recorded(&self) -> bool {
        !self.clone().set_claimed_state(true)
    }
}

/// A request for one host of a provider's kind: its requirements and the status the binder derives.
///
/// The binder writes only the claim's `/status` (a [`HostClaimStatus`], guarded by the resourceVersion)
/// and, on deletion, its release finalizer.
pub trait Claim: Object {
    /// What the claim asks of a host.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] naming the field that breaks a rule.
    fn requirements(&self) -> Result<Requirements, SelectorError>;

    /// The image the host should boot, written with the consumer reference.
    fn image(&self) -> Option<String>;

    /// The derived status, `None` before the first write.
    fn claim_status(&self) -> Option<&HostClaimStatus>;

    /// The derived status, created empty when missing.
    fn claim_status_mut(&mut self) -> &mut HostClaimStatus;

    /// The phase (`Pending` without a status).
    fn phase(&self) -> ClaimPhase {
        self.claim_status().map(|s| s.phase).unwrap_or_default()
    }

    /// The bound host, if `Bound`.
    fn host_ref(&self) -> Option<&str> {
        self.claim_status()
            .filter(|s| s.phase == ClaimPhase::Bound)
            .and_then(|s| s.host_ref.as_deref())
    }

    /// The optimistic claimer's intent (`status.selectedHost`).
    fn selected_host(&self) -> Option<&str> {
        self.claim_status().and_then(|s| s.selected_host.as_deref())
    }

    /// Failed bind attempts so far.
    fn attempts(&self) -> u32 {
        self.claim_status().map_or(0, |s| s.attempts)
    }

    /// Whether a delete is waiting on the finalizer.
    fn is_deleting(&self) -> bool {
        self.meta().deletion_timestamp.is_some()
    }

    /// The reference a host's `consumerRef` holds for this claim.
    fn consumer_ref(&self) -> ConsumerRef {
        ConsumerRef {
            api_version: Self::api_version(&()).into_owned(),
            kind: Self::kind(&()).into_owned(),
            namespace: self.namespace().unwrap_or_default(),
            name: self.name_any(),
            uid: self.meta().uid.clone().unwrap_or_default(),
        }
    }
}
