//! Kubernetes Events on the Lease for this candidate's terms, as client-go's `LeaseLock.RecordEvent`
//! (`client-go tools/leaderelection/resourcelock/leaselock.go`): `<identity> became leader` and
//! `<identity> stopped leading`, fed from the event bus and written through kube-runtime's event recorder.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Received, Subscription};

/// The reason of every Event recorded, as client-go's (`LeaderElection`).
pub const REASON: &str = "LeaderElection";

/// How long one Event may take to be written before it is given up, in seconds: a slow API server delays
/// only this feed, never the election.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Records the Events of one Lease (see [`crate::runtime::Builder::events`]).
#[derive(Clone)]
pub(crate) struct LeaseEventRecorder {
    recorder: Recorder,
    leases: Api<Lease>,
    name: String,
    namespace: String,
}

impl std::fmt::Debug for LeaseEventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseEventRecorder")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

// === impl LeaseEventRecorder ===

impl LeaseEventRecorder {
    /// A recorder of Events on Lease `namespace/name`, reported by `reporting_controller` with this
    /// candidate's `identity` as the reporting instance.
    pub(crate) fn new(
        client: kube::Client,
        reporting_controller: &str,
        identity: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: reporting_controller.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// Records an Event for each `BecameLeader` and `LostLeadership` of `events` until the bus is dropped
    /// or `stop` is cancelled; on `stop` it first records what is already waiting (the last "stopped
    /// leading"). A failure is logged (WARN the first time, DEBUG after) and skipped: it never reaches the
    /// election.
    pub(crate) async fn run(self, mut events: Subscription, stop: CancellationToken) {
        let mut warned = false;
        loop {
            let Some(received) = events.recv_until(&stop).await else {
                return;
            };
            let event = match received {
                Received::Event(event) => event,
                Received::Lagged(skipped) => {
                    tracing::debug!(skipped, "event recorder fell behind; events skipped");
                    continue;
                }
            };
            let (action, note) = match &*event {
                Event::BecameLeader { identity, .. } => {
                    ("BecameLeader", format!("{identity} became leader"))
                }
                Event::LostLeadership { identity, .. } => {
                    ("StoppedLeading", format!("{identity} stopped leading"))
                }
                _ => continue,
            };
            let recorded = tokio::time::timeout(PUBLISH_TIMEOUT, self.record(action, &note)).await;
            let error = match recorded {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {PUBLISH_TIMEOUT:?}"),
            };
            let lease = format!("{}/{}", self.namespace, self.name);
            if warned {
                tracing::debug!(%lease, %note, %error, "cannot record the Kubernetes Event");
            } else {
                warned = true;
                tracing::warn!(
                    %lease,
                    %note,
                    %error,
                    "cannot record the Kubernetes Event (events.k8s.io events: create, patch); \
                     later failures are logged at DEBUG"
                );
            }
        }
    }

    async fn record(&self, action: &str, note: &str) -> Result<(), kube::Error> {
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: REASON.to_string(),
            note: Some(note.to_string()),
            action: action.to_string(),
            secondary: None,
        };
        self.recorder.publish(&event, &self.reference().await).await
    }

    /// The Lease as the Event's `regarding`, with its uid when a GET finds it (the Lease may be recreated,
    /// so it is read each time; a failure leaves the uid out).
    async fn reference(&self) -> ObjectReference {
        let uid = match self.leases.get_opt(&self.name).await {
            Ok(lease) => lease.and_then(|lease| lease.metadata.uid),
            Err(err) => {
                tracing::debug!(error = %err, "reading the Lease's uid for its Event");
                None
            }
        };
        ObjectReference {
            api_version: Some("coordination.k8s.io/v1".to_string()),
            kind: Some("Lease".to_string()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid,
            ..ObjectReference::default()
        }
    }
}
