//! `POST /v1/messages` and `GET /v1/messages/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use postwire_proto::{MessageView, RecipientStatus, RecipientSummary, SendRequest, SendResponse};

use super::{body_bytes, json_body};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::idempotency::idempotent;
use crate::validate::{validate_send, TOO_LARGE_FIELD};
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/messages/{id}", get(get_message))
}

/// Queue a message for delivery. Answers 202 once the message is durably stored.
#[utoipa::path(
    post, path = "/v1/messages", tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 printable ASCII characters; the same key and body within 24 h answer the first response again and send once")),
    responses(
        (status = 202, description = "Durably queued", body = SendResponse),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body, or its first request still in progress", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the size limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each listed", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn send_message(
    State(gw): State<Gateway>,
    key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    key.require("send")?;
    let body = body_bytes(body)?;
    let key_id = key.id.clone();
    idempotent(&gw, &key_id, &headers, body, move |gw, body| async move {
        accept_message(gw, key, body).await.into_response()
    })
    .await
}

async fn accept_message(gw: Gateway, key: ApiKey, body: Bytes) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let request: SendRequest = json_body(Ok(body))?;
    let mut message = validate_send(request, &gw.limits, &key.id).map_err(|errors| {
        match errors.iter().find(|e| e.field == TOO_LARGE_FIELD) {
            Some(e) => ApiError::TooLarge(e.message.clone()),
            None => ApiError::Invalid(errors),
        }
    })?;
    message.sandbox = key.sandbox;
    let mut response = SendResponse {
        id: message.id.clone(),
        status: RecipientStatus::Queued,
        recipients: message
            .recipients
            .iter()
            .map(|r| RecipientSummary { email: r.email.clone(), status: RecipientStatus::Queued })
            .collect(),
    };
    super::suppressions::mark_suppressed(&gw, &mut response).await?;
    gw.queue.accept(message).await?;
    gw.metrics.messages_accepted.inc();
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// A message's status, each recipient's attempts and last SMTP reply, and its event history.
#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    responses(
        (status = 200, body = MessageView),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_message(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    key.require("read")?;
    gw.state.message(&id).await?.map(Json).ok_or(ApiError::NotFound)
}
