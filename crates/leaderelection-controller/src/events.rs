//! The event bus and the four leader-election events.

use std::sync::Arc;

use leaderelection::{StopReason, Term};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A leader-election event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The component started campaigning (published once, when `run` starts).
    LeaderElectionStarted {
        /// This candidate's identity (the pod name).
        identity: String,
        /// The Lease's name.
        lease_name: String,
        /// The Lease's namespace.
        lease_namespace: String,
    },
    /// This candidate acquired the Lease; published before `on_started_leading` runs.
    BecameLeader {
        /// This candidate's identity.
        identity: String,
        /// The term (its `transitions` is the fencing token).
        term: Term,
    },
    /// This candidate's term ended; published before `on_stopped_leading` runs.
    LostLeadership {
        /// This candidate's identity.
        identity: String,
        /// Why: lease lost to another holder, renew deadline exceeded, shutdown, or released.
        reason: StopReason,
    },
    /// A different holder was observed (this candidate or another); published before `on_new_leader`.
    NewLeaderObserved {
        /// The new holder's identity.
        new_leader_identity: String,
        /// Whether the new holder is this candidate.
        is_self: bool,
    },
}

impl Event {
    /// The event's type name, as logs carry it, e.g. `leader_election.became_leader`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::LeaderElectionStarted { .. } => "leader_election.started",
            Self::BecameLeader { .. } => "leader_election.became_leader",
            Self::LostLeadership { .. } => "leader_election.lost_leadership",
            Self::NewLeaderObserved { .. } => "leader_election.new_leader_observed",
        }
    }
}

/// A typed broadcast bus: many publishers, many subscribers. Publishing never blocks; a subscriber that
/// falls more than `capacity` events behind loses the oldest and is told how many ([`Received::Lagged`]).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` (at least 1) events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Publishes `event` to every current subscriber; returns how many there are. Never blocks.
    pub fn publish(&self, event: Event) -> usize {
        self.tx.send(Arc::new(event)).unwrap_or(0)
    }

    /// A subscription receiving every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

/// What [`Subscription::recv`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// This subscriber was too slow: this many events were skipped.
    Lagged(u64),
}

/// One subscriber's view of an [`EventBus`].
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    /// The next event, or `None` once every [`EventBus`] clone is dropped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is consumed only when returned.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event, until `stop` is cancelled; after that only the events already waiting, so a feed
    /// stopped with the process still handles its last events. `None` at the end.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is consumed only when returned.
    pub async fn recv_until(&mut self, stop: &CancellationToken) -> Option<Received> {
        tokio::select! {
            received = self.recv() => received,
            () = stop.cancelled() => self.try_recv(),
        }
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.rx.try_recv() {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(n: usize) -> Event {
        Event::NewLeaderObserved {
            new_leader_identity: format!("p{n}"),
            is_self: false,
        }
    }

    #[test]
    fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::new(8);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        assert_eq!(bus.publish(observed(1)), 2);
        bus.publish(observed(2));
        for sub in [&mut a, &mut b] {
            assert_eq!(sub.try_recv(), Some(Received::Event(Arc::new(observed(1)))));
            assert_eq!(sub.try_recv(), Some(Received::Event(Arc::new(observed(2)))));
            assert_eq!(sub.try_recv(), None);
        }
    }

    #[test]
    fn a_slow_subscriber_lags_and_is_told_so_without_blocking_publishers() {
        let bus = EventBus::new(2);
        let mut slow = bus.subscribe();
        for n in 0..5 {
            bus.publish(observed(n));
        }
        assert_eq!(slow.try_recv(), Some(Received::Lagged(3)));
        assert_eq!(
            slow.try_recv(),
            Some(Received::Event(Arc::new(observed(3))))
        );
    }
}
