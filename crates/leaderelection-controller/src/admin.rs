//! The admin HTTP server (axum): `/healthz`, `/readyz`, `/metrics`, `/debug/vars`, and nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use leaderelection::Watchdog;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::election::ElectionHandle;
use crate::metrics::Metrics;

/// What the admin routes read. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admin {
    election: ElectionHandle,
    watchdog: Watchdog,
    registry: Arc<Registry>,
    metrics: Metrics,
}

impl Admin {
    /// The admin state of `component`: its watchdog (unhealthy after `lease_duration + tolerance` without a
    /// renew while it believes it leads), the finished `registry`, and `metrics` for `/debug/vars`.
    pub fn new(
        election: ElectionHandle,
        tolerance: Duration,
        registry: Registry,
        metrics: Metrics,
    ) -> Self {
        Self {
            watchdog: election.watchdog(tolerance),
            election,
            registry: Arc::new(registry),
            metrics,
        }
    }

    /// The router: `GET /healthz`, `/readyz`, `/metrics` (OpenMetrics text), `/debug/vars` (JSON).
    pub fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/debug/vars", get(debug_vars))
            .with_state(self)
    }

    /// The `/debug/vars` document: `{"leader_election": {enabled, is_leader, identity, lease_holder,
    /// time_as_leader, transitions, component_failures}}`; `time_as_leader` is the running term's length
    /// (e.g. `"45m32s"`), or `"0s"` when not leading; `component_failures` maps each supervised component
    /// that failed to `{failures, budget_exhausted, last_error}` (counts since the process started; a
    /// spent budget means it stepped down or failed the process), `{}` when none failed.
    pub fn debug_vars(&self) -> serde_json::Value {
        let config = self.election.config();
        let time_as_leader = self
            .metrics
            .current_term_duration()
            .map(crate::commentator::round)
            .unwrap_or_default();
        let component_failures: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .component_failures()
            .into_iter()
            .map(|(name, c)| {
                let value = json!({
                    "failures": c.failures,
                    "budget_exhausted": c.budget_exhausted,
                    "last_error": c.last_error,
                });
                (name, value)
            })
            .collect();
        json!({
            "leader_election": {
                "enabled": !self.election.is_standalone(),
                "is_leader": self.election.is_leader(),
                "identity": config.identity,
                "lease_holder": self.election.leader().unwrap_or_default(),
                "time_as_leader": humantime::format_duration(time_as_leader).to_string(),
                "transitions": self.metrics.transitions(),
                "component_failures": component_failures,
            }
        })
    }
}

/// Serves `admin` on `listener` until `shutdown` is cancelled.
///
/// # Errors
///
/// The I/O error of the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Admin,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, admin.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn healthz(State(admin): State<Admin>) -> Response {
    match admin.watchdog.check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(unhealthy) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{unhealthy}\n")).into_response()
        }
    }
}

/// Ready once the election has an answer: standalone, leading, or a holder observed.
async fn readyz(State(admin): State<Admin>) -> Response {
    if admin.election.is_standalone()
        || admin.election.is_leader()
        || admin.election.leader().is_some()
    {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no lease holder observed yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {err}\n"),
        )
            .into_response(),
    }
}

async fn debug_vars(State(admin): State<Admin>) -> Response {
    axum::Json(admin.debug_vars()).into_response()
}
