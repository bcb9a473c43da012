//! Bodies: JSON requests read within kube-apiserver's size limit, JSON responses, and `Status` errors.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use crate::status::ApiError;

/// Response body type of every route.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// kube-apiserver's request body limit (3 MiB).
const BODY_LIMIT: usize = 3 * 1024 * 1024;

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

/// Reads a request body whole: 413 over 3 MiB.
pub(crate) async fn read_bytes<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Ok(Limited::new(body, BODY_LIMIT)
        .collect()
        .await
        .map_err(|_| ApiError::too_large())?
        .to_bytes())
}

/// Reads a JSON request body: 413 over 3 MiB, 400 when it does not parse.
pub(crate) async fn read_json<B>(req: Request<B>) -> Result<Value, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = read_bytes(req.into_body()).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}
