//! Resource types served, and the validation kube-apiserver applies to them.

use serde_json::Value;

/// A resource type the server serves: the built-in `coordination.k8s.io/v1` Lease, or a custom resource
/// registered at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, e.g. `coordination.k8s.io` or `claims.example.com`.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Lease`.
    pub kind: String,
    /// Plural resource name used in paths, e.g. `leases`.
    pub plural: String,
    /// Whether objects live in namespaces (`/namespaces/<ns>/<plural>`) or at cluster scope.
    pub namespaced: bool,
    /// Whether a `/status` subresource is served (and the main resource ignores `status` on writes).
    pub status_subresource: bool,
    /// Short names for kubectl (e.g. none for leases).
    pub short_names: Vec<String>,
    /// A custom resource's `additionalPrinterColumns` (the Table form's columns after Name); empty: the
    /// CRD default (Name, Age).
    pub printer_columns: Vec<PrinterColumn>,
}

/// One of a custom resource's `additionalPrinterColumns`, as in its CustomResourceDefinition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// The column's name, e.g. `Phase`.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date` (a date cell is printed as an age).
    pub type_: String,
    /// A simple JSONPath into the object, e.g. `.status.phase` (no filters or wildcards).
    pub json_path: String,
    /// The column's description.
    pub description: String,
}

impl ResourceType {
    /// The built-in `coordination.k8s.io/v1` `Lease`, namespaced, without a status subresource.
    pub fn lease() -> Self {
        Self {
            group: "coordination.k8s.io".into(),
            version: "v1".into(),
            kind: "Lease".into(),
            plural: "leases".into(),
            namespaced: true,
            status_subresource: false,
            short_names: Vec::new(),
            printer_columns: Vec::new(),
        }
    }

    /// The built-in `events.k8s.io/v1` `Event`, namespaced, without a status subresource: what kube-runtime's
    /// event recorder (`kube::runtime::events::Recorder`) creates and patches. Stored as written, without
    /// kube-apiserver's Event validation.
    pub fn event() -> Self {
        Self {
            group: "events.k8s.io".into(),
            version: "v1".into(),
            kind: "Event".into(),
            plural: "events".into(),
            namespaced: true,
            status_subresource: false,
            short_names: vec!["ev".into()],
            printer_columns: Vec::new(),
        }
    }

    /// The built-in `coordination.k8s.io/v1beta1` `LeaseCandidate`, namespaced, without a status subresource:
    /// what a candidate of coordinated leader election registers (KEP-4355; Kubernetes 1.33+ serve v1beta1,
    /// there is no v1). Stored as written, without kube-apiserver's LeaseCandidate validation.
    pub fn lease_candidate() -> Self {
        Self {
            group: "coordination.k8s.io".into(),
            version: "v1beta1".into(),
            kind: "LeaseCandidate".into(),
            plural: "leasecandidates".into(),
            namespaced: true,
            status_subresource: false,
            short_names: Vec::new(),
            printer_columns: Vec::new(),
        }
    }

    /// A custom resource with a `/status` subresource.
    pub fn custom(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            status_subresource: true,
            short_names: Vec::new(),
            printer_columns: Vec::new(),
        }
    }

    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// `<plural>.<group>`, as kube-apiserver names a resource in messages.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    pub(crate) fn is_lease(&self) -> bool {
        self.group == "coordination.k8s.io" && self.plural == "leases"
    }

    /// Puts an object to be stored in the form kube-apiserver stores and answers it. For a Lease: `spec` is
    /// always there (`LeaseSpec` is a struct field, `json:"spec,omitempty"`, which Go's encoder never omits;
    /// `{}` at least), and a `null` field of it is absent (every field is a pointer: a null decodes to nil,
    /// which is omitted). Other types are stored as written.
    pub(crate) fn canonicalize(&self, object: &mut Value) {
        if !self.is_lease() {
            return;
        }
        let Some(map) = object.as_object_mut() else {
            return;
        };
        let spec = map
            .entry("spec")
            .or_insert_with(|| Value::Object(Default::default()));
        if spec.is_null() {
            *spec = Value::Object(Default::default());
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.retain(|_, v| !v.is_null());
        }
    }

    /// Checks a decoded object of this type as kube-apiserver's validation does; each cause is one
    /// `<field>: <detail>` of a 422.
    pub(crate) fn validate(&self, object: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(rule) = dns_subdomain_error(name) {
            causes.push(format!("metadata.name: Invalid value: \"{name}\": {rule}"));
        }
        if self.is_lease() {
            validate_lease_spec(object.get("spec"), &mut causes);
        }
        causes
    }

    /// Checks the wire format kube-apiserver's decoder enforces for this type (a 400 when it fails).
    pub(crate) fn decode_check(&self, object: &Value) -> Result<(), String> {
        if !object.is_object() {
            return Err("Object 'Kind' is missing in the request body".into());
        }
        if self.is_lease() {
            check_lease_types(object.get("spec")).map_err(|e| {
                format!("Lease in version \"v1\" cannot be handled as a Lease: {e}")
            })?;
        }
        Ok(())
    }
}

/// The fields of `ObjectMeta` (`k8s.io/apimachinery/pkg/apis/meta/v1/types.go`).
pub(crate) const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// The fields of `LeaseSpec` (`k8s.io/api/coordination/v1/types.go`).
const LEASE_SPEC_FIELDS: &[&str] = &[
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "strategy",
    "preferredHolder",
];

impl ResourceType {
    /// The error of kube-apiserver's strict decoding (`?fieldValidation=Strict`, which kubectl sends) for the
    /// fields of `object` this type does not have (`strict decoding error: unknown field "spec.holder"`), or
    /// `None`. Only Leases are checked: a custom resource's schema keeps unknown fields.
    pub(crate) fn strict_decoding_error(&self, object: &Value) -> Option<String> {
        if !self.is_lease() {
            return None;
        }
        let mut unknown = Vec::new();
        let mut check = |prefix: &str, value: Option<&Value>, known: &[&str]| {
            if let Some(map) = value.and_then(Value::as_object) {
                for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
                    unknown.push(format!("unknown field \"{prefix}{key}\""));
                }
            }
        };
        check(
            "",
            Some(object),
            &["apiVersion", "kind", "metadata", "spec"],
        );
        check("metadata.", object.get("metadata"), OBJECT_META_FIELDS);
        check("spec.", object.get("spec"), LEASE_SPEC_FIELDS);
        (!unknown.is_empty()).then(|| format!("strict decoding error: {}", unknown.join(", ")))
    }
}

/// Why `name` is not a DNS-1123 subdomain, or `None` if it is one.
pub(crate) fn dns_subdomain_error(name: &str) -> Option<&'static str> {
    const RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or \
                        '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex \
                        used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    if name.is_empty() {
        return Some("name or generateName is required");
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        None
    } else {
        Some(RULE)
    }
}

/// Why `name` is not a DNS-1123 label (a namespace name), or `None` if it is one.
pub(crate) fn dns_label_error(name: &str) -> Option<&'static str> {
    if name.len() > 63 || name.contains('.') {
        return Some("must be a DNS-1123 label of at most 63 characters");
    }
    dns_subdomain_error(name)
}

/// Type checks of the Lease decoder: integers are integers, MicroTimes carry exactly six fractional digits.
fn check_lease_types(spec: Option<&Value>) -> Result<(), String> {
    let Some(spec) = spec.filter(|s| !s.is_null()) else {
        return Ok(());
    };
    let Some(spec) = spec.as_object() else {
        return Err(
            "json: cannot unmarshal into Go struct field Lease.spec of type v1.LeaseSpec".into(),
        );
    };
    for field in ["leaseDurationSeconds", "leaseTransitions"] {
        match spec.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) => {}
            Some(v) => {
                return Err(format!(
                    "json: cannot unmarshal {v} into Go struct field LeaseSpec.spec.{field} of type int32"
                ));
            }
        }
    }
    for field in ["holderIdentity", "strategy", "preferredHolder"] {
        match spec.get(field) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(v) => {
                return Err(format!(
                    "json: cannot unmarshal {v} into Go struct field LeaseSpec.spec.{field} of type string"
                ));
            }
        }
    }
    for field in ["acquireTime", "renewTime"] {
        match spec.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => check_micro_time(s)?,
            Some(v) => return Err(format!("json: cannot unmarshal {v} into a MicroTime")),
        }
    }
    Ok(())
}

/// MicroTime: RFC 3339 with exactly six fractional digits (`2006-01-02T15:04:05.000000Z07:00`).
fn check_micro_time(s: &str) -> Result<(), String> {
    let err = || {
        format!(
            "parsing time \"{s}\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"{s}\" as \".000000\""
        )
    };
    let fraction = s
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(err)?;
    let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
    if digits != 6 {
        return Err(err());
    }
    s.parse::<jiff::Timestamp>().map_err(|_| err())?;
    Ok(())
}

/// `ValidateLeaseSpec` of kube-apiserver (`pkg/apis/coordination/validation`).
fn validate_lease_spec(spec: Option<&Value>, causes: &mut Vec<String>) {
    let Some(spec) = spec else { return };
    if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
        && d <= 0
    {
        causes.push(format!(
            "spec.leaseDurationSeconds: Invalid value: {d}: must be greater than 0"
        ));
    }
    if let Some(t) = spec.get("leaseTransitions").and_then(Value::as_i64)
        && t < 0
    {
        causes.push(format!(
            "spec.leaseTransitions: Invalid value: {t}: must be greater than or equal to 0"
        ));
    }
    let strategy = spec.get("strategy").and_then(Value::as_str);
    if let Some(s) = strategy
        && s != "OldestEmulationVersion"
        && !s.contains('/')
    {
        causes.push(format!(
            "spec.strategy: Unsupported value: \"{s}\": supported values: \"OldestEmulationVersion\""
        ));
    }
    if spec.get("preferredHolder").is_some_and(|p| !p.is_null()) && strategy.is_none() {
        causes.push(
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"
                .into(),
        );
    }
}

/// RFC 7386 JSON merge patch (`json_patch::merge`); keys starting with `$` (strategic-merge directives) are
/// ignored, which is what a strategic merge patch means for types without merge keys (Lease, custom
/// resources).
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, &without_directives(patch));
}

/// `patch` without its object keys that start with `$`, at every depth of nested objects (values inside
/// arrays replace whole arrays in a merge patch, and are kept as they are).
fn without_directives(patch: &Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !key.starts_with('$'))
                .map(|(key, value)| (key.clone(), without_directives(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn micro_time_needs_six_digits() {
        assert!(check_micro_time("2026-05-01T12:00:00.123456Z").is_ok());
        assert!(check_micro_time("2026-05-01T12:00:00.123Z").is_err());
        assert!(check_micro_time("2026-05-01T12:00:00Z").is_err());
        assert!(check_micro_time("2026-05-01T12:00:00.123456789Z").is_err());
        assert!(check_micro_time("garbage").is_err());
    }

    #[test]
    fn lease_validation_names_the_field() {
        let rt = ResourceType::lease();
        let causes = rt.validate(&json!({"metadata": {"name": "Bad_Name"},
            "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}));
        assert_eq!(causes.len(), 3, "{causes:?}");
        assert!(causes[0].starts_with("metadata.name: Invalid value: \"Bad_Name\""));
        assert_eq!(
            causes[1],
            "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
        );
        assert_eq!(
            causes[2],
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn strict_decoding_names_each_unknown_lease_field() {
        let rt = ResourceType::lease();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "a", "labels": {"x": "y"}, "owner": "b"},
            "spec": {"holderIdentity": "pod-a", "holder": "pod-a"}, "status": {}});
        assert_eq!(
            rt.strict_decoding_error(&lease).as_deref(),
            Some(
                "strict decoding error: unknown field \"status\", unknown field \"metadata.owner\", \
                 unknown field \"spec.holder\""
            )
        );
        let known = json!({"metadata": {"name": "a"}, "spec": {"renewTime": null}});
        assert_eq!(rt.strict_decoding_error(&known), None);
        let custom = ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true);
        assert_eq!(custom.strict_decoding_error(&lease), None);
    }

    #[test]
    fn a_lease_is_stored_with_a_spec_and_without_null_fields() {
        let rt = ResourceType::lease();
        let mut bare = json!({"metadata": {"name": "a"}});
        rt.canonicalize(&mut bare);
        assert_eq!(bare, json!({"metadata": {"name": "a"}, "spec": {}}));
        let mut nulls = json!({"metadata": {"name": "a"}, "spec": {"holderIdentity": null, "leaseDurationSeconds": 15}});
        rt.canonicalize(&mut nulls);
        assert_eq!(
            nulls,
            json!({"metadata": {"name": "a"}, "spec": {"leaseDurationSeconds": 15}})
        );
        let mut null_spec = json!({"metadata": {"name": "a"}, "spec": null});
        rt.canonicalize(&mut null_spec);
        assert_eq!(null_spec["spec"], json!({}));
        let custom = ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true);
        let mut claim = json!({"metadata": {"name": "a"}, "spec": {"x": null}});
        custom.canonicalize(&mut claim);
        assert_eq!(
            claim,
            json!({"metadata": {"name": "a"}, "spec": {"x": null}})
        );
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": {"b": null, "e": 3}, "d": [3], "$patch": "x"}),
        );
        assert_eq!(target, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
        // Directives are dropped at every depth of objects; inside a replaced array, values are kept whole.
        merge_patch(
            &mut target,
            &json!({"a": {"$retainKeys": ["c"], "f": {"$patch": "replace", "g": 1}}, "d": [{"$k": 1}]}),
        );
        assert_eq!(
            target,
            json!({"a": {"c": 2, "e": 3, "f": {"g": 1}}, "d": [{"$k": 1}]})
        );
    }
}
