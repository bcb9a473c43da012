//! A spare connection beside the watches: the layer of the elector's client that keeps one idle pooled
//! connection open while a watch holds another, so that the write that matters (a follower's takeover, a
//! leader's renewal or release) never waits for a new TCP and TLS handshake.
//!
//! Over HTTP/1.1 (kube's only protocol) a watch holds its connection for as long as it streams. A follower
//! sends nothing else while it watches, so without a spare its takeover write opens a new connection on the
//! critical path: one round trip for TCP, one for TLS 1.3, and the server's certificate checked. The layer
//! sends a cheap `GET /version` once each watch it starts is answered (from then on the watch holds its
//! connection), which leaves a second connection idle in the pool once answered; and again every
//! [`KEEP_WARM`] while a watch streams and nothing else was answered, so that the spare is never closed as
//! idle (kube-apiserver closes connections idle for 90 s; the pool, after
//! [`super::client::POOL_IDLE_TIMEOUT`]). `/version` is readable by every client, authenticated or not
//! (`system:public-info-viewer`); whatever the answer, the connection stays open and pooled.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

/// How often a watching client without other answers sends `GET /version` to keep its spare connection
/// open: under the pool's idle timeout and kube-apiserver's 90 s.
pub(crate) const KEEP_WARM: Duration = Duration::from_secs(60);

/// The [`Layer`] of [`Spare`].
#[derive(Clone, Debug, Default)]
pub(crate) struct SpareLayer;

impl<S> Layer<S> for SpareLayer
where
    S: Service<Request<Body>> + Clone,
{
    type Service = Spare<S>;

    fn layer(&self, inner: S) -> Spare<S> {
        Spare {
            state: Arc::new(State {
                inner: inner.clone(),
                watches: AtomicUsize::new(0),
                last_answer: Mutex::new(Instant::now()),
                keeper: AtomicBool::new(false),
            }),
            inner,
        }
    }
}

/// Keeps a spare idle connection beside the watches of its client (module docs).
#[derive(Clone)]
pub(crate) struct Spare<S> {
    inner: S,
    state: Arc<State<S>>,
}

impl<S> std::fmt::Debug for Spare<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare")
            .field("watches", &self.state.watches.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the clones of one client's [`Spare`] share; the keeper task holds it weakly and ends with the
/// client.
struct State<S> {
    /// The service the spare's requests go through (the client's own stack below this layer).
    inner: S,
    /// Watches whose response is streaming.
    watches: AtomicUsize,
    /// When the last request other than a watch was answered.
    last_answer: Mutex<Instant>,
    /// Whether the keeper task has been started.
    keeper: AtomicBool,
}

impl<S, B> State<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
{
    fn answered(&self) {
        *self
            .last_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// `GET /version`, its answer read to the end so that the connection goes back to the pool.
    async fn warm(&self) {
        let request = Request::get("/version").body(Body::from(Vec::new()));
        let Ok(request) = request else { return };
        let answered = self.inner.clone().oneshot(request).await;
        if let Ok(response) = answered {
            let _ = response.into_body().collect().await;
            self.answered();
        }
    }

    /// Every [`KEEP_WARM`] while the client lives: a `GET /version` when a watch streams and nothing was
    /// answered for that long.
    async fn keep(state: Weak<Self>) {
        loop {
            tokio::time::sleep(KEEP_WARM).await;
            let Some(state) = state.upgrade() else { return };
            let idle = state
                .last_answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed();
            if state.watches.load(Ordering::Relaxed) > 0 && idle >= KEEP_WARM {
                state.warm().await;
            }
        }
    }
}

/// Whether `request` is a watch: kube asks for one with the query parameter `watch=true` (`watch=1` is the
/// other spelling kube-apiserver accepts).
fn is_watch(request: &Request<Body>) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

impl<S, B> Service<Request<Body>> for Spare<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Send,
{
    type Response = Response<Watched<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = self.state.clone();
        if !is_watch(&request) {
            return self
                .inner
                .call(request)
                .map(move |answer| {
                    if answer.is_ok() {
                        state.answered();
                    }
                    answer.map(|response| response.map(|body| Watched { body, guard: None }))
                })
                .boxed();
        }
        let guard = WatchGuard::new(&state);
        if !state.keeper.swap(true, Ordering::Relaxed) {
            tokio::spawn(State::keep(Arc::downgrade(&state)));
        }
        self.inner
            .call(request)
            .map(move |answer| {
                // Only now does the watch hold its connection for good: a request sent earlier could take
                // the one idle connection and give it back before the watch took it.
                if answer.is_ok() {
                    tokio::spawn(async move { state.warm().await });
                }
                answer.map(|response| {
                    response.map(|body| Watched {
                        body,
                        guard: Some(guard),
                    })
                })
            })
            .boxed()
    }
}

/// Counts a watch as streaming from its request until its response body is dropped.
struct WatchGuard {
    watches: Arc<dyn WatchCount>,
}

/// The count of streaming watches, without the service's type.
trait WatchCount: Send + Sync {
    fn count(&self) -> &AtomicUsize;
}

impl<S: Send + Sync> WatchCount for State<S> {
    fn count(&self) -> &AtomicUsize {
        &self.watches
    }
}

impl WatchGuard {
    fn new<S: Send + Sync + 'static>(state: &Arc<State<S>>) -> Self {
        state.watches.fetch_add(1, Ordering::Relaxed);
        let watches: Arc<dyn WatchCount> = state.clone();
        Self { watches }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.watches.count().fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body; a watch's carries the guard that counts it as streaming until the body is dropped.
pub(crate) struct Watched<B> {
    body: B,
    guard: Option<WatchGuard>,
}

impl<B> std::fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("watch", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::from(Vec::new())).unwrap()
    }

    #[test]
    fn a_watch_is_told_by_its_watch_parameter_only() {
        let path = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
        assert!(is_watch(&request(&format!(
            "{path}?watch=true&resourceVersion=7"
        ))));
        assert!(is_watch(&request(&format!(
            "{path}?fieldSelector=x&watch=1"
        ))));
        assert!(!is_watch(&request(&format!("{path}?watch=false"))));
        assert!(!is_watch(&request(&format!(
            "{path}?allowWatchBookmarks=true"
        ))));
        assert!(!is_watch(&request(&format!("{path}/watch=true"))));
        assert!(!is_watch(&request("/version")));
    }
}
