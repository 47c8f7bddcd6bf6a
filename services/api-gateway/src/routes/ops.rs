//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Every backend is reachable and the gateway has room for another request; 503 says which
/// is not so (`reason`), the backend's error under `backends`. `capacity` shows the in-flight
/// slots in use either way.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready"), (status = 503, description = "A backend is unreachable, or every in-flight slot is busy and the waiting room full")))]
pub async fn readyz(State(gw): State<Gateway>) -> impl IntoResponse {
    let usage = gw.capacity.usage();
    let (status, reason, store) = match gw.state.ping().await {
        Err(e) => ("unavailable", Some("the store is unreachable".to_string()), e.to_string()),
        Ok(()) if usage.saturated() => (
            "unavailable",
            Some(format!(
                "saturated: {} of {} requests in flight (limits.max_in_flight) and {} of {} waiting (limits.max_waiting)",
                usage.in_flight, usage.max_in_flight, usage.waiting, usage.max_waiting
            )),
            "ok".to_string(),
        ),
        Ok(()) => ("ready", None, "ok".to_string()),
    };
    let code = if reason.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let mut body = json!({"status": status, "backends": {"store": store}, "capacity": usage});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    (code, Json(body))
}

/// Prometheus text exposition; queue depth is read from the backend at scrape time (and left
/// out when the backend cannot be read).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(gw): State<Gateway>) -> impl IntoResponse {
    let text = match gw.queue.depth().await {
        Ok(depth) => {
            gw.metrics.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
            gw.metrics.render()
        }
        Err(e) => {
            // Left out, not shown stale: the "backend unreachable" alert keys on its absence.
            tracing::warn!(error = %e, "queue depth unavailable for /metrics");
            gw.metrics.render_without(&["postwire_queue_depth"])
        }
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
