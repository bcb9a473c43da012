//! The state one server's listeners, routes and tasks share: the store, the listeners, the request
//! statistics, the shutdown token and task tracker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::Listener;
use crate::resource::ResourceType;
use crate::serve;
use crate::store::Store;
use crate::tls::Tls;
use crate::{AnswerCount, Count, RequestRecord};

/// What the server counts and logs of the requests it serves.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) counts: BTreeMap<(usize, String, String), u64>,
    pub(crate) answers: BTreeMap<(String, String, u16), u64>,
    pub(crate) log: VecDeque<RequestRecord>,
}

/// The state of one server, shared by its listeners, routes and tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) resources: Vec<ResourceType>,
    pub(crate) listeners: Mutex<Vec<Listener>>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) log_limit: usize,
    pub(crate) bookmark_interval: Duration,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// `Some`: only these namespaces exist.
    pub(crate) namespaces: Option<Vec<String>>,
    /// Namespaces being deleted: nothing can be created in them (see `namespaces.rs`).
    pub(crate) terminating_namespaces: Mutex<BTreeSet<String>>,
    /// `Some`: every listener serves TLS ([`crate::Builder::tls`]).
    pub(crate) tls: Option<Arc<Tls>>,
}

// === impl Shared ===

impl Shared {
    /// Whether namespace `name` exists (every name does unless [`crate::Builder::existing_namespaces`]).
    pub(crate) fn namespace_exists(&self, name: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn terminating_namespaces(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.terminating_namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn listeners(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn listener(&self, id: usize) -> Option<Listener> {
        self.listeners().get(id).cloned()
    }

    /// Binds synchronously (a std listener made non-blocking), so that the admin route can open listeners.
    pub(crate) fn add_listener(shared: &Arc<Self>, addr: SocketAddr) -> std::io::Result<Listener> {
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        let socket = TcpListener::from_std(socket)?;
        let mut listeners = shared.listeners();
        let listener = Listener::new(listeners.len(), socket.local_addr()?, shared.tls.is_some());
        listeners.push(listener.clone());
        drop(listeners);
        shared
            .tasks
            .spawn(serve::serve(shared.clone(), listener.clone(), socket));
        Ok(listener)
    }

    pub(crate) fn reset_stats(&self) {
        *self.stats() = Stats::default();
    }

    pub(crate) fn counts(&self) -> Vec<Count> {
        self.stats()
            .counts
            .iter()
            .map(|((listener, verb, resource), count)| Count {
                listener: *listener,
                verb: verb.clone(),
                resource: resource.clone(),
                count: *count,
            })
            .collect()
    }

    pub(crate) fn answer_counts(&self) -> Vec<AnswerCount> {
        self.stats()
            .answers
            .iter()
            .map(|((resource, verb, code), count)| AnswerCount {
                resource: resource.clone(),
                verb: verb.clone(),
                code: *code,
                count: *count,
            })
            .collect()
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        let mut stats = self.stats();
        if let Some(code) = record.code {
            *stats
                .answers
                .entry((record.resource.clone(), record.verb.clone(), code))
                .or_default() += 1;
        }
        *stats
            .counts
            .entry((
                record.listener,
                record.verb.clone(),
                record.resource.clone(),
            ))
            .or_default() += 1;
        if stats.log.len() >= self.log_limit {
            stats.log.pop_front();
        }
        if self.log_limit > 0 {
            stats.log.push_back(record);
        }
    }
}
