//! `POST/GET/DELETE /v1/webhooks`: endpoints that receive signed event notifications.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use postwire_proto::{CreateWebhook, CreatedWebhook, Webhook, WebhookList};
use postwire_store::sealing::Sealer;
use postwire_store::{ids, NewWebhook};

use super::json_body;
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/webhooks", post(create_webhook).get(list_webhooks)).route(
        "/v1/webhooks/{id}",
        get(get_webhook).delete(delete_webhook).patch(super::webhook_log::update_webhook),
    )
}

/// Register an endpoint. The signing secret is returned here and never again.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 422, description = "Bad or refused URL", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_webhook(
    State(gw): State<Gateway>,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    key.require("admin")?;
    let request: CreateWebhook = json_body(body)?;
    let url = url::Url::parse(request.url.trim())
        .map_err(|e| ApiError::field("url", format!("not a URL: {e}")))?;
    postwire_webhook_dispatcher::check_target(url.as_str(), gw.allow_private_targets)
        .await
        .map_err(|e| ApiError::field("url", e.to_string()))?;
    let mut events = request.events;
    events.dedup();
    let secret = ids::new_webhook_secret();
    let id = ids::new_id("wh");
    let stored = gw.sealer.seal(&Sealer::webhook_owner(&id), &secret)?;
    let webhook = gw
        .state
        .create_webhook(NewWebhook {
            id,
            url: url.to_string(),
            events,
            secret: stored,
            created_at: Utc::now(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedWebhook { webhook, secret })))
}

/// List endpoints (secrets are not shown).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = WebhookList)), security(("bearer" = [])))]
pub async fn list_webhooks(
    State(gw): State<Gateway>,
    key: ApiKey,
) -> Result<Json<WebhookList>, ApiError> {
    key.require("admin")?;
    Ok(Json(WebhookList { data: gw.state.webhooks().await? }))
}

/// One endpoint.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = Webhook), (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_webhook(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    key.require("admin")?;
    gw.webhook_log.webhook(&id).await?.map(Json).ok_or(ApiError::NotFound)
}

/// Remove an endpoint; its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn delete_webhook(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    key.require("admin")?;
    if gw.state.delete_webhook(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
