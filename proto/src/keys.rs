//! Bodies of `/v1/keys`: API keys managed over HTTP (admin scope; a key never grants more
//! than it holds, and a sandbox key manages only sandbox keys).
//!
//! The full key (`pw_key_…_<secret>`) appears once, in the `201` answer to creating it; only a
//! hash is stored, so no later answer can show it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/keys`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label for people (1 to 100 characters, not blank, no control characters).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$",
        example = "billing service"
    )]
    pub name: String,
    /// Out of `send`, `read`, `admin`, and only scopes the calling key holds itself (else 403).
    /// Absent means `send,read,admin` for a live key and `send,read` for a sandbox key, as with
    /// `postwire keys create`, minus any the calling key lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Scope>>, min_items = 1, example = json!(["send", "read"]))]
    pub scopes: Option<Vec<String>>,
    /// A sandbox key: its messages are validated and recorded as `delivered` (with
    /// `last_response` `"250 sandbox: not sent (sandbox API key)"`) but never sent — no DNS
    /// lookup, no SMTP connection. Webhook events still fire. A sandbox key can only create
    /// sandbox keys, and must send `true` here to do so (else 403).
    #[serde(default)]
    pub sandbox: bool,
}

/// What an API key may do: `send` messages, `read` them and their events, `admin` keys,
/// webhooks, domains and other keys' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Send,
    Read,
    Admin,
}

/// An API key as listed: never the key itself or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// `key_…`: the public part of the key, used to revoke it.
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub sandbox: bool,
    pub created_at: DateTime<Utc>,
    /// When the key was revoked; `null` while it is active.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `201` answer to creating a key: the only time the key is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: String,
    /// The bearer token, `pw_key_…_<secret>`. Store it now: it cannot be shown again.
    pub key: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub sandbox: bool,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/keys`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyView>,
}
