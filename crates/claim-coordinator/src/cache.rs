//! The binder's own writes, laid over its reflector stores until their watch brings them back: a batch
//! never acts on a version older than one it wrote itself, and the echo of its own write does not start
//! another batch.
//!
//! A store fed by a watch lags the writes it sees answered: the response to a PUT comes before the watch
//! event that carries it. Without this overlay, the batch after a bind could see the claim still pending
//! and its host still free, and take a second host for it (the host's resourceVersion would be current, so
//! nothing would refuse that write). kube-controller-manager's PersistentVolume binder keeps its own writes
//! in its cache for the same reason (`storeObjectUpdate` in
//! `pkg/controller/volume/persistentvolume/pv_controller_base.go`), and client-go has a `MutationCache`
//! (`tools/cache/mutation_cache.go`); both compare resourceVersions as integers. This one does not: a
//! resourceVersion is opaque (kube-apiserver's API concepts), so it remembers which versions each of its
//! writes replaced, and a store version among them is older than its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::provider::Object;

/// Hosts and claims the binder wrote in one term.
#[derive(Debug)]
pub(crate) struct Writes<H, C> {
    pub(crate) hosts: Written<H>,
    pub(crate) claims: Written<C>,
}

impl<H, C> Default for Writes<H, C> {
    fn default() -> Self {
        Self {
            hosts: Written::default(),
            claims: Written::default(),
        }
    }
}

/// Objects of one kind the binder wrote, by `(namespace, name)`, until the store has them.
#[derive(Debug)]
pub(crate) struct Written<K> {
    objects: Mutex<BTreeMap<(String, String), Entry<K>>>,
}

/// The last version written of one object, and the resourceVersions that version replaced (the one read
/// before the first write, then each written but the last).
#[derive(Debug)]
struct Entry<K> {
    latest: Arc<K>,
    older: BTreeSet<String>,
}

impl<K> Default for Written<K> {
    fn default() -> Self {
        Self {
            objects: Mutex::new(BTreeMap::new()),
        }
    }
}

// === impl Written ===

impl<K: Object> Written<K> {
    fn key(object: &K) -> (String, String) {
        (object.namespace().unwrap_or_default(), object.name_any())
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Entry<K>>> {
        // A panic while the lock was held left a consistent map (every update is one insert or remove).
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the binder replaced `before` by `after` (the API server's answer).
    pub(crate) fn record(&self, before: &K, after: &K) {
        let mut objects = self.objects();
        let entry = objects.entry(Self::key(after)).or_insert_with(|| Entry {
            latest: Arc::new(after.clone()),
            older: BTreeSet::new(),
        });
        if let Some(rv) = before.resource_version() {
            entry.older.insert(rv);
        }
        if let Some(rv) = entry.latest.resource_version()
            && Some(&rv) != after.resource_version().as_ref()
        {
            entry.older.insert(rv);
        }
        entry.latest = Arc::new(after.clone());
    }

    /// The store's objects, each replaced by the binder's own write while the store still shows a version
    /// that write replaced. Entries the store has caught up with (or moved past: someone wrote after us)
    /// are forgotten, and so are those of objects the store no longer has (deleted).
    pub(crate) fn overlay(&self, state: Vec<Arc<K>>) -> Vec<K> {
        let mut objects = self.objects();
        let mut seen = BTreeSet::new();
        let view = state
            .into_iter()
            .map(|stored| {
                let key = Self::key(&stored);
                let ours = objects.get(&key).and_then(|entry| {
                    stored
                        .resource_version()
                        .is_some_and(|rv| entry.older.contains(&rv))
                        .then(|| entry.latest.clone())
                });
                seen.insert(key.clone());
                match ours {
                    Some(ours) => K::clone(&ours),
                    None => {
                        objects.remove(&key);
                        K::clone(&stored)
                    }
                }
            })
            .collect();
        objects.retain(|key, _| seen.contains(key));
        view
    }

    /// Whether a watch event may change a batch's decisions: not for a version the binder wrote or
    /// replaced (the echo of its own write; once its last write is seen, the entry is forgotten), nor
    /// for the initial list's objects before it is complete (`InitDone` counts). A deletion always does.
    pub(crate) fn is_news(&self, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
            watcher::Event::InitDone => true,
            watcher::Event::Delete(object) => {
                self.objects().remove(&Self::key(object));
                true
            }
            watcher::Event::Apply(object) => {
                let mut objects = self.objects();
                let key = Self::key(object);
                let Some(entry) = objects.get(&key) else {
                    return true;
                };
                let rv = object.resource_version();
                if rv == entry.latest.resource_version() {
                    objects.remove(&key);
                    false
                } else {
                    !rv.is_some_and(|rv| entry.older.contains(&rv))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::resources::PhysicalHost;

    fn host(name: &str, rv: &str, consumed: bool) -> PhysicalHost {
        let mut host = PhysicalHost::new(name, crate::resources::PhysicalHostSpec::default());
        host.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("pool".into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        };
        if consumed {
            host.spec.consumer_ref = Some(crate::resources::ConsumerRef::default());
        }
        host
    }

    fn names_and_versions(view: &[PhysicalHost]) -> Vec<(String, String)> {
        view.iter()
            .map(|h| (h.name_any(), h.resource_version().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn own_writes_cover_the_versions_they_replaced_until_the_store_has_them() {
        let written = Written::default();
        let read = host("h-1", "10", false);
        let claimed = host("h-1", "11", true);
        let marked = host("h-1", "12", true);
        written.record(&read, &claimed);
        written.record(&claimed, &marked);
        let other = Arc::new(host("h-2", "5", false));
        // The store still shows the version read: the binder sees its last write.
        let view = written.overlay(vec![Arc::new(read.clone()), other.clone()]);
        assert_eq!(
            names_and_versions(&view),
            [("h-1".into(), "12".into()), ("h-2".into(), "5".into())]
        );
        // The echoes of both writes start no batch; the last one makes the entry go.
        assert!(!written.is_news(&watcher::Event::Apply(claimed.clone())));
        assert!(!written.is_news(&watcher::Event::Apply(marked.clone())));
        assert!(written.objects().is_empty());
        // Now the store is the truth again, whatever it shows.
        let view = written.overlay(vec![Arc::new(read), other]);
        assert_eq!(names_and_versions(&view)[0], ("h-1".into(), "10".into()));
    }

    #[test]
    fn a_later_write_by_someone_else_or_a_deletion_wins() {
        let written = Written::default();
        let read = host("h-1", "10", false);
        written.record(&read, &host("h-1", "11", true));
        // Someone wrote after us: their version is news and the store's version is shown.
        let theirs = host("h-1", "13", false);
        assert!(written.is_news(&watcher::Event::Apply(theirs.clone())));
        let view = written.overlay(vec![Arc::new(theirs)]);
        assert_eq!(names_and_versions(&view), [("h-1".into(), "13".into())]);
        assert!(written.objects().is_empty());
        // Deleted: news, and never shown again.
        written.record(&read, &host("h-1", "11", true));
        assert!(written.is_news(&watcher::Event::Delete(read.clone())));
        assert!(written.overlay(vec![]).is_empty());
        written.record(&read, &host("h-1", "11", true));
        assert!(written.overlay(vec![]).is_empty());
        assert!(
            written.objects().is_empty(),
            "gone from the store: forgotten"
        );
    }

    #[test]
    fn the_initial_list_counts_once_complete() {
        let written: Written<PhysicalHost> = Written::default();
        assert!(!written.is_news(&watcher::Event::Init));
        assert!(!written.is_news(&watcher::Event::InitApply(host("h", "1", false))));
        assert!(written.is_news(&watcher::Event::InitDone));
        assert!(written.is_news(&watcher::Event::Apply(host("h", "2", false))));
    }
}
