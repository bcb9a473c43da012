//! `KubeLeaseLock` over real HTTP against the fake API server: the lock's outcomes (404, 409 AlreadyExists,
//! 409 Conflict, watch events, 410 Gone, list) are the API server's, two electors hand the Lease over
//! through a watch, a Lease older than the watch history costs a candidate a few requests, not a loop, and a
//! plain-text 429 (rate limiting) reads as TooManyRequests, a missing namespace is not a missing Lease, and
//! the lock never rewinds (rule 14): a late watch event does not replace what it remembers, and no update
//! drops the labels and annotations it sets or that others set.

use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Faults};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use leaderelection::{
    Callbacks, Config, Elector, KubeLeaseLock, LeaderElectionRecord, LeaseEvent, LeaseLock,
    LeaseMetadata, LockError, MetadataError,
};
use tokio_util::sync::CancellationToken;

/// Awaits `f` for at most 60 s, so that a regression fails instead of hanging.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("not within 60 s: a wait that never ends")
}

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

fn record(holder: &str, transitions: i32) -> LeaderElectionRecord {
    let now = jiff::Timestamp::now();
    LeaderElectionRecord {
        holder_identity: holder.into(),
        lease_duration_seconds: 15,
        acquire_time: Some(now),
        renew_time: Some(now),
        lease_transitions: transitions,
        ..LeaderElectionRecord::default()
    }
}

fn metadata(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> LeaseMetadata {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    LeaseMetadata {
        labels: map(labels),
        annotations: map(annotations),
    }
}

/// A map's entries, in key order.
type Pairs = Vec<(String, String)>;

fn labels_and_annotations(lease: &Lease) -> (Pairs, Pairs) {
    let pairs = |map: &Option<std::collections::BTreeMap<String, String>>| {
        map.clone().unwrap_or_default().into_iter().collect()
    };
    (
        pairs(&lease.metadata.labels),
        pairs(&lease.metadata.annotations),
    )
}

fn owned(pairs: &[(&str, &str)]) -> Pairs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A lock on Lease `default/meta` that gives it `labels` and `annotations`.
fn meta_lock(
    server: &FakeApiServer,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> KubeLeaseLock {
    KubeLeaseLock::new(client(&server.url()), "default", "meta")
        .with_metadata(metadata(labels, annotations))
        .unwrap()
}

fn leases(server: &FakeApiServer) -> kube::Api<Lease> {
    kube::Api::namespaced(client(&server.url()), "default")
}

/// Merges `metadata` into Lease `meta`'s, as another writer's merge patch would.
async fn patch_metadata(server: &FakeApiServer, metadata: serde_json::Value) {
    leases(server)
        .patch(
            "meta",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "metadata": metadata })),
        )
        .await
        .unwrap();
}

/// Sets Lease `meta`'s labels and annotations to these only, as another writer's PUT would.
async fn replace_metadata(
    server: &FakeApiServer,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Lease {
    let api = leases(server);
    let mut lease = api.get("meta").await.unwrap();
    lease.metadata.labels = Some(owned(labels).into_iter().collect());
    lease.metadata.annotations = Some(owned(annotations).into_iter().collect());
    api.replace("meta", &kube::api::PostParams::default(), &lease)
        .await
        .unwrap()
}

/// Asserts that Lease `meta` has these labels and annotations, and no others.
async fn assert_metadata(
    server: &FakeApiServer,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) {
    let lease = leases(server).get("meta").await.unwrap();
    assert_eq!(
        labels_and_annotations(&lease),
        (owned(labels), owned(annotations))
    );
}

/// How many requests of `verb` on Leases the server has answered or seen.
fn requests(server: &FakeApiServer, verb: &str) -> u64 {
    server
        .counts()
        .iter()
        .filter(|c| c.verb == verb && c.resource == "leases")
        .map(|c| c.count)
        .sum()
}

#[tokio::test]
async fn a_created_lease_carries_the_given_labels_and_annotations() {
    let server = FakeApiServer::start().await.unwrap();
    let labels = [("app.kubernetes.io/part-of", "my-app")];
    let annotations = [("argocd.argoproj.io/sync-options", "Prune=false")];
    let lock = meta_lock(&server, &labels, &annotations);
    lock.create(&record("a", 0)).await.unwrap();
    assert_metadata(&server, &labels, &annotations).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_update_keeps_labels_and_annotations_set_by_others() {
    let server = FakeApiServer::start().await.unwrap();
    let lock = meta_lock(&server, &[("team", "a")], &[]);
    lock.create(&record("a", 0)).await.unwrap();
    patch_metadata(
        &server,
        serde_json::json!({
            "labels": {"gitops.example.com/tracked": "yes"},
            "annotations": {"example.com/note": "set by an outsider"},
        }),
    )
    .await;

    // This candidate's renewal, then another candidate's takeover (whose lock has another value for the
    // label "team"): both PUTs carry what the Lease has.
    let read = lock.get().await.unwrap().unwrap();
    lock.update(&record("a", 0), &read.resource_version)
        .await
        .unwrap();
    let other = meta_lock(&server, &[("team", "b")], &[]);
    let read = other.get().await.unwrap().unwrap();
    let taken = other
        .update(&record("b", 1), &read.resource_version)
        .await
        .unwrap();
    assert_eq!(taken.record.holder_identity, "b");
    assert_metadata(
        &server,
        &[("gitops.example.com/tracked", "yes"), ("team", "a")],
        &[("example.com/note", "set by an outsider")],
    )
    .await;
    server.shutdown().await;
}

/// Rule 14: the lock's own labels and annotations are put back by an update that finds them gone (another
/// writer's PUT dropped them), and a key the Lease already has keeps its value.
#[tokio::test]
async fn an_update_puts_back_the_locks_labels_when_the_lease_lost_them() {
    let server = FakeApiServer::start().await.unwrap();
    let lock = meta_lock(
        &server,
        &[("team", "a"), ("tier", "x")],
        &[("example.com/owner", "a")],
    );
    lock.create(&record("a", 0)).await.unwrap();
    replace_metadata(&server, &[("tier", "y")], &[]).await;

    let read = lock.get().await.unwrap().unwrap();
    lock.update(&record("a", 0), &read.resource_version)
        .await
        .unwrap();
    assert_metadata(
        &server,
        &[("team", "a"), ("tier", "y")],
        &[("example.com/owner", "a")],
    )
    .await;
    server.shutdown().await;
}

/// Rule 14: the lock's own watch, read late, delivers a Lease older than the lock's last write; the
/// lock does not take that older version's metadata as its own, so its next update carries what the Lease
/// has (a label another writer set) with no read first.
#[tokio::test]
async fn a_late_watch_event_does_not_rewind_the_locks_metadata() {
    let server = FakeApiServer::start().await.unwrap();
    let lock = meta_lock(&server, &[("team", "a")], &[]);
    let created = lock.create(&record("a", 0)).await.unwrap();
    let mut events = lock.watch(&created.resource_version).await.unwrap();
    patch_metadata(
        &server,
        serde_json::json!({"labels": {"gitops.example.com/tracked": "yes"}}),
    )
    .await;
    let read = lock.get().await.unwrap().unwrap();
    let renewed = lock
        .update(&record("a", 0), &read.resource_version)
        .await
        .unwrap();
    // Read now, the watch's first event (the label's version) is older than what the lock wrote last.
    match bounded(events.next()).await.unwrap().unwrap() {
        LeaseEvent::Applied(late) => assert_eq!(late.resource_version, read.resource_version),
        other => panic!("expected the labelled Lease, got {other:?}"),
    }

    let gets = requests(&server, "get");
    lock.update(&record("a", 0), &renewed.resource_version)
        .await
        .unwrap();
    assert_eq!(
        requests(&server, "get"),
        gets,
        "the update read nothing first"
    );
    assert_metadata(
        &server,
        &[("gitops.example.com/tracked", "yes"), ("team", "a")],
        &[],
    )
    .await;
    server.shutdown().await;
}

/// Rule 14: an update guarded by a version this lock has not seen (read by another lock) reads the Lease
/// first, so that it keeps the labels others set; guarded by a version that is no longer the Lease's, it
/// conflicts without writing.
#[tokio::test]
async fn an_update_guarded_by_a_version_the_lock_has_not_seen_reads_the_lease_first() {
    let server = FakeApiServer::start().await.unwrap();
    let reader = KubeLeaseLock::new(client(&server.url()), "default", "meta");
    reader.create(&record("a", 0)).await.unwrap();
    let labelled = replace_metadata(&server, &[("gitops.example.com/tracked", "yes")], &[]).await;
    let stale = reader.get().await.unwrap().unwrap();
    assert_eq!(
        Some(&stale.resource_version),
        labelled.metadata.resource_version.as_ref()
    );

    let writer = meta_lock(&server, &[("team", "b")], &[]);
    let taken = writer
        .update(&record("b", 1), &stale.resource_version)
        .await
        .unwrap();
    assert_metadata(
        &server,
        &[("gitops.example.com/tracked", "yes"), ("team", "b")],
        &[],
    )
    .await;

    let updates = requests(&server, "update");
    let other = KubeLeaseLock::new(client(&server.url()), "default", "meta");
    assert!(matches!(
        other.update(&record("c", 2), &stale.resource_version).await,
        Err(LockError::Conflict)
    ));
    assert_eq!(
        requests(&server, "update"),
        updates,
        "a read that shows another version writes nothing"
    );
    assert_eq!(
        leases(&server)
            .get("meta")
            .await
            .unwrap()
            .metadata
            .resource_version,
        Some(taken.resource_version)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_label_is_refused_before_any_request() {
    let client = client("http://127.0.0.1:1");
    let refused = KubeLeaseLock::new(client, "default", "meta")
        .with_metadata(metadata(&[("team", "not ok")], &[]))
        .unwrap_err();
    assert!(
        matches!(&refused, MetadataError::InvalidLabelValue { key, value, .. }
            if key == "team" && value == "not ok"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn lock_outcomes_are_the_api_servers() {
    let server = FakeApiServer::start().await.unwrap();
    let lock = KubeLeaseLock::new(client(&server.url()), "default", "lock");
    assert!(lock.get().await.unwrap().is_none());

    let created = lock.create(&record("a", 0)).await.unwrap();
    assert_eq!(created.record.holder_identity, "a");
    assert!(matches!(
        lock.create(&record("b", 0)).await,
        Err(LockError::AlreadyExists)
    ));

    let updated = lock
        .update(&record("b", 1), &created.resource_version)
        .await
        .unwrap();
    assert_eq!(updated.record.lease_transitions, 1);
    assert!(matches!(
        lock.update(&record("c", 2), &created.resource_version)
            .await,
        Err(LockError::Conflict)
    ));

    // What was written is what kube-rs and kubectl read: six fractional digits, the holder, the term.
    let api: kube::Api<Lease> = kube::Api::namespaced(client(&server.url()), "default");
    let raw = api.get("lock").await.unwrap();
    let spec = raw.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    let renew = serde_json::to_value(spec.renew_time.unwrap()).unwrap();
    let fraction = renew.as_str().unwrap().rsplit('.').next().unwrap();
    assert_eq!(fraction.len(), "123456Z".len(), "{renew}");

    let mut events = lock.watch(&updated.resource_version).await.unwrap();
    let third = lock
        .update(&record("c", 2), &updated.resource_version)
        .await
        .unwrap();
    match events.next().await.unwrap().unwrap() {
        LeaseEvent::Applied(observed) => {
            assert_eq!(observed.record.holder_identity, "c");
            assert_eq!(observed.resource_version, third.resource_version);
        }
        other => panic!("unexpected {other:?}"),
    }
    api.delete("lock", &Default::default()).await.unwrap();
    assert!(matches!(
        events.next().await.unwrap().unwrap(),
        LeaseEvent::Deleted(_)
    ));
    // As kube-apiserver: the PUT to the deleted Lease carries its uid (the metadata the lock remembers), a
    // precondition of the update (`rest/update.go`), so it conflicts and creates nothing; a read then finds
    // no Lease, and a create makes it again. (Without a uid, the Lease strategy's AllowCreateOnUpdate would
    // create it.)
    assert!(matches!(
        lock.update(&record("d", 3), &third.resource_version).await,
        Err(LockError::Conflict)
    ));
    assert!(lock.get().await.unwrap().is_none());
    let recreated = lock.create(&record("d", 3)).await.unwrap();
    assert_eq!(recreated.record.holder_identity, "d");
    assert_ne!(recreated.resource_version, third.resource_version);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_lease_is_taken_over_through_the_watch() {
    let server = FakeApiServer::start().await.unwrap();
    let candidate = |id: &str| {
        let config = Config::new(id, "handover", "default")
            .with_lease_duration(Duration::from_secs(300))
            .with_renew_deadline(Duration::from_secs(200))
            .with_retry_period(Duration::from_secs(100));
        let lock = KubeLeaseLock::new(client(&server.url()), "default", "handover");
        Elector::new(config, lock, Callbacks::new()).unwrap()
    };
    let first = candidate("first");
    let first_stop = CancellationToken::new();
    let (first, first_driver) = (first.handle(), first);
    let first_run = tokio::spawn(first_driver.run(first_stop.clone()));
    let mut state = first.subscribe();
    bounded(state.wait_for(|s| s.is_leader())).await.unwrap();

    let second = candidate("second");
    let second_stop = CancellationToken::new();
    let (second, second_driver) = (second.handle(), second);
    let second_run = tokio::spawn(second_driver.run(second_stop.clone()));
    let mut second_state = second.subscribe();
    bounded(second_state.wait_for(|s| s.leader.as_deref() == Some("first")))
        .await
        .unwrap();

    // The leader shuts down and releases; the follower, watching, takes over. A polling follower would need
    // a retry period (100 s, jittered up to 220 s) or the lease duration (300 s): far more than the bound.
    let released = Instant::now();
    first_stop.cancel();
    bounded(first_run).await.unwrap().unwrap();
    bounded(second_state.wait_for(|s| s.is_leader()))
        .await
        .unwrap();
    let handover = released.elapsed();
    assert!(
        handover < Duration::from_secs(50),
        "handover took {handover:?}"
    );
    assert_eq!(second_state.borrow().current_term().unwrap().transitions, 1);
    second_stop.cancel();
    bounded(second_run).await.unwrap().unwrap();
    server.shutdown().await;
}

/// A 410 Gone must not turn a candidate into a hot loop. kube-apiserver's watch cache drops events once it
/// is full (100 to 100 Ki events, grown while its oldest is younger than 75 s; 2 here); a Lease whose holder
/// died while many other Leases were written (in a cluster: every node's) has a resourceVersion too old to
/// watch from, and a GET gives that version back. The candidate lists for the collection's version and
/// resumes from it: a few requests per retry period (the old code sent thousands a second), and it takes the
/// Lease once the record's duration has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_older_than_the_watch_history_costs_a_few_requests_per_retry_period() {
    let server = FakeApiServer::builder()
        .history_limit(2)
        .start()
        .await
        .unwrap();
    let lock = |name: &str| KubeLeaseLock::new(client(&server.url()), "default", name);
    let mut dead = record("dead", 4);
    dead.lease_duration_seconds = 3;
    let stale = lock("stale").create(&dead).await.unwrap();
    // Three writes after it in a history of two: the events after its version are no longer all kept.
    for name in ["other-1", "other-2", "other-3"] {
        lock(name).create(&record("other", 0)).await.unwrap();
    }
    let mut watch = lock("stale").watch(&stale.resource_version).await.unwrap();
    assert!(matches!(watch.next().await, Some(Err(LockError::Gone))));
    let listed = lock("stale").list().await.unwrap();
    assert_eq!(listed.lease.unwrap().record.holder_identity, "dead");
    assert_eq!(
        listed.resource_version,
        server.resource_version().to_string()
    );
    server.reset_counts();

    let retry = Duration::from_millis(500);
    let config = Config::new("candidate", "stale", "default")
        .with_lease_duration(Duration::from_secs(3))
        .with_renew_deadline(Duration::from_secs(2))
        .with_retry_period(retry);
    let elector = Elector::new(config, lock("stale"), Callbacks::new()).unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let (elector, elector_driver) = (elector.handle(), elector);
    let run = tokio::spawn(elector_driver.run(stop.clone()));
    let mut state = elector.subscribe();
    tokio::time::timeout(Duration::from_secs(30), state.wait_for(|s| s.is_leader()))
        .await
        .expect("the candidate takes the lease")
        .unwrap();
    let took = started.elapsed();
    let counts = server.counts();
    let requests: u64 = counts.iter().map(|c| c.count).sum();
    let periods = took.as_secs_f64() / retry.as_secs_f64();
    assert!(
        took >= Duration::from_secs(3),
        "taken after {took:?}, before the record's 3 s"
    );
    assert!(
        (requests as f64) <= 3.0 * periods,
        "{requests} requests in {took:?} ({periods:.1} retry periods): {counts:?}"
    );
    assert!(
        counts.iter().any(|c| c.verb == "list" && c.count >= 1),
        "{counts:?}"
    );
    assert_eq!(state.borrow().current_term().unwrap().transitions, 5);
    stop.cancel();
    bounded(run).await.unwrap().unwrap();
    server.shutdown().await;
}

/// Two Leases in one namespace must not mix: the lock's list and watch select their own Lease by
/// `metadata.name` (a watch of the namespace would deliver the other Lease's writes as ours), and a
/// follower of one Lease never reports the other's holder as its leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leases_in_one_namespace_do_not_mix() {
    let server = FakeApiServer::start().await.unwrap();
    // The other Lease sorts first and is written first and last.
    let other = KubeLeaseLock::new(client(&server.url()), "default", "aaa-other");
    let ours = KubeLeaseLock::new(client(&server.url()), "default", "ours");
    let other_created = other.create(&record("o1", 0)).await.unwrap();
    let created = ours.create(&record("u1", 0)).await.unwrap();
    assert_eq!(
        ours.list()
            .await
            .unwrap()
            .lease
            .unwrap()
            .record
            .holder_identity,
        "u1"
    );
    let mut events = ours.watch(&created.resource_version).await.unwrap();
    let other_updated = other
        .update(&record("o2", 1), &other_created.resource_version)
        .await
        .unwrap();
    ours.update(&record("u2", 1), &created.resource_version)
        .await
        .unwrap();
    other
        .update(&record("o3", 2), &other_updated.resource_version)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no watch event within 10 s")
        .expect("the watch ended")
        .unwrap();
    match first {
        LeaseEvent::Applied(lease) => assert_eq!(lease.record.holder_identity, "u2"),
        other => panic!("expected our update, got {other:?}"),
    }

    // Electors on two new Leases: z leads one (sorting first) and renews every retry period; x leads
    // the other; y follows it.
    let candidate = |id: &str, lease: &str| {
        let config = Config::new(id, lease, "default")
            .with_lease_duration(Duration::from_secs(3))
            .with_renew_deadline(Duration::from_secs(2))
            .with_retry_period(Duration::from_millis(500));
        let lock = KubeLeaseLock::new(client(&server.url()), "default", lease);
        Elector::new(config, lock, Callbacks::new()).unwrap()
    };
    let stop = CancellationToken::new();
    let (z, x, y) = (
        candidate("z", "aab-other"),
        candidate("x", "elected"),
        candidate("y", "elected"),
    );
    let (x, z, tasks) = (x.handle(), z.handle(), [z, x]);
    let tasks: Vec<_> = tasks
        .into_iter()
        .map(|e| tokio::spawn(e.run(stop.clone())))
        .collect();
    let (mut x_state, mut z_state) = (x.subscribe(), z.subscribe());
    tokio::time::timeout(Duration::from_secs(20), z_state.wait_for(|s| s.is_leader()))
        .await
        .expect("z did not lead within 20 s")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), x_state.wait_for(|s| s.is_leader()))
        .await
        .expect("x did not lead within 20 s")
        .unwrap();
    let (y, y_driver) = (y.handle(), y);
    let y_task = tokio::spawn(y_driver.run(stop.clone()));
    // Every leader y reports for 3 s (z renews 6 times meanwhile).
    let mut y_state = y.subscribe();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            seen.push(y_state.borrow_and_update().leader.clone());
            if y_state.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(seen.contains(&Some("x".to_string())), "{seen:?}");
    assert!(
        seen.iter().flatten().all(|leader| leader == "x"),
        "y reported another Lease's holder: {seen:?}"
    );
    stop.cancel();
    for task in tasks.into_iter().chain([y_task]) {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("an elector did not stop within 10 s")
            .unwrap()
            .unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_plain_text_429_reads_as_too_many_requests() {
    let server = FakeApiServer::start().await.unwrap();
    server.default_listener().set_faults(Faults {
        error_rate: 1.0,
        error_code: 429,
        ..Faults::default()
    });
    let lock = KubeLeaseLock::new(client(&server.url()), "default", "limited");
    match lock.get().await {
        Err(LockError::Api {
            code: 429,
            reason,
            message,
        }) => {
            assert_eq!(reason, "TooManyRequests");
            assert_eq!(message, "Too many requests, please try again later.");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_namespace_is_an_api_error_naming_it_not_a_missing_lease() {
    let server = FakeApiServer::builder()
        .existing_namespaces(["default"])
        .start()
        .await
        .unwrap();
    let lock = KubeLeaseLock::new(client(&server.url()), "missing", "l");
    assert!(lock.get().await.unwrap().is_none(), "reading: no Lease");
    match lock.create(&record("a", 0)).await {
        Err(LockError::Api {
            code: 404,
            reason,
            message,
        }) => {
            assert_eq!(reason, "NotFound");
            assert_eq!(message, "namespaces \"missing\" not found");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

/// A candidate whose Lease's namespace does not exist retries its create every retry period, with the API
/// server's message (`namespaces "missing" not found`). It took the 404 for a lost race and read and
/// created again at once: a hot loop, silent below debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_namespace_is_retried_every_retry_period_not_in_a_loop() {
    let server = FakeApiServer::builder()
        .existing_namespaces(["default"])
        .start()
        .await
        .unwrap();
    let retry = Duration::from_millis(250);
    let config = Config::new("candidate", "l", "missing")
        .with_lease_duration(Duration::from_secs(2))
        .with_renew_deadline(Duration::from_secs(1))
        .with_retry_period(retry);
    let lock = KubeLeaseLock::new(client(&server.url()), "missing", "l");
    let elector = Elector::new(config, lock, Callbacks::new()).unwrap();
    let stop = CancellationToken::new();
    let (elector, elector_driver) = (elector.handle(), elector);
    let run = tokio::spawn(elector_driver.run(stop.clone()));
    // Sleeping is the measurement window here: the requests sent during it are counted.
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    stop.cancel();
    run.await.unwrap().unwrap();
    let creates: u64 = server
        .counts()
        .iter()
        .filter(|c| c.verb == "create")
        .map(|c| c.count)
        .sum();
    let periods = window.as_secs_f64() / retry.as_secs_f64();
    assert!(creates >= 1, "it tried");
    assert!(
        (creates as f64) <= periods + 2.0,
        "{creates} creates in {window:?}, one per retry period is {periods}"
    );
    assert!(!elector.is_leader());
    server.shutdown().await;
}
