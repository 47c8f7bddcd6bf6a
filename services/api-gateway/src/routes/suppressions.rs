//! `GET/POST /v1/suppressions` and `GET/DELETE /v1/suppressions/{email}`: the addresses
//! Postwire will not send to. Hard bounces (5xx to RCPT TO) are added by the store when the
//! worker records them; these routes list, add and remove entries. One list per installation.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use postwire_proto::{
    CreateSuppression, RecipientStatus, SendResponse, Suppression, SuppressionList,
    SuppressionReason,
};
use postwire_store::{NewSuppression, SuppressionCursor};

use super::{json_body, page_params, PageParams};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::validate::EmailAddress;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/suppressions", get(list_suppressions).post(create_suppression))
        .route("/v1/suppressions/{email}", get(get_suppression).delete(delete_suppression))
}

/// Marks the recipients of a send's 202 that are on the list, as the store will record them
/// (it screens again, atomically, when it accepts the message). Call before accepting.
pub(crate) async fn mark_suppressed(
    gw: &Gateway,
    response: &mut SendResponse,
) -> Result<(), ApiError> {
    let emails: Vec<String> = response.recipients.iter().map(|r| r.email.clone()).collect();
    let listed = gw.suppressions.suppressed_among(&emails).await?;
    if listed.is_empty() {
        return Ok(());
    }
    for r in &mut response.recipients {
        if listed.contains(&r.email) {
            r.status = RecipientStatus::Suppressed;
        }
    }
    if response.recipients.iter().all(|r| r.status == RecipientStatus::Suppressed) {
        response.status = RecipientStatus::Suppressed;
    }
    Ok(())
}

fn address(raw: &str) -> Result<EmailAddress, ApiError> {
    EmailAddress::parse(raw).map_err(|e| ApiError::field("email", e))
}

/// The suppression list, newest first.
#[utoipa::path(
    get, path = "/v1/suppressions", tag = "suppressions",
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "Entries per page, 1–100 (default 50)"),
    ),
    responses(
        (status = 200, body = SuppressionList),
        (status = 422, description = "Bad cursor or limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_suppressions(
    State(gw): State<Gateway>,
    key: ApiKey,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<SuppressionList>, ApiError> {
    key.require("read")?;
    let (cursor, limit) = page_params(params, SuppressionCursor::decode)?;
    let page = gw.suppressions.list_suppressions(cursor.as_ref(), limit).await?;
    Ok(Json(SuppressionList { data: page.data, next_cursor: page.next.map(|c| c.encode()) }))
}

/// Add an address by hand (`reason` defaults to `manual`). 201 when added; 200 with the
/// existing entry when the address was already listed.
#[utoipa::path(
    post, path = "/v1/suppressions", tag = "suppressions",
    request_body = CreateSuppression,
    responses(
        (status = 201, description = "Added", body = Suppression),
        (status = 200, description = "Already listed: the existing entry", body = Suppression),
        (status = 422, description = "Invalid address", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_suppression(
    State(gw): State<Gateway>,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    key.require("admin")?;
    let request: CreateSuppression = json_body(body)?;
    let email = address(&request.email)?;
    let (entry, added) = gw
        .suppressions
        .add_suppression(NewSuppression {
            email: email.as_str().to_string(),
            reason: request.reason.unwrap_or(SuppressionReason::Manual),
            smtp_response: None,
            message_id: None,
            created_at: Utc::now(),
        })
        .await?;
    Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(entry)))
}

/// One entry.
#[utoipa::path(
    get, path = "/v1/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "The address (any case; `@` may be written `%40`)")),
    responses(
        (status = 200, body = Suppression),
        (status = 404, description = "Not listed", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an email address", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_suppression(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(email): Path<String>,
) -> Result<Json<Suppression>, ApiError> {
    key.require("read")?;
    let email = address(&email)?;
    gw.suppressions.suppression(email.as_str()).await?.map(Json).ok_or(ApiError::NotFound)
}

/// Remove an address: later sends to it are attempted again.
#[utoipa::path(
    delete, path = "/v1/suppressions/{email}", tag = "suppressions",
    params(("email" = String, Path, description = "The address (any case; `@` may be written `%40`)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "Not listed", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an email address", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_suppression(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    key.require("admin")?;
    let email = address(&email)?;
    if gw.suppressions.remove_suppression(email.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
