//! `KubeLeaseLock`: a [`LeaseLock`] over the Kubernetes API (`coordination.k8s.io/v1` Lease).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};

use super::{
    LeaseEvent, LeaseEventStream, LeaseLock, LeaseMetadata, ListedLease, LockError, MetadataError,
    ObservedLease,
};
use crate::LeaderElectionRecord;

/// How long a watch request stays open before the server ends it and we resume, in seconds.
/// Under kube's default 295 s read timeout, as client-go's reflector keeps its watches.
pub(crate) const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// Why [`KubeLeaseLock::client`] or [`KubeLeaseLock::client_for_url`] made no client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The API server's URL is not a URI.
    #[error("invalid API server URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// kube could not build a client from the configuration (its TLS or proxy settings).
    #[error("building the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// A [`LeaseLock`] on one Lease, through a kube [`Client`].
///
/// Writes are a POST (create) and a PUT carrying the `resourceVersion` read (update): never a patch, never
/// server-side apply with force. Labels and annotations already on the Lease are kept by updates; those of
/// [`KubeLeaseLock::with_metadata`] are given to a Lease it creates and put back by every update that finds
/// one missing.
///
/// The lock never rewinds: it remembers the metadata of the newest version of the Lease it has read,
/// written or been delivered, and a PUT (which replaces the whole object) carries that metadata only when it
/// is of the version the update is guarded by; otherwise it reads the Lease first (one GET more), and
/// answers [`LockError::Conflict`] without writing when the Lease has moved on. Versions are ordered as
/// integers when both parse as one (kube-apiserver's and the fake API server's do, though kube-apiserver
/// documents them as opaque); versions that do not parse are never taken as older.
///
/// ## RBAC
///
/// ```yaml
/// - apiGroups: ["coordination.k8s.io"]
///   resources: ["leases"]
///   verbs: ["get", "create", "update", "list", "watch"]
/// ```
/// Without `list`/`watch` the elector polls instead of watching (and says so once in its logs). A client made
/// by [`KubeLeaseLock::client`] also sends `GET /version` beside its watches, to keep a spare connection
/// open: a non-resource URL that kube-apiserver lets every client read (`system:public-info-viewer`), and
/// whatever it answers, the connection is kept.
pub struct KubeLeaseLock {
    api: Api<Lease>,
    name: String,
    namespace: String,
    /// Labels and annotations for a create, put back by every update.
    metadata: LeaseMetadata,
    /// The newest version of the Lease seen, kept for the next update.
    last: Remembered,
}

/// The metadata of the newest version of a Lease that a lock has read, written or been delivered by a
/// watch; replaced only by a newer version (a watch that lags behind the lock's own writes delivers older
/// ones). Shared with the watches that deliver to the lock.
#[derive(Clone, Debug, Default)]
pub(crate) struct Remembered(Arc<Mutex<Option<ObjectMeta>>>);

impl std::fmt::Debug for KubeLeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLeaseLock")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

// === impl KubeLeaseLock ===

impl KubeLeaseLock {
    /// `config` made fit for an elector's client: kube's own retries of 429 and 503 off (the elector retries
    /// on its own schedule, bounded by its deadlines), no read timeout (watches are long; the elector bounds
    /// each request by its request timeout), and a connect timeout of 5 s.
    #[must_use]
    pub fn client_config(mut config: kube::Config) -> kube::Config {
        config.default_retry = false;
        config.read_timeout = None;
        config.connect_timeout = Some(std::time::Duration::from_secs(5));
        config
    }

    /// A kube [`Client`] built from `config` made fit for an elector ([`KubeLeaseLock::client_config`]), with
    /// `TCP_NODELAY` on every connection it opens (kube's own client leaves Nagle's algorithm on, which
    /// holds a write after a resumed TLS handshake until the server's delayed ACK, about 40 ms), and which
    /// logs each distinct API warning (a `Warning` response header with code 299, e.g. for a deprecated API
    /// version) once, at WARN, as client-go's default warning handler does.
    ///
    /// # Errors
    ///
    /// [`ClientError::Build`] when kube cannot build a client from `config` (its TLS or proxy settings).
    pub fn client(config: kube::Config) -> Result<Client, ClientError> {
        super::client::build(Self::client_config(config)).map_err(ClientError::Build)
    }

    /// A kube [`Client`] to the API server at `url` (e.g. `http://127.0.0.1:6443`, as `fake-apiserver`
    /// prints), without credentials, made fit for an elector ([`KubeLeaseLock::client`]).
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`] when `url` is not a URI; [`ClientError::Build`] as
    /// [`KubeLeaseLock::client`].
    pub fn client_for_url(url: &str) -> Result<Client, ClientError> {
        let uri = url.parse().map_err(|source| ClientError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        Self::client(kube::Config::new(uri))
    }

    /// A lock on Lease `namespace/name`.
    #[must_use]
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            namespace: namespace.to_string(),
            metadata: LeaseMetadata::default(),
            last: Remembered::default(),
        }
    }

    /// Gives a Lease this lock creates these labels and annotations (e.g. those a GitOps tool needs to
    /// keep it: linkerd2 issue 10762, or those a label-selected watch finds it by), and puts back any of
    /// them that an update finds missing. Updates carry the other labels and annotations read, whoever set
    /// them; a key the Lease already has keeps its value, whoever set it.
    ///
    /// # Errors
    ///
    /// [`MetadataError`] when a label or annotation breaks a Kubernetes rule ([`LeaseMetadata::validate`]).
    pub fn with_metadata(mut self, metadata: LeaseMetadata) -> Result<Self, MetadataError> {
        metadata.validate()?;
        self.metadata = metadata;
        Ok(self)
    }

    /// What this lock remembers of its Lease, for someone else's watch (a shared list+watch) to deliver
    /// Leases to it as this lock's own reads, and to tell which of them are older than what it has seen.
    pub(crate) fn remembered(&self) -> Remembered {
        self.last.clone()
    }

    fn observe(&self, lease: Lease) -> ObservedLease {
        self.last.remember(lease)
    }

    /// The metadata for a PUT guarded by `resource_version`: that version's as remembered, else as read
    /// now, with the labels and annotations this lock sets put back where missing.
    ///
    /// # Errors
    ///
    /// The read's, and [`LockError::Conflict`] when it shows another version (the PUT would conflict).
    async fn metadata_for_update(&self, resource_version: &str) -> Result<ObjectMeta, LockError> {
        let remembered = self
            .last
            .metadata()
            .filter(|meta| meta.resource_version.as_deref() == Some(resource_version));
        let mut metadata = match remembered {
            Some(metadata) => metadata,
            // A PUT replaces the whole object: without the metadata of the version it is guarded by, it
            // would drop whatever labels and annotations others set.
            None => match self.api.get_opt(&self.name).await.map_err(lock_error)? {
                Some(lease)
                    if lease.metadata.resource_version.as_deref() == Some(resource_version) =>
                {
                    let metadata = lease.metadata.clone();
                    self.observe(lease);
                    metadata
                }
                Some(lease) => {
                    self.observe(lease);
                    return Err(LockError::Conflict);
                }
                // Deleted: the PUT creates it, as kube-apiserver's Lease strategy allows.
                None => ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    resource_version: Some(resource_version.to_string()),
                    ..ObjectMeta::default()
                },
            },
        };
        put_back(&mut metadata.labels, &self.metadata.labels);
        put_back(&mut metadata.annotations, &self.metadata.annotations);
        Ok(metadata)
    }

    /// Selects the one Lease by name, for list and watch.
    fn field_selector(&self) -> String {
        format!("metadata.name={}", self.name)
    }
}

/// Adds to `map` the entries of `own` whose keys it lacks; a key it has keeps its value.
fn put_back(map: &mut Option<BTreeMap<String, String>>, own: &BTreeMap<String, String>) {
    if own.is_empty() {
        return;
    }
    let map = map.get_or_insert_with(BTreeMap::new);
    for (key, value) in own {
        map.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// How resourceVersion `a` compares with `b`: `Some` when they are equal, or when both are decimal integers
/// (`u64`); `None` otherwise (unordered).
///
/// kube-apiserver documents resourceVersions as opaque strings that clients must compare for equality
/// only (the API conventions' "Concurrency Control and Consistency", and "Resource versions" in the API
/// concepts), but its etcd3 storage writes etcd's revision, one counter that increases with every write
/// to the cluster, as a decimal integer (`k8s.io/apiserver/pkg/storage/etcd3`, `APIObjectVersioner`),
/// and so does the fake API server. Versions compare as integers only when both parse: what cannot be
/// ordered is never taken as older.
pub(crate) fn version_order(a: &str, b: &str) -> Option<Ordering> {
    if a == b {
        return Some(Ordering::Equal);
    }
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => Some(a.cmp(&b)),
        _ => None,
    }
}

/// Whether a change at `version` is no newer than `than`: the same, or older ([`version_order`]). A
/// version that cannot be ordered counts as newer.
pub(crate) fn is_no_newer(version: &str, than: Option<&str>) -> bool {
    than.and_then(|than| version_order(version, than))
        .is_some_and(Ordering::is_le)
}

// === impl Remembered ===

impl Remembered {
    /// Reads `lease`, and keeps its metadata unless a newer version is kept (versions that cannot be
    /// ordered replace it: an update then finds the version it is guarded by missing, and reads first).
    pub(crate) fn remember(&self, lease: Lease) -> ObservedLease {
        let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
        let observed = ObservedLease {
            record: LeaderElectionRecord::from_lease_spec(lease.spec.as_ref()),
            resource_version,
        };
        let mut last = self.lock();
        let older = last
            .as_ref()
            .and_then(|kept| kept.resource_version.as_deref())
            .and_then(|kept| version_order(&observed.resource_version, kept))
            == Some(Ordering::Less);
        if !older {
            *last = Some(lease.metadata);
        }
        observed
    }

    /// Whether a change at `resource_version` is no newer than the version kept: already seen, or
    /// older (never when the two cannot be ordered).
    pub(crate) fn has_seen(&self, resource_version: &str) -> bool {
        let last = self.lock();
        is_no_newer(
            resource_version,
            last.as_ref()
                .and_then(|kept| kept.resource_version.as_deref()),
        )
    }

    fn metadata(&self) -> Option<ObjectMeta> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ObjectMeta>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LeaseLock for KubeLeaseLock {
    fn get(&self) -> BoxFuture<'_, Result<Option<ObservedLease>, LockError>> {
        async move {
            match self.api.get_opt(&self.name).await {
                Ok(lease) => Ok(lease.map(|lease| self.observe(lease))),
                Err(err) => Err(lock_error(err)),
            }
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        async move {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: (!self.metadata.labels.is_empty())
                        .then(|| self.metadata.labels.clone()),
                    annotations: (!self.metadata.annotations.is_empty())
                        .then(|| self.metadata.annotations.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(record.to_lease_spec()),
            };
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map(|lease| self.observe(lease))
                .map_err(lock_error)
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>> {
        async move {
            // Carry the metadata of the version we guard on (labels, annotations, ownerReferences, as
            // client-go's LeaseLock keeps its cached object's): a PUT replaces the object.
            let metadata = self.metadata_for_update(resource_version).await?;
            let lease = Lease {
                metadata,
                spec: Some(record.to_lease_spec()),
            };
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|lease| self.observe(lease))
                .map_err(lock_error)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<ListedLease, LockError>> {
        async move {
            // No resourceVersion: a consistent read, at the collection's current version.
            let params = ListParams::default().fields(&self.field_selector());
            let list = self.api.list(&params).await.map_err(lock_error)?;
            Ok(ListedLease {
                lease: list
                    .items
                    .into_iter()
                    .next()
                    .map(|lease| self.observe(lease)),
                resource_version: list.metadata.resource_version.unwrap_or_default(),
            })
        }
        .boxed()
    }

    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>> {
        async move {
            let params = WatchParams::default()
                .fields(&self.field_selector())
                .timeout(WATCH_TIMEOUT_SECONDS)
                .disable_bookmarks();
            let stream = self
                .api
                .watch(&params, resource_version)
                .await
                .map_err(lock_error)?;
            let last = self.last.clone();
            let events = stream.map_err(lock_error).map(move |event| match event? {
                WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                    Ok(LeaseEvent::Applied(last.remember(lease)))
                }
                WatchEvent::Deleted(lease) => Ok(LeaseEvent::Deleted(
                    lease.metadata.resource_version.unwrap_or_default(),
                )),
                WatchEvent::Bookmark(bookmark) => {
                    Ok(LeaseEvent::Bookmark(bookmark.metadata.resource_version))
                }
                WatchEvent::Error(status) => Err(status_error(
                    status.code,
                    status.reason.clone(),
                    status.message.clone(),
                )),
            });
            Ok(events.boxed())
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The reason kube-rs gives an error answer whose body is not a `Status` (its `handle_api_errors`).
const NOT_A_STATUS: &str = "Failed to parse error data";

pub(crate) fn lock_error(err: kube::Error) -> LockError {
    match err {
        // Plain text, as kube-apiserver's rate limiting answers 429: the reason comes from the code, as
        // client-go's `NewGenericServerResponse` gives it.
        kube::Error::Api(status) if status.reason == NOT_A_STATUS => {
            let reason = match status.code {
                429 => "TooManyRequests",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "Unknown",
            };
            status_error(status.code, reason.to_owned(), status.message.clone())
        }
        // The Lease's namespace does not exist (kube-apiserver's NamespaceLifecycle admission): not the
        // Lease missing, an error to report as the API server words it.
        kube::Error::Api(status)
            if status.code == 404
                && status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "namespaces") =>
        {
            LockError::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }
        }
        kube::Error::Api(status) => {
            status_error(status.code, status.reason.clone(), status.message.clone())
        }
        other => LockError::Transport(Box::new(other)),
    }
}

/// Maps a Kubernetes `Status` to the protocol outcome it stands for (409 is told apart by its reason,
/// as client-go's `errors.IsAlreadyExists` / `IsConflict` do).
fn status_error(code: u16, reason: String, message: String) -> LockError {
    match (code, reason.as_str()) {
        (404, _) => LockError::NotFound,
        (409, "AlreadyExists") => LockError::AlreadyExists,
        (409, _) => LockError::Conflict,
        (410, _) => LockError::Gone,
        (403, _) => LockError::Forbidden(message),
        _ => LockError::Api {
            code,
            reason,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(resource_version: &str, labels: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("work-0".to_owned()),
                resource_version: Some(resource_version.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    #[test]
    fn resource_versions_order_as_integers_only_when_both_parse() {
        assert_eq!(
            version_order("9", "12"),
            Some(Ordering::Less),
            "not as strings"
        );
        assert_eq!(version_order("12", "9"), Some(Ordering::Greater));
        assert_eq!(version_order("12", "12"), Some(Ordering::Equal));
        assert_eq!(version_order("opaque", "opaque"), Some(Ordering::Equal));
        for (a, b) in [("opaque", "12"), ("12", ""), ("-1", "1"), ("1.5", "2")] {
            assert_eq!(version_order(a, b), None, "{a:?} and {b:?}");
        }
    }

    /// Rule 14: a Lease delivered late (older than the one kept) is read as it is, but its metadata does
    /// not replace the newer version's; a newer one does; a version that cannot be ordered does too.
    #[test]
    fn remembered_metadata_never_goes_backwards() {
        let remembered = Remembered::default();
        remembered.remember(lease("12", &[("team", "a")]));
        let late = remembered.remember(lease("9", &[]));
        assert_eq!(
            late.resource_version, "9",
            "the Lease delivered is read as it is"
        );
        let kept = remembered.metadata().unwrap();
        assert_eq!(kept.resource_version.as_deref(), Some("12"));
        assert_eq!(
            kept.labels.unwrap().get("team").map(String::as_str),
            Some("a")
        );
        assert!(remembered.has_seen("9") && remembered.has_seen("12"));
        assert!(!remembered.has_seen("13") && !remembered.has_seen("opaque"));

        remembered.remember(lease("13", &[]));
        assert_eq!(
            remembered.metadata().unwrap().resource_version.as_deref(),
            Some("13")
        );
        remembered.remember(lease("opaque", &[]));
        assert_eq!(
            remembered.metadata().unwrap().resource_version.as_deref(),
            Some("opaque")
        );
    }
}
