//! What kube-apiserver's storage layer refuses before or instead of a write: the UID precondition of an
//! update (`checkPreconditions` in `staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`) and etcd's
//! request size limit.

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Target;

/// etcd's default `--max-request-bytes`: 1.5 MiB. A bigger write fails in etcd with `etcdserver: request is
/// too large`.
pub(crate) const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The etcd key kube-apiserver stores an object under: `/registry/<prefix>/<namespace>/<name>`, the prefix
/// being the resource for built-in types (`leases`, `leasecandidates`, `events`) and `<group>/<plural>` for
/// custom resources.
fn key(t: &Target<'_>) -> String {
    let prefix = if matches!(t.rt.group.as_str(), "coordination.k8s.io" | "events.k8s.io") {
        t.rt.plural.clone()
    } else {
        format!("{}/{}", t.rt.group, t.rt.plural)
    };
    if t.rt.namespaced {
        format!("/registry/{prefix}/{}/{}", t.namespace, t.name)
    } else {
        format!("/registry/{prefix}/{}", t.name)
    }
}

/// 409 `Conflict` when an update carries a `metadata.uid` other than the stored object's (`""` when there
/// is none: a PUT with the uid of a deleted object, recreated or not). kube-apiserver makes the uid of the
/// object sent a precondition (`defaultUpdatedObjectInfo.Preconditions` in
/// `staging/src/k8s.io/apiserver/pkg/registry/rest/update.go`), checked by `GuaranteedUpdate` against the
/// stored object, or an empty one when it is missing, before it looks at the resourceVersion or creates.
pub(crate) fn check_uid(
    t: &Target<'_>,
    object: &Value,
    current: Option<&Value>,
) -> Result<(), ApiError> {
    let uid_of = |o: &Value| {
        o.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let given = uid_of(object);
    let stored = current.map(uid_of).unwrap_or_default();
    if given.is_empty() || given == stored {
        return Ok(());
    }
    Err(ApiError::storage_conflict(
        t.rt,
        t.name,
        &format!(
            "StorageError: invalid object, Code: 4, Key: {}, ResourceVersion: 0, AdditionalErrorMsg: \
             Precondition failed: UID in precondition: {given}, UID in object meta: {stored}",
            key(t)
        ),
    ))
}

/// 500 `etcdserver: request is too large` for an object whose encoding exceeds etcd's request limit
/// ([`ETCD_MAX_REQUEST_BYTES`]; the JSON size stands for the protobuf one). kube-apiserver passes etcd's
/// error through as a Status without a reason (`ErrorToAPIStatus` in
/// `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/status.go`). A dry run never
/// reaches etcd.
pub(crate) fn check_size(t: &Target<'_>, object: &Value) -> Result<(), ApiError> {
    if t.dry_run {
        return Ok(());
    }
    let size = serde_json::to_vec(object).map_or(0, |b| b.len()) + key(t).len();
    if size > ETCD_MAX_REQUEST_BYTES {
        return Err(ApiError::etcd_request_too_large());
    }
    Ok(())
}
