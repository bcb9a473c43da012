//! The answer counters per resource, verb and status code, through the real kube 5 client.

use std::time::Duration;

use fake_apiserver::{AnswerCount, FakeApiServer, ResourceType};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

fn client(url: &str) -> kube::Client {
    let mut config = kube::Config::new(url.parse().unwrap());
    config.read_timeout = Some(Duration::from_secs(5));
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
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

fn claim(name: &str) -> DynamicObject {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("claims.example.com", "v1", "Claim"),
        "claims",
    );
    DynamicObject::new(name, &ar).data(json!({"spec": {"size": 1}}))
}

#[tokio::test]
async fn answers_are_counted_per_resource_verb_and_code() {
    let (server, api) = claims().await;
    let created = api
        .create(&PostParams::default(), &claim("c1"))
        .await
        .unwrap();
    api.replace("c1", &PostParams::default(), &created)
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
