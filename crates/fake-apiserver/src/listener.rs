//! Listeners: each is one address on the shared store, with its own injected faults.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::faults::Faults;

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
