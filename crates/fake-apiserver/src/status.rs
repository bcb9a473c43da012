//! `metav1.Status` errors with kube-apiserver's codes, reasons and messages.

use serde_json::{Value, json};

use crate::resource::ResourceType;

/// An API error, answered as a `Status` object (`kind: Status`, `status: Failure`).
///
/// The messages are kube-apiserver's (`k8s.io/apimachinery/pkg/api/errors`), e.g.
/// `leases.coordination.k8s.io "x" not found`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code (404, 409, 422, ...).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when kube-apiserver fills them.
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    /// 404 `NotFound`: `<plural>.<group> "<name>" not found`.
    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        )
        .with_details(rt, name)
    }

    /// 404 `NotFound` for a namespace that does not exist: `namespaces "<name>" not found`.
    pub(crate) fn namespace_not_found(name: &str) -> Self {
        let mut err = Self::new(404, "NotFound", format!("namespaces \"{name}\" not found"));
        err.details = Some(json!({"name": name, "kind": "namespaces"}));
        err
    }

    /// 404 for a path that names no resource.
    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 `AlreadyExists`: `<plural>.<group> "<name>" already exists`.
    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        )
        .with_details(rt, name)
    }

    /// 409 `Conflict`: the optimistic-concurrency failure of an update with a stale resourceVersion.
    pub(crate) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply \
                 your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_details(rt, name)
    }

    /// 422 `Invalid`: `<Kind>.<group> "<name>" is invalid: <field>: <detail>`.
    pub(crate) fn invalid(rt: &ResourceType, name: &str, causes: &[String]) -> Self {
        let message = format!(
            "{}.{} \"{name}\" is invalid: {}",
            rt.kind,
            rt.group,
            causes.join(", ")
        );
        Self::new(422, "Invalid", message).with_details(rt, name)
    }

    /// A write refused by a ValidatingAdmissionPolicy: `admission.NewForbidden`'s
    /// `<plural>.<group> "<name>" is forbidden: <message>`, with the validation's reason (`Invalid`, 422,
    /// unless it names another) and the message as the one cause, as kube-apiserver's dispatcher answers
    /// (`staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating/dispatcher.go`).
    pub(crate) fn denied_by_policy(
        rt: &ResourceType,
        name: &str,
        reason: &'static str,
        code: u16,
        message: &str,
    ) -> Self {
        let mut err = Self::new(
            code,
            reason,
            format!("{} \"{name}\" is forbidden: {message}", rt.qualified()),
        )
        .with_details(rt, name);
        if let Some(details) = &mut err.details {
            details["causes"] = json!([{ "message": message }]);
        }
        err
    }

    /// 400 `BadRequest`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 `MethodNotAllowed`.
    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 413 `RequestEntityTooLarge`.
    pub(crate) fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "the request entity is too large (limit is 3145728 bytes)",
        )
    }

    /// 415 `UnsupportedMediaType` for a PATCH content type we do not implement.
    pub(crate) fn unsupported_patch(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types \
                 include: application/merge-patch+json, application/strategic-merge-patch+json, \
                 application/apply-patch+yaml"
            ),
        )
    }

    /// 410 `Expired`: a watch from a resourceVersion older than `floor`, the oldest one the kept history can
    /// resume from.
    pub(crate) fn expired(requested: u64, floor: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({floor})"),
        )
    }

    /// An injected fault: 403 `Forbidden`, 429 `TooManyRequests`, 500 `InternalError` or 503
    /// `ServiceUnavailable`.
    pub(crate) fn injected(code: u16) -> Self {
        match code {
            429 => Self::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            403 => Self::new(
                403,
                "Forbidden",
                "forbidden: the request is denied by fault injection (as RBAC would deny it)",
            ),
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            _ => Self::new(
                500,
                "InternalError",
                "Internal error occurred: injected fault",
            ),
        }
    }

    /// 500 `InternalError` with a message.
    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 409 `Conflict` of a server-side apply that would change fields other managers own (`force` not
    /// set), as `NewConflictError` in
    /// `staging/src/k8s.io/apimachinery/pkg/util/managedfields/internal/conflict.go` words it: one conflict,
    /// `Apply failed with 1 conflict: conflict with "mgr": .spec.holderIdentity`; more, grouped by manager:
    /// `Apply failed with 2 conflicts: conflicts with "mgr":\n- .spec.a\n- .spec.b`. `conflicts` are
    /// (manager as printed, field path) pairs, in path order.
    pub(crate) fn apply_conflict(conflicts: &[(String, String)]) -> Self {
        let message = match conflicts {
            [(manager, path)] => {
                format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
            }
            _ => {
                let mut managers: Vec<&String> = conflicts.iter().map(|(m, _)| m).collect();
                managers.sort();
                managers.dedup();
                let lines: Vec<String> = managers
                    .iter()
                    .flat_map(|manager| {
                        std::iter::once(format!("conflicts with {manager}:")).chain(
                            conflicts
                                .iter()
                                .filter(|(m, _)| m == *manager)
                                .map(|(_, path)| format!("- {path}")),
                        )
                    })
                    .collect();
                format!(
                    "Apply failed with {} conflicts: {}",
                    conflicts.len(),
                    lines.join("\n")
                )
            }
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, path)| {
                json!({"type": "FieldManagerConflict", "message": format!("conflict with {manager}"),
                    "field": path})
            })
            .collect();
        let mut err = Self::new(409, "Conflict", message);
        err.details = Some(json!({ "causes": causes }));
        err
    }

    /// 422 `Invalid` of the options of a PATCH (`fieldManager` missing for an apply, `force` on another
    /// patch), as kube-apiserver's `ValidatePatchOptions`
    /// (`staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation/validation.go`) reports it:
    /// `PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch`.
    pub(crate) fn invalid_patch_options(cause: &str) -> Self {
        let mut err = Self::new(
            422,
            "Invalid",
            format!("PatchOptions.meta.k8s.io \"\" is invalid: {cause}"),
        );
        err.details = Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions"}));
        err
    }

    /// 409 `Conflict` of a storage precondition: `Operation cannot be fulfilled on <plural>.<group> "<name>":
    /// <storage error>` (`InterpretUpdateError` in `staging/src/k8s.io/apiserver/pkg/storage/errors`).
    pub(crate) fn storage_conflict(rt: &ResourceType, name: &str, storage_error: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {storage_error}",
                rt.qualified()
            ),
        )
        .with_details(rt, name)
    }

    /// 500 with etcd's error for a write over its request limit, passed through without a reason.
    pub(crate) fn etcd_request_too_large() -> Self {
        Self::new(500, "", "etcdserver: request is too large")
    }

    /// 403 `Forbidden` of a create in a namespace being deleted, as `NamespaceLifecycle` words it:
    /// `leases.coordination.k8s.io "x" is forbidden: unable to create new content in namespace ns because it
    /// is being terminated`, with a `NamespaceTerminating` cause.
    pub(crate) fn namespace_terminating(rt: &ResourceType, name: &str, namespace: &str) -> Self {
        let mut err = Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because \
                 it is being terminated",
                rt.qualified()
            ),
        );
        err.details = Some(
            json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": [{
                "reason": "NamespaceTerminating",
                "message": format!("namespace {namespace} is being terminated"),
                "field": "metadata.namespace",
            }]}),
        );
        err
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // An error kube-apiserver got from below (etcd) has no reason, which it omits.
        if self.reason.is_empty()
            && let Some(map) = status.as_object_mut()
        {
            map.remove("reason");
        }
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if self.code == 429 {
            status["details"] = json!({"retryAfterSeconds": 1});
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
