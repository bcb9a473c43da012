//! [`Denied`]: a request that RBAC refused (kube-apiserver's 403 Forbidden), told so that a user can act on
//! it: the verb, the resource, the object and the grant that is missing.

use std::fmt;

/// A request that RBAC refused (403 Forbidden). Retrying cannot help, so it is reported, not retried.
///
/// Reads like `RBAC denies reading lease default/x (verb get, resource leases.coordination.k8s.io): <the
/// API server's message> (grant get, create, update, list, watch on coordination.k8s.io leases)`.
///
/// # Examples
///
/// ```
/// use leaderelection::Denied;
///
/// let denied = Denied {
///     verb: "create",
///     resource: "leasecandidates.coordination.k8s.io",
///     object: "leasecandidate default/pod-a".into(),
///     message: "forbidden".into(),
///     grant: "create on coordination.k8s.io leasecandidates",
/// };
/// assert!(denied.to_string().starts_with("RBAC denies creating leasecandidate default/pod-a (verb create"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The verb refused, as RBAC names it (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: &'static str,
    /// The resource, `plural.group` (`leases.coordination.k8s.io`).
    pub resource: &'static str,
    /// The object: kind and `namespace/name` (`lease default/x`).
    pub object: String,
    /// The API server's message.
    pub message: String,
    /// What the ServiceAccount needs: verbs on a group's resource.
    pub grant: &'static str,
}

// === impl Denied ===

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let doing = match self.verb {
            "get" => "reading",
            "list" => "listing",
            "watch" => "watching",
            "create" => "creating",
            "update" => "updating",
            "patch" => "patching",
            "delete" => "deleting",
            other => other,
        };
        write!(
            f,
            "RBAC denies {doing} {} (verb {}, resource {}): {} (grant {})",
            self.object, self.verb, self.resource, self.message, self.grant
        )
    }
}

impl std::error::Error for Denied {}
