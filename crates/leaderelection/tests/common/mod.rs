//! Shared by the fencing tests: a fake API server serving widgets (`example.com/v1`, a namespaced custom
//! resource), with the admission policy this crate generates for one Lease installed.

use fake_apiserver::{FakeApiServer, ResourceType};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, ApiResource, GroupVersionKind, PostParams};
use leaderelection::fencing::FencingPolicy;

pub(crate) fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    )
}

/// The server, with `policy` (its ValidatingAdmissionPolicy and binding) installed, and a client of it.
pub(crate) async fn with_policy(policy: FencingPolicy) -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::builder()
        .custom_resource(ResourceType::custom(
            "example.com",
            "v1",
            "Widget",
            "widgets",
            true,
        ))
        .start()
        .await
        .unwrap();
    let client = leaderelection::KubeLeaseLock::client_for_url(&server.url()).unwrap();
    let (policy, binding) = policy.build().unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    (server, client)
}
