//! Request and response bodies of the `/v1` HTTP API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Engagement, Event, EventType, RecipientStatus};

/// `POST /v1/messages`. Unknown fields are refused so typos never pass silently.
///
/// Beyond this schema the gateway checks (422, each field named): every address parses
/// (RFC 5321 local part of at most 64 octets, a domain with a dot, IDN by UTS #46); at least
/// one recipient; `text` or `html` (or a `template_id`); reserved header names; `metadata` at
/// most `limits.max_metadata_size` (8 KB) as JSON; `send_at` at most 7 days ahead. Over
/// `limits.max_message_size` once rendered is a 413.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "from": "Acme <noreply@example.com>",
    "to": ["Ann Lee <ann@example.org>"],
    "subject": "Your password reset",
    "text": "Hello Ann,\n\nfollow this link to choose a new password: https://example.com/reset/8f2a\n",
    "html": "<p>Hello Ann,</p><p><a href=\"https://example.com/reset/8f2a\">Choose a new password</a></p>",
    "tags": ["password-reset"],
    "metadata": {"user_id": "42"},
    "track_clicks": true
}))]
pub struct SendRequest {
    /// `"Name <addr@example.com>"` or a bare address.
    #[schema(
        min_length = 3,
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F\u2028\u2029]*$",
        example = "Acme <noreply@example.com>"
    )]
    pub from: String,
    /// One address (`"ann@example.com"`, `"Ann <ann@example.com>"`) or a list of them.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schema(schema_with = crate::schema::mailboxes)]
    pub to: Vec<String>,
    /// One address or a list, as `to`.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schema(schema_with = crate::schema::mailboxes)]
    pub cc: Vec<String>,
    /// Envelope-only recipients, one address or a list: never written into a header.
    #[serde(default, deserialize_with = "one_or_many")]
    #[schema(schema_with = crate::schema::mailboxes)]
    pub bcc: Vec<String>,
    /// One mailbox, as `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 3,
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F\u2028\u2029]*$",
        example = "Support <help@example.com>"
    )]
    pub reply_to: Option<String>,
    /// No control character but tab (required unless a `template_id` gives it; may be empty).
    #[serde(default)]
    #[schema(
        pattern = r"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F\u2028\u2029]*$",
        example = "Your password reset"
    )]
    pub subject: String,
    /// The plain-text body; a message needs `text`, `html` or both (non-empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "Hello Ann,\n\nfollow this link to choose a new password: https://example.com/reset/8f2a\n"
    )]
    pub text: Option<String>,
    /// The HTML body; links are rewritten for click tracking when `track_clicks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "<p>Hello Ann,</p><p><a href=\"https://example.com/reset/8f2a\">Choose a new password</a></p>"
    )]
    pub html: Option<String>,
    /// At most `limits.max_attachments` (default 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 20)]
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = crate::schema::headers)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = crate::schema::tags)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = crate::schema::metadata)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub track_opens: bool,
    #[serde(default)]
    pub track_clicks: bool,
    /// Deliver no earlier than this (RFC 3339, at most 7 days ahead). Until then the
    /// recipients show `scheduled` and the message can be canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "2026-12-05T08:00:00Z")]
    pub send_at: Option<DateTime<Utc>>,
    /// Render `subject`, `text` and `html` from this stored template (its id, `tpl_…`, or
    /// its alias) with `variables`; fields given in the request itself are then not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = crate::schema::variables)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// An absolute `https:` URL (at most 2048 ASCII characters, no spaces or `<>`): adds
    /// `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
    /// (RFC 8058), both DKIM-signed. A `mailto:` URL adds `List-Unsubscribe` alone; `http:` is
    /// refused. Not allowed together with a `List-Unsubscribe*` entry in `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 2048,
        pattern = r"^(?:[Hh][Tt][Tt][Pp][Ss]|[Mm][Aa][Ii][Ll][Tt][Oo]):[!-;=?-~]+$",
        example = "https://example.com/unsubscribe?t=8f2a"
    )]
    pub unsubscribe_url: Option<String>,
}

/// Reads `to`, `cc` or `bcc` (one address string, or a list of them) into a `Vec`, naming both
/// accepted forms when neither fits.
fn one_or_many<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an address string or a list of address strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(one) = seq.next_element::<String>()? {
                out.push(one);
            }
            Ok(out)
        }
    }
    de.deserialize_any(Visit)
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Not blank; no `"` and no control character but tab.
    #[schema(
        min_length = 1,
        pattern = r#"^[^\u0000-\u0008\u000A-\u001F\u007F-\u009F\u2028\u2029"]*[^\s"\u0000-\u001F\u007F-\u009F\u2028\u2029][^\u0000-\u0008\u000A-\u001F\u007F-\u009F\u2028\u2029"]*$"#,
        example = "invoice-2026-12.pdf"
    )]
    pub filename: String,
    /// A MIME type `type/subtype`. Absent or empty: guessed from `filename`'s extension,
    /// `application/octet-stream` when it has no known one.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)?$",
        example = "application/pdf"
    )]
    pub content_type: String,
    /// Base64 (standard alphabet, padded, canonical: no stray bits in the last character) of
    /// the file's bytes.
    #[schema(format = Byte, pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$", example = "JVBERi0xLjQK")]
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
    #[schema(required = true)]
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
    #[schema(required = true)]
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
#[schema(example = json!({"url": "https://app.example.com/hooks/postwire", "events": ["message.delivered", "message.bounced"]}))]
pub struct CreateWebhook {
    /// An absolute `http:` or `https:` URL. Its host must resolve to public addresses unless
    /// `webhooks.allow_private_targets` (else 422).
    #[schema(format = "uri", example = "https://app.example.com/hooks/postwire")]
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
    /// What kind of error this is, for programs to branch on; stable across releases, unlike
    /// `title` and `detail`.
    pub code: ProblemCode,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
}

/// The machine-readable kind of a [`Problem`]: one per kind of error the API gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// 401: no `Authorization: Bearer` key, or an unknown or revoked one.
    Unauthorized,
    /// 403: the key lacks the route's scope.
    Forbidden,
    /// 403: refused for another reason (e.g. a key granting more than it holds).
    Denied,
    /// 404: no such resource, or not one this key may see.
    NotFound,
    /// 404: no route has this path.
    RouteNotFound,
    /// 405: the path exists, the method does not (see `Allow`).
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's current state.
    Conflict,
    /// 409: the `Idempotency-Key` was used with another body, or its first request is still
    /// running.
    IdempotencyConflict,
    /// 400: the body is not JSON, or a header is malformed.
    InvalidRequest,
    /// 422: one or more fields are invalid; see `errors`.
    ValidationFailed,
    /// 413: over `limits.max_request_size` or `limits.max_message_size`.
    PayloadTooLarge,
    /// 408: the body did not arrive in time.
    BodyTimeout,
    /// 429: over the key's per-second or per-day limit (`Retry-After`, `RateLimit-*`).
    RateLimited,
    /// 429: the key already has its share of the gateway's in-flight slots.
    ConcurrencyLimited,
    /// 503: every slot busy and the waiting room full.
    OverCapacity,
    /// 503: a backend is unreachable; nothing was changed.
    Unavailable,
    /// 500: a bug or a corrupt store; the cause is logged, not returned.
    Internal,
}

/// One invalid field: a JSON pointer-like path (`to[1]`, `headers.X-Foo`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}
