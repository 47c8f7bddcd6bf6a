//! Values passed across the storage seam.

use chrono::{DateTime, Utc};
use postwire_proto::{EventType, RecipientStatus, RecipientView, SendRequest};

/// A validated message ready to be queued.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// The send request after validation (addresses trimmed, duplicates removed).
    pub request: SendRequest,
    /// `Message-ID` header value without angle brackets, fixed at acceptance so retries
    /// carry the same one.
    pub message_id_header: String,
    /// Every envelope recipient (to, cc, bcc) with its lower-cased domain, in order.
    pub recipients: Vec<NewRecipient>,
    /// The API key that sent it.
    pub key_id: String,
    /// Sent with a sandbox key: recorded as delivered without any DNS lookup or SMTP connection.
    pub sandbox: bool,
    /// Submitted over SMTP: the client's RFC 5322 message (CRLF line endings, `Message-ID` and
    /// `Date` present, `X-Postwire-*` removed), sent as it is instead of being rendered from
    /// `request`, which then only describes it (from, to, cc, bcc, subject, tags, metadata).
    pub raw: Option<Vec<u8>>,
    /// The `Idempotency-Key` answer to store in the same atomic step as the message (see
    /// [`crate::idempotency`]); `None` for a send without the header.
    pub idempotency: Option<crate::IdemAnswer>,
    /// Whether (and with which key) it will be DKIM-signed, as decided at acceptance; shown in
    /// `GET /v1/messages/{id}`.
    pub dkim: postwire_proto::DkimStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub email: String,
    pub domain: String,
}

/// A delivery job handed to a worker: one message, one recipient domain.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Opaque job id.
    pub job_id: String,
    /// Identifies this claim; a completion under an expired claim still records outcomes
    /// but does not release a job another worker now holds.
    pub claim_token: String,
    pub message_id: String,
    pub created_at: DateTime<Utc>,
    pub request: SendRequest,
    pub message_id_header: String,
    pub domain: String,
    /// Recipients at `domain` not yet delivered, bounced or otherwise final.
    pub recipients: Vec<PendingRecipient>,
    /// The message was sent with a sandbox key: the worker must not resolve or connect.
    pub sandbox: bool,
    /// The message as submitted over SMTP, sent instead of a rendering (see [`NewMessage::raw`]).
    pub raw: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecipient {
    pub email: String,
    /// Its position among the message's envelope recipients (0 = first): what tracking links
    /// name instead of the address.
    pub position: u32,
    /// Attempts made before this claim.
    pub attempts: u32,
}

/// What happened to one recipient in one delivery attempt, as decided by the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientOutcome {
    pub email: String,
    pub result: DeliveryResult,
    /// The reply (or our own reason) to show in `last_response` and the event.
    pub response: String,
    /// The MX host that answered, when one did.
    pub mx_host: Option<String>,
    /// A hard bounce (5xx to RCPT TO): a `Bounced` result also puts the address on the
    /// suppression list (see [`crate::suppression`]). Ignored for other results.
    pub suppress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeliveryResult {
    Delivered,
    /// Try again at the given time.
    Deferred {
        next_attempt_at: DateTime<Utc>,
    },
    Bounced,
}

/// Scopes an API key may hold.
pub const SCOPES: [&str; 3] = ["send", "read", "admin"];

/// Scopes a new key gets when none are asked for: all of [`SCOPES`] for a live key; a sandbox
/// key gets no `admin`, so it cannot manage keys unless that is asked for explicitly.
pub fn default_scopes(sandbox: bool) -> impl Iterator<Item = &'static str> {
    SCOPES.into_iter().filter(move |s| !(sandbox && *s == "admin"))
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret part of the key; the key itself is never stored.
    pub hash: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Messages sent with a sandbox key are validated and recorded but never leave the host.
    pub sandbox: bool,
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub sandbox: bool,
}

#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub id: String,
    pub url: String,
    /// Empty: all event types.
    pub events: Vec<EventType>,
    /// `whsec_…` as shown to the user.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// One event to POST to one endpoint.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    /// Opaque delivery id.
    pub id: String,
    pub webhook_id: String,
    pub url: String,
    /// `whsec_…`.
    pub secret: String,
    /// The event id: sent as `webhook-id`, the same on every retry.
    pub event_id: String,
    /// The exact JSON body to send (and sign).
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// The result of one webhook delivery attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookAttempt {
    /// HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Transport error or non-2xx summary, when it failed.
    pub error: Option<String>,
    /// `Some`: retry at that time; `None` after a failure: give up. Ignored on success.
    pub retry_at: Option<DateTime<Utc>>,
    pub succeeded: bool,
    /// When the attempt was made.
    pub at: DateTime<Utc>,
    /// From sending the request to the end of the answer's head (or the failure).
    pub latency_ms: u64,
    /// The start of the answer's body, for the delivery log.
    pub response: Option<String>,
}

/// The message's overall status: the least advanced of its recipients' states.
pub(crate) fn overall_status(recipients: &[RecipientView]) -> RecipientStatus {
    let any = |s: RecipientStatus| recipients.iter().any(|r| r.status == s);
    if any(RecipientStatus::Queued) {
        RecipientStatus::Queued
    } else if any(RecipientStatus::Scheduled) {
        RecipientStatus::Scheduled
    } else if any(RecipientStatus::Deferred) {
        RecipientStatus::Deferred
    } else if any(RecipientStatus::Delivered) {
        RecipientStatus::Delivered
    } else if any(RecipientStatus::Bounced) {
        RecipientStatus::Bounced
    } else if any(RecipientStatus::Suppressed) {
        RecipientStatus::Suppressed
    } else {
        RecipientStatus::Canceled
    }
}

/// The status a recipient moves to and the event recording it, for one delivery outcome.
/// Both backends build outcome events here so their webhook payloads cannot drift apart.
pub(crate) fn outcome_event(
    job: &ClaimedJob,
    outcome: &RecipientOutcome,
    attempt: u32,
) -> (postwire_proto::RecipientStatus, postwire_proto::Event) {
    use postwire_proto::{Event, EventData, EventType, RecipientStatus};
    let (status, kind, next) = match outcome.result {
        DeliveryResult::Delivered => (RecipientStatus::Delivered, EventType::Delivered, None),
        DeliveryResult::Bounced => (RecipientStatus::Bounced, EventType::Bounced, None),
        DeliveryResult::Deferred { next_attempt_at } => {
            (RecipientStatus::Deferred, EventType::Deferred, Some(next_attempt_at))
        }
    };
    let event = Event {
        id: crate::ids::new_id("evt"),
        kind,
        timestamp: chrono::Utc::now(),
        data: EventData {
            message_id: job.message_id.clone(),
            recipient: outcome.email.clone(),
            smtp_response: Some(outcome.response.clone()),
            mx_host: outcome.mx_host.clone(),
            attempt: Some(attempt),
            next_attempt_at: next,
            url: None,
            user_agent: None,
            webhook_id: None,
            reason: None,
            sandbox: job.sandbox.then_some(true),
            tags: job.request.tags.clone(),
            metadata: job.request.metadata.clone(),
            ..EventData::default()
        },
    };
    (status, event)
}
