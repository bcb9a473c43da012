//! The object store: one global resourceVersion counter, optimistic concurrency, and an event history for
//! watches sized as kube-apiserver's watch cache (see [`crate::watch_cache`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::admission::{Admission, AdmissionRequest, Operation};
use crate::managed_fields;
use crate::resource::{ResourceType, merge_patch};
use crate::status::ApiError;
use crate::storage;
use crate::watch_cache::WatchCacheCapacity;

/// Watch event types, as `watch.EventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change to one object, at one resourceVersion.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    /// When it was committed (what the watch cache's resizing compares with `history_max_age`, and what
    /// `watch_delay` counts from).
    pub(crate) at: Instant,
    pub(crate) kind: EventType,
    pub(crate) resource: usize,
    pub(crate) namespace: String,
    pub(crate) object: Arc<Value>,
}

/// Live events of a watch.
pub(crate) type Subscription = broadcast::Receiver<Arc<Event>>;

/// Key of a stored object: (resource index, namespace or "", name).
type Key = (usize, String, String);

/// A request to write one object.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) resource: usize,
    pub(crate) rt: &'a ResourceType,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) dry_run: bool,
    /// The field manager of a create, update or patch, recorded in `managedFields` as an `Update`; `None`
    /// when the caller computed the managedFields itself (server-side apply).
    pub(crate) manager: Option<&'a str>,
}

/// How an update treats `status` (the main resource keeps the stored status when a `/status` subresource
/// exists; the subresource changes only the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// How many events `history` holds before the oldest goes, grown and shrunk as kube-apiserver's.
    capacity: WatchCacheCapacity,
    /// Every event with a resourceVersion above this one is still in `history`: the oldest version a watch
    /// can start from.
    history_floor: u64,
    events: broadcast::Sender<Arc<Event>>,
    /// The ValidatingAdmissionPolicies every write passes before it is stored.
    admission: Admission,
}

impl Store {
    pub(crate) fn new(
        history_limit: usize,
        history_max_age: Duration,
        watch_buffer: usize,
    ) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            capacity: WatchCacheCapacity::new(history_limit, history_max_age),
            history_floor: 0,
            events: broadcast::channel(watch_buffer.max(1)).0,
            admission: Admission::default(),
        }
    }

    /// Evaluates the ValidatingAdmissionPolicies stored here on every write to the `resources` served.
    pub(crate) fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Admission of one write of `t`, on the object as it would be stored (`None` for a delete) and the
    /// stored one (`None` for a create): what kube-apiserver's validating admission sees, before anything
    /// is written.
    fn admit(
        &self,
        t: &Target<'_>,
        operation: Operation,
        part: Part,
        object: Option<&Value>,
        old_object: Option<&Value>,
    ) -> Result<(), ApiError> {
        self.admission.admit(
            self,
            &AdmissionRequest {
                resource: t.resource,
                subresource: (part == Part::Status).then_some("status"),
                namespace: t.namespace,
                name: t.name,
                operation,
                object,
                old_object,
                dry_run: t.dry_run,
            },
        )
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, resource: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Objects of one resource, in one namespace or all (`None`), in key order.
    pub(crate) fn list<'a>(
        &'a self,
        resource: usize,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        // A range, not a scan: admission lists the policies on every write.
        self.objects
            .range(
                (resource, String::new(), String::new())
                    ..(resource + 1, String::new(), String::new()),
            )
            .filter(move |((_, ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
    }

    /// Subscribes to changes and returns the history after `since`, or `Err` with the oldest version a watch
    /// can start from when `since` is older: what kube-apiserver's 410 message names (`oldest-1` in
    /// `staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`). Events go only when a write finds
    /// the history full, never by age alone: a version stays watchable while nothing is written. Atomic with
    /// respect to writes: nothing is missed or repeated.
    pub(crate) fn watch_from(
        &mut self,
        since: u64,
    ) -> Result<(Vec<Arc<Event>>, Subscription), u64> {
        if since < self.history_floor {
            return Err(self.history_floor);
        }
        let past = self
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        Ok((past, self.events.subscribe()))
    }

    /// Subscribes to changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Live events some watch has not taken yet: a test waits for 0 to know that a watch it cannot read
    /// (black-holed, delayed) has taken an event.
    #[cfg(test)]
    pub(crate) fn untaken_events(&self) -> usize {
        self.events.len()
    }

    fn commit(&mut self, t: &Target<'_>, kind: EventType, object: Value) -> Arc<Value> {
        let object = Arc::new(object);
        let key = (t.resource, t.namespace.to_owned(), t.name.to_owned());
        match kind {
            EventType::Deleted => self.objects.remove(&key),
            _ => self.objects.insert(key, object.clone()),
        };
        let now = Instant::now();
        let event = Arc::new(Event {
            rv: self.rv,
            at: now,
            kind,
            resource: t.resource,
            namespace: t.namespace.to_owned(),
            object: object.clone(),
        });
        let keep = self.capacity.before_insert(&self.history, now);
        while self.history.len() >= keep {
            self.drop_oldest_event();
        }
        self.history.push_back(event.clone());
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
        object
    }

    fn drop_oldest_event(&mut self) {
        if let Some(old) = self.history.pop_front() {
            self.history_floor = old.rv;
        }
    }

    /// POST: 409 `AlreadyExists` if the name is taken.
    pub(crate) fn create(
        &mut self,
        t: &Target<'_>,
        mut object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        if self.get(t.resource, t.namespace, t.name).is_some() {
            return Err(ApiError::already_exists(t.rt, t.name));
        }
        let rv = self.rv + 1;
        t.rt.canonicalize(&mut object);
        if let Some(manager) = t.manager {
            managed_fields::track_update(manager, t.rt, None, &mut object);
        }
        stamp_new(&mut object, t, rv);
        self.admit(t, Operation::Create, Part::Main, Some(&object), None)?;
        storage::check_size(t, &object)?;
        if t.dry_run {
            return Ok(Arc::new(object));
        }
        self.rv = rv;
        Ok(self.commit(t, EventType::Added, object))
    }

    /// PUT: guarded by `metadata.resourceVersion` (422 when absent, 409 `Conflict` when stale). A Lease PUT
    /// to a missing name creates it, whatever resourceVersion it carries: the Lease strategy's
    /// `AllowCreateOnUpdate`, where kube-apiserver's `Store.Update` takes the create path before it looks at
    /// the version (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`).
    pub(crate) fn update(
        &mut self,
        t: &Target<'_>,
        mut object: Value,
        part: Part,
    ) -> Result<Arc<Value>, ApiError> {
        let given = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        storage::check_uid(
            t,
            &object,
            self.get(t.resource, t.namespace, t.name).as_deref(),
        )?;
        let Some(current) = self.get(t.resource, t.namespace, t.name) else {
            if t.rt.is_lease() && part == Part::Main {
                return self.create(t, object);
            }
            return Err(ApiError::not_found(t.rt, t.name));
        };
        let Some(given) = given else {
            return Err(ApiError::invalid(
                t.rt,
                t.name,
                &[
                    "metadata.resourceVersion: Invalid value: 0: must be specified for an update"
                        .into(),
                ],
            ));
        };
        check_version(t, &current, Some(&given))?;
        self.replace(t, &current, &mut object, part);
        t.rt.canonicalize(&mut object);
        check_finalizers(t, &current, &object)?;
        self.admit(t, Operation::Update, part, Some(&object), Some(&current))?;
        storage::check_size(t, &object)?;
        Ok(self.write_if_changed(t, current, object))
    }

    /// PATCH: applies a merge patch to the current object; a resourceVersion in the patch is a precondition.
    pub(crate) fn patch(
        &mut self,
        t: &Target<'_>,
        patch: &Value,
        part: Part,
        validate: impl FnOnce(&Value) -> Result<(), ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let precondition = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let current = self.current(t, precondition)?;
        let mut object = (*current).clone();
        merge_patch(&mut object, patch);
        validate(&object)?;
        self.replace(t, &current, &mut object, part);
        t.rt.canonicalize(&mut object);
        check_finalizers(t, &current, &object)?;
        self.admit(t, Operation::Update, part, Some(&object), Some(&current))?;
        storage::check_size(t, &object)?;
        Ok(self.write_if_changed(t, current, object))
    }

    /// Writes a modified object, unless it is the stored one: kube-apiserver then writes nothing and
    /// answers the stored object, resourceVersion unchanged and no watch event (`GuaranteedUpdate` in
    /// `staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go` compares the encoded bytes).
    fn write_if_changed(
        &mut self,
        t: &Target<'_>,
        current: Arc<Value>,
        mut object: Value,
    ) -> Arc<Value> {
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if let Some(manager) = t.manager {
            managed_fields::track_update(manager, t.rt, Some(&current), &mut object);
        }
        if object == *current {
            return current;
        }
        self.write_version(t, write_kind(&object), object)
    }

    /// DELETE, with an optional resourceVersion precondition (409 `Conflict` when it does not match).
    ///
    /// An object with `metadata.finalizers` is not removed: the first delete sets
    /// `metadata.deletionTimestamp` (and `deletionGracePeriodSeconds: 0`), a MODIFIED event; later deletes
    /// change nothing. The object goes when a write leaves it with a deletionTimestamp and no finalizers, as
    /// kube-apiserver's registry (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`,
    /// `Delete` and `deletionFinalizersForGarbageCollection`).
    pub(crate) fn delete(
        &mut self,
        t: &Target<'_>,
        precondition: Option<&str>,
    ) -> Result<Deletion, ApiError> {
        let current = self.current(t, precondition)?;
        self.admit(t, Operation::Delete, Part::Main, None, Some(&current))?;
        if !has_finalizers(&current) {
            return Ok(Deletion::Deleted(self.write_version(
                t,
                EventType::Deleted,
                (*current).clone(),
            )));
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deletion::Pending(current));
        }
        let mut object = (*current).clone();
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        Ok(Deletion::Pending(self.write_version(
            t,
            EventType::Modified,
            object,
        )))
    }

    /// The stored object (404 `NotFound` if missing), if its resourceVersion is `precondition` when one is
    /// given (409 `Conflict` otherwise).
    fn current(&self, t: &Target<'_>, precondition: Option<&str>) -> Result<Arc<Value>, ApiError> {
        let current = self
            .get(t.resource, t.namespace, t.name)
            .ok_or_else(|| ApiError::not_found(t.rt, t.name))?;
        check_version(t, &current, precondition)?;
        Ok(current)
    }

    /// Carries over what the server owns (uid, creationTimestamp, generation, deletionTimestamp) and, per
    /// `part`, the status or everything but the status.
    fn replace(&self, t: &Target<'_>, current: &Value, object: &mut Value, part: Part) {
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        object["apiVersion"] = json!(t.rt.api_version());
        object["kind"] = json!(t.rt.kind);
        match part {
            Part::Status => {
                let status = object.get("status").cloned();
                let mut whole = current.clone();
                match status {
                    Some(s) => whole["status"] = s,
                    None => {
                        if let Some(map) = whole.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                whole["metadata"] = object["metadata"].take();
                *object = whole;
            }
            Part::Main if t.rt.status_subresource => match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            },
            Part::Main => {}
        }
        // Leases have no generation (their strategy sets none); other types count changes of their spec.
        let spec_changed = strip(current) != strip(object);
        if spec_changed && !t.rt.is_lease() {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(generation + 1);
        }
    }

    /// Stamps the next resourceVersion on a changed or deleted object and commits it (nothing under
    /// dry-run).
    fn write_version(&mut self, t: &Target<'_>, kind: EventType, mut object: Value) -> Arc<Value> {
        if t.dry_run {
            return Arc::new(object);
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.commit(t, kind, object)
    }
}

/// What a DELETE did.
#[derive(Debug)]
pub(crate) enum Deletion {
    /// The object is gone (as it was last stored).
    Deleted(Arc<Value>),
    /// The object has finalizers: it stays, marked with a deletionTimestamp, until they are removed.
    Pending(Arc<Value>),
}

fn has_finalizers(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// A write that leaves an object being deleted without finalizers deletes it.
fn write_kind(object: &Value) -> EventType {
    if object.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(object) {
        EventType::Deleted
    } else {
        EventType::Modified
    }
}

/// 422 `Invalid` when a write adds a finalizer to an object being deleted, as kube-apiserver's
/// `ValidateObjectMetaUpdate` (`staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`).
fn check_finalizers(t: &Target<'_>, current: &Value, object: &Value) -> Result<(), ApiError> {
    if current.pointer("/metadata/deletionTimestamp").is_none() {
        return Ok(());
    }
    let finalizers = |o: &Value| -> Vec<Value> {
        o.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let before = finalizers(current);
    match finalizers(object).into_iter().find(|f| !before.contains(f)) {
        Some(added) => Err(ApiError::invalid(
            t.rt,
            t.name,
            &[format!(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being \
                 deleted, found new finalizers []string{{{added}}}"
            )],
        )),
        None => Ok(()),
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// 409 `Conflict` unless `current` has the resourceVersion `expected` (no check when `None`).
fn check_version(t: &Target<'_>, current: &Value, expected: Option<&str>) -> Result<(), ApiError> {
    match expected {
        Some(rv)
            if Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str) =>
        {
            Err(ApiError::conflict(t.rt, t.name))
        }
        _ => Ok(()),
    }
}

/// The object without metadata and status: what `generation` counts changes of.
fn strip(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    object
}

fn stamp_new(object: &mut Value, t: &Target<'_>, rv: u64) {
    object["apiVersion"] = json!(t.rt.api_version());
    object["kind"] = json!(t.rt.kind);
    let meta = &mut object["metadata"];
    meta["name"] = json!(t.name);
    if t.rt.namespaced {
        meta["namespace"] = json!(t.namespace);
    }
    meta["uid"] = json!(uid());
    meta["resourceVersion"] = json!(rv.to_string());
    if !t.rt.is_lease() {
        meta["generation"] = json!(1);
    }
    meta["creationTimestamp"] = json!(now_rfc3339());
    if let Some(map) = meta.as_object_mut() {
        map.remove("generateName");
        map.remove("deletionTimestamp");
        map.remove("deletionGracePeriodSeconds");
    }
    if t.rt.status_subresource
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
}

/// A random RFC 4122 version-4 UUID.
fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        hex(0..4),
        hex(4..6),
        &hex(6..8)[1..],
        8 | (b[8] & 0x3),
        &hex(8..10)[1..],
        hex(10..16)
    )
}
