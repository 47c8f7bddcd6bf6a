//! Request and response bodies of the `/v1` HTTP API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Engagement, Event, EventType, RecipientStatus};

/// `POST /v1/messages`. Unknown fields are refused so typos never pass silently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// `"Name <addr@example.com>"` or a bare address.
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    /// Envelope-only recipients: never written into a header.
    #[serde(default)]
    pub bcc: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Extra headers. Names must be RFC 5322 field names; CR, LF and NUL are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Echoed in every event about this message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub track_opens: bool,
    #[serde(default)]
    pub track_clicks: bool,
    /// Deliver no earlier than this (RFC 3339, at most 7 days ahead). Until then the
    /// recipients show `scheduled` and the message can be canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// Render `subject`, `text` and `html` from this stored template with `variables`;
    /// fields given in the request itself are then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Values for the template's variables. A variable the template uses but that is missing
    /// here is a 422.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// An absolute `https:` URL (at most 2048 ASCII characters, no spaces or `<>`): adds
    /// `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// (RFC 8058), both DKIM-signed. A `mailto:` URL adds `List-Unsubscribe` alone; `http:` is
    /// refused. Not allowed together with a `List-Unsubscribe*` entry in `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_url: Option<String>,
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    /// Base64 (standard alphabet) of the file's bytes.
    pub content: String,
}

/// `202` answer to a send: the message is durably queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SendResponse {
    pub id: String,
    pub status: RecipientStatus,
    pub recipients: Vec<RecipientSummary>,
    /// Whether, and with which key, the message will be DKIM-signed.
    #[serde(default)]
    pub dkim: DkimStatus,
}

/// Whether a message is DKIM-signed, decided when it is accepted from the keys that sign its
/// From domain: a key made through `/v1/domains` (which replaces configured ones), else the
/// `[[dkim]]` keys of that domain. The worker signs by the same rule when it sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DkimStatus {
    pub signed: bool,
    /// The signing domain (`d=`, in A-label form), when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The selector (`s=`), when signed; a domain with several configured keys (RSA and
    /// Ed25519) is signed by each, and the first is named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Why not, when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipientSummary {
    pub email: String,
    pub status: RecipientStatus,
}

/// `GET /v1/messages/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    /// The least advanced recipient status: `queued` until every recipient is final.
    pub status: RecipientStatus,
    pub created_at: DateTime<Utc>,
    pub from: String,
    /// The `To` addresses, as queued (canonical form).
    #[serde(default)]
    pub to: Vec<String>,
    /// The `Cc` addresses (Bcc recipients appear only among `recipients`).
    #[serde(default)]
    pub cc: Vec<String>,
    pub subject: String,
    pub tags: Vec<String>,
    /// How the message reached Postwire: `api` (`POST /v1/messages` or a batch) or `smtp`
    /// (the submission listener).
    #[serde(default)]
    pub source: MessageSource,
    /// Whether, and with which key, it is DKIM-signed (see [`DkimStatus`]).
    #[serde(default)]
    pub dkim: DkimStatus,
    pub recipients: Vec<RecipientView>,
    /// Oldest first.
    pub events: Vec<Event>,
    /// Opens and clicks, one record per recipient (opens) or recipient and URL (clicks), in
    /// recipient order; opens before clicks, then by first seen.
    #[serde(default)]
    pub engagements: Vec<Engagement>,
}

/// How a message reached Postwire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageSource {
    /// The HTTP API.
    #[default]
    Api,
    /// SMTP submission (`[submission]` listeners): the client's own RFC 5322 text.
    Smtp,
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipientView {
    pub email: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    /// The last SMTP reply (or our reason) for this recipient.
    pub last_response: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    /// Event types to receive; empty or absent means all of them.
    #[serde(default)]
    pub events: Vec<EventType>,
}

/// A webhook endpoint as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub created_at: DateTime<Utc>,
    /// False once disabled (by `PATCH`, or after failing for `webhooks.disable_after`): no
    /// deliveries are made to it.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// When it was disabled, while it is.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disabled_at: Option<DateTime<Utc>>,
}

fn enabled() -> bool {
    true
}

/// `201` answer to creating a webhook: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify deliveries with any Standard Webhooks library.
    pub secret: String,
}

/// `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<Webhook>,
}

/// RFC 9457 problem details, with one entry per bad field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
}

/// One invalid field: a JSON pointer-like path (`to[1]`, `headers.X-Foo`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}
