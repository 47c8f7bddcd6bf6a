//! The engagement contract, run against both backends (see the `tests` modules of
//! `embedded/engagement.rs` and `distributed/engagement.rs`).

use chrono::{DateTime, TimeDelta, Utc};
use postwire_proto::{EngagementKind, EventType};

use super::{Hit, EVENT_WINDOW, MAX_REPEAT_EVENTS};
use crate::suppression::contract::message;
use crate::{NewWebhook, Queue, State};

fn click(message_id: &str, recipient: u32, url: &str, at: DateTime<Utc>) -> Hit {
    Hit {
        message_id: message_id.into(),
        recipient,
        kind: EngagementKind::Click,
        url: Some(url.into()),
        user_agent: Some("Client/1".into()),
        at,
    }
}

fn open(message_id: &str, recipient: u32, at: DateTime<Utc>) -> Hit {
    Hit {
        message_id: message_id.into(),
        recipient,
        kind: EngagementKind::Open,
        url: None,
        user_agent: None,
        at,
    }
}

/// A message to two recipients with webhook subscribers, already accepted.
async fn tracked_message<S: Queue + State>(store: &S) -> String {
    let mut msg = message(&["ann@eng.test", "bob@eng.test"]);
    msg.request.metadata = [("user".to_string(), serde_json::json!(7))].into();
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    id
}

async fn subscribe<S: State>(store: &S) {
    store
        .create_webhook(NewWebhook {
            id: crate::ids::new_id("wh"),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![EventType::Clicked, EventType::Opened],
            secret: "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0".into(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
}

/// Engagement events queued for webhooks and not yet claimed.
async fn queued_deliveries<S: State>(store: &S) -> usize {
    store.claim_webhook_deliveries(10_000, std::time::Duration::from_secs(600)).await.unwrap().len()
}

/// Many hits on one link are one record counting them all, and emit one event (stored once,
/// queued once per webhook) until the window has passed; then one more.
pub(crate) async fn hits_on_one_link_are_one_engagement_with_one_event_per_window<
    S: Queue + State,
>(
    store: &S,
) {
    subscribe(store).await;
    let id = tracked_message(store).await;
    let t0 = Utc::now();
    let url = "https://shop.test/p?q=1";
    let first = store.record_hit(click(&id, 1, url, t0)).await.unwrap().expect("known");
    let event = first.event.expect("the first click emits");
    assert_eq!(first.count, 1);
    assert_eq!(event.kind, EventType::Clicked);
    assert_eq!(event.data.recipient, "bob@eng.test");
    assert_eq!(event.data.url.as_deref(), Some(url));
    assert_eq!(event.data.user_agent.as_deref(), Some("Client/1"));
    assert_eq!(event.data.metadata["user"], 7);
    assert_eq!(event.data.tags, ["welcome"]);
    for i in 1..200 {
        let at = t0 + TimeDelta::seconds(i);
        let hit = store.record_hit(click(&id, 1, url, at)).await.unwrap().unwrap();
        assert_eq!(hit.count, i as u64 + 1);
        assert!(hit.event.is_none(), "hit {i} inside the window emitted");
    }
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.events.len(), 1, "{:?}", view.events);
    assert_eq!(view.engagements.len(), 1, "{:?}", view.engagements);
    let e = &view.engagements[0];
    assert_eq!(
        (e.recipient.as_str(), e.kind, e.url.as_deref(), e.count),
        ("bob@eng.test", EngagementKind::Click, Some(url), 200)
    );
    assert_eq!(e.first_seen_at.timestamp_millis(), t0.timestamp_millis());
    assert_eq!(
        e.last_seen_at.timestamp_millis(),
        (t0 + TimeDelta::seconds(199)).timestamp_millis()
    );
    assert_eq!(queued_deliveries(store).await, 1, "one webhook delivery for the whole burst");

    let later = t0 + EVENT_WINDOW;
    let again = store.record_hit(click(&id, 1, url, later)).await.unwrap().unwrap();
    assert!(again.event.is_some(), "a window after the last event, the next hit emits");
    let after = store.record_hit(click(&id, 1, url, later + TimeDelta::seconds(1))).await;
    assert!(after.unwrap().unwrap().event.is_none(), "and opens a new window");
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!((view.events.len(), view.engagements[0].count), (2, 202));
    assert_eq!(queued_deliveries(store).await, 1);
}

/// Opens are one engagement per recipient; clicks one per recipient and URL.
pub(crate) async fn engagements_are_kept_apart_per_recipient_kind_and_url<S: Queue + State>(
    store: &S,
) {
    let id = tracked_message(store).await;
    let t0 = Utc::now();
    let hits = [
        open(&id, 0, t0),
        open(&id, 0, t0 + TimeDelta::seconds(1)),
        open(&id, 1, t0),
        click(&id, 0, "https://a.test/", t0),
        click(&id, 0, "https://b.test/", t0 + TimeDelta::seconds(2)),
        click(&id, 0, "https://a.test/", t0 + TimeDelta::seconds(3)),
    ];
    let mut emitted = 0;
    for hit in hits {
        emitted += usize::from(store.record_hit(hit).await.unwrap().unwrap().event.is_some());
    }
    assert_eq!(emitted, 4, "one event per distinct engagement");
    let view = store.message(&id).await.unwrap().unwrap();
    let summary: Vec<_> = view
        .engagements
        .iter()
        .map(|e| (e.recipient.as_str(), e.kind, e.url.as_deref(), e.count))
        .collect();
    assert_eq!(
        summary,
        [
            ("ann@eng.test", EngagementKind::Open, None, 2),
            ("ann@eng.test", EngagementKind::Click, Some("https://a.test/"), 2),
            ("ann@eng.test", EngagementKind::Click, Some("https://b.test/"), 1),
            ("bob@eng.test", EngagementKind::Open, None, 1),
        ]
    );
    let kinds: Vec<_> = view.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventType::Opened, EventType::Opened, EventType::Clicked, EventType::Clicked]
    );
}

/// However long its links are hammered, a message stores at most one event per distinct
/// engagement plus [`MAX_REPEAT_EVENTS`] repeats; hits beyond are still counted.
pub(crate) async fn repeat_events_of_one_message_stop_at_the_cap<S: Queue + State>(store: &S) {
    let id = tracked_message(store).await;
    let t0 = Utc::now();
    let rounds = MAX_REPEAT_EVENTS as i32 + 20;
    for round in 0..rounds {
        // Every hit a full window after the last: each would emit, but for the cap.
        let at = t0 + EVENT_WINDOW * round;
        store.record_hit(open(&id, 0, at)).await.unwrap().unwrap();
    }
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.events.len() as u64, 1 + MAX_REPEAT_EVENTS);
    assert_eq!(view.engagements[0].count, rounds as u64);
    // A new engagement still emits its first event past the cap.
    let first = store.record_hit(open(&id, 1, t0)).await.unwrap().unwrap();
    assert!(first.event.is_some(), "a first open always emits");
}

/// Hits racing on a new engagement (several gateways at once) emit one event, count them all.
pub(crate) async fn concurrent_first_hits_emit_exactly_one_event<S: Queue + State>(store: &S) {
    let id = tracked_message(store).await;
    let t0 = Utc::now();
    let hits = (0..40).map(|i| {
        store.record_hit(click(&id, 0, "https://race.test/", t0 + TimeDelta::milliseconds(i)))
    });
    let results = futures::future::join_all(hits).await;
    let emitted = results
        .into_iter()
        .filter(|r| r.as_ref().unwrap().as_ref().unwrap().event.is_some())
        .count();
    assert_eq!(emitted, 1);
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!((view.events.len(), view.engagements[0].count), (1, 40));
}

/// A hit naming a message or a position that is not stored records nothing.
pub(crate) async fn a_hit_for_an_unknown_message_or_recipient_records_nothing<S: Queue + State>(
    store: &S,
) {
    let id = tracked_message(store).await;
    assert!(store.record_hit(open(&id, 2, Utc::now())).await.unwrap().is_none());
    assert!(store.record_hit(open("msg_unknown", 0, Utc::now())).await.unwrap().is_none());
    let view = store.message(&id).await.unwrap().unwrap();
    assert!(view.events.is_empty() && view.engagements.is_empty(), "{view:?}");
}
