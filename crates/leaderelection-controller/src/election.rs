//! The election: wraps the [`Elector`] and publishes each leader-election event on the [`EventBus`] before
//! the user's callback runs.

use std::sync::Arc;

use leaderelection::{
    Callbacks, Config, ConfigError, Coordination, Elector, ElectorBuilder, ElectorHandle,
    LeaderState, LeaseLock, Observer, Watchdog,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventBus};

/// A candidate in one election that publishes its events: [`Event::LeaderElectionStarted`] when `run`
/// starts, then [`Event::BecameLeader`] / [`Event::LostLeadership`] / [`Event::NewLeaderObserved`], each
/// before the matching user callback.
///
/// Built once by [`Election::builder`]; [`Election::run`] drives it and consumes it; what others need
/// (state, configuration, bus) comes from the cloneable [`ElectionHandle`] of [`Election::handle`].
///
/// # RBAC
///
/// As [`Elector`]: `coordination.k8s.io` `leases`: `get`, `create`, `update`, `list`, `watch`.
#[derive(Debug)]
pub struct Election {
    elector: Elector,
    bus: EventBus,
}

/// A cloneable view of one [`Election`]: its state, configuration and bus, from any task.
#[derive(Clone, Debug)]
pub struct ElectionHandle {
    elector: ElectorHandle,
    bus: EventBus,
}

/// What [`Election::builder`] collects; [`ElectionBuilder::build`] makes the [`Election`].
#[derive(Debug)]
pub struct ElectionBuilder {
    elector: ElectorBuilder,
    identity: String,
    bus: EventBus,
    callbacks: Callbacks,
}

// === impl ElectionBuilder ===

impl ElectionBuilder {
    /// Publishes on `bus` (a new bus by default).
    #[must_use]
    pub fn bus(mut self, bus: EventBus) -> Self {
        self.bus = bus;
        self
    }

    /// The user's reactions to leadership changes, each called after its event was published.
    #[must_use]
    pub fn callbacks(mut self, callbacks: Callbacks) -> Self {
        self.callbacks = callbacks;
        self
    }

    /// Reports each API request to `observer` (e.g. [`crate::Metrics`]): see
    /// [`ElectorBuilder::observer`].
    #[must_use]
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.elector = self.elector.observer(observer);
        self
    }

    /// Takes part in coordinated leader election through `coordination`: see
    /// [`ElectorBuilder::coordination`].
    #[must_use]
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.elector = self.elector.coordination(coordination);
        self
    }

    /// The election.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration breaks a rule of [`Config::validate`], or a standalone
    /// election was given a coordination (see [`ElectorBuilder::build`]).
    pub fn build(self) -> Result<Election, ConfigError> {
        let Self {
            elector,
            identity,
            bus,
            callbacks,
        } = self;
        let identity: Arc<str> = identity.into();
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
        let elector = elector.callbacks(wrapped).build()?;
        Ok(Election { elector, bus })
    }
}

// === impl Election ===

impl Election {
    /// A builder for the election of the Lease `config` names, read and written through `lock` (e.g.
    /// `leaderelection::KubeLeaseLock::new(client, &config.lease_namespace, &config.lease_name)`).
    #[must_use]
    pub fn builder(config: Config, lock: impl LeaseLock) -> ElectionBuilder {
        ElectionBuilder {
            identity: config.identity.clone(),
            elector: Elector::builder(config, lock),
            bus: EventBus::default(),
            callbacks: Callbacks::new(),
        }
    }

    /// A builder for a replica that runs alone: it leads at once and makes no API call (see
    /// [`Elector::standalone`]); the events are published as for an election. `config` gives the
    /// identity, the Lease name and namespace that name it in events and metrics, and the stop timeout.
    #[must_use]
    pub fn standalone(config: Config) -> ElectionBuilder {
        ElectionBuilder {
            identity: config.identity.clone(),
            elector: Elector::standalone(config),
            bus: EventBus::default(),
            callbacks: Callbacks::new(),
        }
    }

    /// A cloneable handle on this election's state, configuration and bus.
    #[must_use]
    pub fn handle(&self) -> ElectionHandle {
        ElectionHandle {
            elector: self.elector.handle(),
            bus: self.bus.clone(),
        }
    }

    /// Publishes [`Event::LeaderElectionStarted`], then campaigns until `shutdown` is cancelled (see
    /// [`Elector::run`]): on shutdown, leader-only work is stopped and awaited, then the Lease released.
    ///
    /// # Errors
    ///
    /// As [`Elector::run`] (none today).
    ///
    /// # Cancel safety
    ///
    /// As [`Elector::run`]: cancel `shutdown` and await, rather than dropping the future.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), leaderelection::Error> {
        let handle = self.elector.handle();
        let config = handle.config();
        self.bus.publish(Event::LeaderElectionStarted {
            identity: config.identity.clone(),
            lease_name: config.lease_name.clone(),
            lease_namespace: config.lease_namespace.clone(),
        });
        self.elector.run(shutdown).await
    }
}

// === impl ElectionHandle ===

impl ElectionHandle {
    /// Whether this replica leads now (by its own validity deadline).
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.elector.is_leader()
    }

    /// The last observed holder, `None` before the Lease was first read (or while it is released).
    #[must_use]
    pub fn leader(&self) -> Option<String> {
        self.elector.leader()
    }

    /// The state now.
    #[must_use]
    pub fn state(&self) -> LeaderState {
        self.elector.state()
    }

    /// The elector's state channel.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.elector.subscribe()
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        self.elector.config()
    }

    /// This candidate's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        self.elector.identity()
    }

    /// Whether the election was built by [`Election::standalone`] (leads alone, no API call).
    #[must_use]
    pub fn is_standalone(&self) -> bool {
        self.elector.is_standalone()
    }

    /// The bus the election publishes on.
    #[must_use]
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// The elector's handle.
    #[must_use]
    pub fn elector(&self) -> &ElectorHandle {
        &self.elector
    }

    /// A healthz watchdog over this election, tolerating `tolerance` past the lease duration.
    #[must_use]
    pub fn watchdog(&self, tolerance: std::time::Duration) -> Watchdog {
        Watchdog::new(&self.elector, tolerance)
    }
}
