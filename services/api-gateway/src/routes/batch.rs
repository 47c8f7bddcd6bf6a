//! `POST /v1/messages/batch`: up to 500 messages in one request, each validated on its own.
//!
//! One bad message does not fail the rest: its result is an `errors` list, the others are
//! queued. Every accepted message is durable before the 200. They are accepted concurrently,
//! so on the embedded backend they share the writer's group commit (one fsync for the batch).
//!
//! With an `Idempotency-Key` the message ids are derived from the key, the body and the
//! position, so a batch cut off by a crash and run again stores only what the first run had
//! not: the retry answers with the same ids and no message is stored twice.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use postwire_proto::{
    BatchRequest, BatchResponse, BatchResult, FieldError, ProblemCode, SendRequest, SendResponse,
    MAX_BATCH_MESSAGES,
};
use postwire_store::{ids, IdemClaim};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::messages::Refused;
use super::{body_bytes, json_body};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::idempotency::idempotent;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/messages/batch", post(send_batch))
}

/// The batch as received: each message stays raw JSON until it is checked on its own, so a
/// message of the wrong shape is that message's error, not the whole request's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    messages: Vec<serde_json::Value>,
}

/// Queue up to 500 messages. Answers 200 with one result per message, in order, once every
/// accepted message is durably stored. Honours `Idempotency-Key` like `POST /v1/messages`.
#[utoipa::path(
    post, path = "/v1/messages/batch", tag = "messages",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~](?:[ -~]*[!-~])?$", example = "reset-ann-2026-12-04", description = "1–255 printable ASCII characters; the same key and body within 24 h answer the first response again and send once")),
    responses(
        (status = 200, description = "One result per message, in order: `{\"id\",…}` when queued, `{\"errors\":[…]}` when refused", body = BatchResponse),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid API key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body, or its first request still in progress", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive in time (`http.body_read_timeout`, `http.min_body_rate`); the connection is closed", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the size limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No messages, or more than 500", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the API key's per-second request limit, or its valid messages do not all fit in the key's daily limit (nothing is queued); `Retry-After` and `RateLimit-*` describe the refusing window. Also: the key already has its share of the gateway's in-flight slots (`Retry-After: 1` only)", body = postwire_proto::Problem, content_type = "application/problem+json",
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
pub async fn send_batch(
    State(gw): State<Gateway>,
    key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    key.require("send")?;
    let body = body_bytes(body)?;
    let key_id = key.id.clone();
    idempotent(&gw, &key_id, &headers, body, move |gw, body, claim| async move {
        accept_batch(gw, key, body, claim).await.into_response()
    })
    .await
}

async fn accept_batch(
    gw: Gateway,
    key: ApiKey,
    body: Bytes,
    claim: Option<IdemClaim>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    let body_hash: [u8; 32] = Sha256::digest(&body).into();
    let batch: RawBatch = json_body(Ok(body))?;
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH_MESSAGES {
        return Err(ApiError::field(
            "messages",
            format!("must hold 1 to {MAX_BATCH_MESSAGES} messages, not {}", batch.messages.len()),
        ));
    }
    // Validate every message first, then accept the good ones all at once.
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(batch.messages.len());
    let mut valid = Vec::new();
    let mut templates = crate::template::TemplateCache::default();
    for (i, raw) in batch.messages.into_iter().enumerate() {
        match prepare(raw, &gw, &key, &mut templates).await {
            Ok((mut message, mut response)) => {
                // With an Idempotency-Key, a run after a crash names its messages as the first
                // did, and the store skips the ones that run had already stored.
                if let Some(claim) = &claim {
                    let position = (i as u64).to_be_bytes();
                    let id = ids::derived_id(
                        "msg",
                        &[
                            claim.key_id.as_bytes(),
                            claim.idem_key.as_bytes(),
                            &body_hash,
                            &position,
                        ],
                    );
                    crate::validate::rename(&mut message, id);
                    response.id = message.id.clone();
                }
                valid.push((i, message, response));
                results.push(None);
            }
            Err((code, errors)) => results.push(Some(BatchResult::Rejected { code, errors })),
        }
    }
    // The valid messages are taken from the key's daily limit together: all fit, or 429.
    let taken = crate::ratelimit::take_messages(&gw, &key.id, valid.len()).await?;
    let pending: Vec<_> = valid
        .into_iter()
        .map(|(i, message, response)| {
            let queue = gw.queue.clone();
            (i, response, tokio::spawn(async move { queue.accept(message).await }))
        })
        .collect();
    let attempted = pending.len();
    let mut failures = Vec::new();
    for (i, response, accepted) in pending {
        match accepted.await.map_err(|e| ApiError::Internal(Box::new(e)))? {
            Ok(()) => {
                gw.metrics.messages_accepted.inc();
                let mut response = response;
                super::suppressions::mark_suppressed(&gw, &mut response).await?;
                results[i] = Some(BatchResult::Accepted(response));
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch: a message could not be queued");
                let e = ApiError::from(e);
                results[i] = Some(BatchResult::Rejected {
                    code: e.code(),
                    errors: vec![FieldError {
                        field: "(message)".into(),
                        message: "not queued: storage is unavailable; send this message again"
                            .into(),
                    }],
                });
                failures.push(e);
            }
        }
    }
    taken.give_back(&gw, failures.len()).await;
    // Nothing could be stored: the whole request failed (503) and may simply be retried.
    if attempted > 0 && failures.len() == attempted {
        return Err(failures.swap_remove(0));
    }
    let results = results.into_iter().map(|r| r.expect("every message has a result")).collect();
    Ok((StatusCode::OK, Json(BatchResponse { results })))
}

/// One message: parsed and validated into what to queue and the answer to give, or its errors
/// (paths relative to the message).
async fn prepare(
    raw: serde_json::Value,
    gw: &Gateway,
    key: &ApiKey,
    templates: &mut crate::template::TemplateCache,
) -> Result<(postwire_store::NewMessage, SendResponse), (ProblemCode, Vec<FieldError>)> {
    let request: SendRequest = serde_path_to_error::deserialize(raw).map_err(|e| {
        let field = e.path().to_string();
        let errors = vec![FieldError {
            field: if field == "." { "(message)".to_string() } else { field },
            message: e.into_inner().to_string(),
        }];
        (ApiError::Invalid(errors.clone()).code(), errors)
    })?;
    super::messages::prepare_send(gw, key, request, templates).await.map_err(
        |refused| match refused {
            Refused::Render(e) => e.into_field_errors(),
            Refused::Invalid(errors) => (ApiError::invalid_fields(errors.clone()).code(), errors),
            Refused::Store(e) => {
                tracing::warn!(error = %e, "batch: the DKIM key of a message could not be looked up");
                let errors = vec![FieldError {
                    field: "(message)".into(),
                    message: "not queued: storage is unavailable; send this message again".into(),
                }];
                (ApiError::from(e).code(), errors)
            }
        },
    )
}
