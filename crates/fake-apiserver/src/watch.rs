//! Watches: newline-delimited JSON events, resumable from a resourceVersion, with bookmarks and timeouts,
//! objects in the Table form when asked.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::Shared;
use crate::body::Body;
use crate::listener::Listener;
use crate::resource::ResourceType;
use crate::selector::Selector;
use crate::status::ApiError;
use crate::store::Event;
use crate::table::TableRequest;

/// What a watch request asks for.
#[derive(Debug)]
pub(crate) struct Params {
    pub(crate) resource: usize,
    pub(crate) namespace: Option<String>,
    pub(crate) selector: Selector,
    /// `None`: start with the current objects as ADDED (`resourceVersion` absent or "0").
    pub(crate) resource_version: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) bookmarks: bool,
    /// Objects sent in the Table form (`kubectl get -w`), with the resource type that gives the columns.
    pub(crate) table: Option<(TableRequest, ResourceType)>,
}

impl Params {
    fn matches(&self, resource: usize, namespace: &str, object: &Value) -> bool {
        resource == self.resource
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.selector.matches(object)
    }

    /// An ADDED, MODIFIED or DELETED event, its object in the Table form when asked (one row; every event
    /// carries the column definitions, which kubectl prints again only when they change).
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        match &self.table {
            Some((table, rt)) => line(kind, &table.table(rt, object, jiff::Timestamp::now())),
            None => line(kind, object),
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch stream: the history (or current state) first, then live events, until the timeout, the
/// client leaving, shutdown, or the watcher falling `watch_buffer` events behind (then it is dropped).
pub(crate) fn start(shared: &Arc<Shared>, listener: &Listener, params: Params) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut store = shared.store();
    let mut last_rv = store.resource_version();
    let (initial, events): (Vec<Bytes>, Option<broadcast::Receiver<Arc<Event>>>) =
        match params.resource_version {
            None => {
                let initial = store
                    .list(params.resource, params.namespace.as_deref())
                    .filter(|o| params.selector.matches(o))
                    .map(|o| params.event("ADDED", o))
                    .collect();
                (initial, Some(store.subscribe()))
            }
            Some(since) => match store.watch_from(since) {
                Ok((past, events)) => {
                    let initial = past
                        .iter()
                        .filter(|e| params.matches(e.resource, &e.namespace, &e.object))
                        .map(|e| params.event(e.kind.as_str(), &e.object))
                        .collect();
                    (initial, Some(events))
                }
                Err(floor) => (
                    vec![line("ERROR", &ApiError::expired(since, floor).to_status())],
                    None,
                ),
            },
        };
    drop(store);
    let kind = shared.resources[params.resource].kind.clone();
    let api_version = shared.resources[params.resource].api_version();
    let shutdown = shared.shutdown.clone();
    let bookmark_interval = shared.bookmark_interval;
    let mut faults = listener.subscribe();
    let mut epoch = listener.watch_epoch();
    shared.tasks.spawn(async move {
        for bytes in initial {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        let Some(mut events) = events else { return };
        let deadline = tokio::time::sleep(params.timeout);
        tokio::pin!(deadline);
        let mut bookmarks = tokio::time::interval(bookmark_interval);
        bookmarks.tick().await;
        loop {
            let bytes = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = &mut deadline => return,
                _ = epoch.changed() => return,
                _ = bookmarks.tick(), if params.bookmarks => line("BOOKMARK", &json!({
                    "kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": last_rv.to_string()},
                })),
                event = events.recv() => match event {
                    Ok(e) => {
                        last_rv = e.rv;
                        if !params.matches(e.resource, &e.namespace, &e.object) {
                            continue;
                        }
                        // Measured from the commit, so delays of successive events do not add up.
                        let delay = {
                            let f = faults.borrow();
                            if f.applies_to("watch") { f.watch_delay } else { Duration::ZERO }
                        };
                        tokio::time::sleep_until(e.at + delay).await;
                        params.event(e.kind.as_str(), &e.object)
                    }
                    // Too slow: dropped, as kube-apiserver drops a watcher whose buffer is full.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            };
            // A black-holed listener delivers nothing until the fault is lifted.
            let stalled = |f: &crate::Faults| f.black_hole && f.applies_to("watch");
            if faults.wait_for(|f| !stalled(f)).await.is_err() || tx.send(bytes).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
