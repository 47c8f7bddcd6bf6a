//! The webhook delivery log, replay, enabling and disabling endpoints, and the event pull API.
//!
//! Every attempt the dispatcher makes is appended to its delivery's log
//! ([`State::finish_webhook_delivery`](crate::State::finish_webhook_delivery)), at most
//! [`MAX_LOGGED_ATTEMPTS`] of them (the newest). The same write keeps the endpoint's
//! `failing_since`: the time of its first failed attempt after its last success, which the
//! dispatcher compares with `webhooks.disable_after` ([`should_disable`]) before it disables
//! the endpoint with [`disabled_event`] ([`State::disable_webhook`](crate::State::disable_webhook)).
//!
//! A disabled endpoint gets no new deliveries, and its pending ones end `failed`; enabling it
//! again resumes deliveries for new events, and a replay sends any logged one again with the
//! same `webhook-id`. Deliveries are listed newest first, paged by their sequence number
//! ([`delivery_seq`]).
//!
//! `GET /v1/events` lists every event in the order it was stored. The cursor is the backend's
//! own position (an opaque string), so it survives restarts and is exact.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{
    Event, EventData, EventType, Webhook, WebhookAttemptView, WebhookDeliveryView,
};

use crate::{ids, StoreError, WebhookAttempt};

/// Attempts kept per delivery (the retry schedule makes seven; replays add more).
pub const MAX_LOGGED_ATTEMPTS: usize = 20;

/// The log entry for one attempt.
pub fn attempt_view(attempt: &WebhookAttempt) -> WebhookAttemptView {
    WebhookAttemptView {
        at: crate::time::from_ms(attempt.at.timestamp_millis()),
        status: attempt.status,
        latency_ms: attempt.latency_ms,
        response: attempt.response.clone(),
        error: attempt.error.clone(),
    }
}

/// `log` (a JSON list of [`WebhookAttemptView`], or empty) with `attempt` appended, trimmed to
/// the newest [`MAX_LOGGED_ATTEMPTS`].
pub(crate) fn append_attempt(log: Option<&str>, attempt: &WebhookAttempt) -> String {
    let mut list: Vec<WebhookAttemptView> =
        log.and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    list.push(attempt_view(attempt));
    let extra = list.len().saturating_sub(MAX_LOGGED_ATTEMPTS);
    list.drain(..extra);
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Reads a stored attempt log; a missing or unreadable one is empty.
pub(crate) fn parse_attempts(log: Option<&str>) -> Vec<WebhookAttemptView> {
    log.and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default()
}

/// The API id of delivery number `seq`.
pub fn delivery_id(seq: i64) -> String {
    format!("whd_{seq}")
}

/// The sequence number in a delivery id (`whd_12` → 12); `None` for anything else.
pub fn delivery_seq(id: &str) -> Option<i64> {
    id.strip_prefix("whd_")?.parse().ok().filter(|n| *n > 0)
}

/// Whether an endpoint failing since `failing_since` has failed for `disable_after` by `now`.
pub fn should_disable(
    failing_since: Option<DateTime<Utc>>,
    disable_after: std::time::Duration,
    now: DateTime<Utc>,
) -> bool {
    let Some(since) = failing_since else { return false };
    let after = chrono::Duration::from_std(disable_after).unwrap_or(chrono::Duration::MAX);
    since.checked_add_signed(after).is_some_and(|at| at <= now)
}

/// The `webhook.disabled` event for endpoint `webhook_id` at `url`, which every other enabled
/// endpoint subscribed to the type receives.
pub fn disabled_event(webhook_id: &str, url: &str, failing_since: DateTime<Utc>) -> Event {
    Event {
        id: ids::new_id("evt"),
        kind: EventType::WebhookDisabled,
        timestamp: Utc::now(),
        data: EventData {
            message_id: String::new(),
            recipient: String::new(),
            webhook_id: Some(webhook_id.to_string()),
            reason: Some(format!(
                "every delivery to {url} has failed since {} (webhooks.disable_after)",
                failing_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            ..EventData::default()
        },
    }
}

/// One page of an endpoint's deliveries, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    pub data: Vec<WebhookDeliveryView>,
    /// The sequence number to pass as `before` for the next page, when there is one.
    pub next: Option<i64>,
}

/// What `GET /v1/events` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Stored at or after.
    pub since: Option<DateTime<Utc>>,
    pub kind: Option<EventType>,
}

/// One page of events, in stored order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub data: Vec<Event>,
    /// Where the next page starts (after the last event returned), when one was returned.
    pub next: Option<String>,
}

/// The delivery log and event history, as the API reads and manages them.
#[async_trait]
pub trait WebhookLog: Send + Sync + 'static {
    /// One endpoint; `None` when unknown.
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError>;

    /// Enables or disables an endpoint by hand (no event). Disabling ends its pending
    /// deliveries `failed`; enabling clears its failure streak. `None` when unknown.
    async fn set_webhook_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Option<Webhook>, StoreError>;

    /// Up to `limit` deliveries of endpoint `webhook_id`, newest first, older than the one
    /// numbered `before`.
    async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError>;

    /// Makes delivery `delivery_id` of `webhook_id` due now, whatever its state: the
    /// dispatcher sends the same event body with the same `webhook-id`. `None` when no such
    /// delivery of that endpoint is logged.
    async fn retry_webhook_delivery(
        &self,
        webhook_id: &str,
        delivery_id: &str,
    ) -> Result<Option<WebhookDeliveryView>, StoreError>;

    /// Up to `limit` events matching `query`, oldest first, after the position `after` (a
    /// `next` of an earlier page). `None` when `after` is not a position this backend made.
    async fn events(
        &self,
        query: &EventQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u16) -> WebhookAttempt {
        WebhookAttempt {
            status: Some(n),
            error: None,
            retry_at: None,
            succeeded: false,
            at: Utc::now(),
            latency_ms: 3,
            response: Some("x".into()),
        }
    }

    #[test]
    fn the_attempt_log_keeps_the_newest_twenty() {
        let mut log: Option<String> = None;
        for n in 0..25 {
            log = Some(append_attempt(log.as_deref(), &attempt(500 + n)));
        }
        let list = parse_attempts(log.as_deref());
        assert_eq!(list.len(), MAX_LOGGED_ATTEMPTS);
        assert_eq!(list[0].status, Some(505));
        assert_eq!(list[19].status, Some(524));
    }

    #[test]
    fn an_endpoint_is_disabled_only_once_it_has_failed_for_disable_after() {
        let now = Utc::now();
        let day = std::time::Duration::from_secs(86_400);
        assert!(!should_disable(None, day, now));
        assert!(!should_disable(Some(now - chrono::Duration::hours(23)), day, now));
        assert!(should_disable(Some(now - chrono::Duration::hours(24)), day, now));
        assert_eq!(delivery_seq(&delivery_id(42)), Some(42));
        assert_eq!(delivery_seq("42"), None);
        assert_eq!(delivery_seq("whd_x"), None);
    }
}
