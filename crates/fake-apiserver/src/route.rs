//! Routing: what a request asks for (verb, resource, namespace, name), from its method, path and query.

use std::collections::HashMap;

use hyper::{Method, Request};

use crate::shared::Shared;

/// Where a request goes.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// A discovery document (`/version`, `/api`, `/apis`, ...) or an OpenAPI document (`/openapi/v3/...`), by
    /// path segment.
    Discovery(Vec<String>),
    /// A resource type (its index in the server's resources), maybe with a subresource.
    Resource {
        index: usize,
        subresource: Option<String>,
    },
    /// No such path.
    NotFound,
}

/// What a request asks for, as the request log and counters name it.
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) verb: String,
    pub(crate) resource: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) route: Route,
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
            | ["apis", _, _]
            | ["openapi", ..] => {
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

/// The query string as a map, decoded as `application/x-www-form-urlencoded` (`form_urlencoded`:
/// percent-decoded, `+` is a space); the last of a repeated key wins.
pub(crate) fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A path segment, percent-decoded (`percent-encoding`; `+` stays a `+` in a path), invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query(Some(
            "fieldSelector=metadata.name%3Dmy-lease&watch=true&x=a+b",
        ));
        assert_eq!(q["fieldSelector"], "metadata.name=my-lease");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
    }
}
