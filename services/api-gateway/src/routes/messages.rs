//! `POST /v1/messages`, `GET /v1/messages/{id}` and `DELETE /v1/messages/{id}` (cancel).
//! Search (`GET /v1/messages`) is in [`super::search`].
//!
//! Reading and canceling are limited to the messages the key may see ([`ApiKey::visibility`]:
//! its own, or with `admin` every one — a sandbox key's world only ever holds sandbox
//! messages); any other message is a 404, as if it did not exist.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use postwire_proto::{
    FieldError, MessageView, RecipientStatus, RecipientSummary, SendRequest, SendResponse,
};
use postwire_store::{Cancel, IdemClaim, NewMessage};

use super::{body_bytes, json_body};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::idempotency::{answer_with, idempotent};
use crate::template::{render_send, RenderError, TemplateCache};
use crate::validate::{validate_send, Mailbox};
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/messages/{id}", get(get_message).delete(cancel_message))
}

/// Queue a message for delivery. Answers 202 once the message is durably stored.
#[utoipa::path(
    post, path = "/v1/messages", tag = "messages",
    request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~](?:[ -~]*[!-~])?$", example = "reset-ann-2026-12-04", description = "1–255 printable ASCII characters; the same key and body within 24 h answer the first response again and send once")),
    responses(
        (status = 202, description = "Durably queued", body = SendResponse),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body, or its first request still in progress", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time (`http.body_read_timeout`, `http.min_body_rate`); the connection is closed", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the size limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each listed", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the API key's per-second request limit or daily message limit; `Retry-After` and `RateLimit-*` describe the refusing window. Also: the key already has its share of the gateway's in-flight slots (`Retry-After: 1` only)", body = postwire_proto::Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds until the refusing window resets"),
                ("RateLimit-Limit" = u64, description = "The refusing window's limit"),
                ("RateLimit-Remaining" = u64, description = "What is left in that window"),
                ("RateLimit-Reset" = u64, description = "Seconds until that window resets"),
                ("RateLimit-Policy" = String, description = "`{limit};w=1` (requests per second) or `{limit};w=86400` (messages per UTC day)"),
            )),
        (status = 503, description = "The gateway is at capacity (`limits.max_in_flight` busy and `limits.max_waiting` waiting) or a backend is unreachable; nothing was queued", body = postwire_proto::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
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
    idempotent(&gw, &key_id, &headers, body, move |gw, body, claim| async move {
        accept_message(gw, key, body, claim).await.into_response()
    })
    .await
}

async fn accept_message(
    gw: Gateway,
    key: ApiKey,
    body: Bytes,
    claim: Option<IdemClaim>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let request: SendRequest = json_body(Ok(body))?;
    let mut templates = TemplateCache::default();
    let (mut message, mut response) = prepare_send(&gw, &key, request, &mut templates).await?;
    super::suppressions::mark_suppressed(&gw, &mut response).await?;
    answer_with(claim.as_ref(), &mut message, StatusCode::ACCEPTED, &response)?;
    queue_one(&gw, &key.id, message).await?;
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// Takes one message from the key's day and stores it durably, giving the message back to the
/// day when it could not be stored: the last step of every single send, over HTTP or SMTP.
pub(crate) async fn queue_one(
    gw: &Gateway,
    key_id: &str,
    message: NewMessage,
) -> Result<(), ApiError> {
    let taken = crate::ratelimit::take_messages(gw, key_id, 1).await?;
    if let Err(e) = gw.queue.accept(message).await {
        taken.give_back(gw, 1).await;
        return Err(e.into());
    }
    gw.metrics.messages_accepted.inc();
    Ok(())
}

/// A message's status, each recipient's attempts and last SMTP reply, and its event history.
#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    responses(
        (status = 200, body = MessageView),
        (status = 404, description = "No such message, or not one this key may see (another key's, unless it has `admin`; a live one, for a sandbox key)", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_message(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    key.require("read")?;
    visible(&gw, &key, &id).await?;
    gw.state.message(&id).await?.map(Json).ok_or(ApiError::NotFound)
}

/// 404 unless message `id` exists and `key` may see it: another key's message is not
/// revealed to exist.
pub(crate) async fn visible(gw: &Gateway, key: &ApiKey, id: &str) -> Result<(), ApiError> {
    match gw.state.message_owner(id).await? {
        Some(owner) if key.visibility().allows(&owner) => Ok(()),
        _ => Err(ApiError::NotFound),
    }
}

/// Why a send was refused before anything was queued.
pub(crate) enum Refused {
    /// Its template could not be rendered (unknown, missing variable, too large, store down).
    Render(RenderError),
    /// Invalid fields, each listed (`TOO_LARGE_FIELD` when over `limits.max_message_size`).
    Invalid(Vec<FieldError>),
    /// The store could not say which key signs its From domain.
    Store(postwire_store::StoreError),
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Render(e) => e.into(),
            Refused::Invalid(errors) => ApiError::invalid_fields(errors),
            Refused::Store(e) => e.into(),
        }
    }
}

/// Records whether `message` will be DKIM-signed (see `postwire_domain_auth::dkim_status`) and,
/// with `signing.require_dkim`, refuses it when it would not be: the last check of every send,
/// over HTTP or SMTP.
pub(crate) async fn decide_dkim(
    gw: &Gateway,
    message: &mut NewMessage,
    from: &Mailbox,
) -> Result<(), Refused> {
    let status =
        gw.signing_keys.status(from.address.ascii_domain()).await.map_err(Refused::Store)?;
    if gw.require_dkim && !status.signed {
        let why = status.reason.unwrap_or_default();
        return Err(Refused::Invalid(vec![FieldError {
            field: "from".into(),
            message: format!(
                "would not be DKIM-signed ({why}), and signing.require_dkim refuses unsigned mail"
            ),
        }]));
    }
    message.dkim = status;
    Ok(())
}

/// What every send goes through before it is queued, alone or as a batch item: its template
/// rendered, the result validated into the message to store, and the 202 body to answer.
pub(crate) async fn prepare_send(
    gw: &Gateway,
    key: &ApiKey,
    request: SendRequest,
    templates: &mut TemplateCache,
) -> Result<(NewMessage, SendResponse), Refused> {
    let max_size = gw.limits.max_message_size.0;
    let request = render_send(gw.templates.as_ref(), &gw.renderer, templates, request, max_size)
        .await
        .map_err(Refused::Render)?;
    let (mut message, from) =
        validate_send(request, &gw.limits, &key.id).map_err(Refused::Invalid)?;
    message.sandbox = key.sandbox;
    decide_dkim(gw, &mut message, &from).await?;
    let response = accepted_response(&message);
    Ok((message, response))
}

/// The 202 body for a validated message before suppression screening: every recipient
/// `scheduled` when it has a future `send_at`, else `queued`.
pub(crate) fn accepted_response(message: &NewMessage) -> SendResponse {
    let status = if message.request.send_at.is_some() {
        RecipientStatus::Scheduled
    } else {
        RecipientStatus::Queued
    };
    SendResponse {
        id: message.id.clone(),
        status,
        recipients: message
            .recipients
            .iter()
            .map(|r| RecipientSummary { email: r.email.clone(), status })
            .collect(),
        dkim: message.dkim.clone(),
    }
}

/// Cancel a message: every recipient still `queued`, `scheduled` or `deferred` becomes
/// `canceled` (final) and is never sent. Recipients whose delivery attempt is under way right
/// now are left to finish. Answers with the message as it now stands.
#[utoipa::path(
    delete, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Message id (`msg_…`)")),
    responses(
        (status = 200, description = "Canceled what could be; the message view", body = MessageView),
        (status = 404, description = "No such message, or not one this key may see", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nothing to cancel: every recipient is final, or a delivery attempt is under way", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_message(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    key.require("send")?;
    visible(&gw, &key, &id).await?;
    match gw.messages.cancel_message(&id).await? {
        Cancel::NotFound => Err(ApiError::NotFound),
        Cancel::NothingToCancel { in_flight: true } => Err(ApiError::Conflict(
            "a delivery attempt for this message is under way; nothing was canceled (try again once it is done)".into(),
            )),
        Cancel::NothingToCancel { in_flight: false } => Err(ApiError::Conflict(
            "every recipient is already delivered, bounced, suppressed or canceled; nothing to cancel".into(),
            )),
        Cancel::Canceled(_) => gw.state.message(&id).await?.map(Json).ok_or(ApiError::NotFound),
    }
}
