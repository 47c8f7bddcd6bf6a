//! `GET /v1/messages/{id}/raw`: the RFC 5322 bytes of a message as the worker signed and sent
//! them — or, for a sandbox key's message, as it would have sent them — DKIM-Signature included.
//!
//! The worker stores each attempt's copies (see `postwire_store::copies`). Bodies differ per
//! recipient only when opens or clicks are tracked, so `?recipient=` picks whose copy; without
//! it the first recipient (in `to`, `cc`, `bcc` order) that has a copy answers. Visibility is
//! that of `GET /v1/messages/{id}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use postwire_proto::MessageView;
use postwire_store::StoreError;
use serde::Deserialize;

use super::messages::visible;
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/messages/{id}/raw", get(get_raw))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParams {
    recipient: Option<String>,
}

/// The message as sent (or, for a sandbox key, as it would have been), DKIM signature included.
#[utoipa::path(
    get, path = "/v1/messages/{id}/raw", tag = "messages",
    params(
        ("id" = String, Path, description = "Message id (`msg_…`)"),
        ("recipient" = Option<String>, Query, description = "Whose copy (bodies differ per recipient when opens or clicks are tracked); default: the first recipient with one"),
    ),
    responses(
        (status = 200, description = "The RFC 5322 message", content_type = "message/rfc822", body = String),
        (status = 404, description = "No such message, or not one this key may see", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No copy yet: the message has not been rendered for sending (its first attempt has not run, or every recipient was suppressed or canceled)", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`recipient` is not one of the message's recipients", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_raw(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
    params: Result<Query<RawParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    key.require("read")?;
    let Query(params) = params.map_err(|e| ApiError::field("(query)", e.body_text()))?;
    visible(&gw, &key, &id).await?;
    let view = gw.state.message(&id).await?.ok_or(ApiError::NotFound)?;
    let wanted: Vec<String> = match params.recipient {
        Some(r) if view.recipients.iter().any(|v| v.email.eq_ignore_ascii_case(r.trim())) => {
            vec![r.trim().to_string()]
        }
        Some(_) => {
            return Err(ApiError::field("recipient", "not a recipient of this message"));
        }
        None => view.recipients.iter().map(|r| r.email.clone()).collect(),
    };
    match gw.copies.sent_copy(&id, &wanted).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response()),
        None => Err(ApiError::Conflict(
            "no copy of this message yet: it has not been rendered for sending (its first attempt has not run, or no recipient was sent to)".into(),
        )),
    }
}

/// The copy `/raw` answers without `?recipient=`: the first recipient's that has one.
pub async fn default_copy(gw: &Gateway, view: &MessageView) -> Result<Option<Vec<u8>>, StoreError> {
    let order: Vec<String> = view.recipients.iter().map(|r| r.email.clone()).collect();
    gw.copies.sent_copy(&view.id, &order).await
}
