//! kube-apiserver's `NamespaceLifecycle` admission on creates (`plugin/pkg/admission/namespace/lifecycle/
//! admission.go`): nothing is created in a namespace that does not exist (404) or is being deleted (403).
//! Namespaces are not stored objects here: they exist by [`crate::Builder::existing_namespaces`] (every valid
//! name by default), and are terminating by [`crate::Builder::terminating_namespaces`] or
//! [`crate::FakeApiServer::terminate_namespace`].

use serde_json::{Value, json};

use crate::resource::ResourceType;
use crate::shared::Shared;
use crate::status::ApiError;

impl Shared {
    /// Whether namespace `name` is being deleted (its phase is `Terminating`).
    pub(crate) fn namespace_terminating(&self, name: &str) -> bool {
        self.terminating_namespaces().contains(name)
    }

    /// Admits the create of `name` (a resource of type `rt`) in `namespace`: 404 `namespaces "<ns>" not
    /// found` when the namespace does not exist, 403 `Forbidden` when it is being terminated.
    pub(crate) fn admit_create(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        if !self.namespace_exists(namespace) {
            return Err(ApiError::namespace_not_found(namespace));
        }
        if self.namespace_terminating(namespace) {
            return Err(ApiError::namespace_terminating(rt, name, namespace));
        }
        Ok(())
    }

    /// `GET /api/v1/namespaces/<name>` of an existing namespace: `Active`, or `Terminating` with a
    /// `deletionTimestamp` once it is being deleted.
    pub(crate) fn namespace_object(&self, mut namespace: Value) -> Value {
        let name = namespace
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.namespace_terminating(name) {
            namespace["status"]["phase"] = json!("Terminating");
            namespace["metadata"]["deletionTimestamp"] = json!(
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            );
        }
        namespace
    }
}
