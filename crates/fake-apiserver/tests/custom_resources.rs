//! Custom resources through the real kube 5 client: deletion with finalizers (deletionTimestamp, removal
//! when the last finalizer goes) and the answer counters per resource, verb and status code.

use fake_apiserver::{AnswerCount, FakeApiServer, ResourceType};
use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::json;

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

async fn claims() -> (FakeApiServer, Api<DynamicObject>) {
    let server = FakeApiServer::builder()
        .custom_resource(ResourceType::custom(
            "claims.example.com",
            "v1",
            "Claim",
            "claims",
            true,
        ))
        .start()
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("claims.example.com", "v1", "Claim"),
        "claims",
    );
    let api = Api::namespaced_with(client(&server.url()), "default", &ar);
    (server, api)
}

fn claim(name: &str, finalizers: &[&str]) -> DynamicObject {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("claims.example.com", "v1", "Claim"),
        "claims",
    );
    let mut object = DynamicObject::new(name, &ar).data(json!({"spec": {"size": 1}}));
    object.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
    object
}

#[tokio::test]
async fn delete_waits_for_finalizers_then_removes_the_object() {
    let (server, api) = claims().await;
    let created = api
        .create(&PostParams::default(), &claim("c1", &["a/x", "b/y"]))
        .await
        .unwrap();
    assert!(created.metadata.deletion_timestamp.is_none());

    let pending = api
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the object, while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_ne!(
        pending.metadata.resource_version,
        created.metadata.resource_version
    );
    // A second delete changes nothing.
    let again = api
        .delete("c1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the object, while finalizers remain");
    assert_eq!(
        again.metadata.resource_version,
        pending.metadata.resource_version
    );

    // A client cannot clear the deletionTimestamp, nor add a finalizer now.
    let mut cleared = pending.clone();
    cleared.metadata.deletion_timestamp = None;
    let kept = api
        .replace("c1", &PostParams::default(), &cleared)
        .await
        .unwrap();
    assert!(kept.metadata.deletion_timestamp.is_some());
    let mut added = kept.clone();
    added
        .metadata
        .finalizers
        .as_mut()
        .unwrap()
        .push("c/z".into());
    match api.replace("c1", &PostParams::default(), &added).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            assert!(
                status.message.contains("no new finalizers"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }

    // Removing one finalizer keeps it; removing the last one deletes it (a DELETED event).
    let mut watch = api
        .watch(
            &WatchParams::default(),
            kept.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let mut one = kept.clone();
    one.metadata.finalizers = Some(vec!["b/y".into()]);
    let one = api
        .replace("c1", &PostParams::default(), &one)
        .await
        .unwrap();
    assert!(api.get_opt("c1").await.unwrap().is_some());
    let mut none = one.clone();
    none.metadata.finalizers = Some(Vec::new());
    api.replace("c1", &PostParams::default(), &none)
        .await
        .unwrap();
    assert!(api.get_opt("c1").await.unwrap().is_none());
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match watch.next().await.unwrap().unwrap() {
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["MODIFIED", "DELETED"]);

    // Without finalizers, a delete removes at once.
    api.create(&PostParams::default(), &claim("c2", &[]))
        .await
        .unwrap();
    assert!(
        api.delete("c2", &DeleteParams::default())
            .await
            .unwrap()
            .is_right()
    );
    assert!(api.get_opt("c2").await.unwrap().is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn answers_are_counted_per_resource_verb_and_code() {
    let (server, api) = claims().await;
    let created = api
        .create(&PostParams::default(), &claim("c1", &[]))
        .await
        .unwrap();
    // A write that changes the object (a no-op one would keep its resourceVersion).
    let mut changed = created.clone();
    changed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("changed".into(), "yes".into());
    api.replace("c1", &PostParams::default(), &changed)
        .await
        .unwrap();
    for _ in 0..3 {
        // Stale resourceVersion: 409 Conflict.
        assert!(
            api.replace("c1", &PostParams::default(), &created)
                .await
                .is_err()
        );
    }
    assert!(api.get_opt("missing").await.unwrap().is_none());
    let count = |verb: &str, code: u16| {
        server
            .answer_counts()
            .iter()
            .find(|a| a.resource == "claims" && a.verb == verb && a.code == code)
            .map_or(0, |a| a.count)
    };
    assert_eq!(count("create", 201), 1);
    assert_eq!(count("update", 200), 1);
    assert_eq!(count("update", 409), 3);
    assert_eq!(count("get", 404), 1);
    let over_http: Vec<AnswerCount> = admin_get(&server.url(), "/fake/answers").await;
    assert_eq!(over_http, server.answer_counts());
    server.reset_counts();
    assert!(server.answer_counts().is_empty());
    server.shutdown().await;
}

/// GET of an admin route through kube's client (it speaks plain HTTP to the fake server).
async fn admin_get(url: &str, path: &str) -> Vec<AnswerCount> {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    client(url).request(request).await.unwrap()
}
