//! `Warning` headers for deprecated API versions, as kube-apiserver sends them on every request to one
//! (`staging/src/k8s.io/apiserver/pkg/endpoints/deprecation/deprecation.go` words the message,
//! `staging/src/k8s.io/apiserver/pkg/warning` and `net/http`'s RFC 7234 form `299 - "<text>"` carry it).

use hyper::Response;

use crate::body::Body;
use crate::resource::ResourceType;

/// The deprecation message of `rt`'s version, as kube-apiserver 1.36 words it: `<group>/<version> <Kind> is
/// deprecated in v<major>.<minor>+, unavailable in v<major>.<minor>+`. Only `coordination.k8s.io/v1beta1`
/// LeaseCandidate is deprecated among the types served (in 1.36, removed in 1.39; measured on kube-apiserver
/// 1.36.2).
fn message(rt: &ResourceType) -> Option<String> {
    let (deprecated, removed) = match (rt.group.as_str(), rt.version.as_str(), rt.kind.as_str()) {
        ("coordination.k8s.io", "v1beta1", "LeaseCandidate") => ("1.36", "1.39"),
        _ => return None,
    };
    Some(format!(
        "{} {} is deprecated in v{deprecated}+, unavailable in v{removed}+",
        rt.api_version(),
        rt.kind
    ))
}

/// Adds the `Warning: 299 - "<message>"` header to an answer about a deprecated type.
pub(crate) fn add_warning(rt: &ResourceType, resp: &mut Response<Body>) {
    let Some(message) = message(rt) else { return };
    let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(value) = http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
        resp.headers_mut().append(http::header::WARNING, value);
    }
}
