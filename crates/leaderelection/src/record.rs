//! `LeaderElectionRecord`: the election's view of a Lease, and its exact mapping to `coordination.k8s.io/v1`.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// What a Lease says about the election: client-go's `LeaderElectionRecord`, field for field.
///
/// | field | Lease `spec` field |
/// |---|---|
/// | `holder_identity` | `holderIdentity` (`""` when released or never held) |
/// | `lease_duration_seconds` | `leaseDurationSeconds` (seconds) |
/// | `acquire_time` | `acquireTime` (MicroTime, microseconds, UTC) |
/// | `renew_time` | `renewTime` (MicroTime) |
/// | `lease_transitions` | `leaseTransitions`: the term number |
/// | `strategy` | `strategy` (coordinated leader election, written only if set) |
/// | `preferred_holder` | `preferredHolder` (written only if set) |
///
/// Reading is tolerant, as client-go's: a missing `spec` or a `null`/missing field reads as the zero value
/// (an empty holder, 0 s, no time, 0 transitions), so Leases written by client-go, kubectl or other crates
/// are understood. Negative numbers (which kube-apiserver never stores) read as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderElectionRecord {
    /// The candidate that holds the Lease; empty when nobody does.
    pub holder_identity: String,
    /// How long the holder's claim lasts after it was last seen renewed, in seconds.
    pub lease_duration_seconds: i32,
    /// When the current holder acquired the Lease (its clock; never compared with ours).
    pub acquire_time: Option<Timestamp>,
    /// When the holder last renewed (its clock; never compared with ours).
    pub renew_time: Option<Timestamp>,
    /// How many times the Lease changed hands: the term number, usable as a fencing token.
    pub lease_transitions: i32,
    /// Coordinated leader election strategy (KEP-4355), kept as read.
    pub strategy: Option<String>,
    /// Coordinated leader election: the holder the control plane asks to take over.
    pub preferred_holder: Option<String>,
}

// === impl LeaderElectionRecord ===

impl LeaderElectionRecord {
    /// Reads a Lease's `spec` (absent for a Lease created without one).
    #[must_use]
    pub fn from_lease_spec(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        Self {
            holder_identity: spec.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0).max(0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            lease_transitions: spec.lease_transitions.unwrap_or(0).max(0),
            strategy: spec.strategy.clone().filter(|s| !s.is_empty()),
            preferred_holder: spec.preferred_holder.clone().filter(|s| !s.is_empty()),
        }
    }

    /// The Lease `spec` to write, as client-go's `LeaderElectionRecordToLeaseSpec`: holder, duration,
    /// both times and transitions always written; strategy and preferredHolder only when set. Times are
    /// truncated to microseconds, so they serialise with exactly six fractional digits.
    #[must_use]
    pub fn to_lease_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder_identity.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(micro_time),
            renew_time: self.renew_time.map(micro_time),
            lease_transitions: Some(self.lease_transitions),
            strategy: self.strategy.clone(),
            preferred_holder: self.preferred_holder.clone(),
        }
    }

    /// The record that releases this one (client-go's `release`): holder `""`, `leaseDurationSeconds: 1`,
    /// acquire and renew times `now` (truncated to microseconds), `leaseTransitions` kept, so the next
    /// candidate takes over at once and the term count continues. `strategy` and `preferredHolder` are
    /// kept: under coordinated election (KEP-4355) the election controller then assigns its electee at
    /// once, and otherwise the preferred candidate, not any, takes the Lease first.
    #[must_use]
    pub fn released(&self, now: Timestamp) -> Self {
        let now = truncate_to_micros(now);
        Self {
            holder_identity: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            lease_transitions: self.lease_transitions,
            strategy: self.strategy.clone(),
            preferred_holder: self.preferred_holder.clone(),
        }
    }

    /// The `preferredHolder` when it names a candidate other than `identity` (asked to yield to it).
    #[must_use]
    pub fn preferred_other_than(&self, identity: &str) -> Option<&str> {
        self.preferred_holder
            .as_deref()
            .filter(|p| !p.is_empty() && *p != identity)
    }

    /// Whether somebody holds the Lease (`holderIdentity` is not empty).
    #[must_use]
    pub fn is_held(&self) -> bool {
        !self.holder_identity.is_empty()
    }
}

/// Truncates to whole microseconds: MicroTime's precision, so that what we write reads back equal.
pub(crate) fn truncate_to_micros(t: Timestamp) -> Timestamp {
    let micros = t.as_microsecond();
    Timestamp::from_microsecond(micros).unwrap_or(t)
}

fn micro_time(t: Timestamp) -> MicroTime {
    MicroTime(truncate_to_micros(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn full() -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder_identity: "pod-a".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(ts("2026-05-01T12:00:00.123456Z")),
            renew_time: Some(ts("2026-05-01T12:00:10.654321Z")),
            lease_transitions: 3,
            strategy: Some("OldestEmulationVersion".into()),
            preferred_holder: Some("pod-b".into()),
        }
    }

    /// client-go's `TestLeaseSpecToLeaderElectionRecordRoundTrip`.
    #[test]
    fn round_trips_through_lease_spec() {
        let record = full();
        assert_eq!(
            LeaderElectionRecord::from_lease_spec(Some(&record.to_lease_spec())),
            record
        );
        let released = LeaderElectionRecord {
            lease_duration_seconds: 1,
            ..LeaderElectionRecord::default()
        };
        assert_eq!(
            LeaderElectionRecord::from_lease_spec(Some(&released.to_lease_spec())),
            released
        );
    }

    #[test]
    fn writes_micro_time_with_six_digits_and_always_the_core_fields() {
        let mut record = full();
        record.acquire_time = Some(ts("2026-05-01T12:00:00Z"));
        record.renew_time = Some(ts("2026-05-01T12:00:00.123456789Z"));
        record.strategy = None;
        record.preferred_holder = None;
        let json = serde_json::to_value(record.to_lease_spec()).unwrap();
        assert_eq!(json["acquireTime"], "2026-05-01T12:00:00.000000Z");
        assert_eq!(json["renewTime"], "2026-05-01T12:00:00.123456Z");
        assert_eq!(json["holderIdentity"], "pod-a");
        assert_eq!(json["leaseTransitions"], 3);
        assert!(json.get("strategy").is_none());
        assert!(json.get("preferredHolder").is_none());
        let empty = serde_json::to_value(LeaderElectionRecord::default().to_lease_spec()).unwrap();
        assert_eq!(empty["holderIdentity"], "");
        assert_eq!(empty["leaseTransitions"], 0);
    }

    /// Leases as client-go, kubectl and other crates leave them.
    #[test]
    fn reads_what_real_clusters_contain() {
        let read = |json: serde_json::Value| {
            let lease: Lease = serde_json::from_value(json).unwrap();
            LeaderElectionRecord::from_lease_spec(lease.spec.as_ref())
        };
        let meta = serde_json::json!({"name": "l", "namespace": "default"});
        assert_eq!(
            read(serde_json::json!({"metadata": meta})),
            LeaderElectionRecord::default()
        );
        assert_eq!(
            read(serde_json::json!({"metadata": meta, "spec": {}})),
            LeaderElectionRecord::default()
        );
        let nulls = read(serde_json::json!({"metadata": meta, "spec": {
            "holderIdentity": null, "leaseDurationSeconds": null, "acquireTime": null,
            "renewTime": "2026-05-01T12:00:00.000000Z", "leaseTransitions": null }}));
        assert!(!nulls.is_held());
        assert_eq!(nulls.renew_time, Some(ts("2026-05-01T12:00:00Z")));
        // kubectl-made Lease with a holder and nothing else
        let bare = read(serde_json::json!({"metadata": meta, "spec": {"holderIdentity": "x"}}));
        assert_eq!(bare.holder_identity, "x");
        assert_eq!(bare.lease_duration_seconds, 0);
        // client-go's release
        let released = read(serde_json::json!({"metadata": meta, "spec": {
            "holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 7,
            "acquireTime": "2026-05-01T12:00:00.000000Z", "renewTime": "2026-05-01T12:00:00.000000Z"}}));
        assert!(!released.is_held());
        assert_eq!(released.lease_transitions, 7);
    }

    fn arb_json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
            (
                0i64..3000,
                prop_oneof![
                    Just(""),
                    Just(".1"),
                    Just(".123"),
                    Just(".123456"),
                    Just(".123456789")
                ],
                prop_oneof![Just("Z"), Just("+02:00"), Just("")]
            )
                .prop_map(|(y, frac, tz)| serde_json::Value::from(format!(
                    "{y:04}-05-01T12:00:00{frac}{tz}"
                ))),
        ]
    }

    proptest! {
        /// Arbitrary Lease JSON (missing, null and mistyped fields; negative numbers; MicroTime with 0, 3, 6
        /// or 9 digits) never panics: it either fails to decode with an error naming the problem, or gives a
        /// record whose numbers are sane.
        #[test]
        fn decoding_arbitrary_lease_json_never_panics(
            fields in proptest::collection::btree_map(
                prop_oneof![
                    Just("holderIdentity"), Just("leaseDurationSeconds"), Just("acquireTime"),
                    Just("renewTime"), Just("leaseTransitions"), Just("strategy"), Just("preferredHolder"),
                    Just("unknownField"),
                ].prop_map(String::from),
                arb_json_value(),
                0..8,
            ),
            with_spec in any::<bool>(),
        ) {
            let spec: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
            let mut lease = serde_json::json!({"metadata": {"name": "l", "namespace": "default"}});
            if with_spec {
                lease["spec"] = serde_json::Value::Object(spec);
            }
            match serde_json::from_value::<Lease>(lease) {
                Ok(lease) => {
                    let record = LeaderElectionRecord::from_lease_spec(lease.spec.as_ref());
                    prop_assert!(record.lease_duration_seconds >= 0);
                    prop_assert!(record.lease_transitions >= 0);
                    // what we read, we can write back with six-digit MicroTimes
                    let json = serde_json::to_value(record.to_lease_spec()).unwrap();
                    if let Some(t) = json.get("renewTime").and_then(|t| t.as_str()) {
                        let frac = t.rsplit('.').next().unwrap();
                        prop_assert_eq!(frac.len(), 7, "{}", t);
                    }
                }
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }
    }
}
