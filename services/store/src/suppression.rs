//! The suppression list: addresses Postwire no longer sends to.
//!
//! One list per installation (there are no accounts yet). An address joins it when its MX host
//! refuses it with a 5xx reply to RCPT TO (the worker sets [`RecipientOutcome::suppress`]; the
//! backend adds the entry in the same transaction or script that records the bounce), or through
//! the API. At acceptance, each backend screens the recipients against the list while it writes
//! the message: a listed recipient is stored `suppressed` with a `message.suppressed` event
//! (fanned out to webhooks like any other) and gets no delivery job.
//!
//! Addresses are compared in one form, [`key`]: the domain as its A-label (so an IDN address
//! matches in either spelling), the whole lower-cased; entries are stored and listed in it. Listing is newest first, paged by
//! [`SuppressionCursor`] (created time, then address, both descending).
//!
//! [`RecipientOutcome::suppress`]: crate::RecipientOutcome::suppress

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use postwire_proto::{Event, EventData, EventType, Suppression, SuppressionReason};

use crate::{ids, NewMessage, StoreError};

/// Where a page of the list starts: just after the entry with this time and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionCursor {
    /// Unix milliseconds of the last entry on the previous page.
    pub created_at_ms: i64,
    /// Its (lower-cased) address.
    pub email: String,
}

impl SuppressionCursor {
    /// The cursor after `entry`.
    pub fn after(entry: &Suppression) -> Self {
        Self { created_at_ms: entry.created_at.timestamp_millis(), email: entry.email.clone() }
    }

    /// The opaque form handed to API clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_ms, self.email))
    }

    /// Reads [`SuppressionCursor::encode`]'s output; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (ms, email) = text.split_once(':')?;
        if email.is_empty() {
            return None;
        }
        Some(Self { created_at_ms: ms.parse().ok()?, email: email.to_string() })
    }
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct SuppressionPage {
    pub data: Vec<Suppression>,
    /// Present when more entries follow.
    pub next: Option<SuppressionCursor>,
}

/// A new entry for [`Suppressions::add_suppression`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewSuppression {
    /// Stored in its [`key`] form.
    pub email: String,
    pub reason: SuppressionReason,
    pub smtp_response: Option<String>,
    pub message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl NewSuppression {
    /// The entry as it is stored: the address in its [`key`] form, the time at millisecond precision.
    pub fn into_entry(self) -> Suppression {
        Suppression {
            email: key(&self.email),
            reason: self.reason,
            smtp_response: self.smtp_response,
            message_id: self.message_id,
            created_at: crate::time::from_ms(self.created_at.timestamp_millis()),
        }
    }
}

/// The form the list stores and compares an address in: `Ann@Bücher.test` and
/// `ann@xn--bcher-kva.test` are both `ann@xn--bcher-kva.test`.
pub fn key(email: &str) -> String {
    postwire_address::comparable(email)
}

/// The text recorded as a suppressed recipient's `last_response` and its event's
/// `smtp_response`.
pub fn suppressed_response(entry: &Suppression) -> String {
    match &entry.smtp_response {
        Some(reply) => format!("suppressed: {} ({reply})", entry.reason.as_str()),
        None => format!("suppressed: {}", entry.reason.as_str()),
    }
}

/// The `message.suppressed` event for one recipient; the distributed backend sends the same.
pub(crate) fn suppressed_event(message: &NewMessage, email: &str, response: String) -> Event {
    Event {
        id: ids::new_id("evt"),
        kind: EventType::Suppressed,
        timestamp: Utc::now(),
        data: EventData {
            message_id: message.id.clone(),
            recipient: email.to_string(),
            smtp_response: Some(response),
            mx_host: None,
            attempt: None,
            next_attempt_at: None,
            url: None,
            user_agent: None,
            webhook_id: None,
            reason: None,
            sandbox: message.sandbox.then_some(true),
            tags: message.request.tags.clone(),
            metadata: message.request.metadata.clone(),
            ..EventData::default()
        },
    }
}

/// The suppression list, as the API manages it.
#[async_trait]
pub trait Suppressions: Send + Sync + 'static {
    /// Up to `limit` entries, newest first, starting after `after`.
    async fn list_suppressions(
        &self,
        after: Option<&SuppressionCursor>,
        limit: usize,
    ) -> Result<SuppressionPage, StoreError>;

    /// Adds an entry. When the address is already listed, the existing entry is kept and
    /// returned with `false`.
    async fn add_suppression(
        &self,
        entry: NewSuppression,
    ) -> Result<(Suppression, bool), StoreError>;

    /// The entry for `email` (any case).
    async fn suppression(&self, email: &str) -> Result<Option<Suppression>, StoreError>;

    /// Removes `email` (any case) so later sends go through. False when it was not listed.
    async fn remove_suppression(&self, email: &str) -> Result<bool, StoreError>;

    /// Which of `emails` are listed right now, as given (not lower-cased). The store screens
    /// again when it accepts a message; this is what the API reports in its 202.
    async fn suppressed_among(&self, emails: &[String]) -> Result<Vec<String>, StoreError>;
}

#[cfg(test)]
#[path = "suppression_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_encoding_and_garbage_is_refused() {
        let c = SuppressionCursor {
            created_at_ms: 1_764_000_000_123,
            email: "a:b@example.test".into(),
        };
        assert_eq!(SuppressionCursor::decode(&c.encode()), Some(c));
        assert_eq!(SuppressionCursor::decode("not a cursor!"), None);
        assert_eq!(SuppressionCursor::decode(&URL_SAFE_NO_PAD.encode("12:")), None);
        assert_eq!(SuppressionCursor::decode(&URL_SAFE_NO_PAD.encode("x:a@b")), None);
    }
}
