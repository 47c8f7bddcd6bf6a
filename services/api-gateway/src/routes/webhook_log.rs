//! `GET /v1/webhooks/{id}/deliveries`, `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`,
//! `PATCH /v1/webhooks/{id}` and `GET /v1/events`: the delivery log of each endpoint, replay,
//! enabling and disabling, and the event pull API (see `postwire_store::webhook_log`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postwire_proto::{
    EventList, EventType, UpdateWebhook, Webhook, WebhookDeliveryList, WebhookDeliveryView,
};
use postwire_store::webhook_log::delivery_seq;
use postwire_store::EventQuery;
use serde::Deserialize;

use super::{json_body, page_params, PageParams, DEFAULT_LIMIT, MAX_LIMIT};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/webhooks/{id}/deliveries", get(list_deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/retry", post(retry_delivery))
        .route("/v1/events", get(list_events))
}

/// The endpoint, or 404.
async fn endpoint(gw: &Gateway, id: &str) -> Result<Webhook, ApiError> {
    gw.webhook_log.webhook(id).await?.ok_or(ApiError::NotFound)
}

/// One endpoint's deliveries, newest first, each with every attempt (time, HTTP status,
/// latency, the start of the answer), its state and its next retry.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(
        ("id" = String, Path),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "Deliveries per page, 1–100 (default 50)"),
    ),
    responses(
        (status = 200, body = WebhookDeliveryList),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad cursor or limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_deliveries(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    key.require("admin")?;
    let (before, limit) = page_params(params, delivery_seq)?;
    endpoint(&gw, &id).await?;
    let page = gw.webhook_log.webhook_deliveries(&id, before, limit).await?;
    Ok(Json(WebhookDeliveryList {
        data: page.data,
        next_cursor: page.next.map(postwire_store::webhook_log::delivery_id),
    }))
}

/// Send a logged delivery again now (whatever its state), with the same `webhook-id` and body.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = String, Path), ("delivery_id" = String, Path)),
    responses(
        (status = 202, description = "Due now; the dispatcher sends it", body = WebhookDeliveryView),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn retry_delivery(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<WebhookDeliveryView>), ApiError> {
    key.require("admin")?;
    if !endpoint(&gw, &id).await?.enabled {
        return Err(ApiError::Conflict(format!(
            "the endpoint {id} is disabled; enable it with PATCH /v1/webhooks/{id} first"
        )));
    }
    let view = gw.webhook_log.retry_webhook_delivery(&id, &delivery_id).await?;
    view.map(|v| (StatusCode::ACCEPTED, Json(v))).ok_or(ApiError::NotFound)
}

/// Enable or disable an endpoint. Disabled, it gets no deliveries (pending ones end `failed`);
/// enabled again, it receives events from then on.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    request_body = UpdateWebhook,
    responses(
        (status = 200, body = Webhook),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn update_webhook(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Webhook>, ApiError> {
    key.require("admin")?;
    let request: UpdateWebhook = json_body(body)?;
    let updated = gw.webhook_log.set_webhook_enabled(&id, request.enabled).await?;
    updated.map(Json).ok_or(ApiError::NotFound)
}

/// `?since=&type=&cursor=&limit=` of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    since: Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Every event in the order it was stored (kept for `storage.retention`): the pull-side safety
/// net for webhook consumers. Poll with the last `next_cursor` to get what came since.
#[utoipa::path(
    get, path = "/v1/events", tag = "webhooks",
    params(
        ("since" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339: events stored at or after"),
        ("type" = Option<postwire_proto::EventType>, Query, description = "One event type, e.g. `message.bounced`"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "Events per page, 1–100 (default 50)"),
    ),
    responses(
        (status = 200, body = EventList),
        (status = 422, description = "Bad since, type, cursor or limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(gw): State<Gateway>,
    key: ApiKey,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    key.require("read")?;
    let Query(params) = params.map_err(|e| ApiError::field("(query)", e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be 1 to {MAX_LIMIT}")));
    }
    let kind = match params.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(raw) => Some(EventType::parse(raw).ok_or_else(|| {
            let all: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::field("type", format!("must be one of {}", all.join(", ")))
        })?),
        None => None,
    };
    let query = EventQuery { since: params.since, kind };
    let cursor = params.cursor.as_deref().filter(|c| !c.is_empty());
    let page = gw
        .webhook_log
        .events(&query, cursor, limit)
        .await?
        .ok_or_else(|| ApiError::field("cursor", "not a cursor from this list"))?;
    Ok(Json(EventList { data: page.data, next_cursor: page.next }))
}
