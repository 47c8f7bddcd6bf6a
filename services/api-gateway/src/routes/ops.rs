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

/// Every backend is reachable; 503 names the one that is not.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready"), (status = 503, description = "A backend is unreachable")))]
pub async fn readyz(State(gw): State<Gateway>) -> impl IntoResponse {
    match gw.state.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready", "backends": {"store": "ok"}}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "backends": {"store": e.to_string()}})),
        ),
    }
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
