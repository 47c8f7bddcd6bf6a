//! The retention contract, run against both backends (see the `tests` modules of
//! `embedded/retention.rs` and `distributed/retention.rs`).

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};

use postwire_proto::EventType;

use crate::suppression::contract::message;
use crate::{
    ids, ClaimedJob, DeliveryResult, EventQuery, NewWebhook, Queue, RecipientOutcome, Retention,
    State, WebhookLog,
};

const LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(15);

async fn claim_within(store: &impl Queue) -> ClaimedJob {
    let give_up = Instant::now() + DEADLINE;
    loop {
        if let Some(job) = store.claim("w", LEASE).await.expect("claim") {
            return job;
        }
        assert!(Instant::now() < give_up, "nothing to claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn outcome(email: &str, result: DeliveryResult) -> RecipientOutcome {
    RecipientOutcome {
        email: email.into(),
        result,
        response: "250 ok".into(),
        mx_host: Some("mx.test".into()),
        suppress: false,
    }
}

/// A delivered message older than `retention` (the backend's own, for Redis) is pruned; a
/// deferred and a scheduled one of the same age are kept, however long pruning runs.
pub(crate) async fn finished_messages_past_the_retention_are_pruned_and_pending_ones_kept<S>(
    store: &S,
    retention: Duration,
) where
    S: Queue + State + Retention,
{
    let done = message(&["ann@done.test"]);
    store.accept(done.clone()).await.unwrap();
    let job = claim_within(store).await;
    assert_eq!(job.message_id, done.id);
    store.complete(&job, vec![outcome("ann@done.test", DeliveryResult::Delivered)]).await.unwrap();

    let deferred = message(&["bob@later.test"]);
    store.accept(deferred.clone()).await.unwrap();
    let job = claim_within(store).await;
    assert_eq!(job.message_id, deferred.id);
    let retry_at = Utc::now() + TimeDelta::hours(1);
    let later = DeliveryResult::Deferred { next_attempt_at: retry_at };
    store.complete(&job, vec![outcome("bob@later.test", later)]).await.unwrap();

    let mut scheduled = message(&["cy@soon.test"]);
    scheduled.request.send_at = Some(Utc::now() + TimeDelta::hours(1));
    store.accept(scheduled.clone()).await.unwrap();
    let accepted_all = Instant::now();

    let give_up = Instant::now() + DEADLINE;
    let mut pruned = 0;
    loop {
        let cutoff = Utc::now() - TimeDelta::from_std(retention).unwrap();
        pruned += store.prune(cutoff, 10).await.unwrap().messages;
        if store.message(&done.id).await.unwrap().is_none() {
            break;
        }
        assert!(Instant::now() < give_up, "the delivered message was never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pruning goes on past the retention of the pending ones too: they stay.
    while accepted_all.elapsed() < retention * 2 {
        let cutoff = Utc::now() - TimeDelta::from_std(retention).unwrap();
        pruned += store.prune(cutoff, 10).await.unwrap().messages;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned >= 1, "the pruned message was not counted");
    for kept in [&deferred, &scheduled] {
        let view = store.message(&kept.id).await.unwrap();
        assert!(view.is_some(), "{} was pending and must be kept", kept.id);
    }
    assert_eq!(store.depth().await.unwrap(), 2, "the pending jobs are untouched");
    assert!(store.size_bytes().await.unwrap() > 0);
}

/// The event log behind `GET /v1/events` and the webhook delivery log past the retention: a
/// delivered message's events and a `webhook.disabled` event about no message (whose delivery
/// to the other endpoint ended `failed`) leave both logs once pruning has run.
pub(crate) async fn the_event_log_and_the_delivery_log_are_pruned_past_the_retention<S>(
    store: &S,
    retention: Duration,
) where
    S: Queue + State + Retention + WebhookLog,
{
    let mut endpoints = Vec::new();
    for host in ["a", "b"] {
        let hook = NewWebhook {
            id: ids::new_id("wh"),
            url: format!("https://{host}.hooks.test/x"),
            events: vec![],
            secret: ids::new_webhook_secret(),
            created_at: Utc::now(),
        };
        endpoints.push(store.create_webhook(hook).await.unwrap());
    }
    let done = message(&["ann@done.test"]);
    store.accept(done.clone()).await.unwrap();
    let job = claim_within(store).await;
    store.complete(&job, vec![outcome("ann@done.test", DeliveryResult::Delivered)]).await.unwrap();
    // `b` disabled: `a` is told with an event about no message; then `a` too, so every
    // delivery is final (`failed`).
    let (a, b) = (&endpoints[0], &endpoints[1]);
    let told = crate::webhook_log::disabled_event(&b.id, &b.url, Utc::now());
    assert!(store.disable_webhook(&b.id, told).await.unwrap());
    let last = crate::webhook_log::disabled_event(&a.id, &a.url, Utc::now());
    assert!(store.disable_webhook(&a.id, last).await.unwrap());

    let all = EventQuery::default();
    let listed = store.events(&all, None, 100).await.unwrap().expect("page").data;
    assert!(listed.iter().any(|e| e.kind == EventType::WebhookDisabled), "{listed:?}");
    assert!(listed.iter().any(|e| e.data.message_id == done.id), "{listed:?}");
    assert!(!store.webhook_deliveries(&a.id, None, 100).await.unwrap().data.is_empty());

    let give_up = Instant::now() + DEADLINE + retention;
    let mut removed = 0;
    loop {
        let cutoff = Utc::now() - TimeDelta::from_std(retention).unwrap();
        let pruned = store.prune(cutoff, 10).await.unwrap();
        removed += pruned.events + pruned.messages;
        let events = store.events(&all, None, 100).await.unwrap().expect("page").data;
        let deliveries = store.webhook_deliveries(&a.id, None, 100).await.unwrap().data;
        if events.is_empty() && deliveries.is_empty() {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "still listed past the retention: {events:?} and deliveries {deliveries:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(removed >= 2, "the removals were not counted ({removed})");
}
