//! Opens and clicks: one record per engagement, and the rule that decides which hits become
//! events. Both backends apply [`decide`]'s verdict; neither decides for itself.
//!
//! An *engagement* is one recipient's open pixel (every open of their copy is the same
//! engagement) or one recipient's link to one URL. Every hit is counted in its record (first
//! seen, last seen, count), but a hit only becomes a `message.opened` / `message.clicked` event
//! — stored in the message's history and queued for every subscribed webhook — when:
//!
//! - it is the engagement's first hit (always), or
//! - [`EVENT_WINDOW`] has passed since the engagement's last event, and the message has had
//!   fewer than [`MAX_REPEAT_EVENTS`] such repeat events so far.
//!
//! So a link fetched 20,000 times in a minute is one record with a count of 20,000 and one
//! event, and a message's history grows by at most its distinct engagements plus
//! [`MAX_REPEAT_EVENTS`], however long its links are hammered.
//!
//! Hits carry their own time ([`Hit::at`]) so the window is testable without waiting for it.

use chrono::{DateTime, TimeDelta, Utc};
use postwire_proto::{Engagement, EngagementKind, Event, EventData};

use crate::time::from_ms;

/// After an engagement's event, further hits on it within this long are counted, not emitted.
pub const EVENT_WINDOW: TimeDelta = TimeDelta::hours(1);

/// Repeat events (an engagement's second and later) one message may emit in all; beyond this
/// hits are only counted. First events are not capped: there is one per distinct engagement.
pub const MAX_REPEAT_EVENTS: u64 = 100;

/// One fetch of a verified, live tracking link.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub message_id: String,
    /// The recipient's position in the message (as signed into the link).
    pub recipient: u32,
    pub kind: EngagementKind,
    /// The signed target, for clicks; `None` for opens.
    pub url: Option<String>,
    pub user_agent: Option<String>,
    pub at: DateTime<Utc>,
}

impl Hit {
    /// The engagement this hit belongs to, as both backends key it: `open:{position}` or
    /// `click:{position}:{url}`.
    pub(crate) fn engagement_key(&self) -> String {
        match (self.kind, &self.url) {
            (EngagementKind::Click, Some(url)) => format!("click:{}:{url}", self.recipient),
            (kind, _) => format!("{}:{}", kind.as_str(), self.recipient),
        }
    }

    /// The URL as stored: empty for opens.
    pub(crate) fn stored_url(&self) -> &str {
        self.url.as_deref().unwrap_or("")
    }
}

/// What recording a hit did.
#[derive(Debug, Clone, PartialEq)]
pub struct HitRecorded {
    /// The engagement's count including this hit.
    pub count: u64,
    /// The event it emitted (stored and queued for webhooks), if any.
    pub event: Option<Event>,
}

/// An engagement's stored counters (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Tally {
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
    /// Events this engagement has emitted.
    pub events: u64,
    /// When it last emitted one.
    pub last_event: i64,
}

/// Whether a hit at `at_ms` emits an event, given the engagement's tally before it (`None`: its
/// first hit) and the repeat events its message has emitted so far.
pub(crate) fn decide(prev: Option<&Tally>, message_repeats: u64, at_ms: i64) -> bool {
    match prev {
        None => true,
        Some(t) => {
            at_ms - t.last_event >= EVENT_WINDOW.num_milliseconds()
                && message_repeats < MAX_REPEAT_EVENTS
        }
    }
}

/// The tally after one hit at `at_ms` that did (or did not) emit.
pub(crate) fn counted(prev: Option<Tally>, at_ms: i64, emitted: bool) -> Tally {
    let mut t = prev.unwrap_or(Tally {
        first_seen: at_ms,
        last_seen: at_ms,
        count: 0,
        events: 0,
        last_event: at_ms,
    });
    t.first_seen = t.first_seen.min(at_ms);
    t.last_seen = t.last_seen.max(at_ms);
    t.count += 1;
    if emitted {
        t.events += 1;
        t.last_event = at_ms;
    }
    t
}

/// The event a hit emits: both backends build it here so their payloads match.
pub(crate) fn engagement_event(
    hit: &Hit,
    recipient: String,
    tags: Vec<String>,
    metadata: std::collections::BTreeMap<String, serde_json::Value>,
) -> Event {
    Event {
        id: crate::ids::new_id("evt"),
        kind: hit.kind.event_type(),
        timestamp: hit.at,
        data: EventData {
            message_id: hit.message_id.clone(),
            recipient,
            smtp_response: None,
            mx_host: None,
            attempt: None,
            next_attempt_at: None,
            url: hit.url.clone(),
            user_agent: hit.user_agent.clone(),
            webhook_id: None,
            reason: None,
            tags,
            metadata,
            ..EventData::default()
        },
    }
}

/// One stored engagement as a backend reads it back for the message view.
pub(crate) struct StoredEngagement {
    pub recipient: u32,
    pub kind: EngagementKind,
    /// Empty for opens.
    pub url: String,
    pub tally: Tally,
}

/// The message view's `engagements`: recipient order, opens before clicks, then first seen.
/// `emails` are the message's recipients by position; an engagement naming no recipient is
/// left out.
pub(crate) fn engagement_views(
    mut stored: Vec<StoredEngagement>,
    emails: &[String],
) -> Vec<Engagement> {
    stored.sort_by(|a, b| {
        (a.recipient, a.kind == EngagementKind::Click, a.tally.first_seen, &a.url).cmp(&(
            b.recipient,
            b.kind == EngagementKind::Click,
            b.tally.first_seen,
            &b.url,
        ))
    });
    stored
        .into_iter()
        .filter_map(|e| {
            let email = emails.get(usize::try_from(e.recipient).ok()?)?;
            Some(Engagement {
                recipient: email.clone(),
                kind: e.kind,
                url: (!e.url.is_empty()).then_some(e.url),
                count: e.tally.count,
                first_seen_at: from_ms(e.tally.first_seen),
                last_seen_at: from_ms(e.tally.last_seen),
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "engagement_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_first_hit_always_emits_even_past_the_repeat_cap() {
        assert!(decide(None, MAX_REPEAT_EVENTS + 5, 0));
    }

    #[test]
    fn a_repeat_emits_only_once_the_window_has_passed_and_under_the_cap() {
        let t = counted(None, 1_000, true);
        assert!(!decide(Some(&t), 0, 1_000 + HOUR - 1));
        assert!(decide(Some(&t), 0, 1_000 + HOUR));
        assert!(!decide(Some(&t), MAX_REPEAT_EVENTS, 1_000 + HOUR));
    }

    #[test]
    fn counting_keeps_first_and_last_seen_and_moves_the_window_only_on_emission() {
        let t = counted(None, 5_000, true);
        let t = counted(Some(t), 9_000, false);
        let t = counted(Some(t), 4_000, false);
        assert_eq!(
            t,
            Tally { first_seen: 4_000, last_seen: 9_000, count: 3, events: 1, last_event: 5_000 }
        );
        let t = counted(Some(t), 5_000 + HOUR, true);
        assert_eq!((t.events, t.last_event), (2, 5_000 + HOUR));
    }
}
