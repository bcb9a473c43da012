//! The supervisor (seed: the controller integration): all-replica components run on every replica from the
//! start (hot standby); leader-only components run only during this replica's terms, each with the term's
//! cancellation token, and are stopped and awaited before the Lease is released.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use leaderelection::{Callbacks, Term};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::component::Component;

/// The error a component returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type AllReplicaFn =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type LeaderOnlyFn =
    Arc<dyn Fn(Term, CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// What the supervisor does when a component fails (returns an error, or returns before it was asked to
/// stop: a component never ends silently).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Restart it after a delay that doubles from `initial_backoff` up to `max_backoff` (and resets after
    /// the component ran longer than `max_backoff`).
    Restart {
        /// First delay.
        initial_backoff: Duration,
        /// Largest delay.
        max_backoff: Duration,
    },
    /// Stop everything (leader-only work, then the Lease is released) and make [`Supervisor::run`] return
    /// the failure, so the process exits and its orchestrator restarts it.
    FailProcess,
}

impl Default for Policy {
    /// Restart from 500 ms, doubling to 30 s.
    fn default() -> Self {
        Self::Restart {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A component failure under [`Policy::FailProcess`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("component {component} failed: {error}")]
pub struct Failure {
    /// The component's name.
    pub component: String,
    /// What happened: its error, or "exited unexpectedly".
    pub error: String,
}

/// Why [`Supervisor::run`] returned an error.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A component failed under [`Policy::FailProcess`].
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The elector refused to run.
    #[error(transparent)]
    Elector(#[from] leaderelection::Error),
}

/// Registers components, builds the [`Callbacks`] that run the leader-only ones, and runs the rest.
/// Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

struct Shared {
    policy: Policy,
    all_replica: Mutex<Vec<(String, AllReplicaFn)>>,
    leader_only: Mutex<Vec<(String, LeaderOnlyFn)>>,
    fatal: CancellationToken,
    failure: Mutex<Option<Failure>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = lock(&self.shared.all_replica)
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let leader_only: Vec<String> = lock(&self.shared.leader_only)
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        f.debug_struct("Supervisor")
            .field("policy", &self.shared.policy)
            .field("all_replica", &all)
            .field("leader_only", &leader_only)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor applying `policy` to failed components.
    pub fn new(policy: Policy) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy,
                all_replica: Mutex::default(),
                leader_only: Mutex::default(),
                fatal: CancellationToken::new(),
                failure: Mutex::default(),
            }),
        }
    }

    /// Registers a component that runs on every replica until shutdown. `start(token)` must return when
    /// `token` is cancelled.
    #[must_use]
    pub fn all_replica<F, Fut>(self, name: &str, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        lock(&self.shared.all_replica).push((name.into(), Arc::new(move |t| start(t).boxed())));
        self
    }

    /// Registers a component that runs only while this replica leads. `start(term, token)` is called at the
    /// start of each term and must return when `token` is cancelled (the term ended); it is awaited, up to
    /// the elector's `stop_timeout`, before the Lease is released.
    #[must_use]
    pub fn leader_only<F, Fut>(self, name: &str, start: F) -> Self
    where
        F: Fn(Term, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        lock(&self.shared.leader_only)
            .push((name.into(), Arc::new(move |term, t| start(term, t).boxed())));
        self
    }

    /// Callbacks whose `on_started_leading` runs every leader-only component for the term, with the
    /// other reactions taken from `user`.
    pub fn callbacks(&self, user: Callbacks) -> Callbacks {
        let shared = self.shared.clone();
        let user = Arc::new(user);
        Callbacks::new().on_started_leading(move |term: Term, token: CancellationToken| {
            let shared = shared.clone();
            let components = lock(&shared.leader_only).clone();
            let user_work = user.started_leading(term.clone(), token.clone());
            async move {
                let mut all: Vec<BoxFuture<'static, ()>> = components
                    .into_iter()
                    .map(|(name, start)| {
                        let term = term.clone();
                        supervise(shared.clone(), name, token.clone(), move |t| {
                            start(term.clone(), t)
                        })
                        .boxed()
                    })
                    .collect();
                all.extend(user_work);
                futures::future::join_all(all).await;
            }
        })
    }

    /// Runs the all-replica components and `component` until `shutdown` is cancelled or a component fails
    /// under [`Policy::FailProcess`]; then stops the election (leader-only work stopped, Lease released)
    /// and the all-replica components, and waits for them.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::Failed`] after a failure under [`Policy::FailProcess`];
    /// [`SupervisorError::Elector`] if `component` is already running.
    ///
    /// # Cancel safety
    ///
    /// Cancel `shutdown` and await, rather than dropping the future.
    pub async fn run(
        &self,
        component: &Component,
        shutdown: CancellationToken,
    ) -> Result<(), SupervisorError> {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        for (name, start) in lock(&self.shared.all_replica).clone() {
            tracker.spawn(supervise(
                self.shared.clone(),
                name,
                stop.child_token(),
                move |t| start(t),
            ));
        }
        tracker.close();
        let elector_stop = CancellationToken::new();
        let election = component.run(elector_stop.clone());
        tokio::pin!(election);
        let result = tokio::select! {
            result = &mut election => result,
            () = async {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.shared.fatal.cancelled() => {}
                }
            } => {
                elector_stop.cancel();
                election.await
            }
        };
        stop.cancel();
        tracker.wait().await;
        result?;
        match lock(&self.shared.failure).take() {
            Some(failure) => Err(failure.into()),
            None => Ok(()),
        }
    }
}

/// Runs one component under the policy until `token` is cancelled.
async fn supervise<F>(shared: Arc<Shared>, name: String, token: CancellationToken, start: F)
where
    F: Fn(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>>,
{
    let mut backoff: Option<Duration> = None;
    loop {
        let started = Instant::now();
        let result = start(token.clone()).await;
        if token.is_cancelled() {
            if let Err(error) = result {
                tracing::warn!(component = %name, %error, "component failed while stopping");
            }
            return;
        }
        let error = match result {
            Ok(()) => "exited unexpectedly".to_owned(),
            Err(error) => error.to_string(),
        };
        tracing::error!(component = %name, %error, "component failed");
        match &shared.policy {
            Policy::FailProcess => {
                lock(&shared.failure).get_or_insert(Failure {
                    component: name,
                    error,
                });
                shared.fatal.cancel();
                return;
            }
            Policy::Restart {
                initial_backoff,
                max_backoff,
            } => {
                let delay = match backoff {
                    Some(previous) if started.elapsed() < *max_backoff => {
                        (previous * 2).min(*max_backoff)
                    }
                    _ => *initial_backoff,
                };
                backoff = Some(delay);
                tracing::info!(component = %name, delay = ?delay, "restarting component");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
