//! The order in which pending claims are served: Beskar7's priority (`100 + age in minutes + 50` for a
//! claim without required and preferred tags), then fewer attempts, then creation time, then name; and a
//! bound on starvation.
//!
//! The +50 for simple claims means a claim with tags waits behind every simple claim younger than it by
//! less than 50 minutes: under a steady stream of simple claims, it can wait up to 50 minutes while hosts
//! that fit it are handed to others. So a claim pending for [`DEFAULT_MAX_WAIT`] (or the configured maximum
//! wait) goes before every claim that has not waited that long, oldest first.

use std::cmp::Ordering;
use std::time::Duration;

/// The base priority of every claim.
pub const BASE_PRIORITY: i64 = 100;
/// The bonus of a claim with no required and no preferred tags.
pub const SIMPLE_BONUS: i64 = 50;
/// How long a claim may wait before it goes first regardless of priority: 10 minutes.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);

/// What ordering needs to know of one pending claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The claim's `namespace/name` (the last tie-break).
    pub name: String,
    /// How long ago it was created (`metadata.creationTimestamp`; zero for a timestamp in the future).
    pub age: Duration,
    /// Whether it has neither required nor preferred tags.
    pub simple: bool,
    /// Failed bind attempts so far.
    pub attempts: u32,
}

/// `100 + whole minutes of age + 50 if simple`, as Beskar7's `calculatePriority`.
#[must_use]
pub fn priority(age: Duration, simple: bool) -> i64 {
    let minutes = i64::try_from(age.as_secs() / 60).unwrap_or(i64::MAX / 2);
    BASE_PRIORITY + minutes + if simple { SIMPLE_BONUS } else { 0 }
}

/// Compares two claims: the one served first is `Less`. Claims that waited `max_wait` or longer come first
/// (oldest first); then higher [`priority`], fewer attempts, older, and by name.
#[must_use]
pub fn compare(a: &Pending, b: &Pending, max_wait: Duration) -> Ordering {
    let starved = |p: &Pending| p.age >= max_wait;
    starved(b)
        .cmp(&starved(a))
        .then_with(|| {
            if starved(a) && starved(b) {
                b.age.cmp(&a.age)
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| priority(b.age, b.simple).cmp(&priority(a.age, a.simple)))
        .then_with(|| a.attempts.cmp(&b.attempts))
        .then_with(|| b.age.cmp(&a.age))
        .then_with(|| a.name.cmp(&b.name))
}

/// Sorts `claims` into service order (see [`compare`]).
pub fn sort(claims: &mut [Pending], max_wait: Duration) {
    claims.sort_by(|a, b| compare(a, b, max_wait));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;

    fn pending(name: &str, age_secs: u64, simple: bool, attempts: u32) -> Pending {
        Pending {
            name: name.into(),
            age: Duration::from_secs(age_secs),
            simple,
            attempts,
        }
    }

    fn order(mut claims: Vec<Pending>, max_wait: Duration) -> Vec<String> {
        sort(&mut claims, max_wait);
        claims.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn priority_is_base_plus_minutes_plus_simple_bonus() {
        assert_eq!(priority(Duration::ZERO, false), 100);
        assert_eq!(priority(Duration::from_secs(59), false), 100);
        assert_eq!(priority(Duration::from_secs(3 * MIN + 59), false), 103);
        assert_eq!(priority(Duration::from_secs(3 * MIN), true), 153);
    }

    #[test]
    fn higher_priority_first_then_fewer_attempts_then_older_then_name() {
        let never = Duration::MAX;
        let claims = vec![
            pending("tagged-old", 10 * MIN, false, 0), // 110
            pending("simple-new", 0, true, 0),         // 150
            pending("simple-retried", 30, true, 2),    // 150, 2 attempts
            pending("simple-b", 20, true, 1),          // 150, 1 attempt, younger than a
            pending("simple-a", 40, true, 1),          // 150, 1 attempt
            pending("same-c", 40, true, 1),            // as simple-a: by name
        ];
        assert_eq!(
            order(claims, never),
            [
                "simple-new",
                "same-c",
                "simple-a",
                "simple-b",
                "simple-retried",
                "tagged-old"
            ]
        );
    }

    #[test]
    fn without_a_bound_a_tagged_claim_starves_behind_fresh_simple_claims_for_50_minutes() {
        let never = Duration::MAX;
        // A tagged claim 49 minutes old (149) still loses to a simple claim created now (150).
        let claims = vec![
            pending("tagged", 49 * MIN + 59, false, 0),
            pending("fresh-simple", 0, true, 0),
        ];
        assert_eq!(order(claims, never), ["fresh-simple", "tagged"]);
        // At 51 minutes it wins (151 > 150).
        let claims = vec![
            pending("tagged", 51 * MIN, false, 0),
            pending("fresh-simple", 0, true, 0),
        ];
        assert_eq!(order(claims, never), ["tagged", "fresh-simple"]);
    }

    #[test]
    fn the_maximum_wait_bounds_starvation() {
        let claims = vec![
            pending("fresh-simple", 0, true, 0),
            pending("tagged", 10 * MIN, false, 5),
            pending("older-simple", 9 * MIN, true, 0),
        ];
        assert_eq!(
            order(claims.clone(), DEFAULT_MAX_WAIT),
            ["tagged", "older-simple", "fresh-simple"]
        );
        // Just under the bound, priority rules.
        let mut under = claims;
        under[1].age = DEFAULT_MAX_WAIT - Duration::from_secs(1);
        assert_eq!(
            order(under, DEFAULT_MAX_WAIT),
            ["older-simple", "fresh-simple", "tagged"]
        );
    }

    #[test]
    fn starved_claims_go_oldest_first() {
        let claims = vec![
            pending("starved-simple", 11 * MIN, true, 0),
            pending("starved-tagged", 12 * MIN, false, 0),
        ];
        assert_eq!(
            order(claims, DEFAULT_MAX_WAIT),
            ["starved-tagged", "starved-simple"]
        );
    }
}
