//! The election: wraps the [`Elector`] and publishes each leader-election event on the [`EventBus`] before
//! the user's callback runs.

use std::sync::Arc;

use leaderelection::{
    Callbacks, Config, ConfigError, Coordination, Elector, KubeLeaseLock, LeaderState, LeaseLock,
    Observer, Watchdog,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventBus};

/// A candidate in one election that publishes its events: [`Event::LeaderElectionStarted`] when `run`
/// starts, then [`Event::BecameLeader`] / [`Event::LostLeadership`] / [`Event::NewLeaderObserved`], each
/// before the matching user callback. Cheap to clone.
///
/// # RBAC
///
/// As [`Elector`]: `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch`.
#[derive(Clone, Debug)]
pub struct Election {
    elector: Elector,
    bus: EventBus,
}

impl Election {
    /// A component over any [`LeaseLock`], publishing on `bus`, calling `callbacks` after each event.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`Config::validate`].
    pub fn new(
        config: Config,
        lock: impl LeaseLock,
        bus: EventBus,
        callbacks: Callbacks,
    ) -> Result<Self, ConfigError> {
        Self::with_observer(config, lock, bus, callbacks, None)
    }

    /// A component over the Lease `config.lease_namespace/config.lease_name` through `client`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`Config::validate`].
    pub fn with_client(
        config: Config,
        client: kube::Client,
        bus: EventBus,
        callbacks: Callbacks,
    ) -> Result<Self, ConfigError> {
        let lock = KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name);
        Self::new(config, lock, bus, callbacks)
    }

    /// As [`Election::new`], also reporting each API request to `observer` (e.g. [`crate::Metrics`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` breaks a rule of [`Config::validate`].
    pub fn with_observer(
        config: Config,
        lock: impl LeaseLock,
        bus: EventBus,
        callbacks: Callbacks,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Self, ConfigError> {
        let identity: Arc<str> = config.identity.as_str().into();
        let user = Arc::new(callbacks);
        let wrapped = Callbacks::new()
            .on_started_leading({
                let (bus, user, identity) = (bus.clone(), user.clone(), identity.clone());
                move |term, token| {
                    bus.publish(Event::BecameLeader {
                        identity: identity.to_string(),
                        term: term.clone(),
                    });
                    let work = user.started_leading(term, token);
                    async move {
                        match work {
                            Some(work) => work.await,
                            None => Ok(()),
                        }
                    }
                }
            })
            .on_stopped_leading({
                let (bus, user, identity) = (bus.clone(), user.clone(), identity.clone());
                move |reason| {
                    bus.publish(Event::LostLeadership {
                        identity: identity.to_string(),
                        reason: reason.clone(),
                    });
                    user.stopped_leading(reason);
                }
            })
            .on_new_leader({
                let (bus, user) = (bus.clone(), user);
                move |leader| {
                    bus.publish(Event::NewLeaderObserved {
                        new_leader_identity: leader.to_owned(),
                        is_self: leader == &*identity,
                    });
                    user.new_leader(leader);
                }
            });
        let mut elector = Elector::new(config, lock, wrapped)?;
        if let Some(observer) = observer {
            elector = elector.with_observer(observer);
        }
        Ok(Self { elector, bus })
    }

    /// Takes part in coordinated leader election through `coordination` (see
    /// [`Elector::with_coordination`]); call it right after construction, before cloning.
    #[must_use]
    pub fn with_coordination(mut self, coordination: Coordination) -> Self {
        self.elector = self.elector.with_coordination(coordination);
        self
    }

    /// Publishes [`Event::LeaderElectionStarted`], then campaigns until `shutdown` is cancelled (see
    /// [`Elector::run`]): on shutdown, leader-only work is stopped and awaited, then the Lease released.
    ///
    /// # Errors
    ///
    /// [`leaderelection::Error::AlreadyRunning`] if this component is already running.
    ///
    /// # Cancel safety
    ///
    /// As [`Elector::run`]: cancel `shutdown` and await, rather than dropping the future.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), leaderelection::Error> {
        let config = self.elector.config();
        self.bus.publish(Event::LeaderElectionStarted {
            identity: config.identity.clone(),
            lease_name: config.lease_name.clone(),
            lease_namespace: config.lease_namespace.clone(),
        });
        self.elector.clone().run(shutdown).await
    }

    /// Whether this replica leads now (by its own validity deadline).
    pub fn is_leader(&self) -> bool {
        self.elector.is_leader()
    }

    /// The last observed holder, `None` before the Lease was first read (or while it is released).
    pub fn leader(&self) -> Option<String> {
        self.elector.leader()
    }

    /// The elector's state channel.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.elector.subscribe()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.elector.config()
    }

    /// The bus this component publishes on.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// The wrapped elector.
    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    /// A healthz watchdog over this component's elector, tolerating `tolerance` past the lease duration.
    pub fn watchdog(&self, tolerance: std::time::Duration) -> Watchdog {
        Watchdog::new(&self.elector, tolerance)
    }
}
