//! ValidatingAdmissionPolicies: `admissionregistration.k8s.io/v1` policies and their bindings, evaluated
//! with CEL on every create, update, patch and delete of the resources they match, before anything is
//! stored.
//!
//! What kube-apiserver's `ValidatingAdmissionPolicy` plugin does
//! (`staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating/dispatcher.go` and `validator.go`),
//! on the subset the repository's `docs/fake-apiserver.md` lists. Policies, bindings and params are read
//! from the store under the same lock as the write they judge: a refused write changes nothing and emits no
//! watch event, and a param is never older than the last write to it (kube-apiserver reads params from an
//! informer, which may lag).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program};
use serde_json::{Value, json};

use crate::resource::ResourceType;
use crate::status::ApiError;
use crate::store::Store;

const GROUP: &str = "admissionregistration.k8s.io";
const POLICIES: &str = "validatingadmissionpolicies";
const BINDINGS: &str = "validatingadmissionpolicybindings";
/// Compiled expressions kept; past it the cache starts over (policies are few, their expressions fewer).
const PROGRAM_CACHE_LIMIT: usize = 1024;

// === impl ResourceType ===

impl ResourceType {
    /// The built-in `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicy`, cluster-scoped: CEL
    /// validations of the writes to the resources it matches (GA since Kubernetes 1.30).
    pub fn validating_admission_policy() -> Self {
        Self {
            group: GROUP.into(),
            version: "v1".into(),
            kind: "ValidatingAdmissionPolicy".into(),
            plural: POLICIES.into(),
            namespaced: false,
            status_subresource: false,
            short_names: Vec::new(),
            printer_columns: Vec::new(),
        }
    }

    /// The built-in `admissionregistration.k8s.io/v1` `ValidatingAdmissionPolicyBinding`, cluster-scoped:
    /// puts a policy in force, with its params (`paramRef`) and what a failed validation does
    /// (`validationActions`).
    pub fn validating_admission_policy_binding() -> Self {
        Self {
            group: GROUP.into(),
            version: "v1".into(),
            kind: "ValidatingAdmissionPolicyBinding".into(),
            plural: BINDINGS.into(),
            namespaced: false,
            status_subresource: false,
            short_names: Vec::new(),
            printer_columns: Vec::new(),
        }
    }
}

/// The admission operation of a write, as `request.operation` names it (a patch is an `UPDATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// One write, as admission sees it.
#[derive(Debug)]
pub(crate) struct AdmissionRequest<'a> {
    /// Index of the resource type written.
    pub(crate) resource: usize,
    /// `Some("status")` for a write to the `/status` subresource.
    pub(crate) subresource: Option<&'a str>,
    /// Namespace, or `""` at cluster scope.
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) operation: Operation,
    /// The object as it would be stored (`None` for a delete).
    pub(crate) object: Option<&'a Value>,
    /// The stored object (`None` for a create).
    pub(crate) old_object: Option<&'a Value>,
    pub(crate) dry_run: bool,
}

/// The policies' evaluator: the resource types served (to match rules and find `paramKind`) and the
/// compiled expressions.
pub(crate) struct Admission {
    resources: Vec<ResourceType>,
    env: Arc<Env>,
    programs: Mutex<HashMap<String, Result<Arc<Program>, String>>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("resources", &self.resources.len())
            .finish_non_exhaustive()
    }
}

impl Default for Admission {
    /// Serves no policy type: admits every write.
    fn default() -> Self {
        Self::new(&[])
    }
}

/// What a failed validation or a configuration error answers.
#[derive(Debug)]
struct Denial {
    binding: Option<String>,
    message: String,
    reason: &'static str,
    code: u16,
}

impl Denial {
    fn invalid(binding: Option<&str>, message: String) -> Self {
        Self {
            binding: binding.map(str::to_owned),
            message,
            reason: "Invalid",
            code: 422,
        }
    }
}

/// Whose match rules: a policy's `matchConstraints` or a binding's `matchResources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Policy,
    Binding,
}

/// `spec.failurePolicy`: what an evaluation or configuration error does (default `Fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailurePolicy {
    Fail,
    Ignore,
}

// === impl Admission ===

impl Admission {
    pub(crate) fn new(resources: &[ResourceType]) -> Self {
        // kube-apiserver's CEL environment has the strings and lists extension libraries too.
        let mut env = Env::stdlib();
        for (name, result) in [
            ("strings", env.add_extension(cel::extensions::strings)),
            ("lists", env.add_extension(cel::extensions::lists)),
        ] {
            if let Err(err) = result {
                tracing::warn!(%err, "CEL extension library {name} not loaded");
            }
        }
        Self {
            resources: resources.to_vec(),
            env: Arc::new(env),
            programs: Mutex::new(HashMap::new()),
        }
    }

    fn index(&self, plural: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|rt| rt.group == GROUP && rt.plural == plural)
    }

    /// Admits or refuses one write: `Ok` when every binding of every matching policy admits it, else
    /// kube-apiserver's answer for the first denial, a 422 `Invalid` (or the validation's `reason`)
    /// `<plural>.<group> "<name>" is forbidden: ValidatingAdmissionPolicy '<policy>' with binding '<binding>'
    /// denied request: <message>`. A write of a policy gets its expressions compiled (422 when one does not
    /// compile); policies and bindings are never matched themselves, as kube-apiserver exempts the admission
    /// configuration.
    pub(crate) fn admit(&self, store: &Store, req: &AdmissionRequest<'_>) -> Result<(), ApiError> {
        let Some(rt) = self.resources.get(req.resource) else {
            return Ok(());
        };
        if rt.group == GROUP {
            if let (Some(object), true) = (req.object, rt.plural == POLICIES) {
                self.check_policy(rt, req.name, object)?;
            }
            return Ok(());
        }
        let (Some(policies), Some(bindings)) = (self.index(POLICIES), self.index(BINDINGS)) else {
            return Ok(());
        };
        for policy in store.list(policies, None) {
            if let Some(denial) = self.evaluate_policy(store, bindings, policy, rt, req) {
                let name = policy
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let message = match &denial.binding {
                    Some(binding) => format!(
                        "ValidatingAdmissionPolicy '{name}' with binding '{binding}' denied request: {}",
                        denial.message
                    ),
                    None => format!(
                        "ValidatingAdmissionPolicy '{name}' denied request: {}",
                        denial.message
                    ),
                };
                return Err(ApiError::denied_by_policy(
                    rt,
                    req.name,
                    denial.reason,
                    denial.code,
                    &message,
                ));
            }
        }
        Ok(())
    }

    /// 422 when an expression of the policy does not compile, naming its field, as kube-apiserver's
    /// validation of a ValidatingAdmissionPolicy.
    fn check_policy(&self, rt: &ResourceType, name: &str, policy: &Value) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        for (list, fields) in [
            ("validations", &["expression", "messageExpression"][..]),
            ("matchConditions", &["expression"][..]),
            ("variables", &["expression"][..]),
        ] {
            let items = policy
                .pointer(&format!("/spec/{list}"))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                for field in fields {
                    if let Some(expression) = item.get(*field).and_then(Value::as_str)
                        && let Err(err) = self.program(expression)
                    {
                        causes.push(format!(
                            "spec.{list}[{i}].{field}: Invalid value: {}: compilation failed: {err}",
                            Value::from(expression)
                        ));
                    }
                }
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(rt, name, &causes))
        }
    }

    /// The compiled `expression`, or why it does not compile.
    fn program(&self, expression: &str) -> Result<Arc<Program>, String> {
        let mut programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(program) = programs.get(expression) {
            return program.clone();
        }
        if programs.len() >= PROGRAM_CACHE_LIMIT {
            programs.clear();
        }
        let program = self
            .env
            .compile(expression)
            .map(Arc::new)
            .map_err(|e| e.to_string().replace('\n', "; "));
        programs.insert(expression.to_owned(), program.clone());
        program
    }

    /// The first denial of `policy`'s bindings for this write, or `None` when they admit it (or the policy
    /// does not match it).
    fn evaluate_policy(
        &self,
        store: &Store,
        bindings: usize,
        policy: &Value,
        rt: &ResourceType,
        req: &AdmissionRequest<'_>,
    ) -> Option<Denial> {
        let spec = policy.get("spec")?;
        let policy_name = policy.pointer("/metadata/name").and_then(Value::as_str)?;
        if !matches_resources(spec.get("matchConstraints")?, Scope::Policy, rt, req) {
            return None;
        }
        let failure = match spec.get("failurePolicy").and_then(Value::as_str) {
            Some("Ignore") => FailurePolicy::Ignore,
            _ => FailurePolicy::Fail,
        };
        // `addConfigError` of the dispatcher: refuse (Fail) or skip (Ignore).
        let config_error = |binding: Option<&str>, err: String| match failure {
            FailurePolicy::Ignore => None,
            FailurePolicy::Fail => Some(Denial::invalid(
                binding,
                format!(
                    "failed to configure {}: {err}",
                    if binding.is_some() {
                        "binding"
                    } else {
                        "policy"
                    }
                ),
            )),
        };
        let param_kind = match spec.get("paramKind").filter(|p| !p.is_null()) {
            None => None,
            Some(kind) => {
                let api_version = kind
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let kind = kind.get("kind").and_then(Value::as_str).unwrap_or_default();
                match self
                    .resources
                    .iter()
                    .position(|rt| rt.api_version() == api_version && rt.kind == kind)
                {
                    Some(index) => Some(index),
                    None => {
                        return config_error(
                            None,
                            format!(
                                "failed to find resource referenced by paramKind: '{api_version}, Kind={kind}'"
                            ),
                        );
                    }
                }
            }
        };
        for binding in store.list(bindings, None) {
            let Some(binding_name) = binding.pointer("/metadata/name").and_then(Value::as_str)
            else {
                continue;
            };
            if binding.pointer("/spec/policyName").and_then(Value::as_str) != Some(policy_name) {
                continue;
            }
            if let Some(resources) = binding
                .pointer("/spec/matchResources")
                .filter(|m| !m.is_null())
                && !matches_resources(resources, Scope::Binding, rt, req)
            {
                continue;
            }
            let params = match param_kind {
                None => vec![Value::Null],
                Some(index) => match self.params(store, index, binding, req) {
                    Ok(params) => params,
                    Err(err) => match config_error(Some(binding_name), err) {
                        Some(denial) => return Some(denial),
                        None => continue,
                    },
                },
            };
            let deny = binding
                .pointer("/spec/validationActions")
                .and_then(Value::as_array)
                .is_some_and(|actions| actions.iter().any(|a| a == "Deny"));
            for params in &params {
                if let Some(mut denial) = self.validate(spec, failure, rt, req, params)
                    && deny
                {
                    denial.binding = Some(binding_name.to_owned());
                    return Some(denial);
                }
            }
        }
        None
    }

    /// The params a binding names (`paramRef`), read live from the store: by name, or every object of the
    /// kind its `selector` matches, in `paramRef.namespace` (default: the request's, for a namespaced
    /// kind); one null param when the binding has no `paramRef`. `Err` is a configuration error: nothing
    /// found with `parameterNotFoundAction: Deny`, a namespace for a cluster-scoped kind, both or neither of
    /// `name` and `selector` (kube-apiserver's `CollectParams`,
    /// `staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/generic/policy_dispatcher.go`).
    fn params(
        &self,
        store: &Store,
        kind: usize,
        binding: &Value,
        req: &AdmissionRequest<'_>,
    ) -> Result<Vec<Value>, String> {
        // A binding without `paramRef` evaluates the policy once, with null params.
        let Some(param_ref) = binding.pointer("/spec/paramRef").filter(|p| !p.is_null()) else {
            return Ok(vec![Value::Null]);
        };
        let name = param_ref
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let selector = param_ref.get("selector").filter(|s| !s.is_null());
        let namespace = match param_ref.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && !self.resources[kind].namespaced => {
                return Err(
                    "paramRef.namespace must not be provided for a cluster-scoped `paramKind`"
                        .into(),
                );
            }
            _ if !self.resources[kind].namespaced => "",
            Some(ns) if !ns.is_empty() => ns,
            _ if req.namespace.is_empty() => {
                return Err(
                    "cannot use namespaced paramRef in policy binding that matches cluster-scoped resources"
                        .into(),
                );
            }
            _ => req.namespace,
        };
        let params: Vec<Value> = match (name, selector) {
            (Some(_), Some(_)) => {
                return Err("paramRef.name and paramRef.selector are mutually exclusive".into());
            }
            (Some(name), None) => store
                .get(kind, namespace, name)
                .map(|o| (*o).clone())
                .into_iter()
                .collect(),
            (None, Some(_)) => store
                .list(kind, Some(namespace))
                .filter(|o| selector_matches(selector, labels(Some(o))))
                .map(|o| (**o).clone())
                .collect(),
            (None, None) => return Err("one of name or selector must be provided".into()),
        };
        if params.is_empty()
            && param_ref
                .get("parameterNotFoundAction")
                .and_then(Value::as_str)
                == Some("Deny")
        {
            return Err(
                "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
            );
        }
        Ok(params)
    }

    /// One evaluation of a policy's `matchConditions` and `validations` with one param: the first failed
    /// validation (or, with `failurePolicy: Fail`, evaluation error) as a denial.
    fn validate(
        &self,
        spec: &Value,
        failure: FailurePolicy,
        rt: &ResourceType,
        req: &AdmissionRequest<'_>,
        params: &Value,
    ) -> Option<Denial> {
        let mut context = Context::with_env(self.env.clone());
        let object = req.object.cloned().unwrap_or(Value::Null);
        let old_object = req.old_object.cloned().unwrap_or(Value::Null);
        let namespace_object = if rt.namespaced {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": req.namespace,
                "labels": {"kubernetes.io/metadata.name": req.namespace},
            }})
        } else {
            Value::Null
        };
        for (name, value) in [
            ("object", &object),
            ("oldObject", &old_object),
            ("params", params),
            ("request", &request_variable(rt, req)),
            ("namespaceObject", &namespace_object),
        ] {
            context.add_variable_from_value(name, to_cel(value));
        }
        let on_error = |message: String| match failure {
            FailurePolicy::Ignore => None,
            FailurePolicy::Fail => Some(Denial::invalid(None, message)),
        };
        let conditions = spec
            .get("matchConditions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for condition in conditions {
            let expression = condition
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match self.evaluate(&context, expression) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(err) => {
                    let name = condition
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    return on_error(format!("matchCondition '{name}': {err}"));
                }
            }
        }
        // `spec.variables` in order, each seeing those before it (matchConditions see none, as in
        // kube-apiserver). One that fails to evaluate is left out, so an expression that uses it fails:
        // kube-apiserver evaluates variables lazily, when used.
        let mut variables = HashMap::new();
        for variable in spec
            .get("variables")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            context.add_variable_from_value(
                "variables",
                cel::Value::Map(Map::from(variables.clone())),
            );
            let name = variable.get("name").and_then(Value::as_str);
            let expression = variable.get("expression").and_then(Value::as_str);
            if let (Some(name), Some(expression)) = (name, expression)
                && let Ok(value) = self.value(&context, expression)
            {
                variables.insert(Key::from(name.to_owned()), value);
            }
        }
        context.add_variable_from_value("variables", cel::Value::Map(Map::from(variables)));
        let validations = spec
            .get("validations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for validation in validations {
            let expression = validation
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match self.evaluate(&context, expression) {
                Ok(true) => {}
                Ok(false) => {
                    let (reason, code) = match validation.get("reason").and_then(Value::as_str) {
                        Some("Unauthorized") => ("Unauthorized", 401),
                        Some("Forbidden") => ("Forbidden", 403),
                        Some("RequestEntityTooLarge") => ("RequestEntityTooLarge", 413),
                        _ => ("Invalid", 422),
                    };
                    return Some(Denial {
                        binding: None,
                        message: self.message(&context, validation, expression),
                        reason,
                        code,
                    });
                }
                Err(err) => {
                    if let Some(denial) = on_error(err) {
                        return Some(denial);
                    }
                }
            }
        }
        None
    }

    /// Evaluates a boolean expression; `Err` carries kube-apiserver's message for an evaluation error.
    fn evaluate(&self, context: &Context<'_, '_>, expression: &str) -> Result<bool, String> {
        match self.value(context, expression)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "expression '{expression}' resulted in error: {other:?} is not a bool"
            )),
        }
    }

    /// Evaluates an expression; `Err` carries kube-apiserver's message for an evaluation error.
    fn value(&self, context: &Context<'_, '_>, expression: &str) -> Result<cel::Value, String> {
        let program = self
            .program(expression)
            .map_err(|err| format!("compilation failed: {err}"))?;
        program
            .execute(context)
            .map_err(|err| format!("expression '{expression}' resulted in error: {err}"))
    }

    /// A failed validation's message: its `messageExpression` when that gives a non-empty single-line
    /// string, else its `message`, else `failed expression: <expression>` (kube-apiserver's `validator.go`).
    fn message(&self, context: &Context<'_, '_>, validation: &Value, expression: &str) -> String {
        let from_expression = validation
            .get("messageExpression")
            .and_then(Value::as_str)
            .and_then(|e| self.program(e).ok())
            .and_then(|program| match program.execute(context) {
                Ok(cel::Value::String(s)) => Some(s.trim().to_owned()),
                _ => None,
            })
            .filter(|m| !m.is_empty() && !m.contains('\n'));
        from_expression
            .or_else(|| {
                validation
                    .get("message")
                    .and_then(Value::as_str)
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
            })
            .unwrap_or_else(|| format!("failed expression: {}", expression.trim()))
    }
}

/// The `request` variable: the `admission.k8s.io/v1` AdmissionRequest fields a policy reads.
fn request_variable(rt: &ResourceType, req: &AdmissionRequest<'_>) -> Value {
    let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let resource = json!({"group": rt.group, "version": rt.version, "resource": rt.plural});
    let subresource = req.subresource.unwrap_or_default();
    json!({
        "kind": kind,
        "resource": resource,
        "subResource": subresource,
        "requestKind": kind,
        "requestResource": resource,
        "requestSubResource": subresource,
        "name": req.name,
        "namespace": req.namespace,
        "operation": req.operation.as_str(),
        // The fake authenticates nobody.
        "userInfo": {"username": "", "groups": []},
        "dryRun": req.dry_run,
    })
}

/// Whether `request` falls within a policy's `matchConstraints` or a binding's `matchResources`:
/// `resourceRules` (one matches; a binding without any leaves the policy's in force),
/// `excludeResourceRules` (none does), `namespaceSelector` (on the
/// namespace's `kubernetes.io/metadata.name` label, the only one the fake's namespaces have) and
/// `objectSelector` (on the labels of the object or of the stored one).
fn matches_resources(
    m: &Value,
    scope: Scope,
    rt: &ResourceType,
    req: &AdmissionRequest<'_>,
) -> bool {
    let rules = |field: &str| {
        m.get(field)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let namespace_labels = serde_json::Map::from_iter([(
        "kubernetes.io/metadata.name".to_owned(),
        Value::from(req.namespace),
    )]);
    let included = rules("resourceRules");
    ((scope == Scope::Binding && included.is_empty())
        || included.iter().any(|rule| rule_matches(rule, rt, req)))
        && !rules("excludeResourceRules")
            .iter()
            .any(|rule| rule_matches(rule, rt, req))
        && (!rt.namespaced || selector_matches(m.get("namespaceSelector"), Some(&namespace_labels)))
        && (selector_matches(m.get("objectSelector"), labels(req.object))
            || (req.old_object.is_some()
                && selector_matches(m.get("objectSelector"), labels(req.old_object))))
}

/// A `NamedRuleWithOperations`: apiGroups, apiVersions, operations, resources (`plural`, `plural/status`,
/// `*`, `*/*`, `plural/*`, `*/status`), scope and resourceNames.
fn rule_matches(rule: &Value, rt: &ResourceType, req: &AdmissionRequest<'_>) -> bool {
    let list = |field: &str| -> Vec<&str> {
        rule.get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let any = |values: &[&str], value: &str| values.iter().any(|v| *v == "*" || *v == value);
    let resource_matches =
        list("resources")
            .iter()
            .any(|r| match (r.split_once('/'), req.subresource) {
                (None, None) => *r == "*" || *r == rt.plural,
                (Some((resource, sub)), Some(subresource)) => {
                    (resource == "*" || resource == rt.plural) && (sub == "*" || sub == subresource)
                }
                _ => false,
            });
    let scope_matches = match rule.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => rt.namespaced,
        Some("Cluster") => !rt.namespaced,
        _ => true,
    };
    let names = list("resourceNames");
    any(&list("apiGroups"), &rt.group)
        && any(&list("apiVersions"), &rt.version)
        && any(&list("operations"), req.operation.as_str())
        && resource_matches
        && scope_matches
        && (names.is_empty() || names.contains(&req.name))
}

fn labels(object: Option<&Value>) -> Option<&serde_json::Map<String, Value>> {
    object?.pointer("/metadata/labels")?.as_object()
}

/// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions` with `In`, `NotIn`, `Exists`,
/// `DoesNotExist`); an absent or empty selector matches everything.
fn selector_matches(
    selector: Option<&Value>,
    labels: Option<&serde_json::Map<String, Value>>,
) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_null()) else {
        return true;
    };
    let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
    let match_labels = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let match_expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|exprs| {
            exprs.iter().all(|e| {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => label(key).is_some(),
                    Some("DoesNotExist") => label(key).is_none(),
                    _ => false,
                }
            })
        });
    match_labels && match_expressions
}

/// A JSON value as CEL sees an object of a Kubernetes schema: integers are `int` (`uint` only past
/// `i64`), objects are maps with string keys.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => cel::Value::Map(Map::from(
            map.iter()
                .map(|(k, v)| (Key::from(k.clone()), to_cel(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expression: &str, variables: &[(&str, Value)]) -> Result<bool, String> {
        let admission = Admission::default();
        let mut context = Context::with_env(admission.env.clone());
        for (name, value) in variables {
            context.add_variable_from_value(*name, to_cel(value));
        }
        admission.evaluate(&context, expression)
    }

    /// What the fencing policy's expressions need of the CEL implementation.
    #[test]
    fn cel_subset_covers_maps_has_in_int_and_concatenation() {
        let object = json!({"metadata": {"name": "a", "annotations": {"t": "7", "l": "ns/lease"}}});
        let params = json!({"metadata": {"name": "lease", "namespace": "ns"}, "spec": {"leaseTransitions": 7}});
        let vars = [
            ("object", object),
            ("params", params),
            ("oldObject", Value::Null),
        ];
        for (expression, expected) in [
            ("has(object.metadata.annotations)", true),
            ("has(object.metadata.labels)", false),
            ("'t' in object.metadata.annotations", true),
            ("'x' in object.metadata.annotations", false),
            (
                "int(object.metadata.annotations['t']) >= params.spec.leaseTransitions",
                true,
            ),
            (
                "int(object.metadata.annotations['t']) > params.spec.leaseTransitions",
                false,
            ),
            (
                "object.metadata.annotations['l'] == params.metadata.namespace + '/' + params.metadata.name",
                true,
            ),
            ("oldObject == null", true),
            ("object.metadata.annotations['t'].matches('^[0-9]+$')", true),
            (
                "'term ' + string(params.spec.leaseTransitions) == 'term 7'",
                true,
            ),
        ] {
            assert_eq!(eval(expression, &vars), Ok(expected), "{expression}");
        }
        let err = eval("int('x') == 1", &vars).unwrap_err();
        assert!(
            err.starts_with("expression 'int('x') == 1' resulted in error: "),
            "{err}"
        );
        assert!(eval("object.metadata.labels['x'] == 'y'", &vars).is_err());
    }

    #[test]
    fn resource_rules_match_subresources_only_when_named() {
        let rt = ResourceType::custom("example.com", "v1", "Widget", "widgets", true);
        let req = |subresource, operation| AdmissionRequest {
            resource: 0,
            subresource,
            namespace: "ns",
            name: "w",
            operation,
            object: None,
            old_object: None,
            dry_run: false,
        };
        let rule = |resources: Value| {
            json!({"apiGroups": ["example.com"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                   "resources": resources})
        };
        let main = req(None, Operation::Update);
        let status = req(Some("status"), Operation::Update);
        assert!(rule_matches(&rule(json!(["widgets"])), &rt, &main));
        assert!(!rule_matches(&rule(json!(["widgets"])), &rt, &status));
        assert!(rule_matches(&rule(json!(["widgets/status"])), &rt, &status));
        assert!(rule_matches(&rule(json!(["*/*"])), &rt, &status));
        assert!(!rule_matches(&rule(json!(["*"])), &rt, &status));
        assert!(!rule_matches(&rule(json!(["gadgets"])), &rt, &main));
        assert!(!rule_matches(
            &rule(json!(["widgets"])),
            &rt,
            &req(None, Operation::Delete)
        ));
    }

    #[test]
    fn label_selectors_follow_match_labels_and_expressions() {
        let labels = json!({"app": "web", "tier": "front"});
        let labels = labels.as_object();
        let sel = |s: Value| selector_matches(Some(&s), labels);
        assert!(sel(json!({})));
        assert!(sel(json!({"matchLabels": {"app": "web"}})));
        assert!(!sel(json!({"matchLabels": {"app": "db"}})));
        assert!(sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})
        ));
    }
}
