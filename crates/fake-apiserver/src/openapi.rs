//! OpenAPI v3 documents for the kinds served (`/openapi/v3` and `/openapi/v3/apis/<group>/<version>`), as
//! kubectl reads them to validate, to compute `apply` patches and to `explain`.
//!
//! kubectl 1.27+ reads the index `/openapi/v3`, then the group-version document it points to. In the PATCH
//! operation of a kind it looks for the `fieldValidation` query parameter (then it leaves validation to the
//! server, `cli-runtime pkg/resource/query_param_verifier_v3.go`) and for the `strategic-merge-patch+json`
//! content type (then `apply` computes a strategic merge patch from the schema whose
//! `x-kubernetes-group-version-kind` names the kind, `kubectl pkg/cmd/apply/patcher.go`). The documents are
//! minimal: the paths and verbs served, Lease with its real schema, custom resources with a permissive one
//! (`x-kubernetes-preserve-unknown-fields`), as kube-apiserver publishes a CRD without a schema.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::resource::ResourceType;

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const OWNER_REFERENCE: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference";
const LEASE_SPEC: &str = "io.k8s.api.coordination.v1.LeaseSpec";

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an \
    object. Servers should convert recognized schemas to the latest internal value, and may reject \
    unrecognized values. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents. \
    Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. \
    More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// The index `/openapi/v3`: one entry per group-version served, each pointing to its document by a URL that
/// carries the document's hash (so a client's cache never serves a stale one).
pub(crate) fn index(resources: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for rt in resources {
        let path = format!("apis/{}/{}", rt.group, rt.version);
        if paths.contains_key(&path) {
            continue;
        }
        let document = group_version(resources, &rt.group, &rt.version);
        let mut hasher = DefaultHasher::new();
        document.to_string().hash(&mut hasher);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", hasher.finish())}),
        );
    }
    json!({ "paths": paths })
}

/// The document of one group-version, or `None` if no kind of it is served.
pub(crate) fn group_version_document(
    resources: &[ResourceType],
    group: &str,
    version: &str,
) -> Option<Value> {
    resources
        .iter()
        .any(|rt| rt.group == group && rt.version == version)
        .then(|| group_version(resources, group, version))
}

fn group_version(resources: &[ResourceType], group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = meta_schemas();
    for rt in resources
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
    {
        add_paths(rt, &mut paths);
        add_schemas(rt, &mut schemas);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The schema name kube-apiserver gives a kind: `io.k8s.api.coordination.v1.Lease` for Leases, the reversed
/// group for custom resources (`com.example.claims.v1.Claim`).
fn schema_name(rt: &ResourceType, kind: &str) -> String {
    if rt.is_lease() {
        format!("io.k8s.api.coordination.{}.{kind}", rt.version)
    } else {
        let group: Vec<&str> = rt.group.split('.').rev().collect();
        format!("{}.{}.{kind}", group.join("."), rt.version)
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn content(schema: &Value, types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| ((*t).to_owned(), json!({ "schema": schema })))
        .collect();
    Value::Object(content)
}

fn query_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "uniqueItems": true}})
}

/// The paths and operations served for `rt`, as kube-apiserver names them.
fn add_paths(rt: &ResourceType, paths: &mut Map<String, Value>) {
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let object = reference(&schema_name(rt, &rt.kind));
    let list = reference(&schema_name(rt, &format!("{}List", rt.kind)));
    let json_types = ["application/json"];
    // What the PATCH handler accepts (no JSON patch).
    let patch_types: &[&str] = if rt.is_lease() {
        &[
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ]
    } else {
        &[
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ]
    };
    let dry_run = query_parameter(
        "dryRun",
        "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry \
         run stages will be processed",
    );
    let field_manager = query_parameter(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    );
    let field_validation = query_parameter(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) \
         containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
    );
    let write_parameters = json!([dry_run, field_manager, field_validation]);
    let op = |action: &str, id: &str, response: &Value, body: Option<&[&str]>| {
        let mut op = json!({
            "operationId": format!("{id}{}", rt.kind),
            "responses": {"200": {"description": "OK", "content": content(response, &json_types)}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if let Some(types) = body {
            let schema = if action == "patch" {
                reference(PATCH)
            } else {
                object.clone()
            };
            op["requestBody"] = json!({"required": true, "content": content(&schema, types)});
            op["parameters"] = write_parameters.clone();
        }
        op
    };
    let namespace = path_parameter(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let name = path_parameter("name", &format!("name of the {}", rt.kind));
    let base = format!("/apis/{}/{}", rt.group, rt.version);
    let (collection, scope) = if rt.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural),
            "Namespaced",
        )
    } else {
        (format!("{base}/{}", rt.plural), "")
    };
    let status = reference(STATUS);
    let mut collection_item = json!({
        "get": op("list", &format!("list{scope}"), &list, None),
        "post": op("post", &format!("create{scope}"), &object, Some(&json_types)),
    });
    let mut item = json!({
        "get": op("get", &format!("read{scope}"), &object, None),
        "put": op("put", &format!("replace{scope}"), &object, Some(&json_types)),
        "patch": op("patch", &format!("patch{scope}"), &object, Some(patch_types)),
        "delete": op("delete", &format!("delete{scope}"), &status, None),
        "parameters": [name],
    });
    if rt.namespaced {
        collection_item["parameters"] = json!([namespace]);
        item["parameters"] = json!([name, namespace]);
        paths.insert(
            format!("{base}/{}", rt.plural),
            json!({"get": op("list", "listForAllNamespaces", &list, None)}),
        );
    }
    if rt.status_subresource {
        let mut status_item = json!({
            "get": op("get", &format!("read{scope}Status"), &object, None),
            "put": op("put", &format!("replace{scope}Status"), &object, Some(&json_types)),
            "patch": op("patch", &format!("patch{scope}Status"), &object, Some(patch_types)),
        });
        status_item["parameters"] = item["parameters"].clone();
        paths.insert(format!("{collection}/{{name}}/status"), status_item);
    }
    paths.insert(format!("{collection}/{{name}}"), item);
    paths.insert(collection, collection_item);
}

/// The schemas of `rt` and its list.
fn add_schemas(rt: &ResourceType, schemas: &mut Map<String, Value>) {
    let gvk = |kind: &str| json!([{"group": rt.group, "version": rt.version, "kind": kind}]);
    let type_meta = json!({
        "apiVersion": {"type": "string", "description": API_VERSION_DESCRIPTION},
        "kind": {"type": "string", "description": KIND_DESCRIPTION},
    });
    let mut object = if rt.is_lease() {
        schemas.insert(LEASE_SPEC.into(), lease_spec());
        json!({
            "description": "Lease defines a lease concept.",
            "type": "object",
            "properties": {
                "metadata": {"description": "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                             "allOf": [reference(OBJECT_META)], "default": {}},
                "spec": {"description": "spec contains the specification of the Lease. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#spec-and-status",
                         "allOf": [reference(LEASE_SPEC)], "default": {}},
            },
        })
    } else {
        json!({
            "type": "object",
            "properties": {
                "metadata": {"description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                             "allOf": [reference(OBJECT_META)]},
            },
            "x-kubernetes-preserve-unknown-fields": true,
        })
    };
    object["properties"]
        .as_object_mut()
        .into_iter()
        .for_each(|p| p.extend(type_meta.as_object().cloned().unwrap_or_default()));
    object["x-kubernetes-group-version-kind"] = gvk(&rt.kind);
    let list_kind = format!("{}List", rt.kind);
    let mut list = json!({
        "description": format!("{list_kind} is a list of {} objects.", rt.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"description": "items is a list of objects.", "type": "array",
                      "items": {"allOf": [reference(&schema_name(rt, &rt.kind))], "default": {}}},
            "metadata": {"description": "Standard list metadata.", "allOf": [reference(LIST_META)], "default": {}},
        },
        "x-kubernetes-group-version-kind": gvk(&list_kind),
    });
    list["properties"]
        .as_object_mut()
        .into_iter()
        .for_each(|p| p.extend(type_meta.as_object().cloned().unwrap_or_default()));
    schemas.insert(schema_name(rt, &rt.kind), object);
    schemas.insert(schema_name(rt, &list_kind), list);
}

/// `LeaseSpec`, as kube-apiserver publishes it (descriptions from `k8s.io/api/coordination/v1/types.go`).
fn lease_spec() -> Value {
    json!({
        "description": "LeaseSpec is a specification of a Lease.",
        "type": "object",
        "properties": {
            "acquireTime": {"description": "acquireTime is a time when the current lease was acquired.",
                            "allOf": [reference(MICRO_TIME)]},
            "holderIdentity": {"description": "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
                               "type": "string"},
            "leaseDurationSeconds": {"description": "leaseDurationSeconds is a duration that candidates for a lease need to wait to force acquire it. This is measured against the time of last observed renewTime.",
                                     "type": "integer", "format": "int32"},
            "leaseTransitions": {"description": "leaseTransitions is the number of transitions of a lease between holders.",
                                 "type": "integer", "format": "int32"},
            "preferredHolder": {"description": "PreferredHolder signals to a lease holder that the lease has a more optimal holder and should be given up. This field can only be set if Strategy is also set.",
                                "type": "string"},
            "renewTime": {"description": "renewTime is a time when the current holder of a lease has last updated the lease.",
                          "allOf": [reference(MICRO_TIME)]},
            "strategy": {"description": "Strategy indicates the strategy for picking the leader for coordinated leader election. If the field is not specified, there is no active coordination for this lease. (Alpha) Using this field requires the CoordinatedLeaderElection feature gate to be enabled.",
                         "type": "string"},
        },
    })
}

/// The `meta.k8s.io/v1` schemas every document refers to, with the fields the server keeps.
fn meta_schemas() -> Map<String, Value> {
    let string = |description: &str| json!({"type": "string", "description": description});
    let map = |description: &str| {
        json!({"type": "object", "description": description,
               "additionalProperties": {"type": "string", "default": ""}})
    };
    let object_meta = json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "annotations": map("Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."),
            "creationTimestamp": {"description": "CreationTimestamp is a timestamp representing the server time when this object was created. Populated by the system. Read-only.",
                                  "allOf": [reference(TIME)]},
            "deletionTimestamp": {"description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted.",
                                  "allOf": [reference(TIME)]},
            "finalizers": {"description": "Must be empty before the object is deleted from the registry.",
                           "type": "array", "items": {"type": "string", "default": ""},
                           "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
            "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "generation": {"description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only.",
                           "type": "integer", "format": "int64"},
            "labels": map("Map of string keys and values that can be used to organize and categorize (scope and select) objects."),
            "name": string("Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Cannot be updated."),
            "namespace": string("Namespace defines the space within which each name must be unique. Cannot be updated."),
            "ownerReferences": {"description": "List of objects depended by this object.",
                                "type": "array", "items": {"allOf": [reference(OWNER_REFERENCE)], "default": {}},
                                "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map",
                                "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "resourceVersion": string("An opaque value that represents the internal version of this object that can be used by clients to determine when objects have changed. Populated by the system. Read-only."),
            "uid": string("UID is the unique in time and space value for this object. Populated by the system. Read-only."),
        },
    });
    let owner_reference = json!({
        "description": "OwnerReference contains enough information to let you identify an owning object.",
        "type": "object",
        "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {
            "apiVersion": string("API version of the referent."),
            "blockOwnerDeletion": {"type": "boolean", "description": "If true, AND if the owner has the \"foregroundDeletion\" finalizer, then the owner cannot be deleted from the key-value store until this reference is removed."},
            "controller": {"type": "boolean", "description": "If true, this reference points to the managing controller."},
            "kind": string("Kind of the referent."),
            "name": string("Name of the referent."),
            "uid": string("UID of the referent."),
        },
        "x-kubernetes-map-type": "atomic",
    });
    let list_meta = json!({
        "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects.",
        "type": "object",
        "properties": {
            "continue": string("continue may be set if the user set a limit on the number of items returned."),
            "resourceVersion": string("String that identifies the server's internal version of this object that can be used by clients to determine when objects have changed."),
        },
    });
    let status = json!({
        "description": "Status is a return value for calls that don't return other objects.",
        "type": "object",
        "properties": {
            "apiVersion": string(API_VERSION_DESCRIPTION),
            "code": {"type": "integer", "format": "int32", "description": "Suggested HTTP return code for this status, 0 if not set."},
            "details": {"type": "object", "description": "Extended data associated with the reason.", "x-kubernetes-preserve-unknown-fields": true},
            "kind": string(KIND_DESCRIPTION),
            "message": string("A human-readable description of the status of this operation."),
            "metadata": {"description": "Standard list metadata.", "allOf": [reference(LIST_META)], "default": {}},
            "reason": string("A machine-readable description of why this operation is in the \"Failure\" status."),
            "status": string("Status of the operation. One of: \"Success\" or \"Failure\"."),
        },
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
    });
    [
        (OBJECT_META, object_meta),
        (OWNER_REFERENCE, owner_reference),
        (LIST_META, list_meta),
        (STATUS, status),
        (
            PATCH,
            json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
                   "type": "object"}),
        ),
        (
            TIME,
            json!({"description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON.",
                   "type": "string", "format": "date-time"}),
        ),
        (
            MICRO_TIME,
            json!({"description": "MicroTime is version of Time with microsecond level precision.",
                   "type": "string", "format": "date-time"}),
        ),
    ]
    .into_iter()
    .map(|(name, schema)| (name.to_owned(), schema))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> Vec<ResourceType> {
        vec![
            ResourceType::lease(),
            ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true),
        ]
    }

    /// Every `$ref` in `value` names a schema of `schemas`.
    fn check_refs(value: &Value, schemas: &Map<String, Value>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let name = r.strip_prefix("#/components/schemas/").unwrap();
                    assert!(schemas.contains_key(name), "dangling $ref {r}");
                }
                map.values().for_each(|v| check_refs(v, schemas));
            }
            Value::Array(items) => items.iter().for_each(|v| check_refs(v, schemas)),
            _ => {}
        }
    }

    #[test]
    fn index_points_to_each_group_version() {
        let index = index(&resources());
        let paths = index["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 2);
        let url = paths["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(
            url.starts_with("/openapi/v3/apis/coordination.k8s.io/v1?hash="),
            "{url}"
        );
        assert!(paths.contains_key("apis/claims.example.com/v1"));
    }

    #[test]
    fn lease_patch_operation_names_the_kind_and_field_validation() {
        let doc = group_version_document(&resources(), "coordination.k8s.io", "v1").unwrap();
        let patch = &doc["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]
            ["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "coordination.k8s.io", "version": "v1", "kind": "Lease"})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let lease = &schemas["io.k8s.api.coordination.v1.Lease"];
        assert_eq!(lease["x-kubernetes-group-version-kind"][0]["kind"], "Lease");
        assert_eq!(
            schemas[LEASE_SPEC]["properties"]["leaseDurationSeconds"]["format"],
            "int32"
        );
        assert!(!schemas.contains_key("com.example.claims.v1.Claim"));
        check_refs(&doc, schemas);
    }

    #[test]
    fn custom_resource_schema_is_permissive() {
        let doc = group_version_document(&resources(), "claims.example.com", "v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let claim = &schemas["com.example.claims.v1.Claim"];
        assert_eq!(claim["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            claim["x-kubernetes-group-version-kind"],
            json!([{"group": "claims.example.com", "version": "v1", "kind": "Claim"}])
        );
        assert!(
            doc["paths"]["/apis/claims.example.com/v1/namespaces/{namespace}/claims/{name}/status"]
                ["patch"]
                .is_object()
        );
        check_refs(&doc, schemas);
        assert_eq!(
            group_version_document(&resources(), "claims.example.com", "v2"),
            None
        );
    }
}
