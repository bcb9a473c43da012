//! `MemoryLeaseLock`: an in-memory [`LeaseLock`] with the API server's outcomes, for tests and simulation.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use super::{LeaseEvent, LeaseEventStream, LeaseLock, ListedLease, LockError, ObservedLease};
use crate::LeaderElectionRecord;

/// How many watch events a slow watcher may fall behind before its watch ends with [`LockError::Gone`].
const WATCH_BUFFER: usize = 64;

/// One Lease in memory, shared by any number of [`MemoryLeaseLock`]s (one per candidate).
///
/// It answers as kube-apiserver does for one Lease: a global increasing `resourceVersion`, 404 on a
/// missing Lease, 409 AlreadyExists on a second create, 409 Conflict on a stale `resourceVersion`, a
/// watch that delivers every change in order, and Gone for a watch from a version older than its history
/// (see [`MemoryLeaseStore::restart_api_server`]). It also logs every call (for tests that assert the exact
/// sequence of API calls, as client-go's fake-clientset tests do).
#[derive(Clone, Debug)]
pub struct MemoryLeaseStore {
    inner: Arc<Mutex<Store>>,
    events: broadcast::Sender<LeaseEvent>,
}

#[derive(Debug, Default)]
struct Store {
    lease: Option<ObservedLease>,
    last_resource_version: u64,
    /// A watch from a version below this one answers Gone.
    history_floor: u64,
    /// Cancelled when the API server restarts: every open watch ends.
    running: CancellationToken,
    calls: Vec<LockCall>,
}

/// One call made through a [`MemoryLeaseLock`], as logged by its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockCall {
    /// The lock's client name (usually the candidate's identity).
    pub client: String,
    /// `get`, `list`, `create`, `update` or `watch`.
    pub verb: &'static str,
    /// What the store did: `ok`; `not_found` (a `get` or `update` with no Lease); `already_exists` (a
    /// `create`); `conflict` (an `update` with a stale resourceVersion); `gone` (a `watch` from a
    /// resourceVersion older than the history); `forbidden` (a `watch` under [`LockFault::forbid_watch`]);
    /// `error` (any call under [`LockFault::fail`]); `hang` (any call under [`LockFault::hang`], logged
    /// when it starts hanging). A write under [`LockFault::commit_then_fail`] is logged as the store
    /// applied it (`ok`) although its caller gets [`LockError::Timeout`]; a call dropped during
    /// [`LockFault::delay`] is not logged.
    pub outcome: &'static str,
}

/// Faults injected into one [`MemoryLeaseLock`]: how this candidate's API access misbehaves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockFault {
    /// Added before every call is served.
    pub delay: Duration,
    /// Every call fails with a 500 InternalError, and open watches end.
    pub fail: bool,
    /// Every call hangs forever (black hole), and open watches go silent.
    pub hang: bool,
    /// Writes are applied, then the call fails as if the response were lost.
    pub commit_then_fail: bool,
    /// Watching is forbidden (403), as with RBAC that grants no `watch`.
    pub forbid_watch: bool,
}

// === impl MemoryLeaseStore ===

impl Default for MemoryLeaseStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLeaseStore {
    /// An empty store: the Lease does not exist yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            events: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    /// A lock on this store for candidate `client`, with no faults.
    #[must_use]
    pub fn lock(&self, client: &str) -> MemoryLeaseLock {
        MemoryLeaseLock {
            store: self.clone(),
            client: client.to_string(),
            fault: Arc::default(),
        }
    }

    /// The Lease as stored now, if any.
    #[must_use]
    pub fn lease(&self) -> Option<ObservedLease> {
        self.state().lease.clone()
    }

    /// Writes `record` unconditionally, as another writer (kubectl, a test) would; returns the new version.
    pub fn put(&self, record: LeaderElectionRecord) -> ObservedLease {
        let mut state = self.state();
        self.write(&mut state, record)
    }

    /// Deletes the Lease, if it exists.
    pub fn delete(&self) {
        let mut state = self.state();
        if state.lease.take().is_some() {
            state.last_resource_version += 1;
            let rv = state.last_resource_version.to_string();
            let _ = self.events.send(LeaseEvent::Deleted(rv));
        }
    }

    /// Restarts the API server, as its watchers see it: every open watch ends, and a watch from any version
    /// before now answers Gone, as kube-apiserver's watch cache does after a restart (it starts again from a
    /// list, at a `resourceVersion` that writes to other objects have moved past the Lease's). A watch from
    /// the version of a Lease older than the watch cache's history (about 75 s) answers Gone the same way,
    /// without a restart.
    pub fn restart_api_server(&self) {
        let mut state = self.state();
        // Other objects of the collection were written: the collection's version is past the Lease's.
        state.last_resource_version += 1;
        state.history_floor = state.last_resource_version;
        state.running.cancel();
        state.running = CancellationToken::new();
    }

    /// Every call made so far, in order.
    #[must_use]
    pub fn calls(&self) -> Vec<LockCall> {
        self.state().calls.clone()
    }

    /// The calls made by `client`, as `verb` or `verb:outcome` when the outcome is not `ok`.
    #[must_use]
    pub fn calls_of(&self, client: &str) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.client == client)
            .map(|c| match c.outcome {
                "ok" => c.verb.to_string(),
                outcome => format!("{}:{outcome}", c.verb),
            })
            .collect()
    }

    /// Forgets the calls logged so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    fn state(&self) -> MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, state: &mut Store, record: LeaderElectionRecord) -> ObservedLease {
        state.last_resource_version += 1;
        let observed = ObservedLease {
            record,
            resource_version: state.last_resource_version.to_string(),
        };
        state.lease = Some(observed.clone());
        let _ = self.events.send(LeaseEvent::Applied(observed.clone()));
        observed
    }
}

/// A candidate's handle on a [`MemoryLeaseStore`], with its own injectable [`LockFault`].
#[derive(Clone, Debug)]
pub struct MemoryLeaseLock {
    store: MemoryLeaseStore,
    client: String,
    fault: Arc<Mutex<LockFault>>,
}

// === impl MemoryLeaseLock ===

impl MemoryLeaseLock {
    /// Replaces this lock's faults; takes effect for the next call (and open watches).
    pub fn set_fault(&self, fault: LockFault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// This lock's current faults.
    #[must_use]
    pub fn fault(&self) -> LockFault {
        self.fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The store this lock reads and writes.
    #[must_use]
    pub fn store(&self) -> &MemoryLeaseStore {
        &self.store
    }

    fn log(&self, verb: &'static str, outcome: &'static str) {
        self.store.state().calls.push(LockCall {
            client: self.client.clone(),
            verb,
            outcome,
        });
    }

    /// Applies the injected delay, hang and failure; `Err` ends the call.
    async fn enter(&self, verb: &'static str) -> Result<LockFault, LockError> {
        let fault = self.fault();
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        let fault = self.fault();
        if fault.hang {
            self.log(verb, "hang");
            futures::future::pending::<()>().await;
        }
        if fault.fail {
            self.log(verb, "error");
            return Err(injected_error());
        }
        Ok(fault)
    }

    /// Logs the outcome of a write and turns a committed write into a lost response when asked.
    fn finish_write(
        &self,
        verb: &'static str,
        fault: &LockFault,
        result: Result<ObservedLease, LockError>,
    ) -> Result<ObservedLease, LockError> {
        self.log(verb, outcome(&result));
        match result {
            Ok(_) if fault.commit_then_fail => Err(LockError::Timeout),
            other => other,
        }
    }
}

fn injected_error() -> LockError {
    LockError::Api {
        code: 500,
        reason: "InternalError".into(),
        message: "injected fault".into(),
    }
}

fn outcome<T>(result: &Result<T, LockError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(LockError::NotFound) => "not_found",
        Err(LockError::AlreadyExists) => "already_exists",
        Err(LockError::Conflict) => "conflict",
        Err(_) => "error",
    }
}

impl LeaseLock for MemoryLeaseLock {
    fn get(&self) -> BoxFuture<'_, Result<Option<ObservedLease>, LockError>> {
        async move {
            self.enter("get").await?;
            let lease = self.store.lease();
            self.log("get", if lease.is_some() { "ok" } else { "not_found" });
            Ok(lease)
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        async move {
            let fault = self.enter("create").await?;
            let result = {
                let mut state = self.store.state();
                if state.lease.is_some() {
                    Err(LockError::AlreadyExists)
                } else {
                    Ok(self.store.write(&mut state, record.clone()))
                }
            };
            self.finish_write("create", &fault, result)
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        async move {
            let fault = self.enter("update").await?;
            let result = {
                let mut state = self.store.state();
                match &state.lease {
                    None => Err(LockError::NotFound),
                    Some(lease) if lease.resource_version != resource_version => {
                        Err(LockError::Conflict)
                    }
                    Some(_) => Ok(self.store.write(&mut state, record.clone())),
                }
            };
            self.finish_write("update", &fault, result)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<ListedLease, LockError>> {
        async move {
            self.enter("list").await?;
            let listed = {
                let state = self.store.state();
                ListedLease {
                    lease: state.lease.clone(),
                    resource_version: state.last_resource_version.to_string(),
                }
            };
            self.log("list", "ok");
            Ok(listed)
        }
        .boxed()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>> {
        async move {
            let fault = self.enter("watch").await?;
            if fault.forbid_watch {
                self.log("watch", "forbidden");
                return Err(LockError::Forbidden(
                    "leases.coordination.k8s.io is forbidden: cannot watch".into(),
                ));
            }
            // Subscribe under the store lock, so no change falls between the catch-up and the stream.
            let (catch_up, receiver, running) = {
                let state = self.store.state();
                if resource_version.parse().unwrap_or(0) < state.history_floor {
                    drop(state);
                    self.log("watch", "gone");
                    // As kube-apiserver answers: a watch whose one event is the 410 Expired error.
                    return Ok(futures::stream::iter([Err(LockError::Gone)]).boxed());
                }
                let receiver = self.store.events.subscribe();
                let current = state.last_resource_version.to_string();
                let catch_up = (current != resource_version).then(|| match &state.lease {
                    Some(lease) => LeaseEvent::Applied(lease.clone()),
                    None => LeaseEvent::Deleted(current),
                });
                (catch_up, receiver, state.running.clone())
            };
            self.log("watch", "ok");
            let fault = Arc::clone(&self.fault);
            let live = BroadcastStream::new(receiver)
                .take_until(running.cancelled_owned())
                .map(|event| match event {
                    Ok(event) => Ok(event),
                    Err(BroadcastStreamRecvError::Lagged(_)) => Err(LockError::Gone),
                })
                .then(move |event| {
                    let fault = fault.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    async move {
                        if fault.hang {
                            futures::future::pending::<()>().await;
                        }
                        if fault.fail {
                            return Err(injected_error());
                        }
                        event
                    }
                });
            let stream = futures::stream::iter(catch_up.map(Ok)).chain(live);
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("memory/{}", self.client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            ..LeaderElectionRecord::default()
        }
    }

    #[tokio::test]
    async fn answers_like_the_api_server() {
        let store = MemoryLeaseStore::new();
        let a = store.lock("a");
        assert!(a.get().await.unwrap().is_none());
        let created = a.create(&record("a")).await.unwrap();
        assert!(matches!(
            a.create(&record("a")).await,
            Err(LockError::AlreadyExists)
        ));
        let updated = a
            .update(&record("a"), &created.resource_version)
            .await
            .unwrap();
        assert_ne!(updated.resource_version, created.resource_version);
        assert!(matches!(
            a.update(&record("b"), &created.resource_version).await,
            Err(LockError::Conflict)
        ));
        assert_eq!(store.lease().unwrap(), updated);
        assert_eq!(
            store.calls_of("a"),
            [
                "get:not_found",
                "create",
                "create:already_exists",
                "update",
                "update:conflict"
            ]
        );
    }

    #[tokio::test]
    async fn watch_catches_up_then_streams_every_change() {
        let store = MemoryLeaseStore::new();
        let a = store.lock("a");
        let first = a.create(&record("a")).await.unwrap();
        let second = store.put(record("b"));
        let mut events = a.watch(&first.resource_version).await.unwrap();
        assert_eq!(
            events.next().await.unwrap().unwrap(),
            LeaseEvent::Applied(second.clone())
        );
        let third = store.put(record("c"));
        assert_eq!(
            events.next().await.unwrap().unwrap(),
            LeaseEvent::Applied(third)
        );
        store.delete();
        assert!(matches!(
            events.next().await.unwrap().unwrap(),
            LeaseEvent::Deleted(_)
        ));
    }

    #[tokio::test]
    async fn after_a_restart_old_versions_are_gone_and_a_list_gives_one_to_resume_from() {
        let store = MemoryLeaseStore::new();
        let a = store.lock("a");
        let created = a.create(&record("a")).await.unwrap();
        let mut open = a.watch(&created.resource_version).await.unwrap();
        store.restart_api_server();
        assert!(open.next().await.is_none(), "open watches end");
        let mut gone = a.watch(&created.resource_version).await.unwrap();
        assert!(matches!(gone.next().await, Some(Err(LockError::Gone))));
        assert!(gone.next().await.is_none());

        let listed = a.list().await.unwrap();
        assert_eq!(
            listed.lease.as_ref(),
            Some(&created),
            "the Lease is unchanged"
        );
        assert_ne!(listed.resource_version, created.resource_version);
        let mut resumed = a.watch(&listed.resource_version).await.unwrap();
        let next = store.put(record("b"));
        assert_eq!(
            resumed.next().await.unwrap().unwrap(),
            LeaseEvent::Applied(next)
        );
        assert_eq!(
            store.calls_of("a"),
            ["create", "watch", "watch:gone", "list", "watch"]
        );
    }

    #[tokio::test]
    async fn faults_are_per_lock() {
        let store = MemoryLeaseStore::new();
        let (a, b) = (store.lock("a"), store.lock("b"));
        a.set_fault(LockFault {
            fail: true,
            ..LockFault::default()
        });
        assert!(matches!(
            a.get().await,
            Err(LockError::Api { code: 500, .. })
        ));
        assert!(b.get().await.is_ok());
        a.set_fault(LockFault {
            commit_then_fail: true,
            ..LockFault::default()
        });
        assert!(matches!(
            a.create(&record("a")).await,
            Err(LockError::Timeout)
        ));
        assert_eq!(store.lease().unwrap().record.holder_identity, "a");
        b.set_fault(LockFault {
            forbid_watch: true,
            ..LockFault::default()
        });
        assert!(matches!(b.watch("1").await, Err(LockError::Forbidden(_))));
    }
}
