//! The custom resources: `PhysicalHost` (a pooled machine; its `spec.consumerRef` is the single truth of who
//! uses it) and `HostClaim` (what a consumer wants; its `status` is derived from the hosts and repaired).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::provider::{Claim, Host};
use crate::selection::Requirements;
use crate::selector::SelectorError;

/// The API group of both resources.
pub const GROUP: &str = "claims.leaderelection.dev";
/// The API version of both resources.
pub const VERSION: &str = "v1alpha1";
/// The finalizer every claim carries until its host is released.
pub const RELEASE_FINALIZER: &str = "claims.leaderelection.dev/release";
/// Annotation on a host: the term (the coordinator Lease's `leaseTransitions`) of the leader that last wrote
/// its spec (the bind, or the release). The fencing token ([`leaderelection::fencing::TERM_ANNOTATION`],
/// `leaderelection.dev/term`), so that the admission policy of `leader-elect fencing-policy` refuses a host
/// write of an older term; the binder's write gate also stamps it, with the Lease
/// ([`leaderelection::fencing::LEASE_ANNOTATION`]). Until 2026-12-07 it was `claims.leaderelection.dev/term`.
pub const TERM_ANNOTATION: &str = leaderelection::fencing::TERM_ANNOTATION;
/// Annotation on a host: the identity that bound it (a leader or an optimistic claimer).
pub const CLAIMED_BY_ANNOTATION: &str = "claims.leaderelection.dev/claimed-by";
/// Annotation on a host: present (any value), the host is paused and never chosen, as Metal3's
/// `baremetalhost.metal3.io/paused`.
pub const PAUSED_ANNOTATION: &str = "claims.leaderelection.dev/paused";

/// A pooled machine. Its labels are its tags; `spec.consumerRef` names the one claim using it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "claims.leaderelection.dev",
    version = "v1alpha1",
    kind = "PhysicalHost",
    plural = "physicalhosts",
    shortname = "ph",
    namespaced,
    status = "PhysicalHostStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state","description":"The host's lifecycle state."}"#,
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.consumerRef.name","description":"The claim using the host."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalHostSpec {
    /// The claim using this host; `None` while the host is free. One consumer per host, by construction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<ConsumerRef>,
    /// The image the host boots (the claim's `imageUrl`), set with the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_iso_source: Option<String>,
}

/// A reference to the consuming object (here a `HostClaim`), as a `corev1.ObjectReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerRef {
    /// `claims.leaderelection.dev/v1alpha1`.
    pub api_version: String,
    /// `HostClaim`.
    pub kind: String,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's `metadata.uid`: a claim deleted and created again under the same name is another claim.
    pub uid: String,
}

/// A host's lifecycle state, as Beskar7's `PhysicalHost` states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[non_exhaustive]
pub enum HostState {
    /// Being discovered; not claimable.
    #[default]
    Enrolling,
    /// Free and ready to be claimed (with `ready` and no consumer).
    Available,
    /// Bound to a claim.
    Claimed,
    /// Being provisioned for its consumer.
    Provisioning,
    /// Provisioned for its consumer.
    Provisioned,
    /// Broken; not claimable.
    Error,
}

/// What is observed of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalHostStatus {
    /// Lifecycle state.
    #[serde(default)]
    pub state: HostState,
    /// Whether the host answers its management interface.
    #[serde(default)]
    pub ready: bool,
    /// CPU cores and memory.
    #[serde(default)]
    pub hardware: Hardware,
    /// The last error of the host's controller; a host with one is never chosen (as Metal3's
    /// `status.errorMessage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Why a host cannot be claimed now; CAPM3's `chooseHost` skips the same hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unavailable {
    /// `spec.consumerRef` is set.
    Consumed,
    /// `metadata.deletionTimestamp` is set.
    Deleting,
    /// The paused annotation is present.
    Paused,
    /// `status.errorMessage` is set (the message).
    Erroring(String),
    /// `status.ready` is false: the host does not answer its management interface.
    Unhealthy,
    /// The host is not in an available state (the state it is in; `None` without a status).
    NotAvailable(Option<String>),
}

/// A host's size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hardware {
    /// CPU cores.
    #[serde(default)]
    pub cpu_cores: u32,
    /// Memory, in GiB.
    #[serde(default, rename = "memoryGiB")]
    pub memory_gib: u32,
}

/// A request for one host. The claims are the queue: a consumer writes one and waits until it is `Bound`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "claims.leaderelection.dev",
    version = "v1alpha1",
    kind = "HostClaim",
    plural = "hostclaims",
    shortname = "hc",
    namespaced,
    status = "HostClaimStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Bound or Failed."}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".status.hostRef","description":"The bound host."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct HostClaimSpec {
    /// The image to boot on the host (written to the host's `bootIsoSource`).
    #[serde(default)]
    pub image_url: String,
    /// The labels the host must have, as a Kubernetes label selector (`matchLabels`, `matchExpressions`
    /// with `In`, `NotIn`, `Exists`, `DoesNotExist`), as CAPM3's `hostSelector`. Combined with
    /// `requiredTags`: both must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub host_selector: Option<LabelSelector>,
    /// Tags the host must have (a shorthand kept from Beskar7's requests). A tag `key=value` needs that
    /// label (`In [value]`); a tag `key` needs the label with any value (`Exists`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_tags: Vec<String>,
    /// Tags the host should have: hosts with more of them are chosen first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_tags: Vec<String>,
    /// Minimum CPU cores (0: any).
    #[serde(default)]
    pub min_cpu_cores: u32,
    /// Minimum memory in GiB (0: any).
    #[serde(default, rename = "minMemoryGiB")]
    pub min_memory_gib: u32,
}

/// A claim's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[non_exhaustive]
pub enum ClaimPhase {
    /// Waiting for a host (also a claim without a status).
    #[default]
    Pending,
    /// A host's `consumerRef` names this claim, and `hostRef` names that host.
    Bound,
    /// Terminal for the claim's generation: its spec can never be served (its selector breaks a rule); a
    /// new generation (a changed spec) is served again. A claim that no host of the pool fits *now* stays
    /// `Pending` (reason `Unsatisfiable`): a host may join.
    Failed,
}

/// What the coordinator derived for a claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostClaimStatus {
    /// Pending, Bound or Failed.
    #[serde(default)]
    pub phase: ClaimPhase,
    /// The bound host's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ref: Option<String>,
    /// The term (`leaseTransitions`) of the leader that bound it; `None` for an optimistic bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_term: Option<i32>,
    /// The optimistic claimer's intent: the host it is about to claim, recorded (conditionally) before it
    /// writes that host, so that the claim never gets a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_host: Option<String>,
    /// Failed bind attempts (conflicts, errors). Fewer attempts go first.
    #[serde(default)]
    pub attempts: u32,
    /// Conditions (`metav1.Condition`, a map keyed by `type`): `Bound` and `Ready`, with the same status,
    /// reason and message (`Ready` is the summary condition generic tools read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<ClaimCondition>,
}

/// One condition of a claim, as `metav1.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// The condition type, e.g. `Bound`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason, e.g. `BoundByLeader`.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
    /// The claim's `metadata.generation` this condition was set from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// === impl PhysicalHost ===

impl Host for PhysicalHost {
    fn consumer(&self) -> Option<ConsumerRef> {
        self.spec.consumer_ref.clone()
    }

    fn set_consumer(&mut self, consumer: Option<ConsumerRef>, image: Option<String>) {
        self.spec.consumer_ref = consumer;
        self.spec.boot_iso_source = image;
    }

    /// Paused (annotation), erroring (`status.errorMessage`), not `Available`, not `ready`.
    fn skip(&self) -> Option<Unavailable> {
        if self.annotations().contains_key(PAUSED_ANNOTATION) {
            return Some(Unavailable::Paused);
        }
        let Some(status) = &self.status else {
            return Some(Unavailable::NotAvailable(None));
        };
        if let Some(message) = status.error_message.as_ref().filter(|m| !m.is_empty()) {
            return Some(Unavailable::Erroring(message.clone()));
        }
        if status.state != HostState::Available {
            return Some(Unavailable::NotAvailable(Some(format!(
                "{:?}",
                status.state
            ))));
        }
        if !status.ready {
            return Some(Unavailable::Unhealthy);
        }
        None
    }

    fn capacity(&self) -> Hardware {
        self.status
            .as_ref()
            .map(|s| s.hardware.clone())
            .unwrap_or_default()
    }

    /// `status.state`: `Claimed` when claimed; back to `Available` from `Claimed` when freed.
    fn set_claimed_state(&mut self, claimed: bool) -> bool {
        let is_claimed = self
            .status
            .as_ref()
            .is_some_and(|s| s.state == HostState::Claimed);
        if claimed == is_claimed {
            return false;
        }
        self.status.get_or_insert_default().state = if claimed {
            HostState::Claimed
        } else {
            HostState::Available
        };
        true
    }
}

// === impl HostClaim ===

impl HostClaim {
    /// A new claim `name` for `spec`, with the release finalizer (deleting it frees its host first).
    #[must_use]
    pub fn with_release_finalizer(name: &str, spec: HostClaimSpec) -> Self {
        Self {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                finalizers: Some(vec![RELEASE_FINALIZER.to_owned()]),
                ..kube::api::ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

impl Claim for HostClaim {
    fn requirements(&self) -> Result<Requirements, SelectorError> {
        Requirements::from_spec(&self.spec)
    }

    fn image(&self) -> Option<String> {
        Some(self.spec.image_url.clone())
    }

    fn claim_status(&self) -> Option<&HostClaimStatus> {
        self.status.as_ref()
    }

    fn claim_status_mut(&mut self) -> &mut HostClaimStatus {
        self.status.get_or_insert_default()
    }
}

/// The schema of `metav1.LabelSelector` (k8s-openapi's type is used without its `schemars` feature, which
/// would rebuild k8s-openapi for the whole workspace).
fn label_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A Kubernetes label selector (metav1.LabelSelector): every requirement must hold.",
        "type": "object",
        "properties": {
            "matchLabels": {
                "description": "Labels the host must have with these values.",
                "type": "object",
                "additionalProperties": {"type": "string"}
            },
            "matchExpressions": {
                "description": "Requirements: operator In or NotIn with values, Exists or DoesNotExist without.",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        }
    })
}

/// The two CustomResourceDefinitions as YAML documents, in file order: `(file name, YAML)`.
///
/// # Errors
///
/// A YAML serialization error (none is expected for these types).
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_saphyr::SerializeError> {
    Ok(vec![
        (
            "physicalhosts.yaml",
            serde_saphyr::to_string(&PhysicalHost::crd())?,
        ),
        (
            "hostclaims.yaml",
            serde_saphyr::to_string(&HostClaim::crd())?,
        ),
    ])
}
