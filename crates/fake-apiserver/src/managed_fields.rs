//! Field ownership: `metadata.managedFields`, one entry per (manager, operation), as kube-apiserver's field
//! manager keeps them (`staging/src/k8s.io/apimachinery/pkg/util/managedfields/internal/`, over
//! structured-merge-diff). A write by a manager makes it own the fields it changed (an `Update` entry) or
//! the fields of its applied configuration (an `Apply` entry, see [`crate::apply`]); the others lose them.
//!
//! Fields are tracked at the leaves: every value that is not an object (a string, a number, a list, which
//! kube-apiserver treats as atomic for Leases and for custom resources without a schema), each named by its
//! path of keys. `fieldsV1` lists those leaves (`{"f:spec": {"f:holderIdentity": {}}}`), without the `"."`
//! entries kube-apiserver adds for the maps a manager set as such.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::resource::{OBJECT_META_FIELDS, ResourceType};

/// A field: its path of keys from the object's root (`["spec", "holderIdentity"]`).
pub(crate) type Path = Vec<String>;

/// The fields of `ObjectMeta` a manager can own; the others are the server's, which kube-apiserver's field
/// manager strips (`stripMeta`), with `apiVersion` and `kind`, before it compares or records fields.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "ownerReferences", "finalizers"];

/// Whether a manager can own the metadata field `field` (one of [`OWNED_METADATA`], or one `ObjectMeta`
/// does not have).
fn ownable_metadata(field: &str) -> bool {
    OWNED_METADATA.contains(&field) || !OBJECT_META_FIELDS.contains(&field)
}

/// Every leaf field of `object` that a manager can own, with its value; a `null` is no value.
pub(crate) fn leaves(object: &Value) -> BTreeMap<Path, &Value> {
    let mut out = BTreeMap::new();
    if let Some(map) = object.as_object() {
        for (key, value) in map {
            if key == "apiVersion" || key == "kind" {
                continue;
            }
            let mut path = vec![key.clone()];
            if key == "metadata" {
                if let Some(meta) = value.as_object() {
                    for (field, value) in meta {
                        if ownable_metadata(field) {
                            path.push(field.clone());
                            collect(value, &mut path, &mut out);
                            path.pop();
                        }
                    }
                }
                continue;
            }
            collect(value, &mut path, &mut out);
        }
    }
    out
}

fn collect<'a>(value: &'a Value, path: &mut Path, out: &mut BTreeMap<Path, &'a Value>) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                path.push(key.clone());
                collect(value, path, out);
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone(), value);
        }
    }
}

/// A path as kube-apiserver prints it in conflicts: `.spec.holderIdentity`.
pub(crate) fn display(path: &Path) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// The value at `path` in `object`, if any.
pub(crate) fn get<'a>(object: &'a Value, path: &Path) -> Option<&'a Value> {
    path.iter()
        .try_fold(object, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// Sets `path` in `object` to `value`, making the objects on the way.
pub(crate) fn set(object: &mut Value, path: &Path, value: Value) {
    let mut node = object;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map.entry(key.clone()).or_insert(Value::Null);
    }
    *node = value;
}

/// Removes `path` from `object`, and the objects it leaves empty.
pub(crate) fn remove(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(parent) = parents
        .iter()
        .try_fold(&mut *object, |v, k| v.get_mut(k))
        .and_then(Value::as_object_mut)
    {
        parent.remove(last);
        if parent.is_empty() && !parents.is_empty() {
            remove(object, parents);
        }
    }
}

/// The operation of a managedFields entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    Apply,
    Update,
}

/// One managedFields entry: who, how, and the fields owned.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) manager: String,
    pub(crate) operation: Operation,
    api_version: String,
    time: Value,
    pub(crate) fields: BTreeSet<Path>,
}

impl Entry {
    /// The manager as kube-apiserver names it in a conflict (`printManager` in
    /// `staging/src/k8s.io/apimachinery/pkg/util/managedfields/internal/conflict.go`): `"mgr"` for an
    /// applier, `"mgr" using group/version` for an updater.
    pub(crate) fn printed(&self) -> String {
        match self.operation {
            Operation::Apply => format!("{:?}", self.manager),
            Operation::Update => format!("{:?} using {}", self.manager, self.api_version),
        }
    }

    fn is(&self, manager: &str, operation: Operation) -> bool {
        self.manager == manager && self.operation == operation
    }
}

/// The managedFields of an object, decoded (entries that do not decode are dropped).
#[derive(Debug, Clone, Default)]
pub(crate) struct ManagedFields {
    pub(crate) entries: Vec<Entry>,
}

impl ManagedFields {
    /// Decodes `metadata.managedFields` of `object`.
    pub(crate) fn of(object: &Value) -> Self {
        let entries = object
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|entries| entries.iter().filter_map(decode_entry).collect())
            .unwrap_or_default();
        Self { entries }
    }

    /// Writes them as `metadata.managedFields` of `object` (removed when empty).
    pub(crate) fn store(&self, object: &mut Value) {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(encode_entry)
            .collect();
        if entries.is_empty() {
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
        } else {
            object["metadata"]["managedFields"] = Value::Array(entries);
        }
    }

    /// The entry of (`manager`, `operation`), made (owning nothing) if missing.
    pub(crate) fn entry(
        &mut self,
        manager: &str,
        operation: Operation,
        rt: &ResourceType,
    ) -> &mut Entry {
        let index = match self.entries.iter().position(|e| e.is(manager, operation)) {
            Some(index) => index,
            None => {
                self.entries.push(Entry {
                    manager: manager.to_owned(),
                    operation,
                    api_version: rt.api_version(),
                    time: Value::Null,
                    fields: BTreeSet::new(),
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[index]
    }

    /// Whether an entry other than (`manager`, `operation`) owns `path`.
    pub(crate) fn owned_by_other(&self, path: &Path, manager: &str, operation: Operation) -> bool {
        self.entries
            .iter()
            .any(|e| !e.is(manager, operation) && e.fields.contains(path))
    }

    /// Forgets the fields that `object` no longer has.
    pub(crate) fn retain_present(&mut self, object: &Value) {
        let present = leaves(object);
        for entry in &mut self.entries {
            entry.fields.retain(|p| present.contains_key(p));
        }
    }
}

/// Records an `Update` by `manager` that turns `before` (`None`: a create) into `object`: it owns the fields
/// it set or changed, which every other manager loses; fields removed are owned by nobody. The managedFields
/// `object` carries are the base (a client may rewrite them, as on kube-apiserver); when it carries none,
/// `before`'s. Nothing changes when no field did, so a write that changes nothing still writes nothing.
pub(crate) fn track_update(
    manager: &str,
    rt: &ResourceType,
    before: Option<&Value>,
    object: &mut Value,
) {
    let mut managed = match (object.pointer("/metadata/managedFields"), before) {
        (Some(Value::Array(_)), _) | (_, None) => ManagedFields::of(object),
        (_, Some(before)) => ManagedFields::of(before),
    };
    // An object emptied by removals (a release nulling every field of `spec`) was not set by the writer.
    let set_by_writer = |path: &Path, value: &Value| match before.and_then(|b| get(b, path)) {
        Some(old) => {
            old != value && !(value.as_object().is_some_and(Map::is_empty) && old.is_object())
        }
        None => true,
    };
    let changed: BTreeSet<Path> = leaves(object)
        .into_iter()
        .filter(|(path, value)| set_by_writer(path, value))
        .map(|(path, _)| path)
        .collect();
    if !changed.is_empty() {
        for entry in &mut managed.entries {
            if !entry.is(manager, Operation::Update) {
                entry.fields.retain(|p| !changed.contains(p));
            }
        }
        let entry = managed.entry(manager, Operation::Update, rt);
        entry.fields.extend(changed);
        entry.time = json!(now());
    }
    managed.retain_present(object);
    managed.store(object);
}

/// Marks `entry` as written now.
pub(crate) fn touch(entry: &mut Entry) {
    entry.time = json!(now());
}

/// The manager of a write that names none (`fieldManager` absent): the `User-Agent` up to its first `/`, as
/// kube-apiserver's `prefixFromUserAgent` (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go`).
pub(crate) fn manager_from_user_agent(user_agent: &str) -> &str {
    user_agent.split('/').next().unwrap_or_default()
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn decode_entry(entry: &Value) -> Option<Entry> {
    let operation = match entry.get("operation")?.as_str()? {
        "Apply" => Operation::Apply,
        "Update" => Operation::Update,
        _ => return None,
    };
    let mut fields = BTreeSet::new();
    decode_fields(entry.get("fieldsV1")?, &mut Vec::new(), &mut fields);
    Some(Entry {
        manager: entry.get("manager")?.as_str()?.to_owned(),
        operation,
        api_version: entry
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        time: entry.get("time").cloned().unwrap_or(Value::Null),
        fields,
    })
}

/// `{"f:spec": {"f:holderIdentity": {}}}` -> `[["spec", "holderIdentity"]]`.
fn decode_fields(node: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(map) = node.as_object() else { return };
    let children: Vec<_> = map
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("f:").map(|k| (k, v)))
        .collect();
    if children.is_empty() && !path.is_empty() {
        out.insert(path.clone());
    }
    for (key, child) in children {
        path.push(key.to_owned());
        decode_fields(child, path, out);
        path.pop();
    }
}

fn encode_entry(entry: &Entry) -> Value {
    let mut fields = Value::Object(Map::new());
    for path in &entry.fields {
        let prefixed: Path = path.iter().map(|k| format!("f:{k}")).collect();
        set(&mut fields, &prefixed, json!({}));
    }
    json!({
        "manager": entry.manager,
        "operation": match entry.operation {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        },
        "apiVersion": entry.api_version,
        "time": entry.time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_fields_round_trip_through_fields_v1() {
        let rt = ResourceType::lease();
        let mut object = json!({"metadata": {"name": "a", "labels": {"x": "y"}},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}});
        track_update("mgr", &rt, None, &mut object);
        let entry = &object["metadata"]["managedFields"][0];
        assert_eq!(entry["manager"], "mgr");
        assert_eq!(entry["operation"], "Update");
        assert_eq!(entry["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}},
                "f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
        );
        let decoded = ManagedFields::of(&object);
        assert_eq!(decoded.entries[0].fields.len(), 3);
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_other_managers() {
        let rt = ResourceType::lease();
        let mut object = json!({"metadata": {"name": "a"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}});
        track_update("first", &rt, None, &mut object);
        let before = object.clone();
        object["spec"]["holderIdentity"] = json!("pod-b");
        track_update("second", &rt, Some(&before), &mut object);
        let managed = ManagedFields::of(&object);
        let owners = |field: &str| -> Vec<String> {
            managed
                .entries
                .iter()
                .filter(|e| {
                    e.fields
                        .contains(&vec!["spec".to_owned(), field.to_owned()])
                })
                .map(|e| e.manager.clone())
                .collect()
        };
        assert_eq!(owners("holderIdentity"), ["second"]);
        assert_eq!(owners("leaseDurationSeconds"), ["first"]);
        // Nothing changed: nothing recorded.
        let same = object.clone();
        track_update("third", &rt, Some(&same), &mut object);
        assert_eq!(object, same);
    }
}
