//! Discovery documents (`/version`, `/api`, `/apis`, group and group/version resource lists) and the OpenAPI
//! v3 documents (`/openapi/v3`, see [`crate::openapi`]), as kubectl reads them.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::{Body, error_response, json_response};
use crate::listener::Listener;
use crate::openapi;
use crate::shared::Shared;
use crate::status::ApiError;

/// Discovery documents, as kubectl reads them (legacy, unaggregated discovery).
pub(crate) fn discovery(
    shared: &Shared,
    listener: &Listener,
    segments: &[String],
) -> Response<Body> {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let groups = || {
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for rt in &shared.resources {
            match groups.iter_mut().find(|(g, _)| *g == rt.group) {
                Some((_, versions)) if !versions.contains(&rt.version.as_str()) => {
                    versions.push(&rt.version)
                }
                Some(_) => {}
                None => groups.push((&rt.group, vec![&rt.version])),
            }
        }
        groups
    };
    let group_json = |name: &str, versions: &[&str]| {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
    };
    let body = match seg.as_slice() {
        ["version"] => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
        }),
        ["api"] => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": listener.addr().to_string()}],
        }),
        ["api", "v1"] => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
             "shortNames": ["ns"], "verbs": ["get", "list"]},
        ]}),
        // Namespaces are implicit: every valid name exists (kubectl asks after a 404 inside one), unless
        // the server was built with `existing_namespaces`.
        ["api", "v1", "namespaces"] => {
            let store = shared.store();
            let mut names: Vec<String> = match &shared.namespaces {
                Some(names) => names.clone(),
                None => vec!["default".into(), "kube-system".into()],
            };
            for index in 0..shared.resources.len() {
                for object in store.list(index, None) {
                    if let Some(ns) = object
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                    {
                        names.push(ns.to_owned());
                    }
                }
            }
            names.sort();
            names.dedup();
            json!({"kind": "NamespaceList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": store.resource_version().to_string()},
                   "items": names.iter().map(|n| namespace(n)).collect::<Vec<_>>()})
        }
        ["api", "v1", "namespaces", name] if crate::resource::dns_label_error(name).is_none() => {
            if !shared.namespace_exists(name) {
                return error_response(&ApiError::namespace_not_found(name));
            }
            shared.namespace_object(namespace(name))
        }
        ["apis"] => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": groups().iter().map(|(g, v)| group_json(g, v)).collect::<Vec<_>>(),
        }),
        ["apis", group] => match groups().iter().find(|(g, _)| g == group) {
            Some((g, v)) => {
                let mut body = group_json(g, v);
                body["kind"] = json!("APIGroup");
                body["apiVersion"] = json!("v1");
                body
            }
            None => return error_response(&ApiError::no_route()),
        },
        ["apis", group, version] => {
            let mut resources = Vec::new();
            for rt in shared
                .resources
                .iter()
                .filter(|rt| rt.group == *group && rt.version == *version)
            {
                resources.push(json!({
                    "name": rt.plural, "singularName": rt.kind.to_lowercase(), "namespaced": rt.namespaced,
                    "kind": rt.kind, "shortNames": rt.short_names,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }));
                if rt.status_subresource {
                    resources.push(json!({
                        "name": format!("{}/status", rt.plural), "singularName": "", "namespaced": rt.namespaced,
                        "kind": rt.kind, "verbs": ["get", "patch", "update"],
                    }));
                }
            }
            if resources.is_empty() {
                return error_response(&ApiError::no_route());
            }
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"),
                   "resources": resources})
        }
        ["openapi", "v3"] => openapi::index(&shared.resources),
        ["openapi", "v3", "apis", group, version] => {
            match openapi::group_version_document(&shared.resources, group, version) {
                Some(document) => document,
                None => return error_response(&ApiError::no_route()),
            }
        }
        _ => return error_response(&ApiError::no_route()),
    };
    json_response(StatusCode::OK, &body)
}

fn namespace(name: &str) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}
