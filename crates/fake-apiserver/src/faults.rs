//! Faults injected into one listener: latency, errors, black hole, commit-then-drop, refused connections.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Faults injected into one listener's API requests (admin routes under `/fake/` are never faulted).
///
/// As JSON (admin route): `{"latency_ms": 50, "jitter_ms": 10, "error_rate": 0.1, "error_code": 503,
/// "black_hole": false, "commit_then_drop": false, "commit_delay_ms": 0, "watch_delay_ms": 0, "refuse": false,
/// "verbs": ["watch"], "resources": ["leasecandidates"]}`;
/// missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every request before it is handled.
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// A uniformly random extra delay in `[0, jitter)`.
    #[serde(rename = "jitter_ms", with = "millis")]
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a request is answered with `error_code` (and not applied).
    pub error_rate: f64,
    /// 403 (an RBAC denial, as a `Status`), 429 (plain text with `Retry-After: 1`, as kube-apiserver's rate
    /// limiting answers), 500 or 503 (a `Status`).
    pub error_code: u16,
    /// Accept requests and never answer them; open watches stop delivering events until it is lifted.
    /// Shutdown and the client closing its connection still end them.
    pub black_hole: bool,
    /// Apply writes (POST, PUT, PATCH, DELETE), then close the connection without answering.
    pub commit_then_drop: bool,
    /// Apply writes this long after they arrived, whether or not the client still waits (a client that
    /// gave up does not cancel them, as with etcd), then answer.
    #[serde(rename = "commit_delay_ms", with = "millis")]
    pub commit_delay: Duration,
    /// Deliver each live watch event to this listener's watchers this long after its write was committed
    /// (the writer is answered first), as kube-apiserver delivers events through its watch cache after the
    /// write's response. Lifted or changed, it applies from the next event on.
    #[serde(rename = "watch_delay_ms", with = "millis")]
    pub watch_delay: Duration,
    /// Close the listening socket (connections are refused) and every open connection.
    pub refuse: bool,
    /// The verbs the other faults strike (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `discovery`); empty: every verb. `refuse` closes connections, whatever their verbs.
    pub verbs: Vec<String>,
    /// The resources whose requests the other faults strike, by plural name (`leases`, `leasecandidates`,
    /// `events`, a custom resource's plural); empty: every resource. A Role that grants nothing on one
    /// resource is a 403 with `resources` naming it. Discovery requests name no resource: a non-empty list
    /// spares them. It limits the answers to requests, not what open watches deliver (`watch_delay`, a
    /// black hole's stalled watches follow `verbs` only).
    pub resources: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            error_code: 500,
            black_hole: false,
            commit_then_drop: false,
            commit_delay: Duration::ZERO,
            watch_delay: Duration::ZERO,
            refuse: false,
            verbs: Vec::new(),
            resources: Vec::new(),
        }
    }
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// A network partition: requests are accepted and never answered.
    pub fn partition() -> Self {
        Self {
            black_hole: true,
            ..Self::default()
        }
    }

    /// Whether the faults strike requests of `verb` (see [`Faults::verbs`]).
    pub fn applies_to(&self, verb: &str) -> bool {
        self.verbs.is_empty() || self.verbs.iter().any(|v| v == verb)
    }

    /// Whether the faults strike a request of `verb` on `resource`, a plural name (see [`Faults::verbs`]
    /// and [`Faults::resources`]).
    pub fn applies_to_request(&self, verb: &str, resource: &str) -> bool {
        self.applies_to(verb)
            && (self.resources.is_empty() || self.resources.iter().any(|r| r == resource))
    }

    /// Checks the ranges.
    ///
    /// # Errors
    ///
    /// [`FaultsError`] naming the field when `error_rate` is outside `[0, 1]`, `error_code` is not 429, 500
    /// or 503 (or 403), or a verb is not one of [`Faults::verbs`]'.
    pub fn validate(&self) -> Result<(), FaultsError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FaultsError {
                field: "error_rate",
                value: self.error_rate.to_string(),
                rule: "must be between 0 and 1",
            });
        }
        if ![403, 429, 500, 503].contains(&self.error_code) {
            return Err(FaultsError {
                field: "error_code",
                value: self.error_code.to_string(),
                rule: "must be 403, 429, 500 or 503",
            });
        }
        if let Some(verb) = self.verbs.iter().find(|v| !VERBS.contains(&v.as_str())) {
            return Err(FaultsError {
                field: "verbs",
                value: verb.clone(),
                rule: "must be get, list, watch, create, update, patch, delete or discovery",
            });
        }
        Ok(())
    }
}

/// The verbs a fault can be limited to.
const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "discovery",
];

/// An invalid [`Faults`] field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value}: {rule}")]
pub struct FaultsError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// The rule broken.
    pub rule: &'static str,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
