//! An in-memory Kubernetes API server: the part of the API that leader election and the claim coordinator
//! use, served over plain HTTP on loopback, with per-listener fault injection.
//!
//! It behaves like kube-apiserver wherever a client can see it: one global increasing resourceVersion,
//! `Status` errors with kube-apiserver's codes, reasons and messages (404 `NotFound`, 409 `AlreadyExists`,
//! 409 `Conflict`, 422 `Invalid`, 400 `BadRequest`, 410 `Expired`), optimistic concurrency, watches that
//! resume from a resourceVersion, Lease validation, ValidatingAdmissionPolicies (`admissionregistration.k8s.io/v1`
//! policies and bindings, with CEL), and for kubectl discovery, OpenAPI v3 documents and the `Table` form of
//! get and list. See the repository's `docs/fake-apiserver.md` for the list of behaviours and
//! the known differences.
//!
//! With [`Builder::coordinated_election`] it also runs kube-apiserver's coordinated leader election
//! controller over `coordination.k8s.io/v1beta1` LeaseCandidates.
//!
//! Every listener serves the same store; each has its own [`Faults`], so a test can cut one client off the
//! API while the others still reach it.
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! use fake_apiserver::{FakeApiServer, Faults};
//!
//! let server = FakeApiServer::start().await?;
//! let partitioned = server.add_listener().await?; // a second address on the same store
//! partitioned.set_faults(Faults { black_hole: true, ..Faults::default() });
//! println!("kubectl --server {} get leases -A", server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Admin routes
//!
//! Fault injection and counters are also reachable over HTTP on every listener (never faulted themselves):
//! `GET /fake/listeners`, `POST /fake/listeners` (opens a new listener, answers `{id, url}`),
//! `GET|PUT /fake/listeners/<id>/faults` ([`Faults`] as JSON), `POST /fake/listeners/<id>/drop-watches`
//! (ends the watches open on it, [`Listener::drop_watches`]), `GET|DELETE /fake/counts` ([`Count`]s),
//! `GET /fake/answers` ([`AnswerCount`]s), `GET /fake/requests` ([`RequestRecord`]s, oldest first).

mod admin;
mod admission;
mod api;
mod apply;
mod body;
mod deprecation;
mod discovery;
mod election;
mod faults;
mod listener;
mod managed_fields;
mod namespaces;
mod openapi;
mod resource;
mod route;
mod selector;
mod serve;
mod shared;
mod status;
mod storage;
mod store;
mod table;
mod tls;
mod watch;
mod watch_cache;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::election::ElectionTimings;
pub use crate::faults::{Faults, FaultsError};
pub use crate::listener::Listener;
pub use crate::resource::{PrinterColumn, ResourceType};
pub use crate::status::ApiError;

use crate::admission::Admission;
use crate::shared::{Shared, Stats};
use crate::store::Store;

/// Default upper bound of the watch history, in events: 100 Ki, as kube-apiserver's watch cache
/// (`defaultUpperBoundCapacity` in `staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`).
pub const DEFAULT_HISTORY_LIMIT: usize = 100 * 1024;
/// Default fresh duration of the watch history: 75 seconds, as kube-apiserver's watch cache
/// (`eventFreshDuration` in `staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`). A full history
/// whose oldest event is younger doubles rather than drop it.
pub const DEFAULT_HISTORY_MAX_AGE: Duration = Duration::from_secs(75);
/// Default number of requests kept in the request log.
pub const DEFAULT_LOG_LIMIT: usize = 10_000;

/// Builds a [`FakeApiServer`]: listen address, custom resources, bounds.
#[derive(Debug, Clone)]
pub struct Builder {
    listen: SocketAddr,
    resources: Vec<ResourceType>,
    history_limit: usize,
    history_max_age: Duration,
    log_limit: usize,
    watch_buffer: usize,
    bookmark_interval: Duration,
    coordinated_election: Option<ElectionTimings>,
    namespaces: Option<Vec<String>>,
    terminating_namespaces: Vec<String>,
    tls: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Lease (v1) before LeaseCandidate (v1beta1): discovery lists a group's versions in this order and
            // prefers the first, as kube-apiserver prefers coordination.k8s.io/v1.
            resources: vec![
                ResourceType::lease(),
                ResourceType::event(),
                ResourceType::lease_candidate(),
                ResourceType::validating_admission_policy(),
                ResourceType::validating_admission_policy_binding(),
            ],
            history_limit: DEFAULT_HISTORY_LIMIT,
            history_max_age: DEFAULT_HISTORY_MAX_AGE,
            log_limit: DEFAULT_LOG_LIMIT,
            watch_buffer: 256,
            bookmark_interval: Duration::from_secs(60),
            coordinated_election: None,
            namespaces: None,
            terminating_namespaces: Vec::new(),
            tls: false,
        }
    }
}

impl Builder {
    /// The default listener's address (default `127.0.0.1:0`, an ephemeral port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Registers a custom resource type (served with the same verbs as Leases, plus `/status`).
    pub fn custom_resource(mut self, rt: ResourceType) -> Self {
        self.resources.push(rt);
        self
    }

    /// Stops serving `coordination.k8s.io/v1beta1` LeaseCandidates, as kube-apiserver before 1.33 or without
    /// `--runtime-config=coordination.k8s.io/v1beta1=true`: discovery lists no v1beta1 for the group, and
    /// its paths answer 404 NotFound.
    pub fn without_lease_candidates(mut self) -> Self {
        self.resources
            .retain(|rt| !(rt.group == "coordination.k8s.io" && rt.plural == "leasecandidates"));
        self
    }

    /// The most events kept for watches that resume from a resourceVersion (default
    /// [`DEFAULT_HISTORY_LIMIT`], 100 Ki, kube-apiserver's upper bound; at least 1). The history starts at 100
    /// events (or this limit if lower) and grows as kube-apiserver's watch cache (see
    /// [`Builder::history_max_age`]); a watch from a version whose later events are gone answers 410
    /// `Expired`.
    pub fn history_limit(mut self, events: usize) -> Self {
        self.history_limit = events;
        self
    }

    /// The fresh duration of the watch history (default [`DEFAULT_HISTORY_MAX_AGE`], 75 s), as
    /// kube-apiserver's watch cache (`resizeCacheLocked` in
    /// `staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`): events go only when a write finds
    /// the history full; a full history whose oldest event is younger than this doubles instead (up to
    /// [`Builder::history_limit`]), one whose newest quarter is older halves (down to 100 events). So an
    /// event older than this is still served while the history has room (a watch from the version of a
    /// Lease untouched for minutes streams when little else was written), and at least this much history
    /// is kept under load, up to the limit.
    pub fn history_max_age(mut self, age: Duration) -> Self {
        self.history_max_age = age;
        self
    }

    /// Requests kept in the request log (the oldest are dropped first).
    pub fn log_limit(mut self, requests: usize) -> Self {
        self.log_limit = requests;
        self
    }

    /// Events a watcher may fall behind before it is dropped (its watch ends; the client re-watches).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (kube-apiserver: about a minute).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Runs the coordinated leader election controller (KEP-4355; kube-apiserver with
    /// `--feature-gates=CoordinatedLeaderElection=true`): for each (namespace, `leaseName`) with
    /// LeaseCandidates, it sets `pingTime` on the candidates, waits at most `timings.election_window` for
    /// `renewTime > pingTime`, elects among those that answered by `OldestEmulationVersion` (lowest
    /// emulationVersion, then binaryVersion, then oldest creationTimestamp), then creates the Lease for the
    /// electee, assigns a released or expired Lease to it, or sets `preferredHolder` on a valid Lease held by
    /// another. An election runs when a candidate appears or renews, and when the Lease is released, deleted
    /// or expires. Off by default, as in kube-apiserver.
    pub fn coordinated_election(mut self, timings: ElectionTimings) -> Self {
        self.coordinated_election = Some(timings);
        self
    }

    /// Only these namespaces exist (default: every valid name does). A create in another namespace (also a
    /// Lease update that would create) answers 404 `namespaces "<ns>" not found`, as kube-apiserver's
    /// `NamespaceLifecycle` admission does, and `GET /api/v1/namespaces/<ns>` answers 404 for it.
    pub fn existing_namespaces<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.namespaces = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// These namespaces are being deleted (phase `Terminating`): a create in one of them (also a Lease update
    /// or an apply that would create) answers 403 `Forbidden` (`leases.coordination.k8s.io "x" is forbidden:
    /// unable to create new content in namespace <ns> because it is being terminated`), as kube-apiserver's
    /// `NamespaceLifecycle` admission does until the namespace is gone; reads, updates and deletes of what it
    /// holds are served. See also [`FakeApiServer::terminate_namespace`].
    pub fn terminating_namespaces<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.terminating_namespaces = names.into_iter().map(Into::into).collect();
        self
    }

    /// Serves TLS on every listener, as kube-apiserver does (default: plain HTTP): a CA (ECDSA P-256) and a
    /// serving certificate for `localhost`, `127.0.0.1` and `::1` (and the listen address) are generated at
    /// start; [`FakeApiServer::ca_pem`] and [`FakeApiServer::kubeconfig`] give clients the CA. HTTP/1.1 only
    /// (ALPN `http/1.1`), no client authentication.
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Binds the default listener and starts serving.
    ///
    /// # Errors
    ///
    /// The I/O error of binding the address; with [`Builder::tls`], an error of kind `Other` when the
    /// certificates cannot be made.
    pub async fn start(self) -> std::io::Result<FakeApiServer> {
        let tls = if self.tls {
            Some(Arc::new(tls::Tls::generate(self.listen.ip())?))
        } else {
            None
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(
                Store::new(self.history_limit, self.history_max_age, self.watch_buffer)
                    .with_admission(Admission::new(&self.resources)),
            ),
            resources: self.resources,
            listeners: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            log_limit: self.log_limit,
            bookmark_interval: self.bookmark_interval,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            namespaces: self.namespaces,
            terminating_namespaces: Mutex::new(self.terminating_namespaces.into_iter().collect()),
            tls,
        });
        let default = Shared::add_listener(&shared, self.listen)?;
        if let Some(timings) = self.coordinated_election {
            shared.tasks.spawn(election::run(
                shared.clone(),
                timings,
                shared.shutdown.clone(),
            ));
        }
        Ok(FakeApiServer { shared, default })
    }
}

/// A running fake API server. Dropping it does not stop it; call [`FakeApiServer::shutdown`].
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    default: Listener,
}

impl FakeApiServer {
    /// A builder for a server with custom resources or other bounds.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a server serving Leases (and `events.k8s.io/v1` Events, `coordination.k8s.io/v1beta1`
    /// LeaseCandidates, `admissionregistration.k8s.io/v1` ValidatingAdmissionPolicies and their bindings) on
    /// an ephemeral loopback port.
    ///
    /// # Errors
    ///
    /// The I/O error of binding `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        Builder::default().start().await
    }

    /// The default listener's base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        self.default.url()
    }

    /// The PEM of the CA that signed the server's certificate, with [`Builder::tls`]; `None` over plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.shared.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    /// A kubeconfig (YAML) for `listener`'s URL, trusting the server's CA ([`FakeApiServer::ca_pem`]) when
    /// it serves TLS; no credentials. For `KUBECONFIG` of a client process, or kube's
    /// `Kubeconfig::from_yaml` in the same one.
    pub fn kubeconfig(&self, listener: &Listener) -> String {
        tls::kubeconfig(&listener.url(), self.ca_pem())
    }

    /// The default listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.default.addr()
    }

    /// The default listener (id 0).
    pub fn default_listener(&self) -> &Listener {
        &self.default
    }

    /// Opens another listener on an ephemeral loopback port, serving the same store with its own faults.
    ///
    /// # Errors
    ///
    /// The I/O error of binding the port.
    pub async fn add_listener(&self) -> std::io::Result<Listener> {
        Shared::add_listener(&self.shared, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Every listener, in the order opened.
    pub fn listeners(&self) -> Vec<Listener> {
        self.shared.listeners().clone()
    }

    /// Request counts per listener, verb and resource, in a stable order.
    pub fn counts(&self) -> Vec<Count> {
        self.shared.counts()
    }

    /// Answers sent per (resource, verb, HTTP status code), in a stable order, since the start or the last
    /// [`FakeApiServer::reset_counts`]: e.g. the 409s of `update` on `physicalhosts`. Unlike the request log,
    /// they are never dropped. A request that got no answer (black hole, commit-then-drop) is not counted.
    pub fn answer_counts(&self) -> Vec<AnswerCount> {
        self.shared.answer_counts()
    }

    /// Resets the counts, the answer counts and the request log.
    pub fn reset_counts(&self) {
        self.shared.reset_stats();
    }

    /// The request log (bounded; oldest first).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.stats().log.iter().cloned().collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Starts deleting namespace `name`, as `kubectl delete namespace` does: its phase turns `Terminating`
    /// and nothing more can be created in it (see [`Builder::terminating_namespaces`]). The fake's namespace
    /// controller stops there: what the namespace holds stays, and it never goes.
    pub fn terminate_namespace(&self, name: &str) {
        self.shared.terminating_namespaces().insert(name.to_owned());
    }

    /// Stops every listener and connection (watches end) and waits for them.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Serves until `stop` is cancelled, then shuts down.
    pub async fn run_until(self, stop: CancellationToken) {
        stop.cancelled().await;
        self.shutdown().await;
    }
}

/// Requests seen for one (listener, verb, resource).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Listener id (0 is the default listener).
    pub listener: usize,
    /// Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, or `discovery`.
    pub verb: String,
    /// Plural resource name (`leases`), or the discovery path.
    pub resource: String,
    /// Number of requests.
    pub count: u64,
}

/// Answers sent for one (resource, verb, status code), summed over listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerCount {
    /// Plural resource name (`leases`), or the discovery path.
    pub resource: String,
    /// Kubernetes verb (see [`Count::verb`]).
    pub verb: String,
    /// HTTP status code answered (200, 201, 404, 409, ...).
    pub code: u16,
    /// Number of answers.
    pub count: u64,
}

/// One request, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Wall-clock time the request arrived, RFC 3339.
    pub at: String,
    /// Listener id.
    pub listener: usize,
    /// The number of the connection that carried the request on its listener (the first accepted is 1;
    /// [`Listener::connections_accepted`]).
    pub connection: u64,
    /// Kubernetes verb (see [`Count::verb`]).
    pub verb: String,
    /// Plural resource name or discovery path.
    pub resource: String,
    /// The subresource (`status`), if any: RBAC authorizes `leases/status` apart from `leases`. Absent
    /// from older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// HTTP status answered; `None` when no answer was sent (black hole, commit-then-drop).
    pub code: Option<u16>,
    /// Time from arrival to answer (or to the start of a watch stream), in milliseconds.
    pub latency_ms: f64,
    /// The request's `Authorization` header as sent (e.g. `Bearer TOKEN`), so that tests can check which
    /// credentials a client used; the fake authenticates nobody. Absent from older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
}
