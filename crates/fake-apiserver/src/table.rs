//! The `meta.k8s.io` `Table` form of get and list answers, which kubectl asks for to print its columns.
//!
//! kubectl's `get` sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,
//! application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json`; kube-apiserver then answers a `Table`
//! whose columns come from the type's printer: for Leases `printLease` in kube-apiserver's
//! `pkg/printers/internalversion/printers.go` (Name, Holder, Age); for custom resources Name and their
//! `additionalPrinterColumns` ([`ResourceType::printer_columns`]), without them the CRD default (Name,
//! Age; apiextensions-apiserver `pkg/registry/customresource/tableconvertor/tableconvertor.go`).

use http::HeaderMap;
use serde_json::{Map, Value, json};

use crate::resource::ResourceType;

/// `ObjectMeta.name`'s description, which kube-apiserver puts on the Name column.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, \
    although some resources may allow a client to request the generation of an appropriate name automatically. \
    Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More \
    info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// `ObjectMeta.creationTimestamp`'s description, on the Age column.
const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object \
    was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may \
    not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. \
    Null for lists. More info: \
    https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// `LeaseSpec.holderIdentity`'s description, on the Holder column.
const HOLDER_DESCRIPTION: &str = "holderIdentity contains the identity of the holder of a current lease. If \
    Coordinated Leader Election is used, the holder identity must be equal to the elected \
    LeaseCandidate.metadata.name field.";

/// A request for the Table form: which `meta.k8s.io` version, and what each row's `object` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRequest {
    /// `v1` or `v1beta1` (the `apiVersion` of the answer is `meta.k8s.io/<version>`).
    version: &'static str,
    /// The `includeObject` query parameter: `None`, `Metadata` (the default) or `Object`.
    include_object: IncludeObject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl TableRequest {
    /// The Table form, if the `Accept` header's first media type the server can produce is a `Table`;
    /// `None` for plain JSON (or no `Accept`). Media types are taken in the order the client lists them, as
    /// kubectl lists them in its order of preference.
    pub(crate) fn from_request(headers: &HeaderMap, include_object: Option<&str>) -> Option<Self> {
        let accept = headers.get(http::header::ACCEPT)?.to_str().ok()?;
        for media in accept.split(',') {
            let mut parts = media.split(';').map(str::trim);
            let essence = parts.next().unwrap_or_default();
            if !matches!(essence, "application/json" | "application/*" | "*/*") {
                continue;
            }
            let (mut as_kind, mut group, mut version) = (None, None, None);
            for param in parts {
                match param.split_once('=') {
                    Some(("as", v)) => as_kind = Some(v),
                    Some(("g", v)) => group = Some(v),
                    Some(("v", v)) => version = Some(v),
                    _ => {}
                }
            }
            match (as_kind, group, version) {
                (None, _, _) => return None,
                (Some("Table"), Some("meta.k8s.io"), Some(v @ ("v1" | "v1beta1"))) => {
                    return Some(Self {
                        version: if v == "v1" { "v1" } else { "v1beta1" },
                        include_object: match include_object {
                            Some("None") => IncludeObject::None,
                            Some("Object") => IncludeObject::Object,
                            _ => IncludeObject::Metadata,
                        },
                    });
                }
                // Another form (PartialObjectMetadata, ...) not served: try the next media type.
                _ => {}
            }
        }
        None
    }

    /// The Table of a get answer (one row) or a list answer (one row per item).
    pub(crate) fn table(&self, rt: &ResourceType, answer: &Value, now: jiff::Timestamp) -> Value {
        let (objects, resource_version): (Vec<&Value>, Option<&Value>) =
            match answer.get("items").and_then(Value::as_array) {
                Some(items) => (
                    items.iter().collect(),
                    answer.pointer("/metadata/resourceVersion"),
                ),
                None => (vec![answer], answer.pointer("/metadata/resourceVersion")),
            };
        let mut metadata = Map::new();
        if let Some(rv) = resource_version {
            metadata.insert("resourceVersion".into(), rv.clone());
        }
        let rows: Vec<Value> = objects
            .into_iter()
            .map(|object| {
                let mut row = json!({"cells": cells(rt, object, now)});
                match self.include_object {
                    IncludeObject::None => {}
                    IncludeObject::Object => row["object"] = object.clone(),
                    IncludeObject::Metadata => {
                        row["object"] = json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": format!("meta.k8s.io/{}", self.version),
                            "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        });
                    }
                }
                row
            })
            .collect();
        json!({
            "kind": "Table",
            "apiVersion": format!("meta.k8s.io/{}", self.version),
            "metadata": metadata,
            "columnDefinitions": column_definitions(rt),
            "rows": rows,
        })
    }
}

/// The columns of `rt`'s Table.
fn column_definitions(rt: &ResourceType) -> Value {
    let column = |name: &str, kind: &str, format: &str, description: &str| json!({"name": name, "type": kind, "format": format, "description": description, "priority": 0});
    if rt.is_lease() {
        json!([
            column("Name", "string", "name", NAME_DESCRIPTION),
            column("Holder", "string", "", HOLDER_DESCRIPTION),
            column("Age", "string", "", AGE_DESCRIPTION),
        ])
    } else if !rt.printer_columns.is_empty() {
        // The CRD's additionalPrinterColumns after Name (apiextensions-apiserver's tableconvertor).
        let mut columns = vec![column("Name", "string", "name", NAME_DESCRIPTION)];
        columns.extend(
            rt.printer_columns
                .iter()
                .map(|c| column(&c.name, &c.type_, "", &c.description)),
        );
        Value::Array(columns)
    } else {
        json!([
            column("Name", "string", "name", NAME_DESCRIPTION),
            column("Age", "date", "", AGE_DESCRIPTION),
        ])
    }
}

/// One row's cells, in the order of [`column_definitions`].
fn cells(rt: &ResourceType, object: &Value, now: jiff::Timestamp) -> Value {
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or_else(|| json!(""));
    let age = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |created| human_duration(now.duration_since(created).as_secs()),
        );
    if rt.is_lease() {
        let holder = object
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or_default();
        json!([name, holder, age])
    } else if !rt.printer_columns.is_empty() {
        // A missing field is a null cell (kubectl prints `<none>`); a date is printed as an age.
        let mut cells = vec![name];
        cells.extend(rt.printer_columns.iter().map(|c| {
            let value = object.pointer(&c.json_path.replace('.', "/"));
            match (c.type_.as_str(), value) {
                ("date", Some(Value::String(t))) => {
                    t.parse::<jiff::Timestamp>().map_or(Value::Null, |at| {
                        json!(human_duration(now.duration_since(at).as_secs()))
                    })
                }
                (_, Some(v)) => v.clone(),
                (_, None) => Value::Null,
            }
        }));
        Value::Array(cells)
    } else {
        json!([name, age])
    }
}

/// An age as kubectl prints it (`5s`, `3m20s`, `2d4h`): `HumanDuration` of apimachinery's
/// `pkg/util/duration/duration.go`, from a number of seconds.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, value.parse().unwrap());
        headers
    }

    const KUBECTL_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,\
        application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

    #[test]
    fn table_is_answered_when_kubectl_asks_for_it() {
        let request = TableRequest::from_request(&accept(KUBECTL_ACCEPT), None).unwrap();
        assert_eq!(request.version, "v1");
        assert_eq!(request.include_object, IncludeObject::Metadata);
        let request = TableRequest::from_request(&accept(KUBECTL_ACCEPT), Some("Object")).unwrap();
        assert_eq!(request.include_object, IncludeObject::Object);
        assert_eq!(
            TableRequest::from_request(&accept("application/json"), None),
            None
        );
        assert_eq!(TableRequest::from_request(&HeaderMap::new(), None), None);
        // A form we do not serve falls through to the next media type.
        let request = TableRequest::from_request(
            &accept("application/json;as=Foo;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            None,
        )
        .unwrap();
        assert_eq!(request.version, "v1beta1");
    }

    #[test]
    fn lease_rows_have_name_holder_and_age() {
        let request = TableRequest::from_request(&accept(KUBECTL_ACCEPT), None).unwrap();
        let now: jiff::Timestamp = "2026-05-01T12:03:20Z".parse().unwrap();
        let list = json!({"kind": "LeaseList", "metadata": {"resourceVersion": "7"}, "items": [
            {"metadata": {"name": "a", "namespace": "ns", "creationTimestamp": "2026-05-01T12:00:00Z"},
             "spec": {"holderIdentity": "pod-a"}},
            {"metadata": {"name": "b", "namespace": "ns", "creationTimestamp": "2026-05-01T12:03:15Z"},
             "spec": {}},
        ]});
        let table = request.table(&ResourceType::lease(), &list, now);
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Holder", "Age"]);
        assert_eq!(table["rows"][0]["cells"], json!(["a", "pod-a", "3m20s"]));
        assert_eq!(table["rows"][1]["cells"], json!(["b", "", "5s"]));
        assert_eq!(
            table["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": "2026-05-01T12:00:00Z"}})
        );
    }

    #[test]
    fn custom_resource_rows_have_its_printer_columns() {
        let request = TableRequest::from_request(&accept(KUBECTL_ACCEPT), Some("None")).unwrap();
        let mut rt = ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true);
        let column = |name: &str, type_: &str, json_path: &str| crate::resource::PrinterColumn {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            description: String::new(),
        };
        rt.printer_columns = vec![
            column("Phase", "string", ".status.phase"),
            column("Host", "string", ".status.hostRef"),
            column("Age", "date", ".metadata.creationTimestamp"),
        ];
        let now: jiff::Timestamp = "2026-05-03T12:00:00Z".parse().unwrap();
        let list = json!({"metadata": {"resourceVersion": "9"}, "items": [
            {"metadata": {"name": "bound", "creationTimestamp": "2026-05-03T11:59:00Z"},
             "status": {"phase": "Bound", "hostRef": "h-1"}},
            {"metadata": {"name": "new", "creationTimestamp": "2026-05-03T11:59:55Z"}},
        ]});
        let table = request.table(&rt, &list, now);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Phase", "Host", "Age"]);
        assert_eq!(table["columnDefinitions"][3]["type"], "date");
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["bound", "Bound", "h-1", "60s"])
        );
        assert_eq!(table["rows"][1]["cells"], json!(["new", null, null, "5s"]));
    }

    #[test]
    fn custom_resource_rows_have_name_and_age() {
        let request = TableRequest::from_request(&accept(KUBECTL_ACCEPT), Some("None")).unwrap();
        let rt = ResourceType::custom("claims.example.com", "v1", "Claim", "claims", true);
        let now: jiff::Timestamp = "2026-05-03T12:00:00Z".parse().unwrap();
        let object = json!({"metadata": {"name": "c", "resourceVersion": "3",
                                          "creationTimestamp": "2026-05-01T10:00:00Z"}});
        let table = request.table(&rt, &object, now);
        assert_eq!(table["metadata"]["resourceVersion"], "3");
        assert_eq!(table["columnDefinitions"][1]["name"], "Age");
        assert_eq!(table["rows"], json!([{"cells": ["c", "2d2h"]}]));
    }

    #[test]
    fn ages_are_printed_as_kubectl_prints_them() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 59, "3h"),
            (3 * 3600 + 60 * 7, "3h7m"),
            (8 * 3600, "8h"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, printed) in cases {
            assert_eq!(human_duration(seconds), printed, "{seconds} s");
        }
    }
}
