//! Route modules, one per resource.

pub mod batch;
pub mod domains;
pub mod keys;
pub mod messages;
pub mod ops;
pub mod raw;
pub mod search;
pub mod suppressions;
pub mod template_preview;
pub mod templates;
pub mod tracking;
pub mod webhook_log;
pub mod webhooks;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::Query;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;

/// Reads a JSON body: 413 over the size limit, 400 for broken JSON, 422 naming the field
/// for JSON of the wrong shape (unknown field, wrong type, missing field).
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("the body is not valid JSON: {inner}"))
        } else {
            ApiError::field(
                if field == "." { "(body)".to_string() } else { field },
                inner.to_string(),
            )
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("trailing data after the JSON body: {e}")))?;
    Ok(value)
}

/// The raw body: 413 over the size limit, 408 when it came too slowly
/// ([`crate::slow_body`]), 400 when it cannot be read.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if crate::slow_body::timed_out(&r) {
            ApiError::BodyTimeout
        } else if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(
                "the request body is over the size limit (limits.max_request_size)".into(),
            )
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })
}

/// Entries per page of a cursor-paginated list when `limit` is absent, and the most a page holds.
pub(crate) const DEFAULT_LIMIT: usize = 50;
pub(crate) const MAX_LIMIT: usize = 100;

/// `?cursor=&limit=` of a cursor-paginated list (suppressions, templates).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// The decoded cursor (`decode` gives `None` for one this list never handed out) and the page
/// size; 422 naming the parameter when either is bad.
pub(crate) fn page_params<C>(
    params: Result<Query<PageParams>, QueryRejection>,
    decode: impl FnOnce(&str) -> Option<C>,
) -> Result<(Option<C>, usize), ApiError> {
    let Query(params) = params.map_err(|e| ApiError::field("(query)", e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be 1 to {MAX_LIMIT}")));
    }
    let cursor = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(raw) => Some(
            decode(raw).ok_or_else(|| ApiError::field("cursor", "not a cursor from this list"))?,
        ),
        None => None,
    };
    Ok((cursor, limit))
}
