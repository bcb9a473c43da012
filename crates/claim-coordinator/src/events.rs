//! Kubernetes Events on claims, so that `kubectl describe hostclaim` says what happened and why a claim
//! waits: `Bound` when the leader binds it, `Released` when its host is freed, and a Warning with the
//! reason when it cannot be served. Written through kube-runtime's [`Recorder`] (a repeat within 6 minutes
//! is a patch of the first), as the controller crate records its Lease Events.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::resources::ConsumerRef;

/// The reporting controller of every Event.
pub const REPORTING_CONTROLLER: &str = "claim-coordinator";

/// How long one Event may take to be written before it is given up: Events never delay a bind.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Records Events on claims. Cheap to clone.
#[derive(Clone)]
pub struct ClaimEvents {
    recorder: Recorder,
}

impl std::fmt::Debug for ClaimEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimEvents").finish_non_exhaustive()
    }
}

// === impl ClaimEvents ===

impl ClaimEvents {
    /// Events reported by `claim-coordinator` with `identity` as the reporting instance.
    ///
    /// RBAC: `events.k8s.io` `events`: `create`, `patch`, in the claims' namespaces.
    #[must_use]
    pub fn new(client: kube::Client, identity: &str) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Records an Event on `regarding` in the background (bounded by 5 s; a failure is logged at DEBUG and
    /// dropped: an Event is a report, not part of the protocol). Needs a tokio runtime.
    pub fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = self.recorder.clone();
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        tokio::spawn(async move {
            match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(&event, &regarding)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%err, reason = %event.reason, "cannot record the Event")
                }
                Err(_) => {
                    tracing::debug!(reason = %event.reason, "the Event was not recorded in time")
                }
            }
        });
    }
}

/// The object reference of a consumer (for an Event on a claim known only by a host's `consumerRef`).
#[must_use]
pub fn reference(consumer: &ConsumerRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(consumer.api_version.clone()),
        kind: Some(consumer.kind.clone()),
        namespace: Some(consumer.namespace.clone()),
        name: Some(consumer.name.clone()),
        uid: Some(consumer.uid.clone()),
        ..ObjectReference::default()
    }
}
