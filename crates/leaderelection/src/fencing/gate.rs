//! The write gate: a `tower` layer on a `kube::Client` that lets its mutating requests through only during
//! one term, and stamps the objects they write with the term and the Lease.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, header};
use kube::client::Body;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt as _};

use super::{LEASE_ANNOTATION, TERM_ANNOTATION};
use crate::state::{LeaderState, Term};

/// One term's fence: the term, its Lease, and the elector's state that says whether the term still holds.
///
/// Give it to leader-only work as a client ([`Fence::client`]) or as a layer of a client's own stack
/// ([`Fence::layer`]): reads (GET: get, list, watch) always pass; a mutating request (POST, PUT, PATCH,
/// DELETE, with subresources) passes only while the term is valid, and is cancelled (its future dropped) at
/// the instant the term ends if it is still in flight then. Cheap to clone.
///
/// The term is valid while the elector's state ([`LeaderState`]) still holds this very term (same
/// `leaseTransitions` and holder) and its validity deadline (`valid_until`: the send time of the last
/// successful renewal plus RenewDeadline) has not passed on the monotonic clock; it ends for good once the
/// elector has stopped (its state channel closed). That deadline comes before the term's work deadline and
/// before any follower may take over the Lease (`docs/design.md`, "Fencing").
#[derive(Clone, Debug)]
pub struct Fence {
    term: Term,
    /// `<namespace>/<name>`, the value of [`LEASE_ANNOTATION`].
    lease: String,
    state: watch::Receiver<LeaderState>,
    stamp: bool,
}

/// Why a fence refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceReason {
    /// The elector no longer leads: the Lease was released, lost or the elector stopped.
    TermEnded,
    /// The term's validity deadline passed (no renewal succeeded within RenewDeadline) before the elector
    /// said the term ended.
    DeadlinePassed,
    /// The Lease is in a newer term (`leaseTransitions`), whoever holds it.
    NewerTerm {
        /// The newer term's `leaseTransitions`.
        transitions: i32,
    },
}

/// The typed error of a request a [`Fence`] refused: a mutating request outside its term. It reaches the
/// caller inside `kube::Error::Service`; get it back with [`Fenced::find`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: term {term} of Lease {lease} {reason}",
    if *in_flight { "write cancelled in flight" } else { "write refused before it was sent" }
)]
pub struct Fenced {
    /// The fence's term: the Lease's `leaseTransitions` when it began.
    pub term: i32,
    /// The Lease, `<namespace>/<name>`.
    pub lease: String,
    /// Why.
    pub reason: FenceReason,
    /// Whether the request had been passed on when the term ended (its future was dropped: the server may
    /// or may not have received and applied it); `false`: nothing was sent.
    pub in_flight: bool,
}

/// The layer of a [`Fence`]: wraps a service of `http::Request<kube::client::Body>` (a `kube::Client`'s
/// stack) in a [`FenceService`].
#[derive(Clone, Debug)]
pub struct FenceLayer {
    fence: Fence,
}

/// A service gated by a [`Fence`] ([`FenceLayer`]). Its errors are boxed: the inner service's as they are,
/// the fence's as [`Fenced`].
#[derive(Clone, Debug)]
pub struct FenceService<S> {
    inner: S,
    fence: Fence,
}

// === impl FenceReason ===

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TermEnded => f.write_str("ended"),
            Self::DeadlinePassed => {
                f.write_str("passed its validity deadline (no renewal within RenewDeadline)")
            }
            Self::NewerTerm { transitions } => write!(f, "was superseded by term {transitions}"),
        }
    }
}

// === impl Fenced ===

impl Fenced {
    /// The fence's refusal inside a `kube::Error` from a gated client (`kube::Error::Service`), if that is
    /// what the error is.
    #[must_use]
    pub fn find(error: &kube::Error) -> Option<&Self> {
        match error {
            kube::Error::Service(inner) => inner.downcast_ref::<Self>(),
            _ => None,
        }
    }
}

// === impl Fence ===

impl Fence {
    /// The fence of `term`, a term of the Lease `lease_namespace/lease_name` as `state` (the elector's,
    /// [`crate::ElectorHandle::subscribe`]) publishes it. Stamping is on.
    #[must_use]
    pub fn new(
        term: Term,
        lease_namespace: &str,
        lease_name: &str,
        state: watch::Receiver<LeaderState>,
    ) -> Self {
        Self {
            term,
            lease: format!("{lease_namespace}/{lease_name}"),
            state,
            stamp: true,
        }
    }

    /// Whether mutating requests' objects get the term and Lease annotations ([`TERM_ANNOTATION`],
    /// [`LEASE_ANNOTATION`]); on by default. Which bodies are stamped is in `docs/design.md` ("Fencing").
    #[must_use]
    pub fn stamping(mut self, on: bool) -> Self {
        self.stamp = on;
        self
    }

    /// The term this fence lets writes through in.
    #[must_use]
    pub fn term(&self) -> &Term {
        &self.term
    }

    /// The Lease, `<namespace>/<name>`.
    #[must_use]
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// Whether a write may start now.
    ///
    /// # Errors
    ///
    /// [`Fenced`] (not in flight) when the term is over.
    pub fn check(&self) -> Result<(), Fenced> {
        // A closed channel: the elector has stopped, and every term with it.
        let reason = match self.state.has_changed() {
            Err(_) => Some(FenceReason::TermEnded),
            Ok(_) => self.refusal(&self.state.borrow(), Instant::now()),
        };
        reason.map_or(Ok(()), |reason| Err(self.fenced(reason, false)))
    }

    /// Resolves when the term is over (at once if it is), with why.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads the state.
    pub async fn ended(&self) -> Fenced {
        let mut state = self.state.clone();
        loop {
            let (reason, deadline) = {
                let now = state.borrow_and_update();
                (self.refusal(&now, Instant::now()), now.valid_until)
            };
            if let Some(reason) = reason {
                return self.fenced(reason, false);
            }
            let deadline = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = state.changed() => if changed.is_err() {
                    return self.fenced(FenceReason::TermEnded, false);
                },
                () = deadline => {}
            }
        }
    }

    /// This fence as a `tower` layer, for a client built with `kube::client::ClientBuilder::with_layer`.
    #[must_use]
    pub fn layer(&self) -> FenceLayer {
        FenceLayer {
            fence: self.clone(),
        }
    }

    /// `client` gated by this fence: the same connection, credentials and default namespace; mutating
    /// requests go through only during the term. Its errors are `client`'s, plus
    /// `kube::Error::Service` with a [`Fenced`] ([`Fenced::find`]).
    #[must_use]
    pub fn client(&self, client: &kube::Client) -> kube::Client {
        let inner = client.clone();
        let send = tower::service_fn(move |request: Request<Body>| {
            let inner = inner.clone();
            async move { inner.send(request).await }
        });
        kube::Client::new(self.layer().layer(send), client.default_namespace())
            .with_valid_until(*client.valid_until())
    }

    fn refusal(&self, state: &LeaderState, now: Instant) -> Option<FenceReason> {
        match &state.term {
            Some(term)
                if term.transitions == self.term.transitions && term.holder == self.term.holder =>
            {
                let passed = state.valid_until.is_some_and(|deadline| now >= deadline);
                passed.then_some(FenceReason::DeadlinePassed)
            }
            Some(term) => Some(FenceReason::NewerTerm {
                transitions: term.transitions,
            }),
            None if state.lease_transitions > self.term.transitions => {
                Some(FenceReason::NewerTerm {
                    transitions: state.lease_transitions,
                })
            }
            None => Some(FenceReason::TermEnded),
        }
    }

    fn fenced(&self, reason: FenceReason, in_flight: bool) -> Fenced {
        Fenced {
            term: self.term.transitions,
            lease: self.lease.clone(),
            reason,
            in_flight,
        }
    }

    /// `request` with its object stamped, when its body is one this gate stamps ([`stamp`]).
    async fn stamped(&self, request: Request<Body>) -> Result<Request<Body>, BoxError> {
        let Some(kind) = BodyKind::of(&request) else {
            return Ok(request);
        };
        let (mut parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await?;
        let body = match stamp(kind, &bytes, self.term.transitions, &self.lease) {
            Some(stamped) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                stamped
            }
            None => {
                tracing::debug!(
                    method = %parts.method,
                    uri = %parts.uri,
                    "a write the fence cannot stamp without changing what it does: sent unstamped"
                );
                bytes.to_vec()
            }
        };
        Ok(Request::from_parts(parts, Body::from(body)))
    }
}

// === impl FenceLayer ===

impl<S> Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService {
            inner,
            fence: self.fence.clone(),
        }
    }
}

// === impl FenceService ===

impl<S, B> Service<Request<Body>> for FenceService<S>
where
    S: Service<Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !is_mutating(request.method()) {
            let response = self.inner.call(request);
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        if let Err(fenced) = self.fence.check() {
            tracing::debug!(%fenced, method = %request.method(), uri = %request.uri());
            return Box::pin(std::future::ready(Err(fenced.into())));
        }
        // The one made ready goes with this request; the clone waits for the next `poll_ready`.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let fence = self.fence.clone();
        Box::pin(async move {
            let send = async {
                let request = if fence.stamp {
                    fence.stamped(request).await?
                } else {
                    request
                };
                inner.oneshot(request).await.map_err(Into::into)
            };
            tokio::select! {
                biased;
                ended = fence.ended() => Err(Fenced { in_flight: true, ..ended }.into()),
                response = send => response,
            }
        })
    }
}

/// Whether `method` writes: everything but GET (get, list, watch), HEAD and OPTIONS.
fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What a mutating request's body is, by method and content type, for stamping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    /// A whole object: create (POST), update (PUT), and apply patches (`application/apply-patch+yaml`,
    /// which kube-rs and kubectl send as JSON).
    Object,
    /// A JSON merge patch or a strategic merge patch: a partial object where `null` deletes.
    MergePatch,
    /// A JSON patch (RFC 6902): a list of operations.
    JsonPatch,
}

// === impl BodyKind ===

impl BodyKind {
    fn of(request: &Request<Body>) -> Option<Self> {
        let media = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match (request.method(), media.as_deref()) {
            (&Method::POST | &Method::PUT, Some("application/json")) => Some(Self::Object),
            (&Method::PATCH, Some("application/apply-patch+yaml")) => Some(Self::Object),
            (
                &Method::PATCH,
                Some("application/merge-patch+json" | "application/strategic-merge-patch+json"),
            ) => Some(Self::MergePatch),
            (&Method::PATCH, Some("application/json-patch+json")) => Some(Self::JsonPatch),
            _ => None,
        }
    }
}

/// `body` with the term and Lease annotations added, or `None` when it is left as it is: not JSON (an
/// apply patch in YAML), not the JSON expected (an object, or a JSON patch's list), or one where adding
/// them would change what the write does:
///
/// - an object or merge patch whose `metadata` or `metadata.annotations` is neither an object nor absent
///   (in a merge patch `null` deletes them all: adding ours would keep the others);
/// - a JSON patch that does not itself show that `metadata.annotations` exists once it applied: an `add`
///   to a missing map's key fails the whole patch (RFC 6902, section 4.1), so ours go in (two `add`s at
///   its end) only if the last operation on `/metadata`, `/metadata/annotations` or a key of it adds or
///   replaces an object there, or adds, replaces or removes a key of it; never when a `move` or `copy`
///   touches them.
fn stamp(kind: BodyKind, body: &[u8], term: i32, lease: &str) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let term = term.to_string();
    match kind {
        BodyKind::Object | BodyKind::MergePatch => {
            let object = value.as_object_mut()?;
            let metadata = object
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if kind == BodyKind::Object && metadata.is_null() {
                *metadata = Value::Object(Map::new());
            }
            let annotations = metadata
                .as_object_mut()?
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()));
            if kind == BodyKind::Object && annotations.is_null() {
                *annotations = Value::Object(Map::new());
            }
            let annotations = annotations.as_object_mut()?;
            annotations.insert(TERM_ANNOTATION.into(), Value::String(term));
            annotations.insert(LEASE_ANNOTATION.into(), Value::String(lease.into()));
        }
        BodyKind::JsonPatch => {
            let operations = value.as_array_mut()?;
            if !annotations_exist_after(operations) {
                return None;
            }
            for (key, value) in [(TERM_ANNOTATION, term.as_str()), (LEASE_ANNOTATION, lease)] {
                operations.push(serde_json::json!({
                    "op": "add",
                    "path": format!("/metadata/annotations/{}", key.replace('~', "~0").replace('/', "~1")),
                    "value": value,
                }));
            }
        }
    }
    serde_json::to_vec(&value).ok()
}

/// Whether the JSON patch `operations`, once applied, leave `metadata.annotations` in place ([`stamp`]).
fn annotations_exist_after(operations: &[Value]) -> bool {
    const METADATA: &str = "/metadata";
    const ANNOTATIONS: &str = "/metadata/annotations";
    let touches = |path: &str| {
        path == METADATA || path == ANNOTATIONS || path.starts_with("/metadata/annotations/")
    };
    let mut exists = false;
    for operation in operations {
        let field = |name: &str| operation.get(name).and_then(Value::as_str);
        let (Some(op), Some(path)) = (field("op"), field("path")) else {
            return false;
        };
        if matches!(op, "move" | "copy") && (touches(path) || field("from").is_some_and(touches)) {
            return false;
        }
        if op == "test" || !touches(path) {
            continue;
        }
        let value = operation.get("value");
        exists = match (op, path) {
            ("add" | "replace", METADATA) => {
                value.is_some_and(|v| v.get("annotations").is_some_and(Value::is_object))
            }
            ("add" | "replace", ANNOTATIONS) => value.is_some_and(Value::is_object),
            ("add" | "replace" | "remove", key) => key != METADATA && key != ANNOTATIONS,
            _ => false,
        };
    }
    exists
}

#[cfg(test)]
mod tests;
