//! The feedback contract, run against both backends (see the `tests` modules of
//! `embedded/feedback.rs` and `distributed/feedback.rs`).

use chrono::Utc;
use postwire_proto::{BounceType, EventType, RecipientStatus, SuppressionReason};

use super::{Feedback, Report};
use crate::suppression::contract::{claim, message, outcome, status_of};
use crate::{DeliveryResult, NewWebhook, Queue, State, Suppressions};

/// A message to ann and bob, accepted and delivered to both, with a webhook subscribed to
/// every event.
async fn delivered_message<S: Queue + State>(store: &S) -> String {
    store
        .create_webhook(NewWebhook {
            id: crate::ids::new_id("wh"),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![],
            secret: "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0".into(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    let msg = message(&["ann@late.test", "bob@late.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    let job = claim(store).await;
    let ok = |e| outcome(e, DeliveryResult::Delivered, "250 2.0.0 ok", false);
    store.complete(&job, vec![ok("ann@late.test"), ok("bob@late.test")]).await.unwrap();
    id
}

fn bounce(message_id: &str, recipient: u32, bounce_type: BounceType) -> Feedback {
    Feedback {
        message_id: message_id.into(),
        recipient,
        report: Report::Bounce {
            bounce_type,
            response: "5.1.1 smtp; 550 5.1.1 <bob@late.test>: user unknown".into(),
            remote_mta: Some("mx.late.test".into()),
        },
        at: Utc::now(),
    }
}

fn complaint(message_id: &str, recipient: u32) -> Feedback {
    Feedback {
        message_id: message_id.into(),
        recipient,
        report: Report::Complaint { feedback_type: "abuse".into() },
        at: Utc::now(),
    }
}

async fn queued_deliveries<S: State>(store: &S) -> Vec<EventType> {
    let claimed =
        store.claim_webhook_deliveries(10_000, std::time::Duration::from_secs(600)).await.unwrap();
    claimed
        .iter()
        .map(|d| serde_json::from_str::<postwire_proto::Event>(&d.body).unwrap().kind)
        .collect()
}

/// A hard bounce after delivery: the recipient becomes `bounced` with the report's status,
/// one `message.bounced` (async, hard) is stored and queued, the address is listed; the other
/// recipient is untouched, and the same report again changes nothing.
pub(crate) async fn a_late_hard_bounce_bounces_and_suppresses_only_that_recipient<
    S: Queue + State + Suppressions,
>(
    store: &S,
) {
    let id = delivered_message(store).await;
    queued_deliveries(store).await;
    let report = bounce(&id, 1, BounceType::Hard);
    let recorded = store.record_feedback(report.clone()).await.unwrap().expect("known copy");
    let event = recorded.event.expect("the first report emits");
    assert_eq!(event.kind, EventType::Bounced);
    assert_eq!(event.data.recipient, "bob@late.test");
    assert_eq!(event.data.async_report, Some(true));
    assert_eq!(event.data.bounce_type, Some(BounceType::Hard));
    assert_eq!(event.data.mx_host.as_deref(), Some("mx.late.test"));
    assert_eq!(event.data.tags, ["welcome"]);

    let (status, response) = status_of(store, &id, "bob@late.test").await;
    assert_eq!(status, RecipientStatus::Bounced);
    assert!(response.unwrap().contains("user unknown"));
    assert_eq!(status_of(store, &id, "ann@late.test").await.0, RecipientStatus::Delivered);
    let listed = store.suppression("bob@late.test").await.unwrap().expect("listed");
    assert_eq!(listed.reason, SuppressionReason::HardBounce);
    assert_eq!(listed.message_id.as_deref(), Some(id.as_str()));
    assert!(store.suppression("ann@late.test").await.unwrap().is_none());
    assert_eq!(queued_deliveries(store).await, [EventType::Bounced]);

    let again = store.record_feedback(report).await.unwrap().expect("known copy");
    assert_eq!(again.event, None, "a repeated report emits nothing");
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.events.iter().filter(|e| e.kind == EventType::Bounced).count(), 1);
    assert!(queued_deliveries(store).await.is_empty());
}

/// A soft bounce bounces the recipient but does not list the address.
pub(crate) async fn a_late_soft_bounce_does_not_suppress<S: Queue + State + Suppressions>(
    store: &S,
) {
    let id = delivered_message(store).await;
    let recorded = store.record_feedback(bounce(&id, 0, BounceType::Soft)).await.unwrap();
    let event = recorded.expect("known copy").event.expect("emits");
    assert_eq!(event.data.bounce_type, Some(BounceType::Soft));
    assert_eq!(status_of(store, &id, "ann@late.test").await.0, RecipientStatus::Bounced);
    assert!(store.suppression("ann@late.test").await.unwrap().is_none());
}

/// A complaint keeps the status, emits `message.complained` once and lists the address with
/// reason `complaint`.
pub(crate) async fn a_complaint_emits_once_and_suppresses<S: Queue + State + Suppressions>(
    store: &S,
) {
    let id = delivered_message(store).await;
    queued_deliveries(store).await;
    let first = store.record_feedback(complaint(&id, 0)).await.unwrap().expect("known copy");
    let event = first.event.expect("the first complaint emits");
    assert_eq!(event.kind, EventType::Complained);
    assert_eq!(event.data.recipient, "ann@late.test");
    assert_eq!(event.data.feedback_type.as_deref(), Some("abuse"));
    assert_eq!(status_of(store, &id, "ann@late.test").await.0, RecipientStatus::Delivered);
    let listed = store.suppression("ann@late.test").await.unwrap().expect("listed");
    assert_eq!(listed.reason, SuppressionReason::Complaint);
    assert_eq!(queued_deliveries(store).await, [EventType::Complained]);

    let again = store.record_feedback(complaint(&id, 0)).await.unwrap().expect("known copy");
    assert_eq!(again.event, None);
    let other = store.record_feedback(complaint(&id, 1)).await.unwrap().expect("known copy");
    assert_eq!(
        other.event.expect("another recipient's complaint counts").data.recipient,
        "bob@late.test"
    );
}

/// A report about a message or position the store does not know records nothing.
pub(crate) async fn feedback_about_an_unknown_copy_records_nothing<S: Queue + State>(store: &S) {
    let id = delivered_message(store).await;
    assert!(store.record_feedback(bounce(&id, 9, BounceType::Hard)).await.unwrap().is_none());
    let missing = "msg_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b";
    assert!(store.record_feedback(complaint(missing, 0)).await.unwrap().is_none());
    assert_eq!(status_of(store, &id, "ann@late.test").await.0, RecipientStatus::Delivered);
}
