//! Serving a listener: accepting connections, applying its faults to each API request, routing the request
//! to the admin routes, discovery or the REST verbs, and logging it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, error_response};
use crate::listener::Listener;
use crate::route::{RequestInfo, Route};
use crate::shared::Shared;
use crate::status::ApiError;
use crate::tls::HANDSHAKE_TIMEOUT;
use crate::{RequestRecord, admin, api};

/// The error that makes hyper close a connection without answering (commit-then-drop).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

/// Accepts connections until shutdown; closes the socket while `refuse` is set and binds it again after.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Listener, socket: TcpListener) {
    let mut socket = Some(socket);
    let mut faults = listener.subscribe();
    let mut connections = shared.shutdown.child_token();
    loop {
        let refuse = faults.borrow_and_update().refuse;
        if refuse {
            drop(socket.take());
            connections.cancel();
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                changed = faults.wait_for(|f| !f.refuse) => if changed.is_err() { return },
            }
            socket = rebind(&shared, listener.addr()).await;
            connections = shared.shutdown.child_token();
            continue;
        }
        let Some(bound) = socket.as_ref() else { return };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            changed = faults.changed() => if changed.is_err() { return },
            accepted = bound.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let number = listener.accepted();
                    shared.tasks.spawn(connection(shared.clone(), listener.clone(), number, stream, connections.clone()));
                }
                Err(err) => tracing::debug!(%err, "accept failed"),
            },
        }
    }
}

async fn rebind(shared: &Shared, addr: SocketAddr) -> Option<TcpListener> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(socket) => return Some(socket),
            Err(err) => tracing::debug!(%err, %addr, "rebinding listener"),
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// Serves one accepted connection until it closes or `cut` fires; over TLS after the handshake (a failed or
/// overlong one closes the connection).
async fn connection(
    shared: Arc<Shared>,
    listener: Listener,
    number: u64,
    stream: tokio::net::TcpStream,
    cut: CancellationToken,
) {
    match shared.tls.clone() {
        None => serve_http(shared, listener, number, stream, cut).await,
        Some(tls) => {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream));
            let stream = tokio::select! {
                () = cut.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => return tracing::debug!(%err, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                },
            };
            serve_http(shared, listener, number, stream, cut).await;
        }
    }
}

async fn serve_http<S>(
    shared: Arc<Shared>,
    listener: Listener,
    number: u64,
    stream: S,
    cut: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let listener = listener.clone();
        async move { handle(shared, listener, number, req).await }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = cut.cancelled() => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    listener: Listener,
    connection: u64,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Dropped> {
    if req.uri().path().starts_with("/fake/") {
        return Ok(admin::admin(&shared, req).await);
    }
    let info = RequestInfo::parse(&shared, &req);
    let mut pending = Pending {
        shared: shared.clone(),
        arrived: Instant::now(),
        record: Some(RequestRecord {
            at: jiff::Timestamp::now().to_string(),
            listener: listener.id(),
            connection,
            verb: info.verb.clone(),
            resource: info.resource.clone(),
            subresource: match &info.route {
                Route::Resource { subresource, .. } => subresource.clone(),
                _ => None,
            },
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            code: None,
            latency_ms: 0.0,
            authorization: req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }),
    };
    let faults = Some(listener.faults())
        .filter(|f| f.applies_to_request(&info.verb, &info.resource))
        .unwrap_or_default();
    if faults.black_hole {
        pending.finish(None);
        std::future::pending::<()>().await;
    }
    let delay = faults.latency + faults.jitter.mul_f64(rand::random::<f64>());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        let err = ApiError::injected(faults.error_code);
        pending.finish(Some(err.code));
        return Ok(match err.code {
            429 => too_many_requests(),
            _ => error_response(&err),
        });
    }
    let writes = matches!(info.verb.as_str(), "create" | "update" | "patch" | "delete");
    let (resp, wrote) = if writes && !faults.commit_delay.is_zero() {
        delayed_commit(&shared, &listener, req, &info, faults.commit_delay).await
    } else {
        api::api(&shared, &listener, req, &info).await
    };
    if wrote && faults.commit_then_drop {
        pending.finish(None);
        return Err(Dropped);
    }
    pending.finish(Some(resp.status().as_u16()));
    Ok(resp)
}

/// Serves a write `delay` after it arrived, in a task of its own: the body is read first, so the write is
/// applied even when the client gives up meanwhile.
async fn delayed_commit(
    shared: &Arc<Shared>,
    listener: &Listener,
    req: hyper::Request<hyper::body::Incoming>,
    info: &RequestInfo,
    delay: Duration,
) -> (hyper::Response<Body>, bool) {
    let (parts, body) = req.into_parts();
    let body = match crate::body::read_bytes(body).await {
        Ok(body) => http_body_util::Full::new(body),
        Err(err) => return (error_response(&err), false),
    };
    let req = hyper::Request::from_parts(parts, body);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (shared, listener, info) = (shared.clone(), listener.clone(), info.clone());
    let shutdown = shared.shutdown.clone();
    shared.clone().tasks.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {
                let _ = tx.send(api::api(&shared, &listener, req, &info).await);
            }
        }
    });
    rx.await
        .unwrap_or_else(|_| (error_response(&ApiError::internal("shutting down")), false))
}

/// A request being served: recorded when it is answered or dropped, and also when the client gives up
/// first (its future is dropped during injected latency or a hanging request): `code: None` then.
struct Pending {
    shared: Arc<Shared>,
    arrived: Instant,
    record: Option<RequestRecord>,
}

impl Pending {
    /// Records the request with `code` (`None`: no answer).
    fn finish(&mut self, code: Option<u16>) {
        if let Some(mut record) = self.record.take() {
            record.code = code;
            record.latency_ms = self.arrived.elapsed().as_secs_f64() * 1000.0;
            self.shared.record(record);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// An injected 429 as kube-apiserver's rate limiting answers it: plain text with `Retry-After`, not a
/// `Status` (`tooManyRequests` in `staging/src/k8s.io/apiserver/pkg/server/filters/maxinflight.go`, also
/// used by API Priority and Fairness).
fn too_many_requests() -> hyper::Response<Body> {
    use http_body_util::BodyExt;
    let body = bytes::Bytes::from_static(b"Too many requests, please try again later.\n");
    let mut resp = hyper::Response::new(http_body_util::Full::new(body).boxed_unsync());
    *resp.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}
