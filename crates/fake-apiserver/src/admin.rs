//! The `/fake/` admin routes: listeners and their faults, request counts and the request log.

use std::sync::Arc;

use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::body::{Body, error_response, json_response, read_json};
use crate::faults::Faults;
use crate::listener::Listener;
use crate::shared::Shared;
use crate::status::ApiError;

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
        (Method::POST, ["fake", "listeners", id, "drop-watches"]) => {
            let Some(listener) = id.parse().ok().and_then(|id| shared.listener(id)) else {
                return error_response(&ApiError::no_route());
            };
            listener.drop_watches();
            json_response(StatusCode::OK, &json!(listener_json(&listener)))
        }
        (Method::GET, ["fake", "counts"]) => json_response(StatusCode::OK, &json!(shared.counts())),
        (Method::DELETE, ["fake", "counts"]) => {
            shared.reset_stats();
            json_response(StatusCode::OK, &json!([]))
        }
        (Method::GET, ["fake", "answers"]) => {
            json_response(StatusCode::OK, &json!(shared.answer_counts()))
        }
        (Method::GET, ["fake", "requests"]) => {
            let log: Vec<_> = shared.stats().log.iter().cloned().collect();
            json_response(StatusCode::OK, &json!(log))
        }
        _ => error_response(&ApiError::no_route()),
    }
}
