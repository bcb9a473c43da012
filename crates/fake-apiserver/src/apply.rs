//! Server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml`, `?fieldManager=` (required)
//! and `?force=true`, as kube-apiserver serves it (`applyPatcher` in
//! `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go`, over the field manager of
//! `staging/src/k8s.io/apimachinery/pkg/util/managedfields/`).
//!
//! The body is the manager's configuration: the fields it wants set. A missing object is created from it
//! (201). Otherwise each field of it whose value differs from the stored one and that another manager owns is
//! a conflict: 409 `Conflict` unless `force`, which takes the field from them. The fields the manager applied
//! before and leaves out now are removed, unless another manager owns them too. The manager's `Apply` entry in
//! `managedFields` then lists exactly the fields applied. A `metadata.resourceVersion` in the body is a
//! precondition (409 `Conflict` when stale), as kubert sends it.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::managed_fields::{self, ManagedFields, Operation, leaves};
use crate::status::ApiError;
use crate::store::{Part, Store, Target};

/// The patch type of server-side apply.
pub(crate) const CONTENT_TYPE: &str = "application/apply-patch+yaml";

/// Decodes an apply body: YAML (JSON being YAML, what kube-rs and kubectl send).
pub(crate) fn decode(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// The checked options of an apply: its manager and whether it forces conflicts.
pub(crate) fn options<'a>(
    field_manager: Option<&'a String>,
    force: Option<&String>,
) -> Result<(&'a str, bool), ApiError> {
    let manager = field_manager
        .map(String::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_patch_options(
                "fieldManager: Required value: is required for apply patch",
            )
        })?;
    let force = match force.map(String::as_str) {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "failed to parse \"force\": invalid boolean value \"{other}\""
            )));
        }
    };
    Ok((manager, force))
}

/// Applies `config` for `manager` to the object `t` names, under the store's lock; `check` validates the
/// object to be written (decoding rules, strict fields, the type's validation). Answers the written object
/// and 201 when it was created, 200 otherwise.
pub(crate) fn apply(
    store: &mut Store,
    t: &Target<'_>,
    config: &Value,
    (manager, force): (&str, bool),
    part: Part,
    check: impl FnOnce(&Value) -> Result<(), ApiError>,
) -> Result<(StatusCode, Arc<Value>), ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "Object 'Kind' is missing in the request body",
        ));
    }
    let current = store.get(t.resource, t.namespace, t.name);
    let precondition = config
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty());
    let current_rv = current
        .as_deref()
        .and_then(|c| c.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str);
    if let Some(rv) = precondition
        && current.is_some()
        && current_rv != Some(rv)
    {
        return Err(ApiError::conflict(t.rt, t.name));
    }
    let mut object = match &current {
        Some(current) => (**current).clone(),
        None => json!({"metadata": {"name": t.name}}),
    };
    let before = object.clone();
    let mut managed = ManagedFields::of(&object);
    let applied = leaves(config);

    let mut conflicts = Vec::new();
    for (path, value) in &applied {
        if managed_fields::get(&object, path) == Some(*value) {
            continue;
        }
        for entry in &mut managed.entries {
            if (entry.manager == manager && entry.operation == Operation::Apply)
                || !entry.fields.contains(path)
            {
                continue;
            }
            conflicts.push((entry.printed(), managed_fields::display(path)));
            if force {
                entry.fields.remove(path);
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflict(&conflicts));
    }

    let previously = managed
        .entry(manager, Operation::Apply, t.rt)
        .fields
        .clone();
    for path in previously.iter().filter(|p| !applied.contains_key(*p)) {
        if !managed.owned_by_other(path, manager, Operation::Apply) {
            managed_fields::remove(&mut object, path);
        }
    }
    for (path, value) in &applied {
        managed_fields::set(&mut object, path, (*value).clone());
    }
    let fields = applied.into_keys().collect();
    let entry = managed.entry(manager, Operation::Apply, t.rt);
    if entry.fields != fields || object != before {
        entry.fields = fields;
        managed_fields::touch(entry);
    }
    managed.retain_present(&object);
    managed.store(&mut object);
    for key in ["apiVersion", "kind"] {
        if let Some(v) = config.get(key) {
            object[key] = v.clone();
        }
    }
    check(&object)?;
    match current_rv {
        Some(rv) => {
            object["metadata"]["resourceVersion"] = json!(rv);
            Ok((StatusCode::OK, store.update(t, object, part)?))
        }
        None => Ok((StatusCode::CREATED, store.create(t, object)?)),
    }
}
