//! `LeaseLock`: the operations the elector needs from a Lease store, and their outcomes.
//!
//! Two implementations share these semantics: [`KubeLeaseLock`] over the Kubernetes API, and
//! `MemoryLeaseLock`, in memory, for tests and simulation (feature `test-util`).

mod client;
pub(crate) mod kube;
#[cfg(any(test, feature = "test-util"))]
mod memory;
pub mod metadata;
mod spare;
mod warnings;

pub use self::kube::{ClientError, KubeLeaseLock};
#[cfg(any(test, feature = "test-util"))]
pub use self::memory::{LockCall, LockFault, MemoryLeaseLock, MemoryLeaseStore};
pub use self::metadata::{LeaseMetadata, MetadataError};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::LeaderElectionRecord;

/// A Lease as read: its election record and the `resourceVersion` that guards the next write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLease {
    /// The election record in the Lease's spec.
    pub record: LeaderElectionRecord,
    /// `metadata.resourceVersion`: opaque, compared for equality only.
    pub resource_version: String,
}

/// The Lease as listed (at most one: the list selects its name), with the collection's `resourceVersion`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedLease {
    /// The Lease, `None` when it does not exist.
    pub lease: Option<ObservedLease>,
    /// The list's `metadata.resourceVersion`: the collection's current version, newer than the Lease's own
    /// when other objects of the collection were written since. A watch resumes from it after
    /// [`LockError::Gone`].
    pub resource_version: String,
}

/// A change to the watched Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The Lease was created or changed (watch `ADDED` or `MODIFIED`).
    Applied(ObservedLease),
    /// The Lease was deleted; carries the deleting `resourceVersion`.
    Deleted(String),
    /// Nothing changed; the watch has progressed to this `resourceVersion` (watch `BOOKMARK`).
    Bookmark(String),
}

/// A stream of changes to one Lease; it ends when the server closes the watch (resume from the last
/// `resourceVersion`), and yields [`LockError::Gone`] when that version is too old ([`LeaseLock::list`] for
/// a current one).
pub type LeaseEventStream = BoxStream<'static, Result<LeaseEvent, LockError>>;

/// What can go wrong talking to the Lease store.
///
/// The elector treats [`LockError::NotFound`], [`LockError::AlreadyExists`] and [`LockError::Conflict`] as
/// normal outcomes of the protocol, [`LockError::Forbidden`] on watch as "fall back to polling", and
/// everything else as transient: it retries forever.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The Lease does not exist (HTTP 404 NotFound).
    #[error("lease not found")]
    NotFound,
    /// A create lost the race: the Lease exists (HTTP 409, reason AlreadyExists).
    #[error("lease already exists")]
    AlreadyExists,
    /// An update carried a stale `resourceVersion`: someone else wrote first (HTTP 409, reason Conflict).
    #[error("lease was modified since it was read (resourceVersion conflict)")]
    Conflict,
    /// The `resourceVersion` to watch from is too old (HTTP 410 Gone, reason Expired).
    #[error("resourceVersion too old to watch from")]
    Gone,
    /// RBAC denies the verb (HTTP 403 Forbidden).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request did not complete within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Any other API error (e.g. 429, 500, 503, 422), with the status code, reason and message.
    #[error("API error {code} {reason}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// `Status.reason`, e.g. `TooManyRequests`, `InternalError`, `Invalid`.
        reason: String,
        /// `Status.message`.
        message: String,
    },
    /// The request never got an answer: connection refused or reset, malformed response.
    #[error("transport error")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where the elector reads and writes its Lease.
///
/// Every write is conditional: `create` fails with [`LockError::AlreadyExists`] when the Lease exists, and
/// `update` with [`LockError::Conflict`] unless the stored `resourceVersion` equals the one given. There is
/// no unconditional write in this trait, so no implementation can offer one to the elector.
///
/// The elector bounds each call with its request timeout and drops the future on timeout or shutdown, so
/// implementations must be cancel safe in the sense that dropping a call leaves the store either written or
/// not (never half-written); the elector never assumes which.
pub trait LeaseLock: Send + Sync + std::fmt::Debug + 'static {
    /// Reads the Lease; `Ok(None)` when it does not exist.
    fn get(&self) -> BoxFuture<'_, Result<Option<ObservedLease>, LockError>>;

    /// Creates the Lease with `record` (POST).
    fn create<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>>;

    /// Replaces the Lease's record if its `resourceVersion` is still `resource_version` (PUT).
    fn update<'a>(
        &'a self,
        record: &'a LeaderElectionRecord,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<ObservedLease, LockError>>;

    /// Lists the one Lease (a list with `fieldSelector=metadata.name=<name>`) for the collection's current
    /// `resourceVersion`: the version to watch from after [`LockError::Gone`], since the Lease's own may be
    /// older than the server's watch history (kube-apiserver keeps about 75 s of it, and none from before its
    /// last restart), as client-go's reflector relists after an expired watch (client-go
    /// `tools/cache/reflector.go`).
    ///
    /// # Errors
    ///
    /// [`LockError::Forbidden`] when RBAC grants no `list` on leases; otherwise a transient error
    /// ([`LockError::Api`], [`LockError::Transport`]). A missing Lease is not an error.
    fn list(&self) -> BoxFuture<'_, Result<ListedLease, LockError>>;

    /// Watches the one Lease for changes after `resource_version`.
    fn watch<'a>(
        &'a self,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<LeaseEventStream, LockError>>;

    /// Names the Lease this lock reaches, for logs and error messages: `namespace/name` for a
    /// [`KubeLeaseLock`], `memory/<client>` for a `MemoryLeaseLock`.
    fn describe(&self) -> String;

    /// When this process first saw `lease`'s election record as it is now (monotonic clock), if it saw it
    /// before this lock read it: a lock whose watch is shared (`ShardSet`) knows. The elector's expiry
    /// clock then starts there, which is still after the holder sent its write (rule 2). `None` (the
    /// default): the clock starts when the elector first sees the record.
    fn first_seen(&self, lease: &ObservedLease) -> Option<tokio::time::Instant> {
        let _ = lease;
        None
    }
}
