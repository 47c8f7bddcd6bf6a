//! Bearer API key authentication. Keys are looked up by their public id and the secret's
//! SHA-256 compared in constant time; a revoked key fails at once. An authenticated request
//! then counts against the key's per-second limit ([`crate::ratelimit::admit_request`]).
//! [`crate::capacity`] authenticates `/v1` requests before giving them a slot and leaves the
//! key in the request's extensions, where the extractor finds it (one lookup, one count).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use postwire_store::{ids, Visibility};

use crate::{error::ApiError, Gateway};

/// The caller's key, once authenticated.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub scopes: Vec<String>,
    /// Messages sent with this key are recorded as delivered without leaving the host.
    pub sandbox: bool,
}

impl ApiKey {
    /// The messages this key may read, search and cancel (see [`Visibility`]).
    pub fn visibility(&self) -> Visibility {
        Visibility::of_key(&self.id, self.sandbox, self.scopes.iter().any(|s| s == "admin"))
    }

    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

impl FromRequestParts<Gateway> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, ApiError> {
        if let Some(key) = parts.extensions.get::<ApiKey>() {
            return Ok(key.clone());
        }
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let key = verify_key(gw, presented).await?;
        if let Some(slot) = parts.extensions.get::<crate::KeySlot>() {
            slot.set(&key.id);
        }
        let granted = crate::ratelimit::admit_request(gw, &key.id).await?;
        parts.extensions.insert(granted);
        Ok(key)
    }
}

/// The key `presented` (`pw_…`) stands for, if it exists, is not revoked and its secret
/// matches; [`ApiError::Unauthorized`] otherwise. HTTP bearer tokens and SMTP AUTH passwords
/// both end here.
pub async fn verify_key(gw: &Gateway, presented: &str) -> Result<ApiKey, ApiError> {
    let (id, secret) = ids::split_api_key(presented).ok_or(ApiError::Unauthorized)?;
    let record = gw.state.api_key(id).await?.ok_or(ApiError::Unauthorized)?;
    if record.revoked_at.is_some() || !ids::secret_matches(secret, &record.hash) {
        return Err(ApiError::Unauthorized);
    }
    Ok(ApiKey { id: record.id, scopes: record.scopes, sandbox: record.sandbox })
}
