//! Arbitrary Leases through the lock and the elector: whatever another writer left in a Lease (an empty or
//! huge holder, a negative or huge `leaseDurationSeconds`, `leaseTransitions` at `i32::MAX`, times far in
//! the past or future, missing fields), read as [`LeaderElectionRecord::from_lease_spec`] reads it, an
//! `Elector` run for a minute of virtual time does not panic and keeps its documented rules
//! (`docs/design.md`): it takes a Lease another candidate holds (or another process under its identity) only once the
//! Lease has expired by its own clock, counted from when it first saw the record; its first term is `leaseTransitions` plus one (staying
//! `i32::MAX` at the top); the term never decreases.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use leaderelection::{Callbacks, Config, Elector, LeaderElectionRecord, MemoryLeaseStore};
use proptest::prelude::*;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long each Elector runs, in virtual time.
const RUN: Duration = Duration::from_secs(60);

fn holder() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        // The candidate's own identity, written by another process (an earlier run): another holder's.
        Just(Some("a".to_owned())),
        "[a-z0-9.-]{1,20}".prop_map(Some),
        Just(Some("h".repeat(100_000))),
    ]
}

fn time() -> impl Strategy<Value = Option<MicroTime>> {
    let min = Timestamp::MIN.as_second();
    let max = Timestamp::MAX.as_second();
    prop_oneof![
        Just(None),
        prop_oneof![Just(min), Just(max), min..=max, -1_000_000i64..1_000_000]
            .prop_map(|s| Some(MicroTime(Timestamp::from_second(s).unwrap()))),
    ]
}

fn spec() -> impl Strategy<Value = Option<LeaseSpec>> {
    let duration = prop_oneof![
        Just(None),
        Just(Some(i32::MIN)),
        Just(Some(i32::MAX)),
        Just(Some(0)),
        (-5i32..80).prop_map(Some),
        any::<i32>().prop_map(Some),
    ];
    let transitions = prop_oneof![
        Just(None),
        Just(Some(i32::MAX)),
        Just(Some(i32::MAX - 1)),
        Just(Some(i32::MIN)),
        any::<i32>().prop_map(Some),
    ];
    let name = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        "[a-z]{1,8}".prop_map(Some)
    ];
    let preferred = prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("other".to_owned())),
        Just(Some("a".to_owned())),
    ];
    let fields = (
        holder(),
        duration,
        time(),
        time(),
        transitions,
        name,
        preferred,
    )
        .prop_map(
            |(holder, duration, acquire, renew, transitions, strategy, preferred)| LeaseSpec {
                holder_identity: holder,
                lease_duration_seconds: duration,
                acquire_time: acquire,
                renew_time: renew,
                lease_transitions: transitions,
                strategy,
                preferred_holder: preferred,
            },
        );
    prop_oneof![1 => Just(None), 9 => fields.prop_map(Some)]
}

/// What an Elector did over [`RUN`] with `record` stored: when it first led (from its start) and every
/// term it published, in order.
async fn elect(record: LeaderElectionRecord) -> (Option<Duration>, Vec<i32>, MemoryLeaseStore) {
    let store = MemoryLeaseStore::new();
    store.put(record);
    let a = Elector::new(
        Config::new("a", "arbitrary", "default"),
        store.lock("a"),
        Callbacks::new(),
    )
    .unwrap();
    let mut state = a.handle().subscribe();
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(a.run(shutdown.clone()));
    let mut led_after = None;
    let mut terms = Vec::new();
    let end = start + RUN;
    while let Ok(Ok(())) = tokio::time::timeout_at(end, state.changed()).await {
        let now = state.borrow_and_update().clone();
        if let Some(term) = now.term {
            led_after.get_or_insert(start.elapsed());
            if terms.last() != Some(&term.transitions) {
                terms.push(term.transitions);
            }
        }
    }
    shutdown.cancel();
    task.await
        .expect("the elector does not panic")
        .expect("the elector ends cleanly");
    (led_after, terms, store)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn an_arbitrary_lease_is_taken_only_as_documented(spec in spec()) {
        let record = LeaderElectionRecord::from_lease_spec(spec.as_ref());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (led_after, terms, store) = runtime.block_on(elect(record.clone()));

        let duration = Duration::from_secs(u64::try_from(record.lease_duration_seconds).unwrap_or(0));
        // Someone else holds it (also under our identity: this run did not write it), or it was released
        // for another preferred holder: wait for its expiry.
        let waits = record.is_held()
            || record.preferred_holder.as_deref().is_some_and(|p| p != "a");
        if waits && let Some(led_after) = led_after {
            prop_assert!(
                led_after >= duration,
                "led after {led_after:?}, before the Lease's {duration:?} expired"
            );
        }
        // Free, or expired with time to spare (a retry period and the follower's staggered delay):
        // the elector leads within the run.
        if !waits || duration + Duration::from_secs(10) <= RUN {
            prop_assert!(led_after.is_some(), "never led within {RUN:?}");
        }
        if let Some(&first) = terms.first() {
            // Every acquisition from the follower state starts a new term, also of a Lease naming us
            // (`docs/design.md`, "An identity is not an incarnation").
            prop_assert_eq!(first, record.lease_transitions.saturating_add(1), "the first term");
            prop_assert!(terms.windows(2).all(|w| w[0] <= w[1]), "terms went back: {:?}", terms);
            prop_assert_eq!(
                store.lease().unwrap().record.lease_transitions,
                *terms.last().unwrap(),
                "the Lease holds the last term"
            );
        }
    }
}
