//! The size of the watch history, as kube-apiserver's watch cache sizes its event buffer
//! (`staging/src/k8s.io/apiserver/pkg/storage/cacher/watch_cache.go`, `updateCache` and
//! `resizeCacheLocked`): events go only when a write finds the buffer full; a full buffer whose oldest event
//! is younger than the fresh duration (75 s) doubles instead (up to the upper bound), and one whose newest
//! quarter is all older than that halves (down to the lower bound). So a quiet resource type keeps its
//! events for as long as nothing is written, and a busy one keeps at least 75 s of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Event;

/// `defaultLowerBoundCapacity` in `watch_cache.go`: the capacity the buffer starts with and never shrinks
/// below.
const LOWER_BOUND: usize = 100;

/// The buffer's capacity and its bounds.
#[derive(Debug)]
pub(crate) struct WatchCacheCapacity {
    capacity: usize,
    lower: usize,
    upper: usize,
    /// `eventFreshDuration` (75 s in kube-apiserver).
    fresh: Duration,
}

impl WatchCacheCapacity {
    /// A buffer of at most `upper` events (`defaultUpperBoundCapacity`, 100 Ki, in kube-apiserver; at least
    /// 1), starting at 100 or `upper` if lower, whose resizing keeps events younger than `fresh`.
    pub(crate) fn new(upper: usize, fresh: Duration) -> Self {
        let upper = upper.max(1);
        let lower = LOWER_BOUND.min(upper);
        Self {
            capacity: lower,
            lower,
            upper,
            fresh,
        }
    }

    /// Resizes before an event committed at `now` joins `history` (oldest first) and returns the capacity:
    /// the caller drops the oldest events until fewer than that remain.
    pub(crate) fn before_insert(&mut self, history: &VecDeque<Arc<Event>>, now: Instant) -> usize {
        if history.len() < self.capacity {
            return self.capacity;
        }
        let age = |e: Option<&Arc<Event>>| e.map_or(Duration::ZERO, |e| now.duration_since(e.at));
        if age(history.front()) < self.fresh {
            self.capacity = (self.capacity * 2).min(self.upper);
        } else {
            // The first event of the newest quarter (the oldest one when the quarter is empty, as the Go
            // index wraps around to it).
            let quarter = self.capacity / 4;
            let index = if quarter == 0 {
                0
            } else {
                history.len() - quarter
            };
            if age(history.get(index)) > self.fresh {
                self.capacity = (self.capacity / 2).max(self.lower);
            }
        }
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::store::EventType;

    fn event(rv: u64, at: Instant) -> Arc<Event> {
        Arc::new(Event {
            rv,
            at,
            kind: EventType::Added,
            resource: 0,
            namespace: String::new(),
            object: Arc::new(Value::Null),
        })
    }

    /// Fills `history` through `capacity` as the store does, one event per `step` of time from `start`.
    fn fill(
        capacity: &mut WatchCacheCapacity,
        history: &mut VecDeque<Arc<Event>>,
        count: u64,
        start: Instant,
        step: Duration,
    ) {
        for i in 0..count {
            let at = start + step * u32::try_from(i).unwrap();
            let keep = capacity.before_insert(history, at);
            while history.len() >= keep {
                history.pop_front();
            }
            history.push_back(event(i, at));
        }
    }

    #[test]
    fn the_watch_cache_doubles_while_its_oldest_event_is_fresh() {
        let mut capacity = WatchCacheCapacity::new(100 * 1024, Duration::from_secs(75));
        let mut history = VecDeque::new();
        // 1000 events within a second: 100 -> 200 -> 400 -> 800 -> 1600, nothing dropped.
        fill(
            &mut capacity,
            &mut history,
            1000,
            Instant::now(),
            Duration::from_millis(1),
        );
        assert_eq!(history.len(), 1000);
        assert_eq!(capacity.capacity, 1600);
    }

    #[test]
    fn the_watch_cache_drops_the_oldest_event_when_full_of_stale_ones() {
        let mut capacity = WatchCacheCapacity::new(100 * 1024, Duration::from_secs(75));
        let mut history = VecDeque::new();
        // One event a second: the 101st finds the oldest 100 s old: no growth, the oldest goes.
        fill(
            &mut capacity,
            &mut history,
            101,
            Instant::now(),
            Duration::from_secs(1),
        );
        assert_eq!(capacity.capacity, 100);
        assert_eq!(history.len(), 100);
        assert_eq!(history.front().unwrap().rv, 1);
    }

    #[test]
    fn the_watch_cache_halves_when_its_newest_quarter_is_stale() {
        let mut capacity = WatchCacheCapacity::new(100 * 1024, Duration::from_secs(75));
        let mut history = VecDeque::new();
        let start = Instant::now();
        fill(
            &mut capacity,
            &mut history,
            200,
            start,
            Duration::from_millis(1),
        );
        assert_eq!(capacity.capacity, 200);
        // Full at 200, every event 2 minutes old: down to 100, keeping the newest 99 and the new one.
        let later = start + Duration::from_secs(120);
        let keep = capacity.before_insert(&history, later);
        assert_eq!(keep, 100);
    }

    #[test]
    fn the_watch_cache_never_grows_past_its_upper_bound() {
        let mut capacity = WatchCacheCapacity::new(5, Duration::from_secs(75));
        let mut history = VecDeque::new();
        fill(
            &mut capacity,
            &mut history,
            8,
            Instant::now(),
            Duration::from_millis(1),
        );
        assert_eq!(history.len(), 5);
        assert_eq!(history.front().unwrap().rv, 3);
    }
}
