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

use crate::lock::kube::{WATCH_TIMEOUT_SECONDS, is_no_newer, lock_error};
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

    /// Caches and broadcasts `lease`, unless the cache holds that version or a newer one.
    fn apply(&self, lease: Lease) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let record = LeaderElectionRecord::from_lease_spec(lease.spec.as_ref());
        let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut cache = self.cache();
        if cache.get(&name).is_some_and(|c| {
            is_no_newer(
                &resource_version,
                c.lease.metadata.resource_version.as_deref(),
            )
        }) {
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

    /// Subscribes to the set's list+watch (no request): first the cached Lease, then every change of this
    /// Lease, each only if it is newer than `resource_version`, than the last change delivered, and than
    /// the newest version this lock has read or written (rule 14, a lock never rewinds: the list+watch
    /// lags behind this lock's own writes, and delivers what they replaced after them). Ends when this
    /// subscriber falls more than [`BUFFER`] changes behind (the elector reopens it and reads the Lease
    /// when it has been silent).
    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>> {
        async move {
            let receiver = self.hub.changes.subscribe();
            let remembered = self.lock.remembered();
            let cached = self.hub.cache().get(&self.name).map(|c| c.lease.clone());
            let name = self.name.clone();
            let mut delivered = resource_version.to_owned();
            let first = futures::stream::iter(cached.map(Change::from_lease));
            let rest = tokio_stream::wrappers::BroadcastStream::new(receiver)
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(|r| futures::future::ready(r.ok()));
            let events = first.chain(rest).filter_map(move |c| {
                let stale = c.name != name
                    || is_no_newer(&c.resource_version, Some(&delivered))
                    || remembered.has_seen(&c.resource_version);
                let event = (!stale).then(|| {
                    delivered.clone_from(&c.resource_version);
                    Ok(match c.lease {
                        Some(lease) => LeaseEvent::Applied(remembered.remember(lease)),
                        None => LeaseEvent::Deleted(c.resource_version),
                    })
                });
                futures::future::ready(event)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fake_apiserver::FakeApiServer;
    use kube::api::{ObjectMeta, Patch, PatchParams};

    use super::*;

    fn client(server: &FakeApiServer) -> kube::Client {
        KubeLeaseLock::client_for_url(&server.url()).unwrap()
    }

    /// Lease `work-0` at `resource_version`, held by `holder`.
    fn lease(resource_version: &str, holder: &str) -> Lease {
        let record = LeaderElectionRecord {
            holder_identity: holder.to_owned(),
            lease_duration_seconds: 2,
            ..LeaderElectionRecord::default()
        };
        Lease {
            metadata: ObjectMeta {
                name: Some("work-0".to_owned()),
                namespace: Some("default".to_owned()),
                resource_version: Some(resource_version.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(record.to_lease_spec()),
        }
    }

    /// The next event, within 10 s (the changes are broadcast before the stream is read).
    async fn next(events: &mut LeaseEventStream) -> LeaseEvent {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("no error")
    }

    /// Rule 14: a change the list+watch delivers late, older than the version a shard's watch is opened
    /// from, is not delivered to it (it would overwrite what the lock knows with an older Lease); the
    /// next newer change, and a deletion after it, are. resourceVersions compare as integers ("9" < "12").
    #[tokio::test]
    async fn the_hub_drops_a_change_older_than_the_version_watched_from() {
        let server = FakeApiServer::start().await.unwrap();
        let hub = Hub::new();
        let lock = SharedLeaseLock::new(
            KubeLeaseLock::new(client(&server), "default", "work-0"),
            "work-0",
            hub.clone(),
        );
        hub.apply(lease("5", "a"));
        let mut events = lock.watch("10").await.unwrap();
        hub.apply(lease("9", "b"));
        hub.apply(lease("12", "a"));
        hub.delete("work-0", "13".to_owned());
        match next(&mut events).await {
            LeaseEvent::Applied(lease) => {
                assert_eq!(
                    (
                        lease.resource_version.as_str(),
                        lease.record.holder_identity.as_str()
                    ),
                    ("12", "a"),
                    "the first change delivered is the first newer than 10"
                );
            }
            other => panic!("expected the Lease at 12, got {other:?}"),
        }
        assert_eq!(
            next(&mut events).await,
            LeaseEvent::Deleted("13".to_owned())
        );
        server.shutdown().await;
    }

    /// Rule 14: a shard's leader watches its Lease from the version it acquired, then renews; the
    /// list+watch, lagging, delivers that acquire and that renewal after the lock made them. Neither is
    /// delivered (the lock already wrote them); a newer write by someone else (a label) is.
    #[tokio::test]
    async fn the_hub_drops_a_change_the_lock_already_wrote() {
        let server = FakeApiServer::start().await.unwrap();
        let api: kube::Api<Lease> = kube::Api::namespaced(client(&server), "default");
        let hub = Hub::new();
        let lock = SharedLeaseLock::new(
            KubeLeaseLock::new(client(&server), "default", "work-0"),
            "work-0",
            hub.clone(),
        );
        let record = |renew_time| LeaderElectionRecord {
            holder_identity: "a".to_owned(),
            lease_duration_seconds: 2,
            renew_time: Some(jiff::Timestamp::from_second(renew_time).unwrap()),
            ..LeaderElectionRecord::default()
        };
        let acquired = lock.create(&record(1)).await.unwrap();
        let as_acquired = api.get("work-0").await.unwrap();
        let mut events = lock.watch(&acquired.resource_version).await.unwrap();
        lock.update(&record(2), &acquired.resource_version)
            .await
            .unwrap();
        let as_renewed = api.get("work-0").await.unwrap();
        let labelled = api
            .patch(
                "work-0",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "a"}}})),
            )
            .await
            .unwrap();
        for lease in [as_acquired, as_renewed, labelled.clone()] {
            hub.apply(lease);
        }
        match next(&mut events).await {
            LeaseEvent::Applied(lease) => assert_eq!(
                Some(lease.resource_version),
                labelled.metadata.resource_version,
                "the first change delivered is the label, newer than the lock's own renewal"
            ),
            other => panic!("expected the labelled Lease, got {other:?}"),
        }
        server.shutdown().await;
    }
}
