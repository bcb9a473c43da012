//! ValidatingAdmissionPolicies through the real kube 5 client: matching (resource rules, operations,
//! `/status`), CEL on `object`, `oldObject`, `params` and `request`, `paramRef` with
//! `parameterNotFoundAction`, `failurePolicy`, `validationActions`, and kube-apiserver's 422 answer. A
//! refused write changes nothing: no new resourceVersion, hence no watch event.

use fake_apiserver::{FakeApiServer, ResourceType};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

fn client(url: &str) -> kube::Client {
    leaderelection::KubeLeaseLock::client_for_url(url).unwrap()
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    )
}

/// A server serving `widgets.example.com` (with `/status`), and a namespaced API on them.
async fn widgets() -> (FakeApiServer, kube::Client, Api<DynamicObject>) {
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
    let client = client(&server.url());
    let api = Api::namespaced_with(client.clone(), "default", &widget_resource());
    (server, client, api)
}

fn widget(name: &str, size: i64) -> DynamicObject {
    DynamicObject::new(name, &widget_resource()).data(json!({"spec": {"size": size}}))
}

/// Installs a policy on widgets (the `spec` fields given, plus `matchConstraints` unless given) and a
/// binding `<name>-binding` with `validationActions: [Deny]` and the `binding` fields given.
async fn install(client: &kube::Client, name: &str, mut spec: Value, binding: Value) {
    if spec.get("matchConstraints").is_none() {
        spec["matchConstraints"] = json!({"resourceRules": [{
            "apiGroups": ["example.com"], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["widgets"],
        }]});
    }
    let policy: ValidatingAdmissionPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let mut binding_spec = json!({"policyName": name, "validationActions": ["Deny"]});
    if let (Some(spec), Some(extra)) = (binding_spec.as_object_mut(), binding.as_object()) {
        spec.extend(extra.clone());
    }
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(
        json!({"metadata": {"name": format!("{name}-binding")}, "spec": binding_spec}),
    )
    .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// The (code, reason, message) of a refused request.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_validation_is_a_422_naming_policy_binding_and_message_and_stores_nothing() {
    let (server, client, api) = widgets().await;
    install(
        &client,
        "max-size",
        json!({"validations": [{"expression": "object.spec.size <= 5",
                                "messageExpression": "'size ' + string(object.spec.size) + ' is above 5'"}]}),
        json!({}),
    )
    .await;
    let before = server.resource_version();
    let (code, reason, message) =
        refusal(api.create(&PostParams::default(), &widget("w", 6)).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        "widgets.example.com \"w\" is forbidden: ValidatingAdmissionPolicy 'max-size' with binding \
         'max-size-binding' denied request: size 6 is above 5"
    );
    assert_eq!(server.resource_version(), before, "nothing was written");
    assert!(api.get_opt("w").await.unwrap().is_none());

    let created = api
        .create(&PostParams::default(), &widget("w", 5))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["size"], 5);
}

#[tokio::test]
async fn a_patch_is_judged_on_the_merged_object_and_a_refused_one_changes_nothing() {
    let (server, client, api) = widgets().await;
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    install(
        &client,
        "max-size",
        json!({"validations": [{"expression": "object.spec.size <= 5 && oldObject.spec.size <= object.spec.size"}]}),
        json!({}),
    )
    .await;
    let before = server.resource_version();
    // The patch names only a label: the merged object keeps size 1, which passes.
    let labelled = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert!(server.resource_version() > before);
    for patch in [json!({"spec": {"size": 9}}), json!({"spec": {"size": 0}})] {
        let (code, _, message) = refusal(
            api.patch("w", &PatchParams::default(), &Patch::Merge(patch))
                .await,
        );
        assert_eq!(code, 422);
        assert!(
            message.ends_with(
                "denied request: failed expression: object.spec.size <= 5 && oldObject.spec.size <= object.spec.size"
            ),
            "{message}"
        );
    }
    let stored = api.get("w").await.unwrap();
    assert_eq!(
        stored.metadata.resource_version,
        labelled.metadata.resource_version
    );
    assert_eq!(stored.data["spec"]["size"], 1);
}

#[tokio::test]
async fn a_delete_has_a_null_object_and_the_stored_one_as_old_object() {
    let (_server, client, api) = widgets().await;
    let mut protected = widget("protected", 1);
    protected.metadata.labels = Some([("protected".to_owned(), "true".to_owned())].into());
    api.create(&PostParams::default(), &protected)
        .await
        .unwrap();
    api.create(&PostParams::default(), &widget("plain", 1))
        .await
        .unwrap();
    install(
        &client,
        "keep-protected",
        json!({"validations": [{
            "expression": "request.operation != 'DELETE' || (object == null && !(has(oldObject.metadata.labels) && 'protected' in oldObject.metadata.labels))",
            "message": "protected widgets stay",
        }]}),
        json!({}),
    )
    .await;
    let (code, _, message) = refusal(api.delete("protected", &DeleteParams::default()).await);
    assert_eq!(code, 422);
    assert!(
        message.ends_with("denied request: protected widgets stay"),
        "{message}"
    );
    assert!(api.get_opt("protected").await.unwrap().is_some());
    api.delete("plain", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("plain").await.unwrap().is_none());
}

#[tokio::test]
async fn params_are_read_live_from_the_object_param_ref_names() {
    let (_server, client, api) = widgets().await;
    install(
        &client,
        "min-term",
        json!({
            "paramKind": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"},
            "validations": [{"expression": "object.spec.size >= params.spec.leaseTransitions"}],
        }),
        json!({"paramRef": {"name": "my-lease", "namespace": "default", "parameterNotFoundAction": "Deny"}}),
    )
    .await;
    let (code, _, message) = refusal(api.create(&PostParams::default(), &widget("w", 1)).await);
    assert_eq!(code, 422);
    assert_eq!(
        message,
        "widgets.example.com \"w\" is forbidden: ValidatingAdmissionPolicy 'min-term' with binding \
         'min-term-binding' denied request: failed to configure binding: no params found for policy binding \
         with `Deny` parameterNotFoundAction"
    );
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let lease: Lease = serde_json::from_value(
        json!({"metadata": {"name": "my-lease"}, "spec": {"leaseTransitions": 3}}),
    )
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let (code, _, _) = refusal(api.create(&PostParams::default(), &widget("w", 2)).await);
    assert_eq!(code, 422);
    api.create(&PostParams::default(), &widget("w", 3))
        .await
        .unwrap();
    // The next write sees the Lease as it is now.
    leases
        .patch(
            "my-lease",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"leaseTransitions": 4}})),
        )
        .await
        .unwrap();
    let (code, _, _) = refusal(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await,
    );
    assert_eq!(code, 422);
}

#[tokio::test]
async fn a_missing_param_with_allow_skips_the_binding() {
    let (_server, client, api) = widgets().await;
    install(
        &client,
        "min-term",
        json!({
            "paramKind": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"},
            "validations": [{"expression": "false"}],
        }),
        json!({"paramRef": {"name": "my-lease", "parameterNotFoundAction": "Allow"}}),
    )
    .await;
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_evaluation_error_refuses_under_fail_and_admits_under_ignore() {
    let (_server, client, api) = widgets().await;
    // `object.spec.color` is absent: a "no such key" evaluation error.
    install(
        &client,
        "strict",
        json!({"failurePolicy": "Fail", "validations": [{"expression": "object.spec.color == 'red'"}]}),
        json!({"matchResources": {"objectSelector": {"matchLabels": {"policy": "strict"}}}}),
    )
    .await;
    install(
        &client,
        "lenient",
        json!({"failurePolicy": "Ignore", "validations": [{"expression": "object.spec.color == 'red'"}]}),
        json!({"matchResources": {"objectSelector": {"matchLabels": {"policy": "lenient"}}}}),
    )
    .await;
    let labelled = |name: &str, policy: &str| {
        let mut w = widget(name, 1);
        w.metadata.labels = Some([("policy".to_owned(), policy.to_owned())].into());
        w
    };
    let (code, _, message) = refusal(
        api.create(&PostParams::default(), &labelled("a", "strict"))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains(
            "ValidatingAdmissionPolicy 'strict' with binding 'strict-binding' denied request: expression \
             'object.spec.color == 'red'' resulted in error: "
        ),
        "{message}"
    );
    api.create(&PostParams::default(), &labelled("b", "lenient"))
        .await
        .unwrap();
}

#[tokio::test]
async fn only_bindings_with_deny_refuse_and_only_matching_operations_are_judged() {
    let (_server, client, api) = widgets().await;
    install(
        &client,
        "warn-only",
        json!({"validations": [{"expression": "false"}]}),
        json!({"validationActions": ["Warn", "Audit"]}),
    )
    .await;
    install(
        &client,
        "no-updates",
        json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
                                                    "operations": ["UPDATE"], "resources": ["*"]}]},
            "validations": [{"expression": "request.operation != 'UPDATE'", "reason": "Forbidden"}],
        }),
        json!({}),
    )
    .await;
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    let (code, reason, _) = refusal(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await,
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
}

#[tokio::test]
async fn a_status_write_is_judged_only_by_rules_naming_the_subresource() {
    let (_server, client, api) = widgets().await;
    api.create(&PostParams::default(), &widget("w", 1))
        .await
        .unwrap();
    install(
        &client,
        "main-only",
        json!({"validations": [{"expression": "false"}]}),
        json!({}),
    )
    .await;
    let status = json!({"status": {"ready": true}});
    api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    install(
        &client,
        "status-too",
        json!({
            "matchConstraints": {"resourceRules": [{"apiGroups": ["example.com"], "apiVersions": ["v1"],
                                                    "operations": ["UPDATE"], "resources": ["widgets/status"]}]},
            "validations": [{"expression": "request.subResource == 'status' && !object.status.ready"}],
        }),
        json!({}),
    )
    .await;
    let (code, _, message) = refusal(
        api.patch_status("w", &PatchParams::default(), &Patch::Merge(&status))
            .await,
    );
    assert_eq!(code, 422);
    assert!(message.contains("'status-too'"), "{message}");
}

#[tokio::test]
async fn a_policy_whose_expression_does_not_compile_is_invalid() {
    let (_server, client, _api) = widgets().await;
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": "broken"},
        "spec": {"validations": [{"expression": "object.spec.size <="}]},
    }))
    .unwrap();
    let (code, reason, message) = refusal(
        Api::<ValidatingAdmissionPolicy>::all(client)
            .create(&PostParams::default(), &policy)
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.starts_with(
            "ValidatingAdmissionPolicy.admissionregistration.k8s.io \"broken\" is invalid: \
             spec.validations[0].expression: Invalid value: \"object.spec.size <=\": compilation failed: "
        ),
        "{message}"
    );
}

#[tokio::test]
async fn a_binding_without_param_ref_evaluates_with_null_params() {
    let (_server, client, api) = widgets().await;
    install(
        &client,
        "needs-params",
        json!({
            "paramKind": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"},
            "validations": [{"expression": "params != null", "message": "no params"}],
        }),
        json!({}),
    )
    .await;
    let (code, _, message) = refusal(api.create(&PostParams::default(), &widget("w", 1)).await);
    assert_eq!(code, 422);
    assert!(message.ends_with("denied request: no params"), "{message}");
}

#[tokio::test]
async fn variables_compose_in_order_and_a_failing_one_fails_where_it_is_used() {
    let (_server, client, api) = widgets().await;
    install(
        &client,
        "composed",
        json!({
            "failurePolicy": "Fail",
            "variables": [
                {"name": "size", "expression": "object.spec.size"},
                {"name": "double", "expression": "variables.size * 2"},
                {"name": "color", "expression": "object.spec.color"},
            ],
            "validations": [
                {"expression": "variables.double <= 10", "messageExpression": "'double is ' + string(variables.double)"},
                {"expression": "!has(object.spec.paint) || variables.color == 'red'"},
            ],
        }),
        json!({}),
    )
    .await;
    api.create(&PostParams::default(), &widget("w", 5))
        .await
        .unwrap();
    let (code, _, message) = refusal(api.create(&PostParams::default(), &widget("x", 6)).await);
    assert_eq!(code, 422);
    assert!(
        message.ends_with("denied request: double is 12"),
        "{message}"
    );
    // `variables.color` failed (no spec.color): only the validation that uses it fails.
    let mut painted = widget("y", 1);
    painted.data["spec"]["paint"] = json!(true);
    let (code, _, message) = refusal(api.create(&PostParams::default(), &painted).await);
    assert_eq!(code, 422);
    assert!(message.contains("resulted in error"), "{message}");
}
