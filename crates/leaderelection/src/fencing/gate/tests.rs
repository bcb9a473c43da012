use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::*;

/// A request as the server would have received it.
#[derive(Clone, Debug)]
struct Sent {
    method: Method,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// What reached the "server" behind the gate, in order.
type Log = Arc<Mutex<Vec<Sent>>>;

/// A server that logs every request and answers a Lease (the body, when it is one); with `hang_writes`,
/// mutating requests are logged and never answered.
fn server(
    log: Log,
    hang_writes: bool,
) -> impl Service<
    Request<Body>,
    Response = http::Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Body>| {
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await?.to_vec();
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned());
            let lease = serde_json::from_slice::<Lease>(&body).unwrap_or_else(|_| lease("guarded"));
            log.lock().unwrap().push(Sent {
                method: parts.method.clone(),
                content_type,
                body,
            });
            if hang_writes && is_mutating(&parts.method) {
                std::future::pending::<()>().await;
            }
            Ok(http::Response::new(Body::from(serde_json::to_vec(&lease)?)))
        }
    })
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}})).unwrap()
}

fn term(transitions: i32) -> Term {
    Term {
        holder: "a".into(),
        transitions,
        acquire_time: None,
    }
}

/// Leading in term 7 of `jobs/ctl` until 10 s from now.
fn leading() -> LeaderState {
    LeaderState {
        leader: Some("a".into()),
        lease_transitions: 7,
        term: Some(term(7)),
        valid_until: Some(Instant::now() + Duration::from_secs(10)),
        ..LeaderState::default()
    }
}

struct Gated {
    api: Api<Lease>,
    log: Log,
    state: watch::Sender<LeaderState>,
}

fn gated(fence: impl FnOnce(Fence) -> Fence, hang_writes: bool) -> Gated {
    let (state, receiver) = watch::channel(leading());
    let fence = fence(Fence::new(term(7), "jobs", "ctl", receiver));
    let log = Log::default();
    let client = kube::Client::new(
        fence.layer().layer(server(log.clone(), hang_writes)),
        "default",
    );
    Gated {
        api: Api::namespaced(client, "default"),
        log,
        state,
    }
}

fn fenced(result: Result<Lease, kube::Error>) -> Fenced {
    let error = result.expect_err("the fence refuses the write");
    Fenced::find(&error)
        .unwrap_or_else(|| panic!("not a Fenced error: {error:?}"))
        .clone()
}

fn merge() -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"holderIdentity": "x"}}))
}

fn sent_annotations(sent: &Sent) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    body["metadata"]["annotations"].clone()
}

#[tokio::test(start_paused = true)]
async fn reads_pass_and_writes_are_refused_before_sending_once_the_term_ended() {
    let gated = gated(|f| f, false);
    let pp = PatchParams::default();
    gated.api.patch("guarded", &pp, &merge()).await.unwrap();
    gated.state.send_modify(|s| {
        s.term = None;
        s.leader = None;
    });
    let refused = fenced(gated.api.patch("guarded", &pp, &merge()).await);
    assert_eq!(
        refused,
        Fenced {
            term: 7,
            lease: "jobs/ctl".into(),
            reason: FenceReason::TermEnded,
            in_flight: false,
        }
    );
    assert_eq!(
        refused.to_string(),
        "write refused before it was sent: term 7 of Lease jobs/ctl ended"
    );
    gated.api.get("guarded").await.expect("reads always pass");
    let methods: Vec<_> = gated
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(
        methods,
        [Method::PATCH, Method::GET],
        "the refused PATCH was never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn writes_are_refused_once_the_validity_deadline_passed_without_anyone_publishing() {
    let gated = gated(|f| f, false);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    gated
        .api
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    let error = gated
        .api
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(
        Fenced::find(&error).map(|f| f.reason.clone()),
        Some(FenceReason::DeadlinePassed)
    );
    assert_eq!(
        gated.log.lock().unwrap().len(),
        1,
        "only the first DELETE was sent"
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_term_or_a_stopped_elector_refuses_the_old_terms_writes() {
    let gated = gated(|f| f, false);
    gated.state.send_modify(|s| {
        s.term = Some(term(9));
        s.lease_transitions = 9;
    });
    let refused = fenced(gated.api.create(&PostParams::default(), &lease("x")).await);
    assert_eq!(refused.reason, FenceReason::NewerTerm { transitions: 9 });
    gated.state.send_modify(|s| {
        s.term = None;
        s.leader = Some("b".into());
        s.lease_transitions = 8;
    });
    let refused = fenced(gated.api.create(&PostParams::default(), &lease("x")).await);
    assert_eq!(refused.reason, FenceReason::NewerTerm { transitions: 8 });
    // The elector stopped with the term still published: no term outlives its elector.
    gated.state.send_replace(leading());
    drop(gated.state);
    let refused = fenced(gated.api.create(&PostParams::default(), &lease("x")).await);
    assert_eq!(refused.reason, FenceReason::TermEnded);
    assert!(gated.log.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_write_in_flight_when_the_term_ends_is_cancelled_at_its_deadline() {
    let gated = gated(|f| f, true);
    let start = Instant::now();
    let pp = PatchParams::default();
    let refused = fenced(gated.api.patch("guarded", &pp, &merge()).await);
    assert_eq!(refused.reason, FenceReason::DeadlinePassed);
    assert!(refused.in_flight);
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(10),
        "cancelled at the deadline"
    );
    assert_eq!(
        gated.log.lock().unwrap().len(),
        1,
        "the write had reached the server"
    );

    // A renewal moves the deadline; the elector's word that the term ended cancels at once.
    let gated = self::gated(|f| f, true);
    let api = gated.api.clone();
    let write = tokio::spawn(async move {
        api.patch("guarded", &PatchParams::default(), &merge())
            .await
    });
    tokio::time::advance(Duration::from_secs(5)).await;
    gated
        .state
        .send_modify(|s| s.valid_until = Some(Instant::now() + Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!write.is_finished(), "renewed: still valid at 11 s");
    gated.state.send_modify(|s| s.term = None);
    let refused = fenced(write.await.unwrap());
    assert_eq!(
        (refused.reason, refused.in_flight),
        (FenceReason::TermEnded, true)
    );
}

#[tokio::test(start_paused = true)]
async fn create_update_merge_strategic_and_apply_bodies_are_stamped() {
    let gated = gated(|f| f, false);
    let mut object = lease("guarded");
    object.metadata.annotations = Some([("keep".to_owned(), "me".to_owned())].into());
    gated
        .api
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    gated
        .api
        .replace("guarded", &PostParams::default(), &object)
        .await
        .unwrap();
    let pp = PatchParams::default();
    gated.api.patch("guarded", &pp, &merge()).await.unwrap();
    let strategic = Patch::Strategic(json!({"metadata": {"annotations": {"keep": "me"}}}));
    gated.api.patch("guarded", &pp, &strategic).await.unwrap();
    let apply = Patch::Apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "guarded", "annotations": null}}),
    );
    gated
        .api
        .patch("guarded", &PatchParams::apply("test"), &apply)
        .await
        .unwrap();
    gated
        .api
        .patch_status("guarded", &pp, &merge())
        .await
        .unwrap();

    let log = gated.log.lock().unwrap();
    let stamps = json!({TERM_ANNOTATION: "7", LEASE_ANNOTATION: "jobs/ctl"});
    let kept = json!({"keep": "me", TERM_ANNOTATION: "7", LEASE_ANNOTATION: "jobs/ctl"});
    let expected = [
        (Method::POST, "application/json", &kept),
        (Method::PUT, "application/json", &kept),
        (Method::PATCH, "application/merge-patch+json", &stamps),
        (
            Method::PATCH,
            "application/strategic-merge-patch+json",
            &kept,
        ),
        (Method::PATCH, "application/apply-patch+yaml", &stamps),
        (Method::PATCH, "application/merge-patch+json", &stamps),
    ];
    assert_eq!(log.len(), expected.len());
    for (sent, (method, content_type, annotations)) in log.iter().zip(expected) {
        assert_eq!(sent.method, method);
        assert_eq!(sent.content_type.as_deref(), Some(content_type));
        assert_eq!(
            &sent_annotations(sent),
            annotations,
            "{method} {content_type}"
        );
    }
    let merge: serde_json::Value = serde_json::from_slice(&log[2].body).unwrap();
    assert_eq!(
        merge["spec"],
        json!({"holderIdentity": "x"}),
        "the patch itself is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_json_patch_is_stamped_only_when_it_shows_the_annotations_exist() {
    let gated = gated(|f| f, false);
    let with_annotation = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
        {"op": "add", "path": "/metadata/annotations/mine", "value": "x"},
    ]);
    let request = Request::patch("/apis/coordination.k8s.io/v1/namespaces/default/leases/guarded")
        .header(header::CONTENT_TYPE, "application/json-patch+json")
        .body(with_annotation.to_string().into_bytes())
        .unwrap();
    gated
        .api
        .clone()
        .into_client()
        .request_text(request)
        .await
        .unwrap();
    let log = gated.log.lock().unwrap().clone();
    let operations: serde_json::Value = serde_json::from_slice(&log[0].body).unwrap();
    assert_eq!(
        operations.as_array().unwrap()[2..],
        [
            json!({"op": "add", "path": "/metadata/annotations/leaderelection.dev~1term", "value": "7"}),
            json!({"op": "add", "path": "/metadata/annotations/leaderelection.dev~1lease", "value": "jobs/ctl"}),
        ]
    );
    let stamped = |operations: serde_json::Value| {
        stamp(
            BodyKind::JsonPatch,
            operations.to_string().as_bytes(),
            7,
            "jobs/ctl",
        )
        .is_some()
    };
    assert!(stamped(
        json!([{"op": "replace", "path": "/metadata/annotations", "value": {}}])
    ));
    assert!(stamped(
        json!([{"op": "add", "path": "/metadata", "value": {"annotations": {}}}])
    ));
    assert!(stamped(
        json!([{"op": "remove", "path": "/metadata/annotations/old"}])
    ));
    assert!(!stamped(
        json!([{"op": "replace", "path": "/spec/holderIdentity", "value": "x"}])
    ));
    assert!(!stamped(json!([
        {"op": "add", "path": "/metadata/annotations/mine", "value": "x"},
        {"op": "remove", "path": "/metadata/annotations"},
    ])));
    assert!(!stamped(json!([
        {"op": "add", "path": "/metadata/annotations/mine", "value": "x"},
        {"op": "move", "from": "/metadata/annotations", "path": "/spec/x"},
    ])));
    assert!(!stamped(
        json!([{"op": "add", "path": "/metadata", "value": {"labels": {}}}])
    ));
}

#[tokio::test(start_paused = true)]
async fn bodies_the_gate_cannot_stamp_are_sent_byte_for_byte() {
    let gated = gated(|f| f, false);
    let client = gated.api.clone().into_client();
    let requests: [(Method, &str, &[u8]); 5] = [
        (
            Method::PATCH,
            "application/apply-patch+yaml",
            b"metadata:\n  name: guarded\n",
        ),
        (Method::POST, "application/json", b"[1, 2]"),
        (
            Method::PUT,
            "application/vnd.kubernetes.protobuf",
            b"k8s\x00\x01",
        ),
        (
            Method::PATCH,
            "application/merge-patch+json",
            br#"{"metadata":{"annotations":null}}"#,
        ),
        (
            Method::PATCH,
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/spec/x","value":1}]"#,
        ),
    ];
    for (method, content_type, body) in &requests {
        let request = Request::builder()
            .method(method.clone())
            .uri("/apis/coordination.k8s.io/v1/namespaces/default/leases/guarded")
            .header(header::CONTENT_TYPE, *content_type)
            .body(body.to_vec())
            .unwrap();
        client.request_text(request).await.unwrap();
    }
    let log = gated.log.lock().unwrap();
    let sent: Vec<_> = log.iter().map(|s| s.body.as_slice()).collect();
    let given: Vec<_> = requests.iter().map(|(_, _, body)| *body).collect();
    assert_eq!(sent, given);
}

#[tokio::test(start_paused = true)]
async fn without_stamping_writes_are_gated_and_sent_as_they_are() {
    let gated = gated(|f| f.stamping(false), false);
    gated
        .api
        .create(&PostParams::default(), &lease("guarded"))
        .await
        .unwrap();
    assert_eq!(
        sent_annotations(&gated.log.lock().unwrap()[0]),
        serde_json::Value::Null
    );
    gated.state.send_modify(|s| s.term = None);
    fenced(
        gated
            .api
            .create(&PostParams::default(), &lease("guarded"))
            .await,
    );
}
