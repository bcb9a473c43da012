//! Routing and the REST verbs: discovery, get, list, watch, create, update, patch, delete, `/status`, and
//! the `/fake/` admin routes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::listener::{Body, Faults, Listener};
use crate::resource::ResourceType;
use crate::status::ApiError;
use crate::store::{Part, Target};
use crate::{Shared, watch};

/// kube-apiserver's request body limit (3 MiB).
const BODY_LIMIT: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Route {
    Discovery(Vec<String>),
    Resource {
        index: usize,
        subresource: Option<String>,
    },
    NotFound,
}

/// What a request asks for, as the request log and counters name it.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) verb: String,
    pub(crate) resource: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    route: Route,
}

impl RequestInfo {
    pub(crate) fn parse<B>(shared: &Shared, req: &Request<B>) -> Self {
        let segments: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let query = parse_query(req.uri().query());
        let mut info = Self {
            verb: "discovery".into(),
            resource: req.uri().path().to_owned(),
            namespace: None,
            name: None,
            route: Route::NotFound,
        };
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let rest = match seg.as_slice() {
            ["version"]
            | ["api"]
            | ["api", "v1"]
            | ["api", "v1", "namespaces", ..]
            | ["apis"]
            | ["apis", _]
            | ["apis", _, _] => {
                info.route = Route::Discovery(segments.clone());
                return info;
            }
            ["apis", group, version, rest @ ..] => {
                let (namespace, rest) = match rest {
                    ["namespaces", ns, plural, rest @ ..] => {
                        (Some(*ns), [&[*plural], rest].concat())
                    }
                    _ => (None, rest.to_vec()),
                };
                let Some(index) = shared.resources.iter().position(|rt| {
                    rt.group == *group
                        && rt.version == *version
                        && rest.first() == Some(&rt.plural.as_str())
                        && (rt.namespaced || namespace.is_none())
                }) else {
                    return info;
                };
                info.resource = shared.resources[index].plural.clone();
                info.namespace = namespace.map(str::to_owned);
                (index, rest)
            }
            _ => return info,
        };
        let (index, rest) = rest;
        let collection = rest.len() == 1;
        info.name = rest.get(1).map(|s| (*s).to_owned());
        let subresource = rest.get(2).map(|s| (*s).to_owned());
        if rest.len() > 3
            || (!collection && shared.resources[index].namespaced && info.namespace.is_none())
        {
            return info;
        }
        info.verb = match (req.method(), collection) {
            (&Method::GET, true) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                "watch"
            }
            (&Method::GET, true) => "list",
            (&Method::GET, false) => "get",
            (&Method::POST, true) => "create",
            (&Method::PUT, false) => "update",
            (&Method::PATCH, false) => "patch",
            (&Method::DELETE, false) => "delete",
            (&Method::DELETE, true) => "deletecollection",
            _ => "unsupported",
        }
        .into();
        info.route = Route::Resource { index, subresource };
        info
    }
}

/// A JSON response.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `Status` error response.
pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.to_status(),
    )
}

/// Serves an API request. Returns the response and whether it committed a write.
pub(crate) async fn api(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: Request<hyper::body::Incoming>,
    info: &RequestInfo,
) -> (Response<Body>, bool) {
    let (index, subresource) = match &info.route {
        Route::Discovery(segments) => return (discovery(shared, listener, segments), false),
        Route::NotFound => return (error_response(&ApiError::no_route()), false),
        Route::Resource { index, subresource } => (*index, subresource.clone()),
    };
    match serve_resource(shared, listener, req, info, index, subresource.as_deref()).await {
        Ok((code, body, wrote)) => (json_response(code, &body), wrote),
        Err(Answer::Error(err)) => (error_response(&err), false),
        Err(Answer::Stream(resp)) => (resp, false),
    }
}

/// A response other than a JSON object: an error, or a watch stream.
enum Answer {
    Error(ApiError),
    Stream(Response<Body>),
}

impl From<ApiError> for Answer {
    fn from(err: ApiError) -> Self {
        Self::Error(err)
    }
}

async fn serve_resource(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: Request<hyper::body::Incoming>,
    info: &RequestInfo,
    index: usize,
    subresource: Option<&str>,
) -> Result<(StatusCode, Value, bool), Answer> {
    let rt = &shared.resources[index];
    let query = parse_query(req.uri().query());
    let part = match subresource {
        None => Part::Main,
        Some("status") if rt.status_subresource => Part::Status,
        Some(_) => return Err(ApiError::no_route().into()),
    };
    let namespace = info.namespace.clone().unwrap_or_default();
    let name = info.name.clone().unwrap_or_default();
    let target = Target {
        resource: index,
        rt,
        namespace: &namespace,
        name: &name,
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
    };
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    match info.verb.as_str() {
        "get" => {
            let object = shared
                .store()
                .get(index, &namespace, &name)
                .ok_or_else(|| ApiError::not_found(rt, &name))?;
            Ok((StatusCode::OK, (*object).clone(), false))
        }
        "list" => {
            let selector = Selector::parse(&query)?;
            let store = shared.store();
            let items: Vec<Value> = store
                .list(index, info.namespace.as_deref())
                .filter(|o| selector.matches(o))
                .map(|o| (**o).clone())
                .collect();
            let list = json!({
                "kind": format!("{}List", rt.kind),
                "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": store.resource_version().to_string()},
                "items": items,
            });
            Ok((StatusCode::OK, list, false))
        }
        "watch" => {
            let selector = Selector::parse(&query)?;
            let params = watch::Params {
                resource: index,
                namespace: info.namespace.clone(),
                selector,
                resource_version: match query.get("resourceVersion").map(String::as_str) {
                    None | Some("" | "0") => None,
                    Some(rv) => Some(rv.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version \"{rv}\""))
                    })?),
                },
                timeout: query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse().ok())
                    .map_or(Duration::from_secs(1800), Duration::from_secs),
                bookmarks: query
                    .get("allowWatchBookmarks")
                    .is_some_and(|b| b == "true"),
            };
            Err(Answer::Stream(watch::start(shared, listener, params)))
        }
        "create" if part == Part::Main => {
            let mut object = read_object(req, rt).await?;
            if object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
                && let Some(prefix) = object
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
            {
                let suffix: String = (0..5)
                    .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rand::random_range(0..27)]))
                    .collect();
                object["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            check_namespace(&object, info)?;
            let causes = rt.validate(&object);
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt, &name, &causes).into());
            }
            let target = Target {
                name: &name,
                ..target
            };
            let created = shared.store().create(&target, object)?;
            Ok((StatusCode::CREATED, (*created).clone(), !target.dry_run))
        }
        "update" => {
            let object = read_object(req, rt).await?;
            let body_name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                ))
                .into());
            }
            check_namespace(&object, info)?;
            let causes = rt.validate(&object);
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt, &name, &causes).into());
            }
            let mut store = shared.store();
            let existed = store.get(index, &namespace, &name).is_some();
            let updated = store.update(&target, object, part)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((code, (*updated).clone(), !target.dry_run))
        }
        "patch" => {
            if !matches!(
                content_type.as_str(),
                "application/merge-patch+json" | "application/strategic-merge-patch+json"
            ) {
                return Err(ApiError::unsupported_patch(&content_type).into());
            }
            let patch = read_json(req).await?;
            let validate = |object: &Value| {
                rt.decode_check(object).map_err(ApiError::bad_request)?;
                let causes = rt.validate(object);
                if causes.is_empty() {
                    Ok(())
                } else {
                    Err(ApiError::invalid(rt, &name, &causes))
                }
            };
            let patched = shared.store().patch(&target, &patch, part, validate)?;
            Ok((StatusCode::OK, (*patched).clone(), !target.dry_run))
        }
        "delete" if part == Part::Main => {
            let options = read_json(req).await.unwrap_or(Value::Null);
            let precondition = options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let deleted = shared.store().delete(&target, precondition)?;
            let status = json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": rt.group,
                    "kind": rt.plural,
                    "uid": deleted.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            });
            Ok((StatusCode::OK, status, !target.dry_run))
        }
        other => Err(ApiError::method_not_allowed(other).into()),
    }
}

fn check_namespace(object: &Value, info: &RequestInfo) -> Result<(), ApiError> {
    match (
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str),
        &info.namespace,
    ) {
        (Some(body), Some(url)) if !body.is_empty() && body != url => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

async fn read_json(req: Request<hyper::body::Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|_| ApiError::too_large())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// Reads a whole object of type `rt`: JSON, the right kind, and the types the decoder enforces.
async fn read_object(
    req: Request<hyper::body::Incoming>,
    rt: &ResourceType,
) -> Result<Value, ApiError> {
    let object = read_json(req).await?;
    rt.decode_check(&object).map_err(ApiError::bad_request)?;
    if let Some(kind) = object.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            object
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            rt.api_version()
        )));
    }
    Ok(object)
}

/// Discovery documents, as kubectl reads them (legacy, unaggregated discovery).
fn discovery(shared: &Shared, listener: &Listener, segments: &[String]) -> Response<Body> {
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
        // Namespaces are implicit: every valid name exists (kubectl asks after a 404 inside one).
        ["api", "v1", "namespaces"] => {
            let store = shared.store();
            let mut names: Vec<String> = vec!["default".into(), "kube-system".into()];
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
            namespace(name)
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
        _ => return error_response(&ApiError::no_route()),
    };
    json_response(StatusCode::OK, &body)
}

fn namespace(name: &str) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]},
           "status": {"phase": "Active"}})
}

/// The `/fake/` admin routes (never faulted).
pub(crate) async fn admin(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let seg: Vec<&str> = path.iter().map(String::as_str).collect();
    let listener_json = |l: &Listener| json!({"id": l.id(), "url": l.url(), "faults": l.faults()});
    let method = req.method().clone();
    match (method, seg.as_slice()) {
        (Method::GET, ["fake", "listeners"]) => {
            let listeners: Vec<Value> = shared.listeners().iter().map(listener_json).collect();
            json_response(StatusCode::OK, &json!(listeners))
        }
        (Method::POST, ["fake", "listeners"]) => {
            match Shared::add_listener(shared, std::net::SocketAddr::from(([127, 0, 0, 1], 0))) {
                Ok(l) => json_response(StatusCode::CREATED, &listener_json(&l)),
                Err(e) => error_response(&ApiError::internal(e)),
            }
        }
        (method, ["fake", "listeners", id, "faults"]) => {
            let Some(listener) = id.parse().ok().and_then(|id| shared.listener(id)) else {
                return error_response(&ApiError::no_route());
            };
            if method == Method::PUT {
                let faults = match read_json(req).await.and_then(|v| {
                    serde_json::from_value::<Faults>(v)
                        .map_err(|e| ApiError::bad_request(e.to_string()))
                }) {
                    Ok(f) => f,
                    Err(e) => return error_response(&e),
                };
                if let Err(e) = faults.validate() {
                    return error_response(&ApiError::bad_request(e.to_string()));
                }
                listener.set_faults(faults);
            }
            json_response(StatusCode::OK, &json!(listener.faults()))
        }
        (Method::GET, ["fake", "counts"]) => json_response(StatusCode::OK, &json!(shared.counts())),
        (Method::DELETE, ["fake", "counts"]) => {
            shared.reset_stats();
            json_response(StatusCode::OK, &json!([]))
        }
        (Method::GET, ["fake", "requests"]) => {
            let log: Vec<_> = shared.stats().log.iter().cloned().collect();
            json_response(StatusCode::OK, &json!(log))
        }
        _ => error_response(&ApiError::no_route()),
    }
}

/// `fieldSelector` (`metadata.name`, `metadata.namespace`) and `labelSelector` (equality and existence).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    Field {
        path: &'static str,
        value: String,
        equal: bool,
    },
    Label {
        key: String,
        value: Option<String>,
        equal: bool,
    },
}

impl Selector {
    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in query
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.is_empty())
        {
            let (key, value, equal) = split_term(term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ))
            })?;
            let path = match key {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            terms.push(Term::Field {
                path,
                value: value.to_owned(),
                equal,
            });
        }
        for term in query
            .get("labelSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.is_empty())
        {
            let term = term.trim();
            if let Some((key, value, equal)) = split_term(term) {
                terms.push(Term::Label {
                    key: key.to_owned(),
                    value: Some(value.to_owned()),
                    equal,
                });
            } else if let Some(key) = term.strip_prefix('!') {
                terms.push(Term::Label {
                    key: key.trim().to_owned(),
                    value: None,
                    equal: false,
                });
            } else if !term.contains([' ', '(', ')']) {
                terms.push(Term::Label {
                    key: term.to_owned(),
                    value: None,
                    equal: true,
                });
            } else {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: set-based label selectors are not supported: {term}"
                )));
            }
        }
        Ok(Self { terms })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Field { path, value, equal } => {
                (object
                    .pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    == value)
                    == *equal
            }
            Term::Label { key, value, equal } => {
                let label = object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(key))
                    .and_then(Value::as_str);
                match value {
                    Some(value) => (label == Some(value.as_str())) == *equal,
                    None => label.is_some() == *equal,
                }
            }
        })
    }
}

/// `k=v`, `k==v` or `k!=v` as (key, value, equal).
fn split_term(term: &str) -> Option<(&str, &str, bool)> {
    if let Some((k, v)) = term.split_once("!=") {
        return Some((k.trim(), v.trim(), false));
    }
    let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
    Some((k.trim(), v.trim(), true))
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::dns_subdomain_error;

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query(Some(
            "fieldSelector=metadata.name%3Dmy-lease&watch=true&x=a+b",
        ));
        assert_eq!(q["fieldSelector"], "metadata.name=my-lease");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
    }

    #[test]
    fn selectors_filter_by_name_and_labels() {
        let q = parse_query(Some(
            "fieldSelector=metadata.name%3Da&labelSelector=app%3Dx,!gone",
        ));
        let s = Selector::parse(&q).unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "a", "labels": {"app": "x"}}})));
        assert!(!s.matches(&json!({"metadata": {"name": "b", "labels": {"app": "x"}}})));
        assert!(
            !s.matches(&json!({"metadata": {"name": "a", "labels": {"app": "x", "gone": "1"}}}))
        );
        let bad = parse_query(Some("fieldSelector=spec.holderIdentity%3Dx"));
        assert_eq!(
            Selector::parse(&bad).unwrap_err().message,
            "field label not supported: spec.holderIdentity"
        );
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(dns_subdomain_error("my-lease.example").is_none());
        assert!(dns_subdomain_error("My_Lease").is_some());
        assert!(dns_subdomain_error(&"a".repeat(254)).is_some());
    }
}
