//! The embedded backend against a real SQLite file in a temporary directory.
//!
//! Leases and retry times are wall-clock (the store reads `Utc::now()`), so tests that need
//! time to pass poll with a deadline instead of sleeping a fixed amount.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postwire_proto::{Event, EventType, RecipientStatus};
use tempfile::TempDir;

use super::SqliteStore;
use crate::time::to_ms;
use crate::{
    ids, ClaimedJob, DeliveryResult, Hit, NewApiKey, NewWebhook, Queue, RecipientOutcome, State,
    WebhookAttempt, WebhookDelivery,
};

// The message builder of the shared capability contracts, so every store test sends alike.
use crate::suppression::contract::message;

const LONG_LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(10);

fn open() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open store");
    (dir, store)
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

/// A first open by the recipient at `position`.
fn open_hit(message_id: &str, position: u32) -> Hit {
    Hit {
        message_id: message_id.into(),
        recipient: position,
        kind: postwire_proto::EngagementKind::Open,
        url: None,
        user_agent: None,
        at: Utc::now(),
    }
}

fn webhook(events: Vec<EventType>) -> NewWebhook {
    NewWebhook {
        id: ids::new_id("wh"),
        url: "http://127.0.0.1:9/hook".into(),
        events,
        secret: ids::new_webhook_secret(),
        created_at: Utc::now(),
    }
}

async fn count(store: &SqliteStore, sql: &'static str, param: String) -> i64 {
    store.read(move |conn| Ok(conn.query_row(sql, [param], |r| r.get(0))?)).await.expect("count")
}

async fn delivery_state(store: &SqliteStore, id: &str) -> (String, i64, i64) {
    let id = crate::webhook_log::delivery_seq(id).expect("a whd_ id");
    store
        .read(move |conn| {
            Ok(conn.query_row(
                "SELECT state, attempts, next_attempt_at FROM webhook_deliveries WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .await
        .expect("delivery state")
}

/// Claims until a job is handed out or the deadline passes.
async fn claim_eventually(store: &SqliteStore, lease: Duration) -> ClaimedJob {
    let start = Instant::now();
    loop {
        if let Some(job) = store.claim("w", lease).await.expect("claim") {
            return job;
        }
        assert!(start.elapsed() < DEADLINE, "no job became claimable in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn claim_deliveries_eventually(store: &SqliteStore) -> Vec<WebhookDelivery> {
    let start = Instant::now();
    loop {
        let claimed =
            store.claim_webhook_deliveries(10, LONG_LEASE).await.expect("claim deliveries");
        if !claimed.is_empty() {
            return claimed;
        }
        assert!(start.elapsed() < DEADLINE, "no webhook delivery became due in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Accepts a one-recipient message and records a delivery for it, producing one event.
async fn delivered_message(store: &SqliteStore) -> String {
    let msg = message(&["rcpt@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    let job = store.claim("w", LONG_LEASE).await.unwrap().unwrap();
    store
        .complete(&job, vec![outcome("rcpt@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn accepted_message_yields_one_job_per_recipient_domain_claimable_once() {
    let (_dir, store) = open();
    let msg = message(&["a@one.test", "b@two.test", "c@one.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), 2);

    let first = store.claim("w1", LONG_LEASE).await.unwrap().expect("first job");
    let second = store.claim("w2", LONG_LEASE).await.unwrap().expect("second job");
    assert!(store.claim("w3", LONG_LEASE).await.unwrap().is_none(), "both jobs are leased");
    assert_ne!(first.job_id, second.job_id);

    let mut by_domain: Vec<(String, Vec<String>)> = [first, second]
        .into_iter()
        .map(|job| {
            assert_eq!(job.message_id, id);
            assert_eq!(job.message_id_header, format!("{id}@postwire.test"));
            assert_eq!(job.request.subject, "hello");
            assert!(job.recipients.iter().all(|r| r.attempts == 0));
            (job.domain, job.recipients.into_iter().map(|r| r.email).collect())
        })
        .collect();
    by_domain.sort();
    assert_eq!(
        by_domain,
        vec![
            ("one.test".to_string(), vec!["a@one.test".to_string(), "c@one.test".to_string()]),
            ("two.test".to_string(), vec!["b@two.test".to_string()]),
        ]
    );
    assert_eq!(store.depth().await.unwrap(), 2, "claimed jobs stay in the queue until completed");
}

#[tokio::test]
async fn delivered_and_bounced_outcomes_delete_the_job() {
    let (_dir, store) = open();
    let msg = message(&["a@example.test", "b@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let job = store.claim("w", LONG_LEASE).await.unwrap().unwrap();
    store
        .complete(
            &job,
            vec![
                outcome("a@example.test", DeliveryResult::Delivered),
                outcome("b@example.test", DeliveryResult::Bounced),
            ],
        )
        .await
        .unwrap();

    assert_eq!(store.depth().await.unwrap(), 0);
    assert!(store.claim("w", LONG_LEASE).await.unwrap().is_none());
    let view = store.message(&id).await.unwrap().unwrap();
    let statuses: Vec<_> = view.recipients.iter().map(|r| (r.status, r.attempts)).collect();
    assert_eq!(statuses, vec![(RecipientStatus::Delivered, 1), (RecipientStatus::Bounced, 1)]);
    let kinds: Vec<_> = view.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventType::Delivered, EventType::Bounced]);
    assert_eq!(view.events[0].data.tags, vec!["welcome".to_string()]);
}

#[tokio::test]
async fn deferred_outcome_reschedules_the_job_at_next_attempt_at() {
    let (_dir, store) = open();
    let msg = message(&["a@example.test", "b@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let job = store.claim("w", LONG_LEASE).await.unwrap().unwrap();
    let next_attempt_at = Utc::now() + chrono::Duration::milliseconds(300);
    store
        .complete(
            &job,
            vec![
                outcome("a@example.test", DeliveryResult::Delivered),
                outcome("b@example.test", DeliveryResult::Deferred { next_attempt_at }),
            ],
        )
        .await
        .unwrap();

    assert_eq!(store.depth().await.unwrap(), 1);
    let not_before =
        count(&store, "SELECT not_before FROM jobs WHERE message_id = ?1", id.clone()).await;
    assert_eq!(not_before, to_ms(next_attempt_at));
    assert!(
        store.claim("w", LONG_LEASE).await.unwrap().is_none(),
        "not due before next_attempt_at"
    );

    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Deferred);
    assert_eq!(view.recipients[1].status, RecipientStatus::Deferred);
    assert_eq!(view.recipients[1].next_attempt_at.map(to_ms), Some(to_ms(next_attempt_at)));

    let retry = claim_eventually(&store, LONG_LEASE).await;
    assert!(to_ms(Utc::now()) >= to_ms(next_attempt_at), "claimed before it was due");
    assert_eq!(retry.job_id, job.job_id);
    assert_eq!(retry.recipients.len(), 1, "only the recipient still pending is retried");
    assert_eq!(retry.recipients[0].email, "b@example.test");
    assert_eq!(retry.recipients[0].attempts, 1);
}

#[tokio::test]
async fn expired_lease_makes_the_job_claimable_again_and_a_stale_completion_records_nothing_twice()
{
    let (_dir, store) = open();
    let msg = message(&["a@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let stale = store.claim("w1", Duration::from_millis(1)).await.unwrap().unwrap();
    let current = claim_eventually(&store, LONG_LEASE).await;
    assert_eq!(current.job_id, stale.job_id);
    assert_ne!(current.claim_token, stale.claim_token);

    store
        .complete(&current, vec![outcome("a@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();
    store
        .complete(&stale, vec![outcome("a@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();

    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(view.recipients[0].attempts, 1);
    let delivered = view.events.iter().filter(|e| e.kind == EventType::Delivered).count();
    assert_eq!(delivered, 1, "events: {:?}", view.events);
    assert_eq!(view.events.len(), 1);
    assert_eq!(store.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn stale_completion_does_not_release_a_job_another_worker_holds() {
    let (_dir, store) = open();
    store.accept(message(&["a@example.test"])).await.unwrap();

    let stale = store.claim("w1", Duration::from_millis(1)).await.unwrap().unwrap();
    let current = claim_eventually(&store, LONG_LEASE).await;
    let next_attempt_at = Utc::now() - chrono::Duration::seconds(1);
    store
        .complete(
            &stale,
            vec![outcome("a@example.test", DeliveryResult::Deferred { next_attempt_at })],
        )
        .await
        .unwrap();

    assert!(
        store.claim("w3", LONG_LEASE).await.unwrap().is_none(),
        "the re-claimed job stays leased"
    );
    assert!(store.renew(&current, LONG_LEASE).await.unwrap());
    assert!(!store.renew(&stale, LONG_LEASE).await.unwrap());
}

#[tokio::test]
async fn renew_extends_a_live_claim_and_refuses_a_stale_claim_token() {
    let (_dir, store) = open();
    let msg = message(&["a@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let job = store.claim("w", Duration::from_millis(200)).await.unwrap().unwrap();
    let before = to_ms(Utc::now());
    assert!(store.renew(&job, Duration::from_secs(3600)).await.unwrap());
    let lease_until =
        count(&store, "SELECT lease_until FROM jobs WHERE message_id = ?1", id.clone()).await;
    assert!(lease_until >= before + 3_600_000, "lease not extended: {lease_until} vs {before}");
    assert!(store.claim("w2", LONG_LEASE).await.unwrap().is_none());

    // A claim whose lease lapsed and was taken over can no longer be renewed.
    let (_dir2, store) = open();
    store.accept(message(&["b@example.test"])).await.unwrap();
    let stale = store.claim("w1", Duration::from_millis(1)).await.unwrap().unwrap();
    let current = claim_eventually(&store, LONG_LEASE).await;
    assert!(!store.renew(&stale, LONG_LEASE).await.unwrap());
    assert!(store.renew(&current, LONG_LEASE).await.unwrap());
}

#[tokio::test]
async fn events_fan_out_only_to_subscribed_webhooks() {
    let (_dir, store) = open();
    let all = store.create_webhook(webhook(vec![])).await.unwrap();
    let delivered_only = store.create_webhook(webhook(vec![EventType::Delivered])).await.unwrap();
    let bounced_only =
        store.create_webhook(webhook(vec![EventType::Bounced, EventType::Opened])).await.unwrap();
    assert_eq!(store.webhooks().await.unwrap().len(), 3);

    let id = delivered_message(&store).await;
    let view = store.message(&id).await.unwrap().unwrap();
    let event_id = view.events[0].id.clone();

    let per_endpoint = |w: &str| {
        count(&store, "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1", w.into())
    };
    assert_eq!(per_endpoint(&all.id).await, 1);
    assert_eq!(per_endpoint(&delivered_only.id).await, 1);
    assert_eq!(per_endpoint(&bounced_only.id).await, 0);

    let claimed = store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap();
    let mut endpoints: Vec<_> = claimed.iter().map(|d| d.webhook_id.clone()).collect();
    endpoints.sort();
    let mut expected = vec![all.id.clone(), delivered_only.id.clone()];
    expected.sort();
    assert_eq!(endpoints, expected);
    for d in &claimed {
        assert_eq!(d.event_id, event_id);
        assert_eq!(d.attempts, 0);
        let body: Event = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body, view.events[0], "the body is the stored event");
    }
    assert!(
        store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap().is_empty(),
        "leased deliveries are not handed out twice"
    );

    // Engagement events fan out the same way.
    store.record_hit(open_hit(&id, 0)).await.unwrap().unwrap();
    assert_eq!(per_endpoint(&all.id).await, 2);
    assert_eq!(per_endpoint(&delivered_only.id).await, 1);
    assert_eq!(per_endpoint(&bounced_only.id).await, 1);
    assert!(store.record_hit(open_hit(&id, 5)).await.unwrap().is_none());
}

#[tokio::test]
async fn finishing_a_webhook_delivery_records_success_retry_or_giving_up() {
    let (_dir, store) = open();
    for _ in 0..3 {
        store.create_webhook(webhook(vec![])).await.unwrap();
    }
    delivered_message(&store).await;
    let claimed = store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap();
    let [ok, retry, give_up] = <[WebhookDelivery; 3]>::try_from(claimed).expect("three deliveries");

    store
        .finish_webhook_delivery(
            &ok,
            WebhookAttempt {
                status: Some(200),
                error: None,
                retry_at: None,
                succeeded: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let retry_at: DateTime<Utc> = Utc::now() + chrono::Duration::milliseconds(300);
    store
        .finish_webhook_delivery(
            &retry,
            WebhookAttempt {
                status: Some(503),
                error: Some("503".into()),
                retry_at: Some(retry_at),
                succeeded: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .finish_webhook_delivery(
            &give_up,
            WebhookAttempt {
                status: None,
                error: Some("connection refused".into()),
                retry_at: None,
                succeeded: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    assert_eq!(delivery_state(&store, &ok.id).await.0, "delivered");
    assert_eq!(delivery_state(&store, &ok.id).await.1, 1);
    assert_eq!(delivery_state(&store, &retry.id).await, ("pending".into(), 1, to_ms(retry_at)));
    assert_eq!(delivery_state(&store, &give_up.id).await.0, "failed");
    assert_eq!(delivery_state(&store, &give_up.id).await.1, 1);

    assert_eq!(store.next_webhook_due().await.unwrap().map(to_ms), Some(to_ms(retry_at)));
    assert!(
        store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap().is_empty(),
        "retry is not due yet"
    );
    let again = claim_deliveries_eventually(&store).await;
    assert!(to_ms(Utc::now()) >= to_ms(retry_at));
    assert_eq!(again.len(), 1, "only the retried delivery comes back");
    assert_eq!(again[0].id, retry.id);
    assert_eq!(again[0].event_id, retry.event_id, "a retry keeps its webhook-id");
    assert_eq!(again[0].attempts, 1);

    store
        .finish_webhook_delivery(
            &again[0],
            WebhookAttempt {
                status: Some(204),
                error: None,
                retry_at: None,
                succeeded: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(delivery_state(&store, &retry.id).await.0, "delivered");
    assert_eq!(store.next_webhook_due().await.unwrap(), None);
}

#[tokio::test]
async fn deleting_a_webhook_drops_its_pending_deliveries() {
    let (_dir, store) = open();
    let kept = store.create_webhook(webhook(vec![])).await.unwrap();
    let deleted = store.create_webhook(webhook(vec![])).await.unwrap();
    delivered_message(&store).await;

    assert!(store.delete_webhook(&deleted.id).await.unwrap());
    assert!(!store.delete_webhook(&deleted.id).await.unwrap(), "already gone");
    let remaining = count(
        &store,
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1",
        deleted.id.clone(),
    )
    .await;
    assert_eq!(remaining, 0);

    let claimed = store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].webhook_id, kept.id);
    let hooks: Vec<_> = store.webhooks().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(hooks, vec![kept.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_accepts_all_succeed_and_are_readable() {
    let (_dir, store) = open();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let msg = message(&[&format!("user{i}@d{}.test", i % 7)]);
                let id = msg.id.clone();
                store.accept(msg).await.map(|()| id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task").expect("accept"));
    }

    assert_eq!(store.depth().await.unwrap(), 200);
    for id in &ids {
        let view = store.message(id).await.unwrap().expect("accepted message is readable");
        assert_eq!(view.status, RecipientStatus::Queued);
        assert_eq!(view.recipients.len(), 1);
    }
}

#[tokio::test]
async fn reopening_the_store_sees_everything_written_before_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let key = NewApiKey {
        id: "key_durable".into(),
        name: "durable".into(),
        hash: [7; 32],
        scopes: vec!["send".into()],
        created_at: Utc::now(),
        sandbox: false,
    };
    store.create_api_key(key).await.unwrap();
    let hook = store.create_webhook(webhook(vec![EventType::Deferred])).await.unwrap();
    let msg = message(&["a@example.test", "b@other.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    let job = store.claim("w", LONG_LEASE).await.unwrap().unwrap();
    let next_attempt_at = Utc::now() + chrono::Duration::hours(1);
    let email = job.recipients[0].email.clone();
    store
        .complete(&job, vec![outcome(&email, DeliveryResult::Deferred { next_attempt_at })])
        .await
        .unwrap();
    let before = store.message(&id).await.unwrap().unwrap();
    store.close();
    assert!(matches!(
        store.accept(message(&["late@example.test"])).await,
        Err(crate::StoreError::Closed)
    ));
    drop(store);

    let store = SqliteStore::open(dir.path()).unwrap();
    let after = store.message(&id).await.unwrap().expect("message survives reopen");
    assert_eq!(after, before);
    assert_eq!(after.events.len(), 1);
    assert_eq!(store.depth().await.unwrap(), 2);
    assert_eq!(store.api_key("key_durable").await.unwrap().expect("key survives").hash, [7; 32]);
    assert_eq!(store.webhooks().await.unwrap(), vec![hook]);
    assert_eq!(store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap().len(), 1);
    // The deferred job is still scheduled for later; the other domain is still due now.
    let due = store.claim("w", LONG_LEASE).await.unwrap().expect("the untouched job");
    assert_ne!(due.domain, job.domain);
    assert!(store.claim("w", LONG_LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn api_keys_can_be_created_looked_up_and_revoked() {
    let (_dir, store) = open();
    let minted = ids::mint_api_key();
    let created_at = Utc::now();
    store
        .create_api_key(NewApiKey {
            id: minted.id.clone(),
            name: "ci".into(),
            hash: minted.hash,
            scopes: vec!["send".into(), "read".into()],
            created_at,
            sandbox: false,
        })
        .await
        .unwrap();

    let record = store.api_key(&minted.id).await.unwrap().expect("key found");
    assert_eq!(record.name, "ci");
    assert_eq!(record.hash, minted.hash);
    assert_eq!(record.scopes, vec!["send".to_string(), "read".to_string()]);
    assert_eq!(to_ms(record.created_at), to_ms(created_at));
    assert!(record.revoked_at.is_none());
    assert!(!record.sandbox);
    let (_, secret) = ids::split_api_key(&minted.key).unwrap();
    assert!(ids::secret_matches(secret, &record.hash));
    assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
    assert!(store.api_key("key_unknown").await.unwrap().is_none());

    assert!(store.revoke_api_key(&minted.id).await.unwrap());
    let revoked_at = store.api_key(&minted.id).await.unwrap().unwrap().revoked_at.expect("revoked");
    assert!(store.revoke_api_key(&minted.id).await.unwrap(), "revoking twice is not an error");
    assert_eq!(
        store.api_key(&minted.id).await.unwrap().unwrap().revoked_at,
        Some(revoked_at),
        "first revocation time kept"
    );
    assert!(!store.revoke_api_key("key_unknown").await.unwrap());
}

#[tokio::test]
async fn sandbox_flag_round_trips_on_keys_and_reaches_the_claimed_job() {
    let (_dir, store) = open();
    let minted = ids::mint_api_key();
    let key = NewApiKey {
        id: minted.id.clone(),
        name: "sb".into(),
        hash: minted.hash,
        scopes: vec!["send".into()],
        created_at: Utc::now(),
        sandbox: true,
    };
    store.create_api_key(key).await.unwrap();
    assert!(store.api_key(&minted.id).await.unwrap().unwrap().sandbox);
    assert!(store.list_api_keys().await.unwrap()[0].sandbox);

    let mut sandboxed = message(&["a@sandbox.test"]);
    sandboxed.sandbox = true;
    store.accept(sandboxed).await.unwrap();
    assert!(claim_eventually(&store, LONG_LEASE).await.sandbox);
    store.accept(message(&["a@live.test"])).await.unwrap();
    assert!(!claim_eventually(&store, LONG_LEASE).await.sandbox);
}

#[tokio::test]
async fn a_database_made_before_sandbox_keys_gains_the_columns_and_reads_old_rows_as_live() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("postwire.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL, scopes TEXT NOT NULL,
                                    created_at INTEGER NOT NULL, revoked_at INTEGER);
             CREATE TABLE messages (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, request TEXT NOT NULL,
                                    message_id_header TEXT NOT NULL, key_id TEXT NOT NULL);
             INSERT INTO api_keys (id, name, hash, scopes, created_at) VALUES ('key_old', 'old', zeroblob(32), 'send', 0);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).expect("an old database opens");
    assert!(!store.api_key("key_old").await.unwrap().expect("old key kept").sandbox);
    store.close();
    drop(store);
    SqliteStore::open(dir.path()).expect("migrating twice is harmless");
}

#[tokio::test]
async fn claim_many_leases_each_due_job_once_up_to_the_limit() {
    let (_dir, store) = open();
    let msg = message(&["a@one.test", "b@two.test", "c@three.test", "d@four.test", "e@five.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let first = store.claim_many("w1", LONG_LEASE, 3).await.unwrap();
    assert_eq!(first.len(), 3, "three of five due jobs were asked for");
    let rest = store.claim_many("w2", LONG_LEASE, 10).await.unwrap();
    assert_eq!(rest.len(), 2, "only the two unleased jobs are left");
    assert!(
        store.claim_many("w3", LONG_LEASE, 10).await.unwrap().is_empty(),
        "every job is leased"
    );

    let all: Vec<&ClaimedJob> = first.iter().chain(&rest).collect();
    let mut domains: Vec<&str> = all.iter().map(|j| j.domain.as_str()).collect();
    domains.sort();
    assert_eq!(domains, ["five.test", "four.test", "one.test", "three.test", "two.test"]);
    let mut tokens: Vec<&str> = all.iter().map(|j| j.claim_token.as_str()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 5, "each job has its own claim token");
    for job in &all {
        // The request is parsed outside the writer thread and still arrives whole.
        assert_eq!(job.message_id, id);
        assert_eq!(job.request.subject, "hello");
        assert_eq!(job.recipients.len(), 1);
    }

    // Each claim in the batch is a real lease: completing one releases only that job.
    let job = &first[0];
    let email = job.recipients[0].email.clone();
    store.complete(job, vec![outcome(&email, DeliveryResult::Delivered)]).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), 4);
    assert!(store.claim_many("w3", LONG_LEASE, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_job_whose_request_is_unreadable_does_not_hold_back_its_batch_mates() {
    let (_dir, store) = open();
    let good = message(&["a@one.test"]);
    let bad = message(&["b@two.test"]);
    let (good_id, bad_id) = (good.id.clone(), bad.id.clone());
    store.accept(good).await.unwrap();
    store.accept(bad).await.unwrap();
    store
        .write(move |conn| {
            conn.execute("UPDATE messages SET request = 'not json' WHERE id = ?1", [bad_id])?;
            Ok(())
        })
        .await
        .unwrap();

    let claimed =
        store.claim_many("w", LONG_LEASE, 10).await.expect("the readable job is handed out");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message_id, good_id);
    // The unreadable job was leased with the batch: nothing is handed out again before its lease ends.
    assert!(store.claim_many("w", LONG_LEASE, 10).await.unwrap().is_empty(), "it stays leased");
}

#[cfg(unix)]
#[tokio::test]
async fn store_directory_and_database_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // As an operator's umask 022 leaves them: world-readable directory and database.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("postwire.db"), b"").unwrap();
    std::fs::set_permissions(data.join("postwire.db"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let store = SqliteStore::open(&data).unwrap();
    store.accept(message(&["a@one.test"])).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "store directory");
    for name in ["postwire.db", "postwire.db-wal", "postwire.db-shm"] {
        let path = data.join(name);
        assert!(path.exists(), "{name} exists after a write");
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    store.close();
}
