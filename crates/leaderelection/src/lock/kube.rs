//! `KubeLeaseLock`: a [`LeaseLock`] over the Kubernetes API (`coordination.k8s.io/v1` Lease).

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use std::sync::{Arc, Mutex, PoisonError};

use super::{
    LeaseEvent, LeaseEventStream, LeaseLock, LeaseMetadata, ListedLease, LockError, MetadataError,
    ObservedLease,
};
use crate::LeaderElectionRecord;

/// How long a watch request stays open before the server ends it and we resume, in seconds.
/// Under kube's default 295 s read timeout, as client-go's reflector keeps its watches.
pub(crate) const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// A [`LeaseLock`] on one Lease, through a kube [`Client`].
///
/// Writes are a POST (create) and a PUT carrying the `resourceVersion` read (update): never a patch, never
/// server-side apply with force. Labels and annotations already on the Lease are kept by updates; those of
/// [`KubeLeaseLock::with_metadata`] are given to a Lease it creates.
///
/// ## RBAC
///
/// ```yaml
/// - apiGroups: ["coordination.k8s.io"]
///   resources: ["leases"]
///   verbs: ["get", "create", "update", "list", "watch"]
/// ```
/// Without `list`/`watch` the elector polls instead of watching (and says so once in its logs).
pub struct KubeLeaseLock {
    api: Api<Lease>,
    name: String,
    namespace: String,
    /// Labels and annotations for a create.
    metadata: LeaseMetadata,
    /// Metadata of the Lease as last read or written, kept for the next update.
    last: Arc<Mutex<Option<ObjectMeta>>>,
}

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

    /// A lock on Lease `namespace/name`.
    #[must_use]
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            namespace: namespace.to_string(),
            metadata: LeaseMetadata::default(),
            last: Arc::default(),
        }
    }

    /// Gives a Lease this lock creates these labels and annotations (e.g. those a GitOps tool needs to
    /// keep it: linkerd2 issue 10762). A Lease that exists keeps its own: updates carry the labels and
    /// annotations read, whoever set them.
    ///
    /// # Errors
    ///
    /// [`MetadataError`] when a label or annotation breaks a Kubernetes rule ([`LeaseMetadata::validate`]).
    pub fn with_metadata(mut self, metadata: LeaseMetadata) -> Result<Self, MetadataError> {
        metadata.validate()?;
        self.metadata = metadata;
        Ok(self)
    }

    /// Reads a Lease delivered by someone else's watch (a shared list+watch) as this lock's own reads: its
    /// metadata is kept for the next update, so that an update guarded by its version keeps its labels.
    pub(crate) fn rememberer(&self) -> impl Fn(Lease) -> ObservedLease + Send + Sync + 'static {
        let last = Arc::clone(&self.last);
        move |lease| remember(&last, lease)
    }

    fn last_metadata(&self) -> Option<ObjectMeta> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn observe(&self, lease: Lease) -> ObservedLease {
        remember(&self.last, lease)
    }

    /// Selects the one Lease by name, for list and watch.
    fn field_selector(&self) -> String {
        format!("metadata.name={}", self.name)
    }
}

/// Reads `lease` and keeps its metadata in `last` for the next update.
fn remember(last: &Mutex<Option<ObjectMeta>>, lease: Lease) -> ObservedLease {
    let observed = ObservedLease {
        record: LeaderElectionRecord::from_lease_spec(lease.spec.as_ref()),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
    };
    *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease.metadata);
    observed
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
            // Carry the metadata last read (labels, annotations, ownerReferences, as client-go's LeaseLock
            // keeps its cached object's) when it is of the version we guard on; a PUT replaces the object.
            let metadata = self
                .last_metadata()
                .filter(|meta| meta.resource_version.as_deref() == Some(resource_version))
                .unwrap_or_else(|| ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    resource_version: Some(resource_version.to_string()),
                    ..ObjectMeta::default()
                });
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
            let last = Arc::clone(&self.last);
            let events = stream.map_err(lock_error).map(move |event| match event? {
                WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                    Ok(LeaseEvent::Applied(remember(&last, lease)))
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
