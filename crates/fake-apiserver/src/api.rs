//! The API's REST verbs on resources: get, list, watch, create, update, patch, delete, and `/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::apply;
use crate::body::{Body, error_response, json_response, read_bytes, read_json};
use crate::deprecation;
use crate::discovery::discovery;
use crate::listener::Listener;
use crate::managed_fields;
use crate::resource::ResourceType;
use crate::route::{RequestInfo, Route, parse_query};
use crate::selector::Selector;
use crate::shared::Shared;
use crate::status::ApiError;
use crate::store::{Deletion, Part, Target};
use crate::table::TableRequest;
use crate::watch;

/// Serves an API request, with the `Warning` header of a deprecated API version. Returns the response and
/// whether it committed a write.
pub(crate) async fn api<B>(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: Request<B>,
    info: &RequestInfo,
) -> (Response<Body>, bool)
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (mut resp, wrote) = serve_api(shared, listener, req, info).await;
    if let Route::Resource { index, .. } = &info.route {
        deprecation::add_warning(&shared.resources[*index], &mut resp);
    }
    (resp, wrote)
}

/// Serves an API request. Returns the response and whether it committed a write.
async fn serve_api<B>(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: Request<B>,
    info: &RequestInfo,
) -> (Response<Body>, bool)
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (index, subresource) = match &info.route {
        Route::Discovery(segments) => return (discovery(shared, listener, segments), false),
        Route::NotFound => return (error_response(&ApiError::no_route()), false),
        Route::Resource { index, subresource } => (*index, subresource.clone()),
    };
    let table = TableRequest::from_request(
        req.headers(),
        parse_query(req.uri().query())
            .get("includeObject")
            .map(String::as_str),
    )
    .filter(|_| subresource.is_none() && matches!(info.verb.as_str(), "get" | "list"));
    match serve_resource(shared, listener, req, info, index, subresource.as_deref()).await {
        Ok((code, body, wrote)) => match table {
            Some(table) => {
                let rt = &shared.resources[index];
                let body = table.table(rt, &body, jiff::Timestamp::now());
                (json_response(code, &body), wrote)
            }
            None => (json_response(code, &body), wrote),
        },
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

async fn serve_resource<B>(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: Request<B>,
    info: &RequestInfo,
    index: usize,
    subresource: Option<&str>,
) -> Result<(StatusCode, Value, bool), Answer>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let rt = &shared.resources[index];
    let query = parse_query(req.uri().query());
    let part = match subresource {
        None => Part::Main,
        Some("status") if rt.status_subresource => Part::Status,
        Some(_) => return Err(ApiError::no_route().into()),
    };
    // kubectl sends `Strict` (the OpenAPI documents say the server validates); `Warn` and `Ignore` keep
    // unknown fields, without kube-apiserver's `Warning` headers.
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    let namespace = info.namespace.clone().unwrap_or_default();
    let name = info.name.clone().unwrap_or_default();
    let manager = field_manager(&query, req.headers());
    let target = Target {
        resource: index,
        rt,
        namespace: &namespace,
        name: &name,
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
        manager: Some(&manager),
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
                table: TableRequest::from_request(
                    req.headers(),
                    query.get("includeObject").map(String::as_str),
                )
                .map(|table| (table, rt.clone())),
            };
            Err(Answer::Stream(watch::start(shared, listener, params)))
        }
        "create" if part == Part::Main => {
            let mut object = read_object(req, rt, strict).await?;
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
            shared.admit_create(rt, &namespace, &name)?;
            let target = Target {
                name: &name,
                ..target
            };
            let created = shared.store().create(&target, object)?;
            Ok((StatusCode::CREATED, (*created).clone(), !target.dry_run))
        }
        "update" => {
            let object = read_object(req, rt, strict).await?;
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
            if !existed {
                shared.admit_create(rt, &namespace, &name)?;
            }
            let updated = store.update(&target, object, part)?;
            let code = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((code, (*updated).clone(), !target.dry_run))
        }
        "patch" => {
            let apply = content_type == apply::CONTENT_TYPE;
            if !apply
                && !matches!(
                    content_type.as_str(),
                    "application/merge-patch+json" | "application/strategic-merge-patch+json"
                )
            {
                return Err(ApiError::unsupported_patch(&content_type).into());
            }
            if !apply && query.contains_key("force") {
                return Err(ApiError::invalid_patch_options(
                    "force: Forbidden: may not be specified for non-apply patch",
                )
                .into());
            }
            let options = if apply {
                Some(apply::options(
                    query.get("fieldManager"),
                    query.get("force"),
                )?)
            } else {
                None
            };
            let patch = if apply {
                apply::decode(&read_bytes(req.into_body()).await?)?
            } else {
                read_json(req).await?
            };
            let validate = |object: &Value| {
                rt.decode_check(object).map_err(ApiError::bad_request)?;
                if let Some(err) = rt.strict_decoding_error(object).filter(|_| strict) {
                    return Err(ApiError::bad_request(err));
                }
                let causes = rt.validate(object);
                if causes.is_empty() {
                    Ok(())
                } else {
                    Err(ApiError::invalid(rt, &name, &causes))
                }
            };
            if let Some(options) = options {
                let mut store = shared.store();
                if store.get(index, &namespace, &name).is_none() {
                    shared.admit_create(rt, &namespace, &name)?;
                }
                let target = Target {
                    manager: None,
                    ..target
                };
                let (code, applied) =
                    apply::apply(&mut store, &target, &patch, options, part, validate)?;
                return Ok((code, (*applied).clone(), !target.dry_run));
            }
            let patched = shared.store().patch(&target, &patch, part, validate)?;
            Ok((StatusCode::OK, (*patched).clone(), !target.dry_run))
        }
        "delete" if part == Part::Main => {
            let options = read_json(req).await.unwrap_or(Value::Null);
            let precondition = options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let deleted = match shared.store().delete(&target, precondition)? {
                Deletion::Deleted(deleted) => deleted,
                // kube-apiserver answers a delete that waits on finalizers with the object.
                Deletion::Pending(object) => {
                    return Ok((StatusCode::OK, (*object).clone(), !target.dry_run));
                }
            };
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

/// The field manager of a write: `?fieldManager=`, else the `User-Agent` up to its first `/`.
fn field_manager(query: &HashMap<String, String>, headers: &http::HeaderMap) -> String {
    query.get("fieldManager").cloned().unwrap_or_else(|| {
        let agent = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        managed_fields::manager_from_user_agent(agent).to_owned()
    })
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

/// Reads a whole object of type `rt`: JSON, the right kind, the types the decoder enforces and, when
/// `strict`, no unknown fields.
async fn read_object<B>(req: Request<B>, rt: &ResourceType, strict: bool) -> Result<Value, ApiError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let object = read_json(req).await?;
    rt.decode_check(&object).map_err(ApiError::bad_request)?;
    if let Some(err) = rt.strict_decoding_error(&object).filter(|_| strict) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {err}",
            kind = rt.kind,
            version = rt.version
        )));
    }
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

#[cfg(test)]
mod tests {
    use crate::resource::dns_subdomain_error;

    #[test]
    fn names_must_be_dns_subdomains() {
        assert!(dns_subdomain_error("my-lease.example").is_none());
        assert!(dns_subdomain_error("My_Lease").is_some());
        assert!(dns_subdomain_error(&"a".repeat(254)).is_some());
    }
}
