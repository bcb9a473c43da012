//! Listeners: each serves the shared store on its own address, with its own injected faults.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::ApiError;
use crate::{RequestRecord, Shared};

/// Response body type of every route.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Faults injected into one listener's API requests (admin routes under `/fake/` are never faulted).
///
/// As JSON (admin route): `{"latency_ms": 50, "jitter_ms": 10, "error_rate": 0.1, "error_code": 503,
/// "black_hole": false, "commit_then_drop": false, "refuse": false}`; missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every request before it is handled.
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// A uniformly random extra delay in `[0, jitter)`.
    #[serde(rename = "jitter_ms", with = "millis")]
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a request is answered with `error_code` (and not applied).
    pub error_rate: f64,
    /// 403 (an RBAC denial), 429 (with `Retry-After: 1`), 500 or 503.
    pub error_code: u16,
    /// Accept requests and never answer them; open watches stop delivering events.
    pub black_hole: bool,
    /// Apply writes (POST, PUT, PATCH, DELETE), then close the connection without answering.
    pub commit_then_drop: bool,
    /// Close the listening socket (connections are refused) and every open connection.
    pub refuse: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            error_code: 500,
            black_hole: false,
            commit_then_drop: false,
            refuse: false,
        }
    }
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// A network partition: requests are accepted and never answered.
    pub fn partition() -> Self {
        Self {
            black_hole: true,
            ..Self::default()
        }
    }

    /// Checks the ranges.
    ///
    /// # Errors
    ///
    /// [`FaultsError`] naming the field when `error_rate` is outside `[0, 1]` or `error_code` is not 429, 500
    /// or 503 (or 403).
    pub fn validate(&self) -> Result<(), FaultsError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FaultsError {
                field: "error_rate",
                value: self.error_rate.to_string(),
                rule: "must be between 0 and 1",
            });
        }
        if ![403, 429, 500, 503].contains(&self.error_code) {
            return Err(FaultsError {
                field: "error_code",
                value: self.error_code.to_string(),
                rule: "must be 403, 429, 500 or 503",
            });
        }
        Ok(())
    }
}

/// An invalid [`Faults`] field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value}: {rule}")]
pub struct FaultsError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// The rule broken.
    pub rule: &'static str,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One listening address on the shared store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Listener {
    id: usize,
    addr: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
}

impl Listener {
    pub(crate) fn new(id: usize, addr: SocketAddr) -> Self {
        Self {
            id,
            addr,
            faults: Arc::new(watch::Sender::new(Faults::default())),
        }
    }

    /// The listener's id (0 is the server's default listener).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Replaces the faults; takes effect for the next request (and at once for `refuse` and `black_hole`
    /// on open connections and watches).
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Faults> {
        self.faults.subscribe()
    }
}

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
            socket = rebind(&shared, listener.addr).await;
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
                    shared.tasks.spawn(connection(shared.clone(), listener.clone(), stream, connections.clone()));
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

async fn connection(
    shared: Arc<Shared>,
    listener: Listener,
    stream: tokio::net::TcpStream,
    cut: CancellationToken,
) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let listener = listener.clone();
        async move { handle(shared, listener, req).await }
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
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Dropped> {
    if req.uri().path().starts_with("/fake/") {
        return Ok(crate::http::admin(&shared, req).await);
    }
    let arrived = Instant::now();
    let at = jiff::Timestamp::now().to_string();
    let faults = listener.faults();
    let info = crate::http::RequestInfo::parse(&shared, &req);
    let record = |code: Option<u16>| RequestRecord {
        at: at.clone(),
        listener: listener.id,
        verb: info.verb.clone(),
        resource: info.resource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        code,
        latency_ms: arrived.elapsed().as_secs_f64() * 1000.0,
    };
    if faults.black_hole {
        shared.record(record(None));
        std::future::pending::<()>().await;
    }
    let delay = faults.latency + faults.jitter.mul_f64(rand::random::<f64>());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
        let err = ApiError::injected(faults.error_code);
        shared.record(record(Some(err.code)));
        let mut resp = crate::http::error_response(&err);
        if err.code == 429 {
            resp.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
        }
        return Ok(resp);
    }
    let (resp, wrote) = crate::http::api(&shared, &listener, req, &info).await;
    if wrote && faults.commit_then_drop {
        shared.record(record(None));
        return Err(Dropped);
    }
    shared.record(record(Some(resp.status().as_u16())));
    Ok(resp)
}
