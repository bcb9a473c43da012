//! When the binder's next batch starts: a processing interval after the last one, or sooner once a burst
//! of changes has gone quiet, and never later than a bound after the first change of the burst.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// How long the changes must stay quiet before a batch starts: 20 ms. Twice the 10 ms the binder waited
/// before, so that the claims one client creates in a loop (a request every few milliseconds) and a host
/// controller's sweep over its hosts' statuses land in one batch; short beside the 1 s processing
/// interval and the 5 ms the bench adds to each request (`docs/claim-coordinator.md`, "Scale").
pub const QUIET: Duration = Duration::from_millis(20);

/// The longest a batch waits after the first change of a burst: 200 ms. Under changes that never go
/// quiet for [`QUIET`] (a host controller updating a status every few milliseconds), a batch still runs
/// five times a second; the quiet period alone would postpone it for as long as the churn lasts.
pub const MAX_DELAY: Duration = Duration::from_millis(200);

/// Waits until the next batch is due: `interval` has passed, or a change arrived on `changes` and then
/// either `quiet` passed without another or `max_delay` passed since that first change. Once `changes`
/// has ended, the interval alone paces the batches.
///
/// # Cancel safety
///
/// Cancel safe: a change taken from `changes` before the cancellation is lost, and the next batch reads
/// the cache, which has it.
pub(crate) async fn next_batch<S>(
    changes: &mut S,
    interval: Duration,
    quiet: Duration,
    max_delay: Duration,
) where
    S: Stream<Item = ()> + Unpin,
{
    tokio::select! {
        () = tokio::time::sleep(interval) => return,
        change = changes.next() => {
            if change.is_none() {
                // No more changes will come: pace by the interval alone.
                tokio::time::sleep(interval).await;
                return;
            }
        }
    }
    let latest = Instant::now() + max_delay;
    loop {
        let until = (Instant::now() + quiet).min(latest);
        tokio::select! {
            () = tokio::time::sleep_until(until) => return,
            change = changes.next() => {
                if change.is_none() {
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);

    /// Sends a change at each offset (from now), then keeps the channel open.
    fn changes_at(offsets: Vec<Duration>) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded();
        let start = Instant::now();
        tokio::spawn(async move {
            for offset in offsets {
                tokio::time::sleep_until(start + offset).await;
                if tx.unbounded_send(()).is_err() {
                    return;
                }
            }
            // Held open: the stream has not ended.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        rx
    }

    async fn waited(offsets: Vec<Duration>) -> Duration {
        let mut changes = changes_at(offsets);
        let start = Instant::now();
        next_batch(&mut changes, INTERVAL, QUIET, MAX_DELAY).await;
        start.elapsed()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn without_changes_the_interval_paces_the_batches() {
        assert_eq!(waited(vec![]).await, INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_starts_one_batch_once_it_has_been_quiet() {
        // One change: a batch QUIET after it.
        assert_eq!(waited(vec![ms(100)]).await, ms(100) + QUIET);
        // Ten changes 5 ms apart: one batch, QUIET after the last.
        let burst: Vec<Duration> = (0..10).map(|i| ms(300 + 5 * i)).collect();
        assert_eq!(waited(burst).await, ms(345) + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn churn_that_never_goes_quiet_waits_at_most_the_maximum_delay() {
        // A change every 10 ms for ten seconds: the batch starts MAX_DELAY after the first.
        let churn: Vec<Duration> = (0..1000).map(|i| ms(50 + 10 * i)).collect();
        assert_eq!(waited(churn).await, ms(50) + MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_leaves_the_interval() {
        let (tx, mut rx) = mpsc::unbounded::<()>();
        drop(tx);
        let start = Instant::now();
        next_batch(&mut rx, INTERVAL, QUIET, MAX_DELAY).await;
        assert_eq!(start.elapsed(), INTERVAL);
    }
}
