//! The one list+watch of a shard set (every Lease with its label), and the [`LeaseLock`] of each of its
//! Leases, whose watches are served from it instead of one watch request per Lease.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, WatchEvent, WatchParams};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::lock::kube::{WATCH_TIMEOUT_SECONDS, lock_error};
use crate::{
    KubeLeaseLock, LeaderElectionRecord, LeaseEvent, LeaseEventStream, LeaseLock, ListedLease,
    LockError, ObservedLease,
};

/// Events buffered per subscriber; one that falls further behind has its watch ended (it reopens it).
const BUFFER: usize = 1024;

/// A Lease of the set as last seen by the list+watch.
#[derive(Clone, Debug)]
pub(super) struct Cached {
    pub(super) lease: Lease,
    pub(super) record: LeaderElectionRecord,
    /// When its election record was first seen as it is (our monotonic clock): the expiry clock of rule 2.
    pub(super) observed_at: Instant,
}

/// A change, by Lease name: the Lease as it is now, or `None` when deleted (with the deleting version).
#[derive(Clone, Debug)]
struct Change {
    name: String,
    lease: Option<Lease>,
    resource_version: String,
}

/// The shared list+watch: a cache of the set's Leases and a broadcast of their changes.
#[derive(Debug)]
pub(super) struct Hub {
    cache: Mutex<BTreeMap<String, Cached>>,
    changes: broadcast::Sender<Change>,
    /// Bumped on every change (the balancer waits on it).
    generation: watch::Sender<u64>,
}

// === impl Hub ===

impl Hub {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            cache: Mutex::default(),
            changes: broadcast::channel(BUFFER).0,
            generation: watch::Sender::new(0),
        })
    }

    pub(super) fn snapshot(&self) -> BTreeMap<String, Cached> {
        self.cache().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, lease: Lease) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let record = LeaderElectionRecord::from_lease_spec(lease.spec.as_ref());
        let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut cache = self.cache();
        if cache
            .get(&name)
            .is_some_and(|c| c.lease.metadata.resource_version == lease.metadata.resource_version)
        {
            return;
        }
        let observed_at = match cache.get(&name) {
            Some(previous) if previous.record == record => previous.observed_at,
            _ => Instant::now(),
        };
        cache.insert(
            name.clone(),
            Cached {
                lease: lease.clone(),
                record,
                observed_at,
            },
        );
        drop(cache);
        let _ = self.changes.send(Change {
            name,
            lease: Some(lease),
            resource_version,
        });
        self.generation.send_modify(|g| *g += 1);
    }

    fn delete(&self, name: &str, resource_version: String) {
        if self.cache().remove(name).is_none() {
            return;
        }
        let _ = self.changes.send(Change {
            name: name.to_owned(),
            lease: None,
            resource_version,
        });
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lists and watches the Leases selected by `selector` until `shutdown`, keeping the cache and
    /// broadcasting every change. A watch that ends is resumed from the last version seen; an expired
    /// version (410 Gone), an error, a request unanswered within `request_timeout` or a watch silent for
    /// three retry periods (every replica's heartbeat changes once per retry period: the connection is
    /// dead) relists after `retry_period`.
    pub(super) async fn run(
        self: Arc<Self>,
        api: kube::Api<Lease>,
        selector: String,
        retry_period: Duration,
        request_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        let list_params = ListParams::default().labels(&selector);
        let watch_params = WatchParams::default()
            .labels(&selector)
            .timeout(WATCH_TIMEOUT_SECONDS)
            .disable_bookmarks();
        let mut warned = false;
        loop {
            let listed = tokio::select! {
                () = shutdown.cancelled() => return,
                listed = tokio::time::timeout(request_timeout, api.list(&list_params)) => listed,
            };
            let list = match listed {
                Ok(Ok(list)) => list,
                failed => {
                    if !std::mem::replace(&mut warned, true) {
                        let error = match failed {
                            Ok(Err(err)) => lock_error(err),
                            _ => LockError::Timeout,
                        };
                        warn!(%error, %selector, "listing the shard set's leases failed; retrying");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry_period) => continue,
                    }
                }
            };
            warned = false;
            let mut resource_version = list.metadata.resource_version.clone().unwrap_or_default();
            let listed: Vec<String> = list
                .items
                .iter()
                .filter_map(|l| l.metadata.name.clone())
                .collect();
            let vanished: Vec<String> = self
                .cache()
                .keys()
                .filter(|name| !listed.contains(name))
                .cloned()
                .collect();
            for name in vanished {
                self.delete(&name, resource_version.clone());
            }
            for lease in list.items {
                self.apply(lease);
            }
            // Watch, resuming from the last version seen, until the version expires or a request fails.
            loop {
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    opened = tokio::time::timeout(request_timeout, api.watch(&watch_params, &resource_version)) => opened,
                };
                let Ok(Ok(stream)) = opened else { break };
                let mut stream = stream.boxed();
                let mut failed = false;
                loop {
                    let event = tokio::select! {
                        () = shutdown.cancelled() => return,
                        event = stream.next() => event,
                        () = tokio::time::sleep(3 * retry_period) => {
                            failed = true;
                            break;
                        }
                    };
                    match event {
                        Some(Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease))) => {
                            if let Some(rv) = &lease.metadata.resource_version {
                                resource_version.clone_from(rv);
                            }
                            self.apply(lease);
                        }
                        Some(Ok(WatchEvent::Deleted(lease))) => {
                            let rv = lease.metadata.resource_version.clone().unwrap_or_default();
                            resource_version.clone_from(&rv);
                            if let Some(name) = &lease.metadata.name {
                                self.delete(name, rv);
                            }
                        }
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            resource_version = b.metadata.resource_version;
                        }
                        Some(Ok(WatchEvent::Error(_)) | Err(_)) => {
                            failed = true;
                            break;
                        }
                        None => break,
                    }
                }
                if failed {
                    break;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry_period) => {}
            }
        }
    }
}

/// Whether version `a` is newer than `b`. Versions are opaque to clients, but kube-apiserver's (etcd's)
/// and the fake's are increasing integers; anything else counts as newer, so that a cached Lease is
/// delivered (a stale delivery only costs a conflict on the next write).
fn newer(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => a != b,
    }
}

/// The [`LeaseLock`] of one Lease of a shard set: reads and writes go to the API server through a
/// [`KubeLeaseLock`]; watches are served from the set's one list+watch.
#[derive(Debug)]
pub(super) struct SharedLeaseLock {
    lock: KubeLeaseLock,
    name: String,
    hub: Arc<Hub>,
}

// === impl SharedLeaseLock ===

impl SharedLeaseLock {
    pub(super) fn new(lock: KubeLeaseLock, name: &str, hub: Arc<Hub>) -> Self {
        Self {
            lock,
            name: name.to_owned(),
            hub,
        }
    }
}

impl LeaseLock for SharedLeaseLock {
    fn get(&self) -> BoxFuture<'_, Result<Option<ObservedLease>, LockError>> {
        self.lock.get()
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        self.lock.create(record)
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        self.lock.update(record, resource_version)
    }

    fn list(&self) -> BoxFuture<'_, Result<ListedLease, LockError>> {
        self.lock.list()
    }

    /// Subscribes to the set's list+watch (no request): first the cached Lease if it is newer than
    /// `resource_version`, then every change of this Lease. Ends when this subscriber falls more than
    /// [`BUFFER`] changes behind (the elector reopens it and reads the Lease when it has been silent).
    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>> {
        async move {
            let receiver = self.hub.changes.subscribe();
            let remember = self.lock.rememberer();
            let cached = self
                .hub
                .cache()
                .get(&self.name)
                .filter(|c| {
                    c.lease
                        .metadata
                        .resource_version
                        .as_deref()
                        .is_some_and(|rv| newer(rv, resource_version))
                })
                .map(|c| c.lease.clone());
            let name = self.name.clone();
            let first = futures::stream::iter(cached.map(Change::from_lease));
            let rest = tokio_stream::wrappers::BroadcastStream::new(receiver)
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()));
            let events = first
                .chain(rest)
                .filter(move |c| futures::future::ready(c.name == name))
                .map(move |c| {
                    Ok(match c.lease {
                        Some(lease) => LeaseEvent::Applied(remember(lease)),
                        None => LeaseEvent::Deleted(c.resource_version),
                    })
                });
            Ok(events.boxed())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.lock.describe()
    }

    /// When the set's list+watch first saw this record, if it is the one cached.
    fn first_seen(&self, lease: &ObservedLease) -> Option<Instant> {
        self.hub
            .cache()
            .get(&self.name)
            .filter(|c| c.record == lease.record)
            .map(|c| c.observed_at)
    }
}

// === impl Change ===

impl Change {
    fn from_lease(lease: Lease) -> Self {
        Self {
            name: lease.metadata.name.clone().unwrap_or_default(),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
            lease: Some(lease),
        }
    }
}
