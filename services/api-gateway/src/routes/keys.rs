//! `GET/POST /v1/keys`, `DELETE /v1/keys/{id}`: API keys managed over HTTP, admin scope.
//!
//! The same operations as `postwire keys create|list|revoke`. A key's secret is returned once,
//! by the `201` that creates it; lists show everything else (never the key or its hash). A
//! revoked key fails with 401 on its next request. A key cannot revoke itself (409): that
//! would lock out a caller holding a single admin key; use another admin key or the CLI.
//!
//! No key hands out more power than it holds: the scopes it grants must be a subset of its own
//! (403 naming the extra ones), and a sandbox key can only create, list and revoke sandbox keys,
//! so a leaked sandbox admin key cannot mint or revoke a live key.

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

/// Scopes a new key gets when the request names none: `send,read,admin` for a live key,
/// `send,read` for a sandbox key (as `postwire keys create`), cut down to the caller's own.
fn default_scopes(caller: &ApiKey, sandbox: bool) -> Vec<String> {
    postwire_store::default_scopes(sandbox)
        .filter(|s| caller.scopes.iter().any(|own| own == s))
        .map(String::from)
        .collect()
}

/// The name trimmed and the scopes deduplicated (the caller's default when absent), or every
/// bad field.
fn validate(caller: &ApiKey, request: &CreateApiKey) -> Result<(String, Vec<String>), ApiError> {
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
        None => {
            let scopes = default_scopes(caller, request.sandbox);
            if scopes.is_empty() {
                // An admin-only caller asking for a sandbox key: never mint a key with no scope.
                let message = "is required: this key holds none of the default scopes".into();
                errors.push(FieldError { field: "scopes".into(), message });
            }
            scopes
        }
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

/// 403 unless `caller` may create a key with these powers: every scope must be one the caller
/// holds, and a sandbox caller must ask for a sandbox key explicitly (`"sandbox": true`) — its
/// request is refused rather than silently turned into a sandbox key, so nobody believes they
/// hold a live key that never sends.
fn check_grant(caller: &ApiKey, scopes: &[String], sandbox: bool) -> Result<(), ApiError> {
    if caller.sandbox && !sandbox {
        return Err(ApiError::Denied(
            "a sandbox key can only create sandbox keys: send `\"sandbox\": true`".into(),
        ));
    }
    let extra: Vec<String> =
        scopes.iter().filter(|s| !caller.scopes.contains(s)).map(|s| format!("`{s}`")).collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Denied(format!(
            "a key cannot grant scopes it lacks: this key does not hold {}",
            extra.join(", ")
        )))
    }
}

/// Create a key. The key is returned here and never again; only its hash is stored.
///
/// The new key's scopes must be a subset of the caller's; without `scopes` it gets the
/// caller's scopes out of `send,read,admin` (live) or `send,read` (sandbox). A sandbox key
/// can only create sandbox keys and must say so with `"sandbox": true`; anything else is a 403.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; `key` is shown only this once", body = CreatedApiKey),
        (status = 403, description = "The key lacks the `admin` scope, asks for a scope it does not hold (named in `detail`), or is a sandbox key asking for a live key", body = postwire_proto::Problem, content_type = "application/problem+json"),
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
    let (name, scopes) = validate(&key, &request)?;
    check_grant(&key, &scopes, request.sandbox)?;
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
///
/// A sandbox key sees only sandbox keys.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses(
        (status = 200, description = "Every key, or only the sandbox keys when asked by a sandbox key", body = ApiKeyList),
        (status = 403, description = "The key lacks the `admin` scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(gw): State<Gateway>,
    key: ApiKey,
) -> Result<Json<ApiKeyList>, ApiError> {
    key.require("admin")?;
    let keys = gw.state.list_api_keys().await?.into_iter();
    let data = keys.filter(|k| k.sandbox || !key.sandbox).map(view).collect();
    Ok(Json(ApiKeyList { data }))
}

/// Revoke a key: it fails with 401 from its next request on. Revoking twice is not an error.
///
/// A sandbox key can revoke only sandbox keys (403 for a live one).
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "The key lacks the `admin` scope, or is a sandbox key and the target a live key", body = postwire_proto::Problem, content_type = "application/problem+json"),
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
    if key.sandbox {
        // Looked up before anything changes: a live key is refused, never revoked.
        match gw.state.api_key(&id).await? {
            None => return Err(ApiError::NotFound),
            Some(target) if !target.sandbox => {
                return Err(ApiError::Denied("a sandbox key can only revoke sandbox keys".into()));
            }
            Some(_) => {}
        }
    }
    if gw.state.revoke_api_key(&id).await? {
        tracing::info!(key = %id, by = %key.id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
