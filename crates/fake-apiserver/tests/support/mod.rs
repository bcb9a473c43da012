//! What several test files build: a Lease, and the parts of an API error they compare.
#![allow(dead_code)] // each test binary uses a part of it

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::core::ObjectMeta;

/// Lease `name` held by `holder` for 15 s.
pub(crate) fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    }
}

/// The code, reason and message of an API error.
pub(crate) fn api_error<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}
