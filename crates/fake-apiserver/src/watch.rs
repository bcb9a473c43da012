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

use crate::body::Body;
use crate::listener::Listener;
use crate::resource::ResourceType;
use crate::selector::Selector;
use crate::shared::Shared;
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

/// What a watch sends next, once taken from the store or its bookmark timer.
enum Next {
    /// A live event matching the watch, sent after the listener's watch delay.
    Event(Arc<Event>),
    /// A BOOKMARK line, sent at once.
    Bookmark(Bytes),
}

/// Starts a watch stream: the history (or current state) first, then live events, until the timeout, the
/// client leaving, shutdown, or the watcher falling `watch_buffer` events behind (then it is dropped). An
/// event or bookmark held by a fault (a black hole, a watch delay) is delivered before the timeout or
/// [`Listener::drop_watches`] end the stream; shutdown and the client leaving end it at once.
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
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = &mut deadline => return,
                _ = epoch.changed() => return,
                _ = bookmarks.tick(), if params.bookmarks => Next::Bookmark(line("BOOKMARK", &json!({
                    "kind": kind, "apiVersion": api_version,
                    "metadata": {"resourceVersion": last_rv.to_string()},
                }))),
                event = events.recv() => match event {
                    Ok(e) => {
                        last_rv = e.rv;
                        if !params.matches(e.resource, &e.namespace, &e.object) {
                            continue;
                        }
                        Next::Event(e)
                    }
                    // Too slow: dropped, as kube-apiserver drops a watcher whose buffer is full.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
            };
            let deliver = async {
                let bytes = match next {
                    Next::Event(e) => {
                        // Measured from the commit, so delays of successive events do not add up.
                        let delay = {
                            let f = faults.borrow();
                            if f.applies_to("watch") { f.watch_delay } else { Duration::ZERO }
                        };
                        tokio::time::sleep_until(e.at + delay).await;
                        params.event(e.kind.as_str(), &e.object)
                    }
                    Next::Bookmark(bytes) => bytes,
                };
                // A black-holed listener delivers nothing until the fault is lifted.
                let stalled = |f: &crate::Faults| f.black_hole && f.applies_to("watch");
                faults.wait_for(|f| !stalled(f)).await.is_ok() && tx.send(bytes).await.is_ok()
            };
            // A fault can hold a taken event for as long as it is in force (a black hole) or set (a watch
            // delay): shutdown and the client leaving end the watch meanwhile, or shutdown would wait on it
            // as long. The timeout and `drop_watches` take effect once it is delivered, as before:
            // a black-holed client must not see its stream end.
            let delivered = tokio::select! {
                () = shutdown.cancelled() => false,
                () = tx.closed() => false,
                delivered = deliver => delivered,
            };
            if !delivered {
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

#[cfg(test)]
mod tests {
    //! A watch a fault holds (a black hole stalling it, a watch delay) still ends on shutdown and when its
    //! client goes away: shutdown once waited forever on a watch a black hole stalled after it took an event or
    //! a bookmark.

    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::{FakeApiServer, Faults, Listener};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

    /// A liveness bound, not a figure: each wait takes milliseconds; a loaded machine must not fail a test.
    const LIVENESS: Duration = Duration::from_secs(10);

    /// Opens a watch of Leases on `addr` (`query` appended, e.g. `&allowWatchBookmarks=true`); returns its
    /// connection once the head of the answer arrived (the watch task runs).
    async fn open_watch(addr: SocketAddr, query: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {LEASES}?watch=true{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        stream
    }

    /// Reads the watch on `stream` until `n` BOOKMARK events arrived.
    async fn read_bookmarks(stream: &mut TcpStream, n: usize) {
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        while seen
            .windows(b"\"BOOKMARK\"".len())
            .filter(|w| w == b"\"BOOKMARK\"")
            .count()
            < n
        {
            let read = tokio::time::timeout(LIVENESS, stream.read(&mut buf))
                .await
                .expect("bookmarks arrive")
                .unwrap();
            assert_ne!(read, 0, "the watch ended");
            seen.extend_from_slice(&buf[..read]);
        }
    }

    /// Creates Lease `name` through `addr`: one event for every watch.
    async fn create_lease(addr: SocketAddr, name: &str) {
        let body = format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}"}}}}"#
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {LEASES} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }

    /// Polls `fact` until it holds, within [`LIVENESS`].
    async fn until(what: &str, mut fact: impl FnMut() -> bool) {
        let start = Instant::now();
        while !fact() {
            assert!(
                start.elapsed() < LIVENESS,
                "not within {LIVENESS:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A watch on a second listener that has taken a Lease's event and is held by `faults` (set on that
    /// listener once the watch is open): the server, the listener and the watch's connection.
    async fn held_watch(faults: Faults) -> (FakeApiServer, Listener, TcpStream) {
        let server = FakeApiServer::start().await.unwrap();
        let held = server.add_listener().await.unwrap();
        let watch = open_watch(held.addr(), "").await;
        held.set_faults(faults);
        create_lease(server.addr(), "x").await;
        until("the watch takes the event", || {
            server.shared.store().untaken_events() == 0
        })
        .await;
        (server, held, watch)
    }

    /// Shuts `server` down within [`LIVENESS`], printing how long it took.
    async fn shut_down(server: FakeApiServer) {
        let start = Instant::now();
        let done = tokio::time::timeout(LIVENESS, server.shutdown()).await;
        eprintln!("shutdown took {:?}", start.elapsed());
        assert!(done.is_ok(), "shutdown did not finish within {LIVENESS:?}");
    }

    /// Only the listeners' accept loops are left: every watch task (and connection) has ended.
    async fn until_only_listeners_run(server: &FakeApiServer) {
        until("only the listeners' tasks run", || {
            server.shared.tasks.len() == server.listeners().len()
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_ends_a_watch_stalled_by_a_black_hole_after_its_client_was_killed() {
        let (server, _, watch) = held_watch(Faults::partition()).await;
        drop(watch);
        shut_down(server).await;
    }

    #[tokio::test]
    async fn shutdown_ends_a_watch_stalled_by_a_black_hole_whose_client_still_waits() {
        let (server, _, watch) = held_watch(Faults::partition()).await;
        shut_down(server).await;
        drop(watch);
    }

    #[tokio::test]
    async fn a_watch_stalled_by_a_black_hole_ends_when_its_client_goes_away() {
        let (server, _, watch) = held_watch(Faults::partition()).await;
        drop(watch);
        until_only_listeners_run(&server).await;
        shut_down(server).await;
    }

    #[tokio::test]
    async fn shutdown_ends_a_watch_stalled_by_a_black_hole_on_a_bookmark() {
        let server = FakeApiServer::builder()
            .bookmark_interval(Duration::from_millis(20))
            .start()
            .await
            .unwrap();
        let hole = server.add_listener().await.unwrap();
        let mut watch = open_watch(hole.addr(), "&allowWatchBookmarks=true").await;
        let mut clock = open_watch(server.addr(), "&allowWatchBookmarks=true").await;
        read_bookmarks(&mut watch, 1).await;
        hole.set_faults(Faults::partition());
        // Three bookmarks on the other listener: two intervals have passed since the black hole, so the
        // watch on `hole` has taken a bookmark (no event is written) and stalls on it.
        read_bookmarks(&mut clock, 3).await;
        drop((watch, clock));
        shut_down(server).await;
    }

    /// A watch delay of an hour: the event waits in the watch task.
    fn an_hour_of_watch_delay() -> Faults {
        Faults {
            watch_delay: Duration::from_secs(3600),
            ..Faults::default()
        }
    }

    #[tokio::test]
    async fn shutdown_ends_a_watch_held_by_a_watch_delay() {
        let (server, _, watch) = held_watch(an_hour_of_watch_delay()).await;
        shut_down(server).await;
        drop(watch);
    }

    #[tokio::test]
    async fn a_watch_held_by_a_watch_delay_ends_when_its_client_goes_away() {
        let (server, _, watch) = held_watch(an_hour_of_watch_delay()).await;
        drop(watch);
        until_only_listeners_run(&server).await;
        shut_down(server).await;
    }
}
