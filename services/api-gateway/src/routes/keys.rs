//! `GET/POST /v1/keys`, `DELETE /v1/keys/{id}`: API keys managed over HTTP, admin scope.
//!
//! The same operations as `postwire keys create|list|revoke`. A key's secret is returned once,
//! by the `201` that creates it; lists show everything else (never the key or its hash). A
//! revoked key fails with 401 on its next request. A key cannot revoke itself (409): that
//! would lock out a caller holding a single admin key; use another admin key or the CLI.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postwire_proto::{ApiKeyList, ApiKeyView, CreateApiKey, CreatedApiKey, FieldError};
use postwire_store::{ids, ApiKeyRecord, NewApiKey, SCOPES};

use super::json_body;
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::Gateway;

/// Longest key name accepted.
const MAX_NAME_CHARS: usize = 100;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", delete(revoke_key))
}

fn view(k: ApiKeyRecord) -> ApiKeyView {
    ApiKeyView {
        id: k.id,
        name: k.name,
        scopes: k.scopes,
        sandbox: k.sandbox,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    }
}

/// The name trimmed and the scopes deduplicated (all three when absent), or every bad field.
fn validate(request: &CreateApiKey) -> Result<(String, Vec<String>), ApiError> {
    let mut errors = Vec::new();
    let name = request.name.trim().to_string();
    if name.is_empty() {
        errors.push(FieldError { field: "name".into(), message: "is required".into() });
    } else if name.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError {
            field: "name".into(),
            message: format!("must be at most {MAX_NAME_CHARS} characters"),
        });
    } else if name.chars().any(char::is_control) {
        errors.push(FieldError {
            field: "name".into(),
            message: "must not contain control characters".into(),
        });
    }
    let scopes = match &request.scopes {
        None => SCOPES.map(String::from).to_vec(),
        Some(list) if list.is_empty() => {
            let message = format!("must hold at least one of {}", SCOPES.join(", "));
            errors.push(FieldError { field: "scopes".into(), message });
            Vec::new()
        }
        Some(list) => {
            let mut scopes: Vec<String> = Vec::new();
            for (i, scope) in list.iter().enumerate() {
                if !SCOPES.contains(&scope.as_str()) {
                    let message =
                        format!("unknown scope `{scope}`: choose from {}", SCOPES.join(", "));
                    errors.push(FieldError { field: format!("scopes[{i}]"), message });
                } else if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
            scopes
        }
    };
    if errors.is_empty() {
        Ok((name, scopes))
    } else {
        Err(ApiError::Invalid(errors))
    }
}

/// Create a key. The key is returned here and never again; only its hash is stored.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; `key` is shown only this once", body = CreatedApiKey),
        (status = 403, description = "The key lacks the `admin` scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name or unknown scope, each field named", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(gw): State<Gateway>,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    key.require("admin")?;
    let request: CreateApiKey = json_body(body)?;
    let (name, scopes) = validate(&request)?;
    let minted = ids::mint_api_key();
    // Stored at millisecond precision: answer with the same instant a later list shows.
    let now = Utc::now();
    let created_at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    gw.state
        .create_api_key(NewApiKey {
            id: minted.id.clone(),
            name: name.clone(),
            hash: minted.hash,
            scopes: scopes.clone(),
            created_at,
            sandbox: request.sandbox,
        })
        .await?;
    tracing::info!(key = %minted.id, by = %key.id, sandbox = request.sandbox, "API key created");
    let created = CreatedApiKey {
        id: minted.id,
        key: minted.key,
        name,
        scopes,
        sandbox: request.sandbox,
        created_at,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// List keys, oldest first, revoked ones included (never the keys themselves).
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, body = ApiKeyList),
        (status = 403, description = "The key lacks the `admin` scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(gw): State<Gateway>,
    key: ApiKey,
) -> Result<Json<ApiKeyList>, ApiError> {
    key.require("admin")?;
    Ok(Json(ApiKeyList { data: gw.state.list_api_keys().await?.into_iter().map(view).collect() }))
}

/// Revoke a key: it fails with 401 from its next request on. Revoking twice is not an error.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key making the request cannot revoke itself", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    key.require("admin")?;
    if id == key.id {
        return Err(ApiError::Conflict(
            "a key cannot revoke itself: use another admin key or `postwire keys revoke`".into(),
        ));
    }
    if gw.state.revoke_api_key(&id).await? {
        tracing::info!(key = %id, by = %key.id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
