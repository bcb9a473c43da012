//! The real kube 5 client against the fake API server: every verb, the error cases with kube-apiserver's
//! codes and reasons, watches (order, resume, 410), custom resources with `/status`, concurrency, the fault
//! modes (each on one listener only), counters and the admin routes.

use std::time::{Duration, Instant};

use fake_apiserver::{FakeApiServer, Faults, ResourceType};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ObjectMeta;
use leaderelection::KubeLeaseLock;
use serde_json::json;
use support::{api_error, lease};

mod support;

/// The elector's client ([`KubeLeaseLock::client_config`]: without kube's own retries of 429/503, so each
/// fault is seen as sent) with short read and connect timeouts, so a delayed or dropped answer fails fast.
fn client(url: &str) -> kube::Client {
    let mut config = KubeLeaseLock::client_config(kube::Config::new(url.parse().unwrap()));
    config.read_timeout = Some(Duration::from_millis(500));
    config.connect_timeout = Some(Duration::from_millis(500));
    kube::Client::try_from(config).unwrap()
}

/// The elector's client as it is (no read timeout), for watches that stay quiet.
fn watch_client(url: &str) -> kube::Client {
    KubeLeaseLock::client_for_url(url).unwrap()
}

#[tokio::test]
async fn lease_verbs_and_errors_match_kube_apiserver() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "ns1");

    let created = api
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("ns1"));

    let (code, reason, message) =
        api_error(api.create(&PostParams::default(), &lease("l1", "b")).await);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(message, r#"leases.coordination.k8s.io "l1" already exists"#);

    let got = api.get("l1").await.unwrap();
    assert_eq!(
        got.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("a")
    );

    let (code, reason, message) = api_error(api.get("missing").await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert_eq!(message, r#"leases.coordination.k8s.io "missing" not found"#);

    let mut update = got.clone();
    update.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let updated = api
        .replace("l1", &PostParams::default(), &update)
        .await
        .unwrap();
    let rv2 = updated.metadata.resource_version.clone().unwrap();
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());

    // The same resourceVersion again is stale now.
    let (code, reason, message) =
        api_error(api.replace("l1", &PostParams::default(), &update).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.starts_with(r#"Operation cannot be fulfilled on leases.coordination.k8s.io "l1": the object has been modified"#));

    let mut no_rv = updated.clone();
    no_rv.metadata.resource_version = None;
    let (code, reason, message) =
        api_error(api.replace("l1", &PostParams::default(), &no_rv).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains(
            "metadata.resourceVersion: Invalid value: 0: must be specified for an update"
        )
    );

    let mut wrong_name = updated.clone();
    wrong_name.metadata.name = Some("other".into());
    let (code, reason, _) = api_error(api.replace("l1", &PostParams::default(), &wrong_name).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));

    let merged = api
        .patch(
            "l1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "c"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("c")
    );
    assert_eq!(
        merged.spec.as_ref().unwrap().lease_duration_seconds,
        Some(15)
    );
    let strategic = api
        .patch(
            "l1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"leaseTransitions": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(strategic.spec.as_ref().unwrap().lease_transitions, Some(4));
    let (code, reason, _) = api_error(
        api.patch(
            "l1",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([])).unwrap()),
        )
        .await,
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));

    api.create(&PostParams::default(), &lease("l2", "a"))
        .await
        .unwrap();
    let other_ns: Api<Lease> = Api::namespaced(client(&server.url()), "ns2");
    other_ns
        .create(&PostParams::default(), &lease("l1", "z"))
        .await
        .unwrap();
    let names = |list: kube::core::ObjectList<Lease>| {
        list.items
            .into_iter()
            .map(|l| l.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(api.list(&ListParams::default()).await.unwrap()),
        ["l1", "l2"]
    );
    let all: Api<Lease> = Api::all(client(&server.url()));
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        3
    );
    let by_name = ListParams::default().fields("metadata.name=l2");
    assert_eq!(names(api.list(&by_name).await.unwrap()), ["l2"]);

    api.delete("l1", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_error(api.get("l1").await).0, 404);
    assert_eq!(
        api_error(api.delete("l1", &DeleteParams::default()).await).0,
        404
    );
    server.shutdown().await;
}

#[tokio::test]
async fn lease_validation_answers_422_and_400() {
    let server = FakeApiServer::start().await.unwrap();
    let c = client(&server.url());
    let api: Api<Lease> = Api::namespaced(c.clone(), "default");

    let mut zero = lease("zero", "a");
    zero.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
    let (code, reason, message) = api_error(api.create(&PostParams::default(), &zero).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        r#"Lease.coordination.k8s.io "zero" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"#
    );

    let (code, _, message) = api_error(
        api.create(&PostParams::default(), &lease("Not_A_Name", "a"))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains(r#"metadata.name: Invalid value: "Not_A_Name""#),
        "{message}"
    );

    // MicroTime with three fractional digits, as some clients write it: the decoder refuses it.
    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "t"},
                      "spec": {"renewTime": "2026-05-01T12:00:00.123Z"}});
    let req = http::Request::post("/apis/coordination.k8s.io/v1/namespaces/default/leases")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    let (code, reason, message) = api_error(c.request::<Lease>(req).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert!(
        message.contains(r#"cannot parse "2026-05-01T12:00:00.123Z" as ".000000""#),
        "{message}"
    );

    // Six digits are accepted, and what is written is read back byte for byte.
    let mut good = body.clone();
    good["spec"]["renewTime"] = json!("2026-05-01T12:00:00.123456Z");
    let req = http::Request::post("/apis/coordination.k8s.io/v1/namespaces/default/leases")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&good).unwrap())
        .unwrap();
    let text = c.request_text(req).await.unwrap();
    assert!(
        text.contains(r#""renewTime":"2026-05-01T12:00:00.123456Z""#),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn watch_sees_every_change_in_order_and_resumes() {
    let server = FakeApiServer::builder()
        .history_limit(5)
        .start()
        .await
        .unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let created = api
        .create(&PostParams::default(), &lease("w", "a"))
        .await
        .unwrap();
    let start_rv = created.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default().fields("metadata.name=w").timeout(10);
    let mut stream = api.watch(&params, &start_rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &lease("unrelated", "x"))
        .await
        .unwrap();
    let mut current = created;
    let mut expected = Vec::new();
    for holder in ["b", "c", "d"] {
        current.spec.as_mut().unwrap().holder_identity = Some(holder.into());
        current = api
            .replace("w", &PostParams::default(), &current)
            .await
            .unwrap();
        expected.push(current.metadata.resource_version.clone().unwrap());
    }
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Modified(l) => {
                seen.push(("MODIFIED", l.metadata.resource_version.unwrap()))
            }
            WatchEvent::Deleted(l) => seen.push(("DELETED", l.metadata.resource_version.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen.iter()
            .map(|(_, rv)| rv.clone())
            .take(3)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(seen[3].0, "DELETED");

    // Resume from the middle: only what came after.
    let mut resumed = api.watch(&params, &expected[1]).await.unwrap().boxed();
    match resumed.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(l) => assert_eq!(l.metadata.resource_version.unwrap(), expected[2]),
        other => panic!("unexpected {other:?}"),
    }

    // Older than the kept history (5 events): 410 Expired.
    for i in 0..5 {
        api.create(&PostParams::default(), &lease(&format!("filler-{i}"), "x"))
            .await
            .unwrap();
    }
    let mut expired = api.watch(&params, &start_rv).await.unwrap().boxed();
    match expired.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("unexpected {other:?}"),
    }
    server.shutdown().await;
}

/// Starts `server`, creates Lease "stale" (held by a dead holder), then Lease "other"; returns the server,
/// the Leases of its namespace and "stale" as created.
async fn stale_then_other(server: fake_apiserver::Builder) -> (FakeApiServer, Api<Lease>, Lease) {
    let server = server.start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(watch_client(&server.url()), "default");
    let stale = api
        .create(&PostParams::default(), &lease("stale", "dead"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &lease("other", "x"))
        .await
        .unwrap();
    (server, api, stale)
}

/// Gives Lease `stale` a new holder and checks that `watch` delivers that write as MODIFIED.
async fn renewal_reaches(
    api: &Api<Lease>,
    mut stale: Lease,
    watch: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Lease>>> + Unpin),
) {
    stale.spec.as_mut().unwrap().holder_identity = Some("new".into());
    let renewed = api
        .replace("stale", &PostParams::default(), &stale)
        .await
        .unwrap();
    match watch.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(l) => assert_eq!(
            l.metadata.resource_version,
            renewed.metadata.resource_version
        ),
        other => panic!("unexpected {other:?}"),
    }
}

/// kube-apiserver's watch cache drops events only when it is full (`history_limit` here, once the history
/// has grown to it), never by age alone: a watch from a version whose later events are gone answers 410
/// Expired, naming the oldest version a watch can start from; a list names the collection's current version,
/// and a watch from it follows.
#[tokio::test]
async fn watch_history_expires_when_full() {
    let (server, api, stale) = stale_then_other(FakeApiServer::builder().history_limit(2)).await;
    let stale_rv = stale.metadata.resource_version.clone().unwrap();
    // Three writes after it in a history of two (with the create of "other"): the first of them is gone.
    for holder in ["y", "z"] {
        api.patch(
            "other",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": holder}})),
        )
        .await
        .unwrap();
    }
    let current = server.resource_version().to_string();
    // The history keeps the last two events: a watch can start from the version before them.
    let oldest = (server.resource_version() - 2).to_string();

    let by_name = ListParams::default().fields("metadata.name=stale");
    let listed = api.list(&by_name).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.metadata.resource_version.as_deref(),
        Some(current.as_str())
    );

    let params = WatchParams::default()
        .fields("metadata.name=stale")
        .timeout(10);
    let mut expired = api.watch(&params, &stale_rv).await.unwrap().boxed();
    match expired.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (
                410,
                "Expired",
                format!("too old resource version: {stale_rv} ({oldest})").as_str()
            )
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        expired.try_next().await.unwrap().is_none(),
        "the stream ends"
    );

    let mut resumed = api.watch(&params, &current).await.unwrap().boxed();
    renewal_reaches(&api, stale, &mut resumed).await;
    server.shutdown().await;
}

#[tokio::test]
async fn runtime_watcher_lists_then_follows() {
    let server = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    api.create(&PostParams::default(), &lease("one", "a"))
        .await
        .unwrap();
    let stream = kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default());
    let mut objects = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
    assert_eq!(
        objects
            .try_next()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("one")
    );
    api.create(&PostParams::default(), &lease("two", "b"))
        .await
        .unwrap();
    assert_eq!(
        objects
            .try_next()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("two")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn custom_resources_with_status_subresource() {
    let rt = ResourceType::custom("claims.example.com", "v1", "Host", "hosts", true);
    let server = FakeApiServer::builder()
        .custom_resource(rt)
        .start()
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("claims.example.com", "v1", "Host"),
        "hosts",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client(&server.url()), "default", &ar);
    let mut host = DynamicObject::new("h1", &ar);
    host.data = json!({"spec": {"priority": 3}, "status": {"claimedBy": "ignored on create"}});
    let created = api.create(&PostParams::default(), &host).await.unwrap();
    assert_eq!(created.data["spec"]["priority"], 3);
    assert!(
        created.data.get("status").is_none(),
        "status is ignored on create"
    );

    let status = api
        .patch_status(
            "h1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"claimedBy": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.data["status"]["claimedBy"], "x");
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "a status change keeps the generation"
    );

    let mut main = status.clone();
    main.data["spec"]["priority"] = json!(5);
    main.data["status"] = json!({"claimedBy": "overwritten?"});
    let replaced = api
        .replace("h1", &PostParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(replaced.data["spec"]["priority"], 5);
    assert_eq!(
        replaced.data["status"]["claimedBy"], "x",
        "the main resource keeps the status"
    );
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(
        api.get_status("h1").await.unwrap().data["status"]["claimedBy"],
        "x"
    );
    let (code, reason, _) = api_error(api.get("nope").await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    server.shutdown().await;
}

#[tokio::test]
async fn event_recorder_creates_then_patches_events_k8s_io_events() {
    use k8s_openapi::api::events::v1::Event;
    use kube::Resource;
    use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};

    let server = FakeApiServer::start().await.unwrap();
    let client = client(&server.url());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ns1");
    let lease = leases
        .create(&PostParams::default(), &lease("l1", "a"))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test".into(),
            instance: Some("a".into()),
        },
    );
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "LeaderElection".into(),
        note: Some("a became leader".into()),
        action: "BecameLeader".into(),
        secondary: None,
    };
    // The first is a POST, the second (same key) a merge PATCH carrying the series.
    for _ in 0..2 {
        recorder
            .publish(&event, &lease.object_ref(&()))
            .await
            .unwrap();
    }
    let events: Api<Event> = Api::namespaced(client, "ns1");
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let recorded = &listed[0];
    assert_eq!(recorded.note.as_deref(), Some("a became leader"));
    assert_eq!(recorded.reason.as_deref(), Some("LeaderElection"));
    assert_eq!(recorded.series.as_ref().map(|s| s.count), Some(2));
    let regarding = recorded.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Lease"));
    assert_eq!(regarding.name.as_deref(), Some("l1"));
    assert_eq!(regarding.uid, lease.metadata.uid);
    let name = recorded.metadata.name.as_deref().unwrap();
    assert_eq!(
        events.get(name).await.unwrap().metadata.name.as_deref(),
        Some(name)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn lease_candidates_are_served_as_coordination_v1beta1() {
    use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    let server = FakeApiServer::start().await.unwrap();
    let client = client(&server.url());
    let api: Api<LeaseCandidate> = Api::namespaced(client.clone(), "ns1");
    let candidate = LeaseCandidate {
        metadata: ObjectMeta {
            name: Some("pod-a".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseCandidateSpec {
            lease_name: "l1".into(),
            binary_version: "1.33.0".into(),
            emulation_version: Some("1.33.0".into()),
            strategy: "OldestEmulationVersion".into(),
            ..LeaseCandidateSpec::default()
        }),
    };
    let created = api
        .create(&PostParams::default(), &candidate)
        .await
        .unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("ns1"));
    let mut got = api.get("pod-a").await.unwrap();
    assert_eq!(got.spec.as_ref().unwrap().lease_name, "l1");
    let listed = api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.name.as_deref(), Some("pod-a"));

    let renew = MicroTime("2026-05-01T12:00:00.123456Z".parse().unwrap());
    got.spec.as_mut().unwrap().renew_time = Some(renew.clone());
    let updated = api
        .replace("pod-a", &PostParams::default(), &got)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(
        api.get("pod-a").await.unwrap().spec.unwrap().renew_time,
        Some(renew)
    );

    // Discovery: coordination.k8s.io serves v1 (preferred) and v1beta1.
    let groups = client.list_api_groups().await.unwrap();
    let coordination = groups
        .groups
        .iter()
        .find(|g| g.name == "coordination.k8s.io")
        .unwrap();
    let versions: Vec<&str> = coordination
        .versions
        .iter()
        .map(|v| v.group_version.as_str())
        .collect();
    assert_eq!(
        versions,
        ["coordination.k8s.io/v1", "coordination.k8s.io/v1beta1"]
    );
    assert_eq!(
        coordination.preferred_version.as_ref().unwrap().version,
        "v1"
    );
    let resources = client
        .list_api_group_resources("coordination.k8s.io/v1beta1")
        .await
        .unwrap();
    assert_eq!(resources.resources.len(), 1);
    assert_eq!(resources.resources[0].name, "leasecandidates");
    assert_eq!(resources.resources[0].kind, "LeaseCandidate");
    assert!(resources.resources[0].namespaced);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_updates_have_exactly_one_winner_per_round() {
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let mut current = api
        .create(&PostParams::default(), &lease("race", "none"))
        .await
        .unwrap();
    for round in 0..5 {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let api = api.clone();
                let mut mine = current.clone();
                mine.spec.as_mut().unwrap().holder_identity = Some(format!("r{round}-c{i}"));
                tokio::spawn(async move {
                    (i, api.replace("race", &PostParams::default(), &mine).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(written)) => winners.push((i, written)),
                (_, Err(e)) => assert_eq!(api_error::<()>(Err(e)).1, "Conflict"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        let (i, written) = winners.pop().unwrap();
        current = api.get("race").await.unwrap();
        assert_eq!(current, written);
        assert_eq!(
            current.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some(format!("r{round}-c{i}").as_str())
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn latency_applies_to_one_listener_only() {
    let server = FakeApiServer::start().await.unwrap();
    let slow = server.add_listener().await.unwrap();
    slow.set_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    });
    let fast_api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let slow_api: Api<Lease> = Api::namespaced(client(&slow.url()), "default");
    fast_api
        .create(&PostParams::default(), &lease("l", "a"))
        .await
        .unwrap();
    let t = Instant::now();
    slow_api.get("l").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    fast_api.get("l").await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn error_rate_answers_the_chosen_code_and_does_not_apply() {
    let server = FakeApiServer::start().await.unwrap();
    let failing = server.add_listener().await.unwrap();
    let good: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let bad: Api<Lease> = Api::namespaced(client(&failing.url()), "default");
    for (code, reason) in [
        // Plain text, as rate limiting answers: kube has no Status to read the reason from.
        (429, "Failed to parse error data"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    ] {
        failing.set_faults(Faults {
            error_rate: 1.0,
            error_code: code,
            ..Faults::default()
        });
        let (got, got_reason, _) =
            api_error(bad.create(&PostParams::default(), &lease("e", "a")).await);
        assert_eq!((got, got_reason.as_str()), (code, reason));
        assert_eq!(
            api_error(good.get("e").await).0,
            404,
            "the failed write was not applied"
        );
    }
    good.create(&PostParams::default(), &lease("e", "a"))
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn black_hole_never_answers_and_stalls_watches() {
    let server = FakeApiServer::start().await.unwrap();
    let hole = server.add_listener().await.unwrap();
    let good: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let cut: Api<Lease> = Api::namespaced(client(&hole.url()), "default");
    let created = good
        .create(&PostParams::default(), &lease("b", "a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let cut_watch: Api<Lease> = Api::namespaced(watch_client(&hole.url()), "default");
    let mut watch = cut_watch
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();

    hole.set_faults(Faults::partition());
    let t = Instant::now();
    match cut.get("b").await {
        Err(kube::Error::HyperError(_) | kube::Error::Service(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "answered after {:?}",
        t.elapsed()
    );
    good.get("b").await.unwrap();

    let mut update = created.clone();
    update.spec.as_mut().unwrap().holder_identity = Some("z".into());
    good.replace("b", &PostParams::default(), &update)
        .await
        .unwrap();
    let stalled = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(
        stalled.is_err(),
        "a black-holed watch delivers nothing: {stalled:?}"
    );
    hole.clear_faults();
    match watch.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(l) => {
            assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("z"))
        }
        other => panic!("unexpected {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn commit_then_drop_applies_the_write_and_loses_the_answer() {
    let server = FakeApiServer::start().await.unwrap();
    let lossy = server.add_listener().await.unwrap();
    lossy.set_faults(Faults {
        commit_then_drop: true,
        ..Faults::default()
    });
    let good: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let bad: Api<Lease> = Api::namespaced(client(&lossy.url()), "default");
    let result = bad.create(&PostParams::default(), &lease("c", "a")).await;
    assert!(
        matches!(
            result,
            Err(kube::Error::HyperError(_) | kube::Error::Service(_))
        ),
        "{result:?}"
    );
    let stored = good.get("c").await.unwrap();
    assert_eq!(stored.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // Reads are answered.
    bad.get("c").await.unwrap();
    let log = server.request_log();
    let create = log.iter().find(|r| r.verb == "create").unwrap();
    assert_eq!((create.listener, create.code), (lossy.id(), None));
    server.shutdown().await;
}

#[tokio::test]
async fn refuse_closes_the_port_until_lifted() {
    let server = FakeApiServer::start().await.unwrap();
    let cut = server.add_listener().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&cut.url()), "default");
    api.create(&PostParams::default(), &lease("r", "a"))
        .await
        .unwrap();
    cut.set_faults(Faults {
        refuse: true,
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = tokio::net::TcpStream::connect(cut.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    Api::<Lease>::namespaced(client(&server.url()), "default")
        .get("r")
        .await
        .unwrap();
    cut.clear_faults();
    let mut reachable = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(cut.addr()).await.is_ok() {
            reachable = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reachable, "the listener is bound again");
    api.get("r").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn counts_and_admin_routes() {
    let server = FakeApiServer::start().await.unwrap();
    let second = server.add_listener().await.unwrap();
    let c = client(&server.url());
    let api: Api<Lease> = Api::namespaced(c.clone(), "default");
    let api2: Api<Lease> = Api::namespaced(client(&second.url()), "default");
    api.create(&PostParams::default(), &lease("n", "a"))
        .await
        .unwrap();
    api.get("n").await.unwrap();
    api2.get("n").await.unwrap();
    api2.get("n").await.unwrap();
    let count = |listener: usize, verb: &str| {
        server
            .counts()
            .iter()
            .find(|c| c.listener == listener && c.verb == verb && c.resource == "leases")
            .map_or(0, |c| c.count)
    };
    assert_eq!(
        (count(0, "create"), count(0, "get"), count(1, "get")),
        (1, 1, 2)
    );

    let get = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    let counts: serde_json::Value = c.request(get("/fake/counts")).await.unwrap();
    assert_eq!(counts.as_array().unwrap().len(), 3, "{counts}");

    let put = http::Request::put(format!("/fake/listeners/{}/faults", second.id()))
        .header("content-type", "application/json")
        .body(br#"{"error_rate": 1.0, "error_code": 503}"#.to_vec())
        .unwrap();
    let faults: serde_json::Value = c.request(put).await.unwrap();
    assert_eq!(faults["error_code"], 503);
    assert_eq!(api_error(api2.get("n").await).0, 503);
    let bad = http::Request::put(format!("/fake/listeners/{}/faults", second.id()))
        .header("content-type", "application/json")
        .body(br#"{"error_rate": 2.0}"#.to_vec())
        .unwrap();
    let (code, _, message) = api_error(c.request::<serde_json::Value>(bad).await);
    assert_eq!(code, 400);
    assert_eq!(message, "invalid error_rate 2: must be between 0 and 1");

    let opened: serde_json::Value = c
        .request(
            http::Request::post("/fake/listeners")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let third: Api<Lease> = Api::namespaced(client(opened["url"].as_str().unwrap()), "default");
    third.get("n").await.unwrap();
    assert_eq!(server.listeners().len(), 3);

    let log: Vec<fake_apiserver::RequestRecord> = c.request(get("/fake/requests")).await.unwrap();
    assert_eq!(log.first().map(|r| r.verb.as_str()), Some("create"));
    server.reset_counts();
    assert!(server.counts().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn slow_watchers_are_dropped_not_buffered() {
    let server = FakeApiServer::builder()
        .watch_buffer(4)
        .start()
        .await
        .unwrap();
    let c = client(&server.url());
    let api: Api<Lease> = Api::namespaced(c.clone(), "default");
    let watcher: Api<Lease> = Api::namespaced(watch_client(&server.url()), "default");
    let mut current = api
        .create(&PostParams::default(), &lease("s", "a"))
        .await
        .unwrap();
    let rv = current.metadata.resource_version.clone().unwrap();
    // Open a watch and never read it while 400 events of 100 KiB each happen (more than socket buffers hold).
    let stream = watcher
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap();
    let padding = "p".repeat(100 * 1024);
    for i in 0..400 {
        current.spec.as_mut().unwrap().holder_identity = Some(format!("h{i}-{padding}"));
        current = api
            .replace("s", &PostParams::default(), &current)
            .await
            .unwrap();
    }
    // The stream ends (dropped) after what fit in its buffers, instead of holding all 400 events.
    let received = tokio::time::timeout(Duration::from_secs(5), stream.count())
        .await
        .unwrap();
    assert!(received < 400, "received {received}");
    server.shutdown().await;
}

#[tokio::test]
async fn drop_watches_ends_the_watches_of_one_listener_only() {
    let server = FakeApiServer::start().await.unwrap();
    let cut = server.add_listener().await.unwrap();
    let (api, created, [mut dropped, mut kept]) =
        lease_w_watched(&server, [&cut.url(), &server.url()]).await;

    cut.drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), dropped.next()).await;
    assert!(matches!(end, Ok(None)), "the dropped watch ends: {end:?}");
    hand_w_to_b(&api, &created).await;
    match tokio::time::timeout(Duration::from_secs(5), kept.try_next()).await {
        Ok(Ok(Some(WatchEvent::Modified(l)))) => {
            assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"))
        }
        other => panic!("the other listener's watch goes on: {other:?}"),
    }
    let on_cut: Api<Lease> = Api::namespaced(watch_client(&cut.url()), "default");
    let rv = created.metadata.resource_version.unwrap();
    let mut again = on_cut
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), again.try_next()).await {
        Ok(Ok(Some(WatchEvent::Modified(_)))) => {}
        other => panic!("a new watch on the listener works: {other:?}"),
    }
    server.shutdown().await;
}

/// One raw HTTP/1.1 request; the whole response as text.
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn an_injected_429_is_plain_text_with_retry_after_as_rate_limiting_answers() {
    let server = FakeApiServer::start().await.unwrap();
    let limited = server.add_listener().await.unwrap();
    limited.set_faults(Faults {
        error_rate: 1.0,
        error_code: 429,
        ..Faults::default()
    });
    let response = raw(
        limited.addr(),
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/x",
    )
    .await
    .to_lowercase();
    assert!(response.starts_with("http/1.1 429"), "{response}");
    assert!(
        response.contains("content-type: text/plain; charset=utf-8"),
        "{response}"
    );
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(
        response.ends_with("too many requests, please try again later.\n"),
        "{response}"
    );
    let api: Api<Lease> = Api::namespaced(client(&limited.url()), "default");
    let (code, _, _) = api_error(api.get("x").await);
    assert_eq!(code, 429, "kube reads the code of a plain-text answer");
    server.shutdown().await;
}

#[tokio::test]
async fn a_no_op_write_keeps_the_resource_version_and_sends_no_event_and_leases_have_no_generation()
{
    let server = FakeApiServer::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let created = api
        .create(&PostParams::default(), &lease("n", "a"))
        .await
        .unwrap();
    assert_eq!(
        created.metadata.generation, None,
        "Leases have no generation"
    );
    let rv = created.metadata.resource_version.clone().unwrap();
    let watcher: Api<Lease> = Api::namespaced(watch_client(&server.url()), "default");
    let mut events = watcher
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();

    let same = api
        .replace("n", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version.as_deref(), Some(rv.as_str()));
    let patched = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "a"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.resource_version.as_deref(),
        Some(rv.as_str()),
        "a patch that changes nothing writes nothing"
    );
    let mut changed = created.clone();
    changed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let changed = api
        .replace("n", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        changed.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(changed.metadata.generation, None);
    match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Modified(l)))) => assert_eq!(
            l.spec.unwrap().holder_identity.as_deref(),
            Some("b"),
            "the first event is the real change: the no-ops sent none"
        ),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn faults_can_strike_one_verb_only() {
    let server = FakeApiServer::start().await.unwrap();
    let no_watch = server.add_listener().await.unwrap();
    no_watch.set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        verbs: vec!["watch".into()],
        ..Faults::default()
    });
    let api: Api<Lease> = Api::namespaced(client(&no_watch.url()), "default");
    let created = api
        .create(&PostParams::default(), &lease("v", "a"))
        .await
        .unwrap();
    api.get("v").await.unwrap();
    let rv = created.metadata.resource_version.unwrap();
    let watch = api.watch(&WatchParams::default().timeout(5), &rv).await;
    assert!(
        matches!(&watch, Err(kube::Error::Api(s)) if s.code == 403),
        "{:?}",
        watch.err()
    );
    let bad = Faults {
        verbs: vec!["list".into(), "watchh".into()],
        ..Faults::default()
    };
    let err = bad.validate().unwrap_err();
    assert_eq!((err.field, err.value.as_str()), ("verbs", "watchh"));
    server.shutdown().await;
}

/// A Role that grants nothing on one resource: its requests answer 403, the other resources' and discovery
/// are served.
#[tokio::test]
async fn faults_can_strike_one_resource_only() {
    use k8s_openapi::api::coordination::v1beta1::LeaseCandidate;

    let server = FakeApiServer::start().await.unwrap();
    server.default_listener().set_faults(Faults {
        error_rate: 1.0,
        error_code: 403,
        resources: vec!["leasecandidates".into()],
        ..Faults::default()
    });
    let client = client(&server.url());
    let candidates: Api<LeaseCandidate> = Api::namespaced(client.clone(), "default");
    let denied = candidates.get_opt("pod-a").await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "{denied:?}"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .create(&PostParams::default(), &lease("r", "a"))
        .await
        .unwrap();
    let served = client
        .list_api_group_resources("coordination.k8s.io/v1beta1")
        .await
        .unwrap();
    assert!(served.resources.iter().any(|r| r.name == "leasecandidates"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_the_client_gave_up_on_is_logged_and_counted() {
    let server = FakeApiServer::start().await.unwrap();
    let slow = server.add_listener().await.unwrap();
    slow.set_faults(Faults {
        latency: Duration::from_secs(3),
        ..Faults::default()
    });
    let api: Api<Lease> = Api::namespaced(client(&slow.url()), "default");
    assert!(api.get("g").await.is_err(), "the client times out first");
    let deadline = Instant::now() + Duration::from_secs(5);
    let abandoned = loop {
        let found = server
            .request_log()
            .into_iter()
            .find(|r| r.listener == slow.id() && r.verb == "get");
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request was never logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(abandoned.code, None, "no answer was sent");
    assert!(
        abandoned.latency_ms < 3000.0,
        "logged when the client left: {abandoned:?}"
    );
    assert!(
        server
            .counts()
            .iter()
            .any(|c| c.listener == slow.id() && c.verb == "get" && c.count == 1)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_delayed_commit_lands_after_the_client_gave_up() {
    let server = FakeApiServer::start().await.unwrap();
    let late = server.add_listener().await.unwrap();
    late.set_faults(Faults {
        commit_delay: Duration::from_millis(1500),
        ..Faults::default()
    });
    let good: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let impatient: Api<Lease> = Api::namespaced(client(&late.url()), "default");
    let result = impatient
        .create(&PostParams::default(), &lease("late", "a"))
        .await;
    assert!(
        matches!(
            result,
            Err(kube::Error::HyperError(_) | kube::Error::Service(_))
        ),
        "the client times out after 500 ms: {result:?}"
    );
    assert_eq!(api_error(good.get("late").await).0, 404, "not applied yet");
    let deadline = Instant::now() + Duration::from_secs(10);
    let landed = loop {
        if let Ok(lease) = good.get("late").await {
            break lease;
        }
        assert!(Instant::now() < deadline, "the write never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(landed.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // Reads are not delayed: within the client's 500 ms timeout, where a write takes 1.5 s.
    impatient.get("late").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn with_existing_namespaces_a_create_elsewhere_answers_namespace_not_found() {
    let server = FakeApiServer::builder()
        .existing_namespaces(["default"])
        .start()
        .await
        .unwrap();
    let elsewhere: Api<Lease> = Api::namespaced(client(&server.url()), "missing");
    let (code, reason, message) = api_error(
        elsewhere
            .create(&PostParams::default(), &lease("l", "a"))
            .await,
    );
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "namespaces \"missing\" not found")
    );
    let (code, _, message) = api_error(elsewhere.get("l").await);
    assert_eq!(
        (code, message.as_str()),
        (404, "leases.coordination.k8s.io \"l\" not found"),
        "a read names the Lease, as kube-apiserver's"
    );
    let (code, _, message) = api_error(
        elsewhere
            .replace("l", &PostParams::default(), &lease("l", "a"))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (404, "namespaces \"missing\" not found")
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client(&server.url()));
    assert_eq!(api_error(namespaces.get("missing").await).0, 404);
    namespaces.get("default").await.unwrap();
    let here: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    here.create(&PostParams::default(), &lease("l", "a"))
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_watch_delay_delivers_events_after_the_writer_has_its_answer() {
    let server = FakeApiServer::start().await.unwrap();
    let delayed = server.add_listener().await.unwrap();
    let delay = Duration::from_millis(400);
    delayed.set_faults(Faults {
        watch_delay: delay,
        ..Faults::none()
    });
    let (api, created, [late, prompt]) =
        lease_w_watched(&server, [&delayed.url(), &server.url()]).await;
    let late_seen = tokio::spawn(update_seen(late));
    let prompt_seen = tokio::spawn(update_seen(prompt));

    let sent = Instant::now();
    hand_w_to_b(&api, &created).await;
    let answered = Instant::now();
    let late_at = late_seen.await.unwrap();
    let prompt_at = prompt_seen.await.unwrap();
    assert!(
        late_at > answered,
        "the writer is answered before the delayed watcher sees the event"
    );
    assert!(
        late_at - sent >= delay,
        "the delayed watcher sees the event {:?} after the write was sent",
        late_at - sent
    );
    assert!(
        prompt_at < late_at,
        "the other listener's watcher is not delayed"
    );
    server.shutdown().await;
}

/// When the watch saw the update to holder `b`.
async fn update_seen(mut stream: LeaseWatch) -> Instant {
    match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await {
        Ok(Ok(Some(WatchEvent::Modified(l)))) => {
            assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"));
            Instant::now()
        }
        other => panic!("expected the update: {other:?}"),
    }
}

type LeaseWatch = futures::stream::BoxStream<'static, kube::Result<WatchEvent<Lease>>>;

/// Lease `w` held by `a`, created through the default listener, and a watch of it from its creation
/// through each of `urls`.
async fn lease_w_watched(
    server: &FakeApiServer,
    urls: [&str; 2],
) -> (Api<Lease>, Lease, [LeaseWatch; 2]) {
    let api: Api<Lease> = Api::namespaced(client(&server.url()), "default");
    let created = api
        .create(&PostParams::default(), &lease("w", "a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default().timeout(30);
    let mut watches = Vec::new();
    for url in urls {
        let on: Api<Lease> = Api::namespaced(watch_client(url), "default");
        watches.push(on.watch(&params, &rv).await.unwrap().boxed());
    }
    let Ok(watches) = <[LeaseWatch; 2]>::try_from(watches) else {
        unreachable!("one watch per url")
    };
    (api, created, watches)
}

/// Replaces `w` (as `created`) with holder `b`.
async fn hand_w_to_b(api: &Api<Lease>, created: &Lease) {
    let mut update = created.clone();
    update.spec.as_mut().unwrap().holder_identity = Some("b".into());
    api.replace("w", &PostParams::default(), &update)
        .await
        .unwrap();
}

/// A watch from the version of a Lease untouched for longer than the watch cache's fresh duration (75 s in
/// kube-apiserver, `history_max_age` here) streams while the cache still holds the events after it: the
/// cache drops events when it is full, not by age (`watch_cache.go`, `resizeCacheLocked`). The fake once
/// answered 410 here, where kube-apiserver streams.
#[tokio::test]
async fn a_watch_from_a_version_older_than_the_fresh_duration_streams_while_the_cache_holds_it() {
    let fresh = Duration::from_millis(300);
    let (server, api, stale) =
        stale_then_other(FakeApiServer::builder().history_max_age(fresh)).await;
    let stale_rv = stale.metadata.resource_version.clone().unwrap();
    // Past the fresh duration (a lower bound on elapsed time, whatever the scheduling).
    tokio::time::sleep(fresh + Duration::from_millis(100)).await;
    let params = WatchParams::default()
        .fields("metadata.name=stale")
        .timeout(10);
    let mut stream = api.watch(&params, &stale_rv).await.unwrap().boxed();
    renewal_reaches(&api, stale, &mut stream).await;
    server.shutdown().await;
}

/// kube-apiserver stores a Lease as Go's `Lease` type encodes it: `spec` always there (a struct, which
/// `omitempty` never omits), a null field absent (a nil pointer). kubert's `LeaseManager::init` refuses a
/// Lease without `spec`, so a Lease created bare (as linkerd2 creates its own) must come back with `{}`.
#[tokio::test]
async fn a_lease_is_answered_with_a_spec_and_without_null_fields_as_kube_apiserver_stores_it() {
    let server = FakeApiServer::start().await.unwrap();
    let client = client(&server.url());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let bare = Lease {
        metadata: ObjectMeta {
            name: Some("bare".into()),
            ..ObjectMeta::default()
        },
        spec: None,
    };
    let created = leases.create(&PostParams::default(), &bare).await.unwrap();
    assert_eq!(created.spec, Some(Default::default()));
    assert_eq!(
        leases.get("bare").await.unwrap().spec,
        Some(Default::default())
    );

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"),
        "leases",
    );
    let raw: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let mut nulls = DynamicObject::new("nulls", &ar);
    nulls.data = json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": 15}});
    let created = raw.create(&PostParams::default(), &nulls).await.unwrap();
    assert_eq!(created.data["spec"], json!({"leaseDurationSeconds": 15}));
    let mut replaced = created.clone();
    replaced.data = json!({"spec": null});
    let replaced = raw
        .replace("nulls", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(replaced.data["spec"], json!({}));
}
