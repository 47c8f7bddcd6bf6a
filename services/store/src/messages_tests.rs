//! The scheduling, cancel and search contract, run against both backends (see the `tests`
//! modules of `embedded/messages.rs` and `distributed/messages.rs`).

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use postwire_proto::{EventType, RecipientStatus};

use crate::suppression::contract::message;
use crate::{
    Cancel, ClaimedJob, DeliveryResult, MessageCursor, MessageQuery, Messages, NewMessage, Queue,
    RecipientOutcome, State,
};

const LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(15);

fn delivered(email: &str) -> RecipientOutcome {
    RecipientOutcome {
        email: email.into(),
        result: DeliveryResult::Delivered,
        response: "250 ok".into(),
        mx_host: Some("mx.test".into()),
        suppress: false,
    }
}

fn scheduled(recipients: &[&str], send_at: DateTime<Utc>) -> NewMessage {
    let mut m = message(recipients);
    m.request.send_at = Some(send_at);
    m
}

async fn claim_within(store: &impl Queue, deadline: Duration) -> Option<ClaimedJob> {
    let start = Instant::now();
    loop {
        if let Some(job) = store.claim("w", LEASE).await.expect("claim") {
            return Some(job);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn statuses(store: &impl State, id: &str) -> Vec<RecipientStatus> {
    store.message(id).await.unwrap().expect("stored").recipients.iter().map(|r| r.status).collect()
}

/// Waits (polling the clock, with a deadline) until `at` has passed.
async fn wait_until(at: DateTime<Utc>) {
    let give_up = Instant::now() + DEADLINE;
    while Utc::now() <= at {
        assert!(Instant::now() < give_up, "the clock never reached {at}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message with a future `send_at` is stored `scheduled` with `next_attempt_at = send_at`,
/// no claim hands it out before then, and after it the job runs as usual.
pub(crate) async fn scheduled_message_is_not_claimable_before_send_at<S: Queue + State>(store: &S) {
    let send_at = Utc::now() + TimeDelta::milliseconds(2_500);
    let msg = scheduled(&["ann@later.test"], send_at);
    store.accept(msg.clone()).await.unwrap();
    let view = store.message(&msg.id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Scheduled);
    assert_eq!(view.recipients[0].status, RecipientStatus::Scheduled);
    assert_eq!(view.recipients[0].attempts, 0);
    assert_eq!(
        view.recipients[0].next_attempt_at.map(|t| t.timestamp_millis()),
        Some(send_at.timestamp_millis())
    );

    let job = claim_within(store, DEADLINE).await.expect("claimed once due");
    let claimed_at = Utc::now();
    assert!(claimed_at >= send_at, "claimed at {claimed_at}, before send_at {send_at}");
    assert_eq!(job.message_id, msg.id);
    assert_eq!(job.recipients.len(), 1);
    assert_eq!(job.recipients[0].attempts, 0, "re-parking an early job is not an attempt");
    store.complete(&job, vec![delivered("ann@later.test")]).await.unwrap();
    let view = store.message(&msg.id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Delivered);
    assert_eq!(view.recipients[0].attempts, 1);
}

/// Once `send_at` has passed, a recipient no worker has picked up yet shows `queued`.
pub(crate) async fn scheduled_recipient_shows_queued_once_due<S: Queue + State>(store: &S) {
    let send_at = Utc::now() + TimeDelta::milliseconds(300);
    let msg = scheduled(&["bo@due.test"], send_at);
    store.accept(msg.clone()).await.unwrap();
    assert_eq!(statuses(store, &msg.id).await, [RecipientStatus::Scheduled]);
    wait_until(send_at).await;
    let view = store.message(&msg.id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Queued);
    assert_eq!(view.recipients[0].status, RecipientStatus::Queued);
}

/// Canceling a scheduled message makes it final at once, and no claim ever hands it out,
/// even after `send_at` has passed.
pub(crate) async fn canceled_scheduled_message_is_never_claimed<S: Queue + State + Messages>(
    store: &S,
) {
    store
        .create_webhook(crate::NewWebhook {
            id: crate::ids::new_id("wh"),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![EventType::Canceled],
            secret: "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0".into(),
            created_at: Utc::now(),
        })
        .await
        .unwrap();
    let send_at = Utc::now() + TimeDelta::milliseconds(1_000);
    let mut msg = scheduled(&["cy@cancel.test", "di@cancel.test", "ed@other.test"], send_at);
    msg.request.tags = vec!["reset".into()];
    store.accept(msg.clone()).await.unwrap();
    let depth = store.depth().await.unwrap();
    assert_eq!(store.cancel_message(&msg.id).await.unwrap(), Cancel::Canceled(3));
    let view = store.message(&msg.id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Canceled);
    assert!(view
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Canceled && r.next_attempt_at.is_none()));
    // One `message.canceled` per recipient, stored with the change and queued for the webhook.
    let mut canceled: Vec<_> = view
        .events
        .iter()
        .map(|e| (e.kind, e.data.recipient.as_str(), e.data.tags.clone()))
        .collect();
    canceled.sort_by_key(|e| e.1);
    let tags = vec!["reset".to_string()];
    assert_eq!(
        canceled,
        [
            (EventType::Canceled, "cy@cancel.test", tags.clone()),
            (EventType::Canceled, "di@cancel.test", tags.clone()),
            (EventType::Canceled, "ed@other.test", tags.clone()),
        ]
    );
    let queued = store.claim_webhook_deliveries(100, Duration::from_secs(600)).await.unwrap();
    let mut queued: Vec<String> = queued.iter().map(|d| d.event_id.clone()).collect();
    queued.sort();
    let mut ids: Vec<String> = view.events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    assert_eq!(queued, ids, "each event is queued for the subscribed endpoint");
    assert_eq!(store.depth().await.unwrap(), depth - 2, "both jobs are gone");
    assert_eq!(
        store.cancel_message(&msg.id).await.unwrap(),
        Cancel::NothingToCancel { in_flight: false }
    );

    wait_until(send_at).await;
    // Long enough for the distributed copy to come back out of its delay queue.
    let late = claim_within(store, Duration::from_millis(2_500)).await;
    assert!(late.is_none(), "a canceled job was handed out: {late:?}");
    assert_eq!(statuses(store, &msg.id).await, [RecipientStatus::Canceled; 3]);
}

/// A job a worker holds is not canceled (409 material); once it is done and every recipient
/// is final there is nothing to cancel; a deferred recipient can be canceled; unknown ids are
/// `NotFound`.
pub(crate) async fn cancel_leaves_in_flight_and_final_recipients_alone<
    S: Queue + State + Messages,
>(
    store: &S,
) {
    assert_eq!(store.cancel_message("msg_nope").await.unwrap(), Cancel::NotFound);

    let msg = message(&["fay@busy.test"]);
    store.accept(msg.clone()).await.unwrap();
    let job = claim_within(store, DEADLINE).await.expect("claimable");
    assert_eq!(job.message_id, msg.id);
    assert_eq!(
        store.cancel_message(&msg.id).await.unwrap(),
        Cancel::NothingToCancel { in_flight: true }
    );
    assert_eq!(statuses(store, &msg.id).await, [RecipientStatus::Queued]);
    store.complete(&job, vec![delivered("fay@busy.test")]).await.unwrap();
    assert_eq!(
        store.cancel_message(&msg.id).await.unwrap(),
        Cancel::NothingToCancel { in_flight: false }
    );
    assert_eq!(statuses(store, &msg.id).await, [RecipientStatus::Delivered]);

    // Deferred for an hour: released by its worker, so it can be canceled.
    let msg = message(&["gus@slow.test"]);
    store.accept(msg.clone()).await.unwrap();
    let job = claim_within(store, DEADLINE).await.expect("claimable");
    let next_attempt_at = Utc::now() + TimeDelta::hours(1);
    let deferred = RecipientOutcome {
        result: DeliveryResult::Deferred { next_attempt_at },
        response: "451 4.7.1 later".into(),
        ..delivered("gus@slow.test")
    };
    store.complete(&job, vec![deferred]).await.unwrap();
    assert_eq!(statuses(store, &msg.id).await, [RecipientStatus::Deferred]);
    assert_eq!(store.cancel_message(&msg.id).await.unwrap(), Cancel::Canceled(1));
    let view = store.message(&msg.id).await.unwrap().unwrap();
    assert_eq!(view.recipients[0].status, RecipientStatus::Canceled);
    assert_eq!(view.recipients[0].attempts, 1);
    assert_eq!(
        view.recipients[0].last_response.as_deref(),
        Some("451 4.7.1 later"),
        "the last reply is kept"
    );
    assert!(claim_within(store, Duration::from_millis(300)).await.is_none());
}

/// Every page of a search, walked with its cursors.
async fn walk<S: Messages>(store: &S, query: &MessageQuery, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<MessageCursor> = None;
    for _ in 0..1_000 {
        let page = store.search_messages(query, cursor.as_ref(), limit).await.unwrap();
        assert!(page.data.len() <= limit);
        seen.extend(page.data.iter().map(|m| m.id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
    }
    panic!("the search never ended");
}

/// Seven messages a second apart: pages of three walk them newest first without gaps or
/// repeats, and each filter (alone and combined) selects exactly the right ones.
pub(crate) async fn search_pages_newest_first_through_every_filter<S: Queue + State + Messages>(
    store: &S,
) {
    // A namespace of its own is not enough for the embedded store, so use distinct domains.
    let base = Utc::now() - TimeDelta::minutes(10);
    let mut ids = Vec::new();
    for i in 0..7 {
        let to = if i % 3 == 0 { "Pat@Search.test" } else { "quinn@search.test" };
        let mut m = message(&[to, "robin@search.test"]);
        m.recipients[0].email = crate::messages::normalize_address(to);
        m.created_at = base + TimeDelta::seconds(i);
        m.request.tags =
            if i % 2 == 0 { vec!["even".into(), "all".into()] } else { vec!["all".into()] };
        store.accept(m.clone()).await.unwrap();
        ids.push(m.id);
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let ours = |found: Vec<String>| -> Vec<String> {
        found.into_iter().filter(|id| ids.contains(id)).collect()
    };
    let in_window = MessageQuery {
        since: Some(base),
        until: Some(base + TimeDelta::seconds(7)),
        ..MessageQuery::default()
    };

    assert_eq!(walk(store, &in_window, 3).await, newest_first);
    let everything = ours(walk(store, &MessageQuery::default(), 3).await);
    assert_eq!(everything, newest_first);
    let page = store.search_messages(&in_window, None, 3).await.unwrap();
    let first = &page.data[0];
    assert_eq!(first.id, ids[6]);
    assert_eq!(first.status, RecipientStatus::Queued);
    assert_eq!(first.tags, ["even", "all"]);
    assert_eq!(first.from, "sender@postwire.test");
    assert_eq!(first.subject, "hello");
    assert_eq!(
        first.created_at.timestamp_millis(),
        (base + TimeDelta::seconds(6)).timestamp_millis()
    );
    let emails: Vec<&str> = first.recipients.iter().map(|r| r.email.as_str()).collect();
    assert_eq!(emails, ["Pat@search.test", "robin@search.test"]);

    let even = MessageQuery { tag: Some("even".into()), ..in_window.clone() };
    assert_eq!(
        walk(store, &even, 3).await,
        [ids[6].as_str(), ids[4].as_str(), ids[2].as_str(), ids[0].as_str()]
    );
    let pat = MessageQuery { recipient: Some("Pat@SEARCH.TEST".into()), ..in_window.clone() };
    assert_eq!(walk(store, &pat, 2).await, [ids[6].as_str(), ids[3].as_str(), ids[0].as_str()]);
    let pat_even = MessageQuery { tag: Some("even".into()), ..pat.clone() };
    assert_eq!(walk(store, &pat_even, 3).await, [ids[6].as_str(), ids[0].as_str()]);
    let window = MessageQuery {
        since: Some(base + TimeDelta::seconds(2)),
        until: Some(base + TimeDelta::seconds(5)),
        ..MessageQuery::default()
    };
    assert_eq!(
        ours(walk(store, &window, 3).await),
        [ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]
    );
    let nobody = MessageQuery { recipient: Some("pat@search.test".into()), ..in_window.clone() };
    assert!(walk(store, &nobody, 3).await.is_empty(), "the local part is compared exactly");

    // Status: any recipient with it. Deliver robin@ of message 5 only.
    let delivered_q =
        MessageQuery { status: Some(RecipientStatus::Delivered), ..in_window.clone() };
    assert!(walk(store, &delivered_q, 3).await.is_empty());
    // Other jobs claimed on the way stay held (their recipients still show `queued`).
    let mut held = Vec::new();
    loop {
        let job = claim_within(store, DEADLINE).await.expect("message 5's job is claimable");
        if job.message_id == ids[5] {
            store.complete(&job, vec![delivered("robin@search.test")]).await.unwrap();
            break;
        }
        held.push(job);
    }
    assert_eq!(walk(store, &delivered_q, 3).await, [ids[5].as_str()]);
    let queued = MessageQuery { status: Some(RecipientStatus::Queued), ..in_window.clone() };
    assert_eq!(walk(store, &queued, 3).await, newest_first, "message 5 still has quinn@ queued");
    let summary = store.search_messages(&delivered_q, None, 3).await.unwrap().data.remove(0);
    assert_eq!(summary.status, RecipientStatus::Queued, "the least advanced recipient");
    let robin = summary.recipients.iter().find(|r| r.email == "robin@search.test").unwrap();
    assert_eq!(robin.status, RecipientStatus::Delivered);
}

/// A message accepted while a client pages never shifts the pages it has still to read.
pub(crate) async fn search_cursor_is_stable_under_new_messages<S: Queue + State + Messages>(
    store: &S,
) {
    let base = Utc::now() - TimeDelta::minutes(5);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut m = message(&["sam@stable.test"]);
        m.created_at = base + TimeDelta::milliseconds(i * 10);
        m.request.tags = vec!["stable".into()];
        store.accept(m.clone()).await.unwrap();
        ids.push(m.id);
    }
    let q = MessageQuery { tag: Some("stable".into()), ..MessageQuery::default() };
    let page = store.search_messages(&q, None, 2).await.unwrap();
    assert_eq!(
        page.data.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [ids[4].as_str(), ids[3].as_str()]
    );
    let mut newer = message(&["sam@stable.test"]);
    newer.request.tags = vec!["stable".into()];
    store.accept(newer.clone()).await.unwrap();
    let mut rest = Vec::new();
    let mut cursor = page.next.clone();
    while let Some(c) = cursor {
        let page = store.search_messages(&q, Some(&c), 2).await.unwrap();
        rest.extend(page.data.into_iter().map(|m| m.id));
        cursor = page.next;
    }
    assert_eq!(rest, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    let from_top = store.search_messages(&q, None, 1).await.unwrap();
    assert_eq!(from_top.data[0].id, newer.id);
}
