//! Listeners: each is one address on the shared store, with its own injected faults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::faults::Faults;

/// One listening address on the shared store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Listener {
    id: usize,
    addr: SocketAddr,
    /// Served over TLS: its URL is `https://`.
    tls: bool,
    faults: Arc<watch::Sender<Faults>>,
    /// Bumped by [`Listener::drop_watches`]: every watch open on this listener ends.
    watch_epoch: Arc<watch::Sender<u64>>,
    /// Connections accepted so far.
    connections: Arc<AtomicU64>,
}

impl Listener {
    pub(crate) fn new(id: usize, addr: SocketAddr, tls: bool) -> Self {
        Self {
            id,
            addr,
            tls,
            faults: Arc::new(watch::Sender::new(Faults::default())),
            watch_epoch: Arc::new(watch::Sender::new(0)),
            connections: Arc::new(AtomicU64::new(0)),
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

    /// Base URL, `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` when the server serves TLS
    /// ([`crate::Builder::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// TCP connections accepted on this listener since it opened: what a client's connection reuse (or a
    /// handshake on the critical path) shows as.
    pub fn connections_accepted(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection accepted; its number on this listener (the first is 1).
    pub(crate) fn accepted(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
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

    /// Ends every watch open on this listener now, as a load balancer or an API server restart cuts
    /// them: each stream ends cleanly (the client sees the end of the body and re-watches). Watches
    /// started afterwards are not affected.
    pub fn drop_watches(&self) {
        self.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    pub(crate) fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Faults> {
        self.faults.subscribe()
    }
}
