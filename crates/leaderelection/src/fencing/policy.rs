//! The admission policy that makes the API server refuse stale terms: a `ValidatingAdmissionPolicy` over
//! the guarded resources, with the Lease as its param, and the binding that puts it in force.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ParamKind, ParamRef, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use super::{LEASE_ANNOTATION, TERM_ANNOTATION};
use crate::ConfigError;
use crate::config::{DNS_SUBDOMAIN_RULE, check_dns_label, check_dns_subdomain, is_dns_subdomain};

/// The suffix of the policy's and the binding's names: `<lease>.<namespace>.fencing.leaderelection.dev`.
const NAME_SUFFIX: &str = "fencing.leaderelection.dev";

/// The label every namespace carries (kube-apiserver sets it), by which the binding scopes the policy to
/// [`FencingPolicy::namespaces`].
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the policy does with a write that carries no stamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Unstamped writes pass (other writers: kubectl, other controllers); a stamped write must carry the
    /// current term or a later one, and name this Lease. While the Lease does not exist, every write passes
    /// (`parameterNotFoundAction: Allow`).
    #[default]
    Lenient,
    /// As [`Mode::Lenient`], and every create and update must carry both annotations; while the Lease does
    /// not exist, every write is refused (`parameterNotFoundAction: Deny`). For resources only the leader
    /// writes.
    Strict,
}

/// One guarded resource type, `group/version/resource` as in an admission rule (`apps/v1/deployments`,
/// `v1/configmaps` or `/v1/configmaps` for the core group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuardedResource {
    /// API group; `""` for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Plural resource name, e.g. `configmaps`; never a subresource.
    pub resource: String,
}

// === impl GuardedResource ===

impl GuardedResource {
    /// The resource `group/version/resource`, checked as [`FromStr`] checks it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for field `resources`, as [`GuardedResource::from_str`].
    pub fn new(group: &str, version: &str, resource: &str) -> Result<Self, ConfigError> {
        let guarded = Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
        };
        guarded.validate()?;
        Ok(guarded)
    }

    /// Checks the names: a DNS subdomain or empty group, DNS-label version and resource, no wildcard, no
    /// subresource, and neither the Leases (their renewals carry no stamp) nor the admission configuration
    /// (kube-apiserver never applies policies to it).
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |rule: &str| Err(ConfigError::new("resources", self.to_string(), rule));
        if [&self.group, &self.version, &self.resource]
            .iter()
            .any(|s| s.contains('*'))
        {
            return err(
                "name each guarded resource: a wildcard would guard types no leader stamps",
            );
        }
        if !self.group.is_empty() && !is_dns_subdomain(&self.group) {
            return err(&format!("the group {DNS_SUBDOMAIN_RULE}"));
        }
        if check_dns_label("resources", &self.version).is_err()
            || check_dns_label("resources", &self.resource).is_err()
        {
            return err(
                "must be group/version/resource: the version and the plural resource are lowercase RFC 1123 \
                 labels (e.g. apps/v1/deployments, v1/configmaps for the core group)",
            );
        }
        if self.group == "coordination.k8s.io" && self.resource == "leases" {
            return err(
                "Leases cannot be guarded: the Lease that counts the term is renewed without a stamp",
            );
        }
        if self.group == "admissionregistration.k8s.io" {
            return err("admission configuration is never subject to admission policies");
        }
        Ok(())
    }
}

impl FromStr for GuardedResource {
    type Err = ConfigError;

    /// Parses `group/version/resource`, `/version/resource` or `version/resource` (the core group).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for field `resources` naming the value and the rule: not two or three segments, a
    /// subresource (`deployments/status`: a `/status` write cannot carry the stamp, the API server keeps
    /// the stored annotations), a wildcard, a name that is not a lowercase RFC 1123 label, Leases, or the
    /// admission configuration.
    fn from_str(value: &str) -> Result<Self, ConfigError> {
        let segments: Vec<&str> = value.split('/').collect();
        let (group, version, resource) = match segments.as_slice() {
            [version, resource] => ("", *version, *resource),
            [group, version, resource] => (*group, *version, *resource),
            [_, _, _, _] => {
                return Err(ConfigError::new(
                    "resources",
                    value.to_owned(),
                    "subresources are not guarded: the API server keeps the stored annotations on a \
                     /status write, so it cannot carry the writer's term",
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    "resources",
                    value.to_owned(),
                    "must be group/version/resource (e.g. apps/v1/deployments, v1/configmaps for the core \
                     group)",
                ));
            }
        };
        Self::new(group, version, resource)
    }
}

impl fmt::Display for GuardedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.group, self.version, self.resource)
    }
}

/// The fencing policy of one Lease: which resources it guards, where, and how strictly.
///
/// [`FencingPolicy::build`] gives the `ValidatingAdmissionPolicy` and its binding (GA since Kubernetes 1.30):
/// kube-apiserver then refuses, with 422 `Invalid`, a create or update (a patch too) of a guarded object
/// whose [`TERM_ANNOTATION`] is below the Lease's `spec.leaseTransitions`, or whose [`LEASE_ANNOTATION`]
/// names another Lease, or (in [`Mode::Strict`]) that lacks either annotation. Deletes are not guarded (a
/// delete carries no object to stamp, and the stored object's stamp is the last writer's, not the
/// deleter's), nor are `/status` writes (the API server keeps the stored annotations on them). The policy
/// is judged on the object as it would be stored: a merge patch that does not name the annotations keeps
/// the stored stamp.
///
/// # Examples
///
/// ```
/// use leaderelection::fencing::{FencingPolicy, Mode};
///
/// let (policy, binding) = FencingPolicy::new("jobs", "my-controller")
///     .resource("apps/v1/deployments".parse()?)
///     .mode(Mode::Strict)
///     .build()?;
/// assert_eq!(policy.metadata.name.as_deref(), Some("my-controller.jobs.fencing.leaderelection.dev"));
/// assert_eq!(binding.metadata.name, policy.metadata.name);
/// # Ok::<(), leaderelection::ConfigError>(())
/// ```
///
/// ## RBAC
///
/// None at run time: kube-apiserver reads the Lease itself. Whoever installs the two objects needs
/// `create` on `admissionregistration.k8s.io` `validatingadmissionpolicies` and
/// `validatingadmissionpolicybindings` (cluster-scoped), and `get` on the Lease (kube-apiserver checks that
/// the creator of a binding may read the object its `paramRef` names,
/// `pkg/registry/admissionregistration/validatingadmissionpolicybinding/authz.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingPolicy {
    /// The Lease's namespace (a DNS label).
    pub lease_namespace: String,
    /// The Lease's name (a DNS subdomain).
    pub lease_name: String,
    /// The guarded resource types; at least one.
    pub resources: Vec<GuardedResource>,
    /// What an unstamped write gets.
    pub mode: Mode,
    /// The namespaces whose objects are guarded (DNS labels); empty: every namespace, and cluster-scoped
    /// objects.
    pub namespaces: Vec<String>,
}

// === impl FencingPolicy ===

impl FencingPolicy {
    /// A lenient policy for the Lease `lease_namespace/lease_name`, guarding nothing yet.
    pub fn new(lease_namespace: impl Into<String>, lease_name: impl Into<String>) -> Self {
        Self {
            lease_namespace: lease_namespace.into(),
            lease_name: lease_name.into(),
            resources: Vec::new(),
            mode: Mode::default(),
            namespaces: Vec::new(),
        }
    }

    /// Guards one more resource type.
    #[must_use]
    pub fn resource(mut self, resource: GuardedResource) -> Self {
        self.resources.push(resource);
        self
    }

    /// Sets the mode (default [`Mode::Lenient`]).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Guards only objects in these namespaces (default: every namespace).
    #[must_use]
    pub fn namespaces<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// The name of the policy and of its binding: `<lease_name>.<lease_namespace>.fencing.leaderelection.dev`.
    pub fn name(&self) -> String {
        format!("{}.{}.{NAME_SUFFIX}", self.lease_name, self.lease_namespace)
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field, the value and the rule: `lease_name` not a DNS subdomain (or so
    /// long that the policy's name passes 253 characters), `lease_namespace` or an entry of `namespaces` not
    /// a DNS label, no `resources` or an invalid one (see [`GuardedResource::from_str`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_dns_subdomain("lease_name", &self.lease_name)?;
        check_dns_label("lease_namespace", &self.lease_namespace)?;
        if !is_dns_subdomain(&self.name()) {
            return Err(ConfigError::new(
                "lease_name",
                self.lease_name.clone(),
                format!(
                    "too long for the policy's name {:?}, which {DNS_SUBDOMAIN_RULE}",
                    self.name()
                ),
            ));
        }
        if self.resources.is_empty() {
            return Err(ConfigError::new(
                "resources",
                String::new(),
                "name at least one guarded resource (group/version/resource)",
            ));
        }
        for resource in &self.resources {
            resource.validate()?;
        }
        for namespace in &self.namespaces {
            check_dns_label("namespaces", namespace)?;
        }
        Ok(())
    }

    /// The `ValidatingAdmissionPolicy` and its `ValidatingAdmissionPolicyBinding`, both named
    /// [`FencingPolicy::name`], ready for `kubectl apply` (serialized, they carry `apiVersion` and `kind`).
    ///
    /// The policy: `paramKind` `coordination.k8s.io/v1` `Lease`, `failurePolicy: Fail`, the guarded
    /// resources' `CREATE` and `UPDATE`, and one CEL validation per rule (each with a message naming the
    /// term, the Lease and what is wrong). The binding: `paramRef` naming the Lease (`parameterNotFoundAction`
    /// `Allow` when lenient, `Deny` when strict), `validationActions: [Deny]`, and a `namespaceSelector` on
    /// `kubernetes.io/metadata.name` when [`FencingPolicy::namespaces`] is set.
    ///
    /// # Errors
    ///
    /// As [`FencingPolicy::validate`].
    pub fn build(
        &self,
    ) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding), ConfigError> {
        self.validate()?;
        let name = self.name();
        // One rule per resource: one rule listing them all would also match the cross product of their
        // groups, versions and resources.
        let rules = self
            .resources
            .iter()
            .map(|r| NamedRuleWithOperations {
                api_groups: Some(vec![r.group.clone()]),
                api_versions: Some(vec![r.version.clone()]),
                resources: Some(vec![r.resource.clone()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                ..NamedRuleWithOperations::default()
            })
            .collect();
        let policy = ValidatingAdmissionPolicy {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                param_kind: Some(ParamKind {
                    api_version: Some("coordination.k8s.io/v1".into()),
                    kind: Some("Lease".into()),
                }),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(rules),
                    ..MatchResources::default()
                }),
                validations: Some(validations(self.mode)),
                ..ValidatingAdmissionPolicySpec::default()
            }),
            status: None,
        };
        let param_ref = ParamRef {
            name: Some(self.lease_name.clone()),
            namespace: Some(self.lease_namespace.clone()),
            parameter_not_found_action: Some(
                match self.mode {
                    Mode::Lenient => "Allow",
                    Mode::Strict => "Deny",
                }
                .into(),
            ),
            selector: None,
        };
        let match_resources = (!self.namespaces.is_empty()).then(|| MatchResources {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: NAMESPACE_NAME_LABEL.into(),
                    operator: "In".into(),
                    values: Some(self.namespaces.clone()),
                }]),
                match_labels: None,
            }),
            ..MatchResources::default()
        });
        let binding = ValidatingAdmissionPolicyBinding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: binding_spec(name, param_ref, match_resources),
        };
        Ok((policy, binding))
    }
}

/// The policy and its binding for the Lease `lease_namespace/lease_name` guarding `resources` in every
/// namespace: [`FencingPolicy::build`] in one call.
///
/// # Errors
///
/// As [`FencingPolicy::validate`].
pub fn policy(
    lease_namespace: &str,
    lease_name: &str,
    resources: &[GuardedResource],
    mode: Mode,
) -> Result<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding), ConfigError> {
    FencingPolicy {
        resources: resources.to_vec(),
        mode,
        ..FencingPolicy::new(lease_namespace, lease_name)
    }
    .build()
}

/// The policy's CEL validations for `mode`, in the order kube-apiserver reports the first that fails: the
/// stamp present (strict only), the Lease named, the term well-formed, the term current. They read the
/// Lease's name from `params`, so they are the same for every Lease (the Helm chart ships them as
/// `deploy/helm/leader-elect/files/fencing-validations.yaml`).
pub fn validations(mode: Mode) -> Vec<Validation> {
    let lease = "params.metadata.namespace + '/' + params.metadata.name";
    let annotations = "object.metadata.annotations";
    let has = |key: &str| format!("(has({annotations}) && '{key}' in {annotations})");
    let (has_term, has_lease) = (has(TERM_ANNOTATION), has(LEASE_ANNOTATION));
    let term = format!("{annotations}['{TERM_ANNOTATION}']");
    // At most 18 digits: every such number fits CEL's int, so `int()` cannot fail.
    let well_formed = format!("{term}.matches('^[0-9]{{1,18}}$')");
    let transitions = "params.spec.leaseTransitions";
    let current = format!("(has(params.spec) && has({transitions}) ? {transitions} : 0)");
    let mut validations = Vec::new();
    if mode == Mode::Strict {
        validations.push(Validation {
            expression: format!("{has_term} && {has_lease}"),
            message_expression: Some(format!(
                "'unfenced write: strict fencing by Lease ' + {lease} + ' needs the {TERM_ANNOTATION} and \
                 {LEASE_ANNOTATION} annotations'"
            )),
            ..Validation::default()
        });
    }
    validations.push(Validation {
        expression: format!("!{has_lease} || {annotations}['{LEASE_ANNOTATION}'] == {lease}"),
        message_expression: Some(format!(
            "'write stamped for Lease ' + {annotations}['{LEASE_ANNOTATION}'] + ', this object is fenced by \
             Lease ' + {lease}"
        )),
        ..Validation::default()
    });
    validations.push(Validation {
        expression: format!("!{has_term} || {well_formed}"),
        message_expression: Some(format!(
            "'{TERM_ANNOTATION} ' + {term} + ' is not a term: a decimal leaseTransitions of Lease ' + {lease}"
        )),
        ..Validation::default()
    });
    validations.push(Validation {
        expression: format!("!{has_term} || !{well_formed} || int({term}) >= {current}"),
        message_expression: Some(format!(
            "'stale term ' + {term} + ': Lease ' + {lease} + ' is at leaseTransitions ' + string({current})"
        )),
        ..Validation::default()
    });
    validations
}

// The binding's spec: `policyName` and `validationActions` are required fields, and `spec` too, from
// k8s-openapi's `v1_36` on (optional before); the policy's types are the same in every version.
k8s_openapi::k8s_if_le_1_35! {
    fn binding_spec(
        policy_name: String,
        param_ref: ParamRef,
        match_resources: Option<MatchResources>,
    ) -> Option<ValidatingAdmissionPolicyBindingSpec> {
        Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(policy_name),
            validation_actions: Some(vec!["Deny".to_owned()]),
            param_ref: Some(param_ref),
            match_resources,
        })
    }
}
k8s_openapi::k8s_if_ge_1_36! {
    fn binding_spec(
        policy_name: String,
        param_ref: ParamRef,
        match_resources: Option<MatchResources>,
    ) -> ValidatingAdmissionPolicyBindingSpec {
        ValidatingAdmissionPolicyBindingSpec {
            policy_name,
            validation_actions: vec!["Deny".to_owned()],
            param_ref: Some(param_ref),
            match_resources,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource_error(value: &str) -> String {
        match value.parse::<GuardedResource>() {
            Err(err) => {
                assert_eq!((err.field, err.value.as_str()), ("resources", value));
                err.rule
            }
            Ok(parsed) => panic!("{value} parsed as {parsed}"),
        }
    }

    #[test]
    fn guarded_resources_are_group_version_resource() {
        let deployments: GuardedResource = "apps/v1/deployments".parse().unwrap();
        assert_eq!(
            deployments,
            GuardedResource::new("apps", "v1", "deployments").unwrap()
        );
        assert_eq!(deployments.to_string(), "apps/v1/deployments");
        for core in ["v1/configmaps", "/v1/configmaps"] {
            let parsed: GuardedResource = core.parse().unwrap();
            assert_eq!(
                (parsed.group.as_str(), parsed.resource.as_str()),
                ("", "configmaps")
            );
        }
        assert!(
            resource_error("apps/v1/deployments/status")
                .starts_with("subresources are not guarded")
        );
        assert!(resource_error("deployments").starts_with("must be group/version/resource"));
        assert!(
            resource_error("apps/v1/Deployments").starts_with("must be group/version/resource")
        );
        assert!(resource_error("apps/*/deployments").starts_with("name each guarded resource"));
        assert!(
            resource_error("coordination.k8s.io/v1/leases").starts_with("Leases cannot be guarded")
        );
        assert!(resource_error("Apps/v1/deployments").starts_with("the group must be"));
    }

    #[test]
    fn invalid_fields_are_named() {
        let field = |policy: FencingPolicy| policy.build().unwrap_err().field;
        let ok =
            FencingPolicy::new("jobs", "my-controller").resource("v1/configmaps".parse().unwrap());
        assert!(ok.build().is_ok());
        assert_eq!(
            field(FencingPolicy::new("jobs", "my-controller")),
            "resources"
        );
        assert_eq!(
            field(FencingPolicy {
                lease_name: "My_Lease".into(),
                ..ok.clone()
            }),
            "lease_name"
        );
        assert_eq!(
            field(FencingPolicy {
                lease_name: "a".repeat(230),
                ..ok.clone()
            }),
            "lease_name"
        );
        assert_eq!(
            field(FencingPolicy {
                lease_namespace: "a.b".into(),
                ..ok.clone()
            }),
            "lease_namespace"
        );
        assert_eq!(field(ok.clone().namespaces(["Team"])), "namespaces");
    }

    #[test]
    fn policy_builds_in_one_call() {
        let configmaps: GuardedResource = "v1/configmaps".parse().unwrap();
        assert_eq!(
            policy(
                "jobs",
                "my-controller",
                std::slice::from_ref(&configmaps),
                Mode::Strict
            ),
            FencingPolicy::new("jobs", "my-controller")
                .resource(configmaps)
                .mode(Mode::Strict)
                .build()
        );
        assert_eq!(
            policy("jobs", "my-controller", &[], Mode::Lenient)
                .unwrap_err()
                .field,
            "resources"
        );
    }

    #[test]
    fn strict_mode_denies_without_the_lease_and_namespaces_scope_the_binding() {
        let base =
            FencingPolicy::new("jobs", "my-controller").resource("v1/configmaps".parse().unwrap());
        let binding =
            |policy: &FencingPolicy| serde_json::to_value(policy.build().unwrap().1).unwrap();
        let lenient = binding(&base);
        assert_eq!(
            lenient["spec"]["paramRef"]["parameterNotFoundAction"],
            "Allow"
        );
        assert_eq!(
            lenient["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
        assert!(lenient["spec"].get("matchResources").is_none());
        let strict = binding(
            &base
                .clone()
                .mode(Mode::Strict)
                .namespaces(["team-a", "team-b"]),
        );
        assert_eq!(
            strict["spec"]["paramRef"]["parameterNotFoundAction"],
            "Deny"
        );
        assert_eq!(
            strict["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"],
            serde_json::json!(["team-a", "team-b"])
        );
        let (policy, _) = base.mode(Mode::Strict).build().unwrap();
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.validations.unwrap().len(),
            4,
            "strict adds the presence check"
        );
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        assert_eq!(
            rules[0].operations,
            Some(vec!["CREATE".into(), "UPDATE".into()])
        );
    }
}
