//! Message search and cancel ([`Messages`]), and the scheduling rules both backends share.
//!
//! **Scheduling.** A message whose request carries a future `send_at` is accepted like any
//! other, except that its recipients are stored `scheduled` with `next_attempt_at = send_at`
//! and its delivery jobs are not claimable before then (the embedded job's `not_before`; the
//! distributed job waits in the retry ladder and is re-parked if it arrives early). Once
//! `send_at` has passed, a recipient still stored `scheduled` is *shown* `queued` (see
//! [`shown_status`]): it is waiting for a worker like any queued recipient. The API gateway
//! refuses `send_at` more than 7 days ahead and drops one that is not in the future.
//!
//! **Cancel.** Every recipient still `queued`, `scheduled` or `deferred` whose job is not
//! claimed by a worker right now becomes `canceled` (final) and its job is dropped; each one
//! gets a `message.canceled` event ([`canceled_event`]), written with the status change and
//! queued for the endpoints subscribed to it (the outbox). A worker never runs a canceled
//! recipient: claims load only pending recipients, completions ignore final ones, and a job
//! left with none pending is discarded.
//!
//! **Search.** Newest first by creation time (ties broken by id, descending), filters
//! combined with AND, paged by an opaque [`MessageCursor`] (keyset: the creation time and id of
//! the last message looked at), so inserts made while a client pages never shift a page. The
//! `status` filter matches a message when *any* of its recipients shows that status.
//!
//! **Visibility.** Which messages an API key may read, search or cancel is decided once, by
//! [`Visibility::allows`]: a sandbox key never sees a live message; a key with the `admin`
//! scope sees every other message; any other key sees only the messages it sent.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use postwire_proto::{
    Event, EventData, EventType, MessageSummary, RecipientStatus, RecipientSummary, RecipientView,
    SendRequest,
};

use crate::StoreError;

/// The furthest ahead `send_at` may be.
pub const MAX_SCHEDULE_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// A message's stored DKIM status (JSON), or the one shown for a message stored before the
/// status was recorded.
pub(crate) fn stored_dkim(json: Option<&str>) -> Result<postwire_proto::DkimStatus, StoreError> {
    match json {
        Some(json) => serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string())),
        None => Ok(postwire_proto::DkimStatus {
            reason: Some("not recorded: the message was accepted by an older version".into()),
            ..Default::default()
        }),
    }
}

/// Who sent a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOwner {
    /// The API key that sent it.
    pub key_id: String,
    /// Sent with a sandbox key.
    pub sandbox: bool,
}

/// Which messages a caller may see (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Every message: a live key with the `admin` scope (and internal callers).
    #[default]
    All,
    /// Sandbox messages only: a sandbox key with the `admin` scope.
    Sandbox,
    /// Only the messages this key sent.
    SentBy(String),
}

impl Visibility {
    /// What a key may see: `key_id`, whether it is a sandbox key, whether it holds `admin`.
    pub fn of_key(key_id: &str, sandbox: bool, admin: bool) -> Self {
        match (admin, sandbox) {
            (true, false) => Self::All,
            (true, true) => Self::Sandbox,
            // A key's own messages carry its own sandbox flag: no mode check needed.
            (false, _) => Self::SentBy(key_id.to_string()),
        }
    }

    /// Whether a message sent by `owner` is visible.
    pub fn allows(&self, owner: &MessageOwner) -> bool {
        match self {
            Self::All => true,
            Self::Sandbox => owner.sandbox,
            Self::SentBy(key) => *key == owner.key_id,
        }
    }
}

/// What to look for; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageQuery {
    /// Only messages this caller may see.
    pub visibility: Visibility,
    /// At least one recipient shows this status.
    pub status: Option<RecipientStatus>,
    /// One of the envelope recipients is this address (local part exact, domain any case).
    pub recipient: Option<String>,
    /// The message carries this tag (exact).
    pub tag: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created strictly before.
    pub until: Option<DateTime<Utc>>,
}

impl MessageQuery {
    /// The recipient filter in compared form (see [`normalize_address`]).
    pub fn recipient_normalized(&self) -> Option<String> {
        self.recipient.as_deref().map(normalize_address)
    }

    /// Whether a message with these properties matches (used where filtering happens in Rust).
    /// `recipients` are (stored email, shown status) pairs.
    pub fn matches(
        &self,
        created_at_ms: i64,
        tags: &[String],
        recipients: &[(String, RecipientStatus)],
    ) -> bool {
        if self.since.is_some_and(|s| created_at_ms < s.timestamp_millis()) {
            return false;
        }
        if self.until.is_some_and(|u| created_at_ms >= u.timestamp_millis()) {
            return false;
        }
        if self.tag.as_ref().is_some_and(|t| !tags.contains(t)) {
            return false;
        }
        if let Some(wanted) = self.recipient_normalized() {
            if !recipients.iter().any(|(email, _)| normalize_address(email) == wanted) {
                return false;
            }
        }
        if let Some(status) = self.status {
            if !recipients.iter().any(|(_, s)| *s == status) {
                return false;
            }
        }
        true
    }
}

/// `local@domain` with the domain as its lower-cased A-label: the form search compares, so an
/// IDN recipient is found by either spelling of its domain.
pub fn normalize_address(email: &str) -> String {
    postwire_address::envelope(email)
}

/// Where a page of search results starts: just after (older than) this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageCursor {
    /// Unix milliseconds of the message's creation.
    pub created_at_ms: i64,
    pub id: String,
}

impl MessageCursor {
    /// The opaque form handed to API clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_ms, self.id))
    }

    /// Reads [`MessageCursor::encode`]'s output; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (ms, id) = text.split_once(':')?;
        if id.is_empty() || id.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            created_at_ms: ms.parse().ok().filter(|ms: &i64| *ms >= 0)?,
            id: id.to_string(),
        })
    }
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    pub data: Vec<MessageSummary>,
    /// Present when older messages remain to be looked at. A page may be short (even empty)
    /// and still have one: the distributed backend bounds the work done per page.
    pub next: Option<MessageCursor>,
}

/// The result of [`Messages::cancel_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// This many recipients became `canceled`.
    Canceled(u32),
    /// No such message.
    NotFound,
    /// Nothing was left to cancel. `in_flight`: some recipients are pending but their job is
    /// claimed by a worker right now (a delivery may be under way); otherwise every recipient
    /// was already final.
    NothingToCancel { in_flight: bool },
}

/// The `message.canceled` event of one recipient of the message `message_id` sent with
/// `request` (its tags and metadata are echoed); both backends store exactly this.
pub fn canceled_event(message_id: &str, request: &SendRequest, email: &str) -> Event {
    Event {
        id: crate::ids::new_id("evt"),
        kind: EventType::Canceled,
        timestamp: Utc::now(),
        data: EventData {
            message_id: message_id.to_string(),
            recipient: email.to_string(),
            tags: request.tags.clone(),
            metadata: request.metadata.clone(),
            ..EventData::default()
        },
    }
}

/// Searching and canceling stored messages.
#[async_trait]
pub trait Messages: Send + Sync + 'static {
    /// Up to `limit` messages matching `query`, newest first, older than `after`.
    async fn search_messages(
        &self,
        query: &MessageQuery,
        after: Option<&MessageCursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError>;

    /// Cancels every recipient still `queued`, `scheduled` or `deferred` whose job is not in
    /// flight (see the module docs).
    async fn cancel_message(&self, id: &str) -> Result<Cancel, StoreError>;
}

/// The status shown for a recipient: `scheduled` turns `queued` once its time has come (it is
/// then waiting for a worker like any queued recipient); everything else as stored.
pub fn shown_status(
    stored: RecipientStatus,
    next_attempt_at_ms: Option<i64>,
    now_ms: i64,
) -> RecipientStatus {
    match (stored, next_attempt_at_ms) {
        (RecipientStatus::Scheduled, Some(at)) if at <= now_ms => RecipientStatus::Queued,
        (RecipientStatus::Scheduled, None) => RecipientStatus::Queued,
        (status, _) => status,
    }
}

/// When the message may first be delivered: `send_at` if it lies after `created_at_ms`.
pub(crate) fn scheduled_for(request: &SendRequest, created_at_ms: i64) -> Option<i64> {
    request.send_at.map(|at| at.timestamp_millis()).filter(|&at| at > created_at_ms)
}

/// A search result from its parts; `recipients` are (email, shown status) in request order.
pub(crate) fn summary(
    id: String,
    created_at_ms: i64,
    from: String,
    subject: String,
    tags: Vec<String>,
    recipients: Vec<(String, RecipientStatus)>,
) -> MessageSummary {
    let views: Vec<RecipientView> = recipients
        .iter()
        .map(|(email, status)| RecipientView {
            email: email.clone(),
            status: *status,
            attempts: 0,
            last_response: None,
            next_attempt_at: None,
        })
        .collect();
    MessageSummary {
        id,
        status: crate::model::overall_status(&views),
        created_at: crate::time::from_ms(created_at_ms),
        from,
        subject,
        tags,
        recipients: recipients
            .into_iter()
            .map(|(email, status)| RecipientSummary { email, status })
            .collect(),
    }
}

#[cfg(test)]
#[path = "messages_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_encoding_and_garbage_is_refused() {
        let c = MessageCursor { created_at_ms: 1_764_000_000_123, id: "msg_abc".into() };
        assert_eq!(MessageCursor::decode(&c.encode()), Some(c));
        assert_eq!(MessageCursor::decode("not a cursor!"), None);
        assert_eq!(MessageCursor::decode(&URL_SAFE_NO_PAD.encode("12:")), None);
        assert_eq!(MessageCursor::decode(&URL_SAFE_NO_PAD.encode("x:msg_a")), None);
        assert_eq!(MessageCursor::decode(&URL_SAFE_NO_PAD.encode("-5:msg_a")), None);
    }

    #[test]
    fn a_scheduled_recipient_shows_queued_once_its_time_has_come() {
        assert_eq!(
            shown_status(RecipientStatus::Scheduled, Some(2_000), 1_999),
            RecipientStatus::Scheduled
        );
        assert_eq!(
            shown_status(RecipientStatus::Scheduled, Some(2_000), 2_000),
            RecipientStatus::Queued
        );
        assert_eq!(
            shown_status(RecipientStatus::Deferred, Some(2_000), 9_000),
            RecipientStatus::Deferred
        );
    }

    #[test]
    fn filters_combine_with_and_and_the_recipient_domain_ignores_case() {
        let q = MessageQuery {
            visibility: Visibility::All,
            status: Some(RecipientStatus::Delivered),
            recipient: Some("Ann@Example.ORG".into()),
            tag: Some("welcome".into()),
            since: Some(crate::time::from_ms(1_000)),
            until: Some(crate::time::from_ms(2_000)),
        };
        let tags = vec!["welcome".to_string()];
        let rcpts = vec![
            ("Ann@example.org".to_string(), RecipientStatus::Delivered),
            ("bob@example.org".to_string(), RecipientStatus::Queued),
        ];
        assert!(q.matches(1_000, &tags, &rcpts));
        assert!(!q.matches(2_000, &tags, &rcpts), "until is exclusive");
        assert!(!q.matches(999, &tags, &rcpts));
        assert!(!q.matches(1_500, &[], &rcpts));
        let lower_local =
            MessageQuery { recipient: Some("ann@example.org".into()), ..MessageQuery::default() };
        assert!(!lower_local.matches(1_500, &tags, &rcpts), "the local part is compared exactly");
        let bounced =
            MessageQuery { status: Some(RecipientStatus::Bounced), ..MessageQuery::default() };
        assert!(!bounced.matches(1_500, &tags, &rcpts));
    }
}
