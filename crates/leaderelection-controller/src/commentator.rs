//! Structured logs of every leader-election event at these levels: INFO for
//! started, became leader and new leader; WARN for lost leadership.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Received, Subscription};

/// Logs each event from `events` with `tracing` until the bus is dropped or `stop` is cancelled; on `stop`
/// it first logs what is already waiting, so a process can log its last events before it exits. Fields:
/// `identity`, `lease`, `reason`, `term`, `time_as_leader`.
///
/// # Cancel safety
///
/// Cancel safe; dropping it loses the waiting events (cancel `stop` and await instead).
pub async fn run(mut events: Subscription, stop: CancellationToken) {
    let mut lease = String::new();
    let mut since: Option<Instant> = None;
    loop {
        let Some(received) = events.recv_until(&stop).await else {
            return;
        };
        let event = match received {
            Received::Event(event) => event,
            Received::Lagged(skipped) => {
                tracing::warn!(skipped, "commentator fell behind; events skipped");
                continue;
            }
        };
        match &*event {
            Event::LeaderElectionStarted {
                identity,
                lease_name,
                lease_namespace,
            } => {
                lease = format!("{lease_namespace}/{lease_name}");
                tracing::info!(%identity, %lease, "leader election started");
            }
            Event::BecameLeader { identity, term } => {
                since = Some(Instant::now());
                tracing::info!(
                    %identity,
                    %lease,
                    term = term.transitions,
                    "became leader"
                );
            }
            Event::LostLeadership { identity, reason } => {
                let time_as_leader = since
                    .take()
                    .map(|s| humantime::format_duration(round(s.elapsed())));
                tracing::warn!(
                    %identity,
                    %lease,
                    %reason,
                    time_as_leader = time_as_leader.map(|t| t.to_string()).unwrap_or_default(),
                    "lost leadership"
                );
            }
            Event::NewLeaderObserved {
                new_leader_identity,
                is_self,
            } => {
                tracing::info!(
                    new_leader = %new_leader_identity,
                    is_self,
                    %lease,
                    "new leader observed"
                );
            }
        }
    }
}

/// Whole milliseconds, for readable durations.
pub(crate) fn round(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
