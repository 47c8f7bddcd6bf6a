//! The suppression contract, run against both backends (see the `tests` modules of
//! `embedded/suppression.rs` and `distributed/suppression.rs`).

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use postwire_proto::{EventType, RecipientStatus, SendRequest, SuppressionReason};

use crate::{
    ids, ClaimedJob, DeliveryResult, NewMessage, NewRecipient, NewSuppression, NewWebhook, Queue,
    RecipientOutcome, State, Suppressions,
};

const LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn message(recipients: &[&str]) -> NewMessage {
    let id = ids::new_id("msg");
    NewMessage {
        message_id_header: format!("{id}@postwire.test"),
        id,
        created_at: Utc::now(),
        request: SendRequest {
            from: "sender@postwire.test".into(),
            to: recipients.iter().map(|r| r.to_string()).collect(),
            subject: "hello".into(),
            text: Some("hi".into()),
            tags: vec!["welcome".into()],
            ..SendRequest::default()
        },
        recipients: recipients
            .iter()
            .map(|r| NewRecipient {
                email: r.to_string(),
                domain: r.rsplit('@').next().unwrap().to_lowercase(),
            })
            .collect(),
        key_id: "key_test".into(),
        sandbox: false,
        raw: None,
        idempotency: None,
        dkim: postwire_proto::DkimStatus::default(),
    }
}

pub(crate) fn outcome(
    email: &str,
    result: DeliveryResult,
    response: &str,
    suppress: bool,
) -> RecipientOutcome {
    RecipientOutcome {
        email: email.into(),
        result,
        response: response.into(),
        mx_host: Some("mx.test".into()),
        suppress,
    }
}

fn manual(email: &str, at_ms: i64) -> NewSuppression {
    NewSuppression {
        email: email.into(),
        reason: SuppressionReason::Manual,
        smtp_response: None,
        message_id: None,
        created_at: Utc.timestamp_millis_opt(at_ms).unwrap(),
    }
}

pub(crate) async fn claim(store: &impl Queue) -> ClaimedJob {
    let start = Instant::now();
    loop {
        if let Some(job) = store.claim("w", LEASE).await.expect("claim") {
            return job;
        }
        assert!(start.elapsed() < DEADLINE, "no job became claimable in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn status_of(
    store: &impl State,
    message_id: &str,
    email: &str,
) -> (RecipientStatus, Option<String>) {
    let view = store.message(message_id).await.expect("message").expect("stored");
    let r = view.recipients.iter().find(|r| r.email == email).expect("recipient");
    (r.status, r.last_response.clone())
}

/// A 5xx to RCPT TO lists the address; a later send stores it `suppressed` with an event and
/// queues only the others; removing the entry lets the next send through.
pub(crate) async fn hard_bounce_suppresses_later_sends<S: Queue + State + Suppressions>(store: &S) {
    let first = message(&["Ann@Bounce.test"]);
    store.accept(first.clone()).await.unwrap();
    let job = claim(store).await;
    let reply = "550 5.1.1 no such user";
    store
        .complete(&job, vec![outcome("Ann@Bounce.test", DeliveryResult::Bounced, reply, true)])
        .await
        .unwrap();

    let entry = store.suppression("ann@bounce.test").await.unwrap().expect("listed");
    assert_eq!(entry.email, "ann@bounce.test");
    assert_eq!(entry.reason, SuppressionReason::HardBounce);
    assert_eq!(entry.smtp_response.as_deref(), Some(reply));
    assert_eq!(entry.message_id.as_deref(), Some(first.id.as_str()));
    assert!(store.suppression("ANN@BOUNCE.TEST").await.unwrap().is_some(), "lookups ignore case");
    assert_eq!(
        store
            .suppressed_among(&["ANN@bounce.test".into(), "bob@bounce.test".into()])
            .await
            .unwrap(),
        vec!["ANN@bounce.test".to_string()]
    );

    let depth = store.depth().await.unwrap();
    let second = message(&["ann@bounce.test", "bob@bounce.test"]);
    store.accept(second.clone()).await.unwrap();
    let (status, response) = status_of(store, &second.id, "ann@bounce.test").await;
    assert_eq!(status, RecipientStatus::Suppressed);
    assert!(response.unwrap().contains("hard_bounce"));
    assert_eq!(status_of(store, &second.id, "bob@bounce.test").await.0, RecipientStatus::Queued);
    let view = store.message(&second.id).await.unwrap().unwrap();
    let events: Vec<_> = view.events.iter().filter(|e| e.kind == EventType::Suppressed).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.recipient, "ann@bounce.test");
    assert_eq!(events[0].data.tags, vec!["welcome".to_string()]);
    let job = claim(store).await;
    assert_eq!(job.message_id, second.id);
    assert_eq!(
        job.recipients.iter().map(|r| r.email.as_str()).collect::<Vec<_>>(),
        vec!["bob@bounce.test"]
    );
    store
        .complete(
            &job,
            vec![outcome("bob@bounce.test", DeliveryResult::Delivered, "250 ok", false)],
        )
        .await
        .unwrap();

    // Its domain's only recipient suppressed: no job at all, and the message is final.
    let depth_before = store.depth().await.unwrap();
    assert!(depth_before <= depth);
    let third = message(&["ann@bounce.test"]);
    store.accept(third.clone()).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), depth_before);
    assert_eq!(
        store.message(&third.id).await.unwrap().unwrap().status,
        RecipientStatus::Suppressed
    );

    assert!(store.remove_suppression("Ann@Bounce.Test").await.unwrap());
    assert!(!store.remove_suppression("ann@bounce.test").await.unwrap());
    let fourth = message(&["ann@bounce.test"]);
    store.accept(fourth.clone()).await.unwrap();
    assert_eq!(status_of(store, &fourth.id, "ann@bounce.test").await.0, RecipientStatus::Queued);
}

/// Only a flagged bounce lists the address: not a DATA rejection, not a deferral.
pub(crate) async fn only_flagged_bounces_list_the_address<S: Queue + State + Suppressions>(
    store: &S,
) {
    let msg = message(&["data@soft.test", "later@soft.test"]);
    store.accept(msg).await.unwrap();
    let job = claim(store).await;
    let next_attempt_at = Utc::now() + chrono::Duration::hours(1);
    store
        .complete(
            &job,
            vec![
                outcome("data@soft.test", DeliveryResult::Bounced, "554 5.7.1 spam", false),
                // `suppress` on a deferral is ignored.
                outcome(
                    "later@soft.test",
                    DeliveryResult::Deferred { next_attempt_at },
                    "451 4.7.1 later",
                    true,
                ),
            ],
        )
        .await
        .unwrap();
    assert!(store.suppression("data@soft.test").await.unwrap().is_none());
    assert!(store.suppression("later@soft.test").await.unwrap().is_none());
}

/// Manual entries: a duplicate keeps the first; pages walk newest first without gaps or
/// repeats, ties on time included.
pub(crate) async fn entries_page_newest_first<S: Suppressions>(store: &S) {
    let (added, fresh) = store.add_suppression(manual("C@page.test", 3_000)).await.unwrap();
    assert!(fresh);
    assert_eq!(added.email, "c@page.test");
    assert_eq!(added.reason, SuppressionReason::Manual);
    let (again, fresh) = store.add_suppression(manual("c@page.test", 9_000)).await.unwrap();
    assert!(!fresh);
    assert_eq!(again, added);
    for (email, at) in [
        ("a@page.test", 1_000),
        ("b@page.test", 2_000),
        ("d@page.test", 3_000),
        ("e@page.test", 3_000),
    ] {
        store.add_suppression(manual(email, at)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_suppressions(cursor.as_ref(), 2).await.unwrap();
        assert!(page.data.len() <= 2);
        seen.extend(page.data.iter().map(|e| e.email.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["e@page.test", "d@page.test", "c@page.test", "b@page.test", "a@page.test"]);
    let all = store.list_suppressions(None, 10).await.unwrap();
    assert_eq!(all.data.len(), 5);
    assert!(all.next.is_none());
}

/// The `message.suppressed` event reaches the webhook outbox like any other event.
pub(crate) async fn suppressed_event_is_queued_for_webhooks<S: Queue + State + Suppressions>(
    store: &S,
) {
    store.add_suppression(manual("hook@outbox.test", 1_000)).await.unwrap();
    let hook = store
        .create_webhook(NewWebhook {
            id: ids::new_id("wh"),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![EventType::Suppressed],
            secret: ids::new_webhook_secret(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    let msg = message(&["hook@outbox.test"]);
    store.accept(msg.clone()).await.unwrap();
    let deliveries = store.claim_webhook_deliveries(10, LEASE).await.unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].webhook_id, hook.id);
    let body: serde_json::Value = serde_json::from_str(&deliveries[0].body).unwrap();
    assert_eq!(body["type"], "message.suppressed");
    assert_eq!(body["data"]["message_id"], msg.id.as_str());
    assert_eq!(body["data"]["recipient"], "hook@outbox.test");
}
