//! The distributed backend against the real RabbitMQ (127.0.0.1:5672) and Redis
//! (127.0.0.1:6379) that `.ci/run` starts. Each test works under its own namespace and
//! deletes its queues and keys when it ends, even on panic.
//!
//! Override the brokers with `POSTWIRE_TEST_AMQP_URL` / `POSTWIRE_TEST_REDIS_URL`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use postwire_proto::{Event, EventType, RecipientStatus};

use super::{DistributedStore, Options};
use crate::time::to_ms;
use crate::{
    ids, ClaimedJob, DeliveryResult, Hit, NewApiKey, NewWebhook, Queue, RecipientOutcome, State,
    StoreError, WebhookAttempt, WebhookDelivery,
};

// The message builder of the shared capability contracts, so every store test sends alike.
use crate::suppression::contract::message;

const LONG_LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(15);

fn amqp_url() -> String {
    std::env::var("POSTWIRE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn redis_url() -> String {
    std::env::var("POSTWIRE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A namespace of its own; everything under it is deleted on drop.
struct Ns(String);

impl Ns {
    fn new() -> Self {
        Self(format!("pwtest_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    }

    fn options(&self) -> Options {
        Options {
            op_timeout: Duration::from_secs(3),
            ..Options::new(&amqp_url(), &redis_url(), &self.0)
        }
    }

    async fn store(&self) -> DistributedStore {
        self.store_with(self.options()).await
    }

    async fn store_with(&self, options: Options) -> DistributedStore {
        DistributedStore::connect(&options).await.expect("connect")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let options = self.options();
        // A fresh runtime on its own thread: the test's runtime may be gone or panicking.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(store) = DistributedStore::connect(&options).await {
                    if let Err(e) = store.destroy_namespace().await {
                        eprintln!("cleanup of {} failed: {e}", options.namespace);
                    }
                }
            });
        })
        .join();
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

async fn redis_query<T: redis::FromRedisValue>(
    store: &DistributedStore,
    cmd: &mut redis::Cmd,
) -> T {
    let mut con = store.redis().await.expect("redis");
    cmd.query_async(&mut con).await.expect("redis query")
}

/// Pending deliveries queued for one endpoint.
async fn pending_for(store: &DistributedStore, webhook_id: &str) -> u64 {
    let key = format!("{}:pending", store.inner.keys.webhook(webhook_id));
    redis_query(store, redis::cmd("SCARD").arg(key)).await
}

async fn delivery_state(store: &DistributedStore, id: &str) -> (String, i64, i64) {
    let key = store.inner.keys.webhook_delivery(id);
    let (state, attempts, next): (String, i64, i64) = redis_query(
        store,
        redis::cmd("HMGET").arg(key).arg("state").arg("attempts").arg("next_attempt_at"),
    )
    .await;
    (state, attempts, next)
}

async fn claim_eventually(store: &DistributedStore, lease: Duration) -> ClaimedJob {
    let start = Instant::now();
    loop {
        if let Some(job) = store.claim("w", lease).await.expect("claim") {
            return job;
        }
        assert!(start.elapsed() < DEADLINE, "no job became claimable in time");
    }
}

async fn claim_deliveries_eventually(store: &DistributedStore) -> Vec<WebhookDelivery> {
    let start = Instant::now();
    loop {
        let claimed =
            store.claim_webhook_deliveries(10, LONG_LEASE).await.expect("claim deliveries");
        if !claimed.is_empty() {
            return claimed;
        }
        assert!(start.elapsed() < DEADLINE, "no webhook delivery became due in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn delivered_message(store: &DistributedStore) -> String {
    let msg = message(&["rcpt@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    let job = claim_eventually(store, LONG_LEASE).await;
    store
        .complete(&job, vec![outcome("rcpt@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();
    id
}

/// Messages ready in one of this store's queues, read from the broker.
async fn ready_in(store: &DistributedStore, queue: &str) -> u32 {
    let broker = store.broker().await.expect("broker");
    let passive =
        QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
    broker
        .publisher
        .queue_declare(queue, passive, FieldTable::default())
        .await
        .expect("passive declare")
        .message_count()
}

#[tokio::test]
async fn accepted_message_yields_one_job_per_recipient_domain_claimable_once() {
    let ns = Ns::new();
    let store = ns.store().await;
    let msg = message(&["a@one.test", "b@two.test", "c@one.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), 2);

    let first = claim_eventually(&store, LONG_LEASE).await;
    let second = claim_eventually(&store, LONG_LEASE).await;
    assert!(store.claim("w3", LONG_LEASE).await.unwrap().is_none(), "both jobs are claimed");
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
    assert_eq!(store.depth().await.unwrap(), 2, "claimed jobs count until completed");
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Queued);
    assert_eq!(view.recipients.len(), 3);
}

#[tokio::test]
async fn delivered_and_bounced_outcomes_finish_the_job() {
    let ns = Ns::new();
    let store = ns.store().await;
    let msg = message(&["a@example.test", "b@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let job = claim_eventually(&store, LONG_LEASE).await;
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
    assert_eq!(view.status, RecipientStatus::Delivered);
    let statuses: Vec<_> = view.recipients.iter().map(|r| (r.status, r.attempts)).collect();
    assert_eq!(statuses, vec![(RecipientStatus::Delivered, 1), (RecipientStatus::Bounced, 1)]);
    assert_eq!(view.recipients[0].last_response.as_deref(), Some("250 ok"));
    let kinds: Vec<_> = view.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EventType::Delivered, EventType::Bounced]);
    assert_eq!(view.events[0].data.tags, vec!["welcome".to_string()]);
    assert_eq!(view.events[0].data.attempt, Some(1), "the attempt placeholder was filled in");
    assert_eq!(view.events[0].data.mx_host.as_deref(), Some("mx.test"));
    assert_eq!(ready_in(&store, &store.inner.keys.deliveries_queue()).await, 0);
}

#[tokio::test]
async fn deferred_job_comes_back_after_its_delay_through_the_retry_queue() {
    let ns = Ns::new();
    let store = ns.store().await;
    let msg = message(&["a@example.test", "b@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let job = claim_eventually(&store, LONG_LEASE).await;
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
    assert_eq!(
        ready_in(&store, &store.inner.keys.retry_queue(1_000)).await,
        1,
        "waiting in the 1 s delay queue"
    );
    assert!(
        store.claim("w", LONG_LEASE).await.unwrap().is_none(),
        "not due before next_attempt_at"
    );

    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Deferred);
    assert_eq!(view.recipients[1].status, RecipientStatus::Deferred);
    assert_eq!(view.recipients[1].next_attempt_at.map(to_ms), Some(to_ms(next_attempt_at)));
    assert_eq!(view.events[1].data.next_attempt_at, Some(next_attempt_at));

    let retry = claim_eventually(&store, LONG_LEASE).await;
    assert!(to_ms(Utc::now()) >= to_ms(next_attempt_at), "claimed before it was due");
    assert_eq!(retry.job_id, job.job_id);
    assert_eq!(retry.recipients.len(), 1, "only the recipient still pending is retried");
    assert_eq!(retry.recipients[0].email, "b@example.test");
    assert_eq!(retry.recipients[0].attempts, 1);

    store
        .complete(&retry, vec![outcome("b@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();
    let view = store.message(&id).await.unwrap().unwrap();
    assert_eq!(view.status, RecipientStatus::Delivered);
    assert_eq!(view.recipients[1].attempts, 2);
    assert_eq!(view.events.last().unwrap().data.attempt, Some(2));
    assert_eq!(store.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn a_crashed_workers_claim_is_redelivered_to_another_and_a_stale_completion_records_nothing_twice(
) {
    let ns = Ns::new();
    let crashed = ns.store().await;
    let msg = message(&["a@example.test"]);
    let id = msg.id.clone();
    crashed.accept(msg).await.unwrap();
    let stale = claim_eventually(&crashed, Duration::from_millis(500)).await;

    // The worker dies without acking: its connection closes and the broker requeues the job,
    // which waits out the dead worker's lease before another consumer runs it.
    let survivor = ns.store().await;
    crashed.close().await;
    let current = claim_eventually(&survivor, LONG_LEASE).await;
    assert_eq!(current.job_id, stale.job_id);
    assert_ne!(current.claim_token, stale.claim_token);
    assert!(
        !crashed.renew(&stale, LONG_LEASE).await.unwrap(),
        "the dead worker's lease was taken over"
    );
    assert!(survivor.renew(&current, LONG_LEASE).await.unwrap());

    survivor
        .complete(&current, vec![outcome("a@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();
    crashed
        .complete(&stale, vec![outcome("a@example.test", DeliveryResult::Delivered)])
        .await
        .unwrap();

    let view = survivor.message(&id).await.unwrap().unwrap();
    assert_eq!(view.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(view.recipients[0].attempts, 1);
    assert_eq!(view.events.len(), 1, "events: {:?}", view.events);
    assert_eq!(survivor.depth().await.unwrap(), 0);
    assert!(survivor.claim("w", LONG_LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn an_expired_lease_makes_the_job_claimable_again_within_one_process() {
    let ns = Ns::new();
    let store = ns.store().await;
    let msg = message(&["a@example.test"]);
    let id = msg.id.clone();
    store.accept(msg).await.unwrap();

    let stale = claim_eventually(&store, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
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
    assert_eq!(view.recipients[0].attempts, 1);
    assert_eq!(view.events.len(), 1);
    assert_eq!(store.depth().await.unwrap(), 0);
    assert!(store.claim("w", LONG_LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn stale_completion_does_not_reschedule_a_job_another_worker_holds() {
    let ns = Ns::new();
    let crashed = ns.store().await;
    crashed.accept(message(&["a@example.test"])).await.unwrap();
    let stale = claim_eventually(&crashed, Duration::from_millis(1)).await;
    let survivor = ns.store().await;
    crashed.close().await;
    let current = claim_eventually(&survivor, LONG_LEASE).await;

    let next_attempt_at = Utc::now() - chrono::Duration::seconds(1);
    crashed
        .complete(
            &stale,
            vec![outcome("a@example.test", DeliveryResult::Deferred { next_attempt_at })],
        )
        .await
        .unwrap();

    assert!(
        survivor.claim("w3", LONG_LEASE).await.unwrap().is_none(),
        "the re-claimed job is not handed out again"
    );
    assert!(survivor.renew(&current, LONG_LEASE).await.unwrap());
    assert!(!crashed.renew(&stale, LONG_LEASE).await.unwrap());
    assert_eq!(current.recipients[0].attempts, 0);
}

#[tokio::test]
async fn renew_extends_the_lease_of_a_live_claim() {
    let ns = Ns::new();
    let store = ns.store().await;
    let msg = message(&["a@example.test"]);
    store.accept(msg).await.unwrap();
    let job = claim_eventually(&store, Duration::from_millis(200)).await;
    assert!(store.renew(&job, Duration::from_secs(3600)).await.unwrap());
    let pttl: i64 = redis_query(
        &store,
        redis::cmd("PTTL").arg(store.inner.keys.lease(&job.message_id, &job.domain)),
    )
    .await;
    assert!(pttl > 3_500_000, "lease not extended: {pttl} ms left");
    // A lapsed lease nobody took over is still ours.
    assert!(store.renew(&job, Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.renew(&job, LONG_LEASE).await.unwrap());
}

#[tokio::test]
async fn an_unreadable_job_is_dead_lettered_not_retried() {
    let ns = Ns::new();
    let store = ns.store().await;
    let broker = store.broker().await.unwrap();
    broker
        .publisher
        .basic_publish(
            "",
            &store.inner.keys.deliveries_queue(),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(store.claim("w", LONG_LEASE).await.unwrap().is_none());
    let start = Instant::now();
    while ready_in(&store, &store.inner.keys.dead_queue()).await == 0 {
        assert!(start.elapsed() < DEADLINE, "poison job never reached the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready_in(&store, &store.inner.keys.deliveries_queue()).await, 0);
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_is_dead_lettered_after_the_delivery_limit() {
    let ns = Ns::new();
    let limited = Options { delivery_limit: 1, ..ns.options() };
    let sender = ns.store_with(limited.clone()).await;
    sender.accept(message(&["a@example.test"])).await.unwrap();
    sender.close().await;
    // Workers die holding the job, one after another, until the broker stops handing it out.
    let mut deaths = 0;
    loop {
        let store = ns.store_with(limited.clone()).await;
        let start = Instant::now();
        let mut claimed = None;
        while claimed.is_none() && start.elapsed() < Duration::from_secs(3) {
            claimed = store.claim("w", Duration::from_millis(1)).await.unwrap();
        }
        store.close().await;
        if claimed.is_none() {
            break;
        }
        deaths += 1;
        assert!(deaths <= 3, "the job keeps coming back after {deaths} crashed workers");
    }
    assert!(deaths >= 1);
    let observer = ns.store_with(limited).await;
    let start = Instant::now();
    while ready_in(&observer, &observer.inner.keys.dead_queue()).await == 0 {
        assert!(start.elapsed() < DEADLINE, "the poison job was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(observer.claim("w", LONG_LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn store_reconnects_after_losing_its_broker_connection() {
    let ns = Ns::new();
    let store = ns.store().await;
    store.accept(message(&["a@example.test"])).await.unwrap();
    let before = store.broker().await.unwrap();
    before.connection.close(320, "simulated broker restart").await.unwrap();
    drop(before);

    let start = Instant::now();
    loop {
        match store.accept(message(&["b@example.test"])).await {
            Ok(()) => break,
            Err(StoreError::Unavailable { backend: "rabbitmq", .. }) => {}
            Err(e) => panic!("unexpected error while reconnecting: {e}"),
        }
        assert!(start.elapsed() < DEADLINE, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.generation() >= 2);
    let first = claim_eventually(&store, LONG_LEASE).await;
    let second = claim_eventually(&store, LONG_LEASE).await;
    assert_ne!(first.message_id, second.message_id, "both jobs survive the reconnect");
    store.ping().await.unwrap();
}

#[tokio::test]
async fn events_fan_out_only_to_subscribed_webhooks() {
    let ns = Ns::new();
    let store = ns.store().await;
    let all = store.create_webhook(webhook(vec![])).await.unwrap();
    let delivered_only = store.create_webhook(webhook(vec![EventType::Delivered])).await.unwrap();
    let bounced_only =
        store.create_webhook(webhook(vec![EventType::Bounced, EventType::Opened])).await.unwrap();
    let listed: Vec<_> = store
        .webhooks()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.events, to_ms(w.created_at)))
        .collect();
    let created: Vec<_> = [&all, &delivered_only, &bounced_only]
        .map(|w| (w.id.clone(), w.events.clone(), to_ms(w.created_at)))
        .to_vec();
    assert_eq!(listed, created, "listed oldest first, as stored");

    let id = delivered_message(&store).await;
    let view = store.message(&id).await.unwrap().unwrap();
    let event_id = view.events[0].id.clone();
    assert_eq!(pending_for(&store, &all.id).await, 1);
    assert_eq!(pending_for(&store, &delivered_only.id).await, 1);
    assert_eq!(pending_for(&store, &bounced_only.id).await, 0);

    let claimed = store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap();
    let mut endpoints: Vec<_> = claimed.iter().map(|d| d.webhook_id.clone()).collect();
    endpoints.sort();
    let mut expected = vec![all.id.clone(), delivered_only.id.clone()];
    expected.sort();
    assert_eq!(endpoints, expected);
    for d in &claimed {
        assert_eq!(d.event_id, event_id);
        assert_eq!(d.attempts, 0);
        assert!(d.secret.starts_with("whsec_"));
        let body: Event = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body, view.events[0], "the body is the stored event");
    }
    assert!(
        store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap().is_empty(),
        "leased deliveries are not handed out twice"
    );

    let opened = store.record_hit(open_hit(&id, 0)).await.unwrap().unwrap();
    assert_eq!(pending_for(&store, &all.id).await, 2);
    assert_eq!(pending_for(&store, &delivered_only.id).await, 1);
    assert_eq!(pending_for(&store, &bounced_only.id).await, 1);
    assert_eq!(store.message(&id).await.unwrap().unwrap().events.last(), opened.event.as_ref());
    assert!(store.record_hit(open_hit(&id, 5)).await.unwrap().is_none());
    assert!(store.record_hit(open_hit("msg_unknown", 0)).await.unwrap().is_none());
}

#[tokio::test]
async fn finishing_a_webhook_delivery_records_success_retry_or_giving_up() {
    let ns = Ns::new();
    let store = ns.store().await;
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
async fn an_expired_webhook_lease_hands_the_delivery_out_again() {
    let ns = Ns::new();
    let store = ns.store().await;
    store.create_webhook(webhook(vec![])).await.unwrap();
    delivered_message(&store).await;
    let first = store.claim_webhook_deliveries(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(first.len(), 1);
    let again = claim_deliveries_eventually(&store).await;
    assert_eq!(again[0].id, first[0].id);
}

#[tokio::test]
async fn deleting_a_webhook_drops_its_pending_deliveries() {
    let ns = Ns::new();
    let store = ns.store().await;
    let kept = store.create_webhook(webhook(vec![])).await.unwrap();
    let deleted = store.create_webhook(webhook(vec![])).await.unwrap();
    delivered_message(&store).await;

    assert!(store.delete_webhook(&deleted.id).await.unwrap());
    assert!(!store.delete_webhook(&deleted.id).await.unwrap(), "already gone");
    assert_eq!(pending_for(&store, &deleted.id).await, 0);

    let claimed = store.claim_webhook_deliveries(10, LONG_LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].webhook_id, kept.id);
    let hooks: Vec<_> = store.webhooks().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(hooks, vec![kept.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_accepts_all_succeed_and_are_readable() {
    let ns = Ns::new();
    let store = ns.store().await;
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
    let start = Instant::now();
    while ready_in(&store, &store.inner.keys.deliveries_queue()).await + prefetched(&store) < 200 {
        assert!(start.elapsed() < DEADLINE, "not every job reached the broker");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deliveries the broker has pushed to this store's consumer but nobody claimed yet are not
/// "ready" any more; the prefetch bounds them.
fn prefetched(store: &DistributedStore) -> u32 {
    u32::from(store.inner.options.prefetch)
}

#[tokio::test]
async fn api_keys_can_be_created_looked_up_and_revoked() {
    let ns = Ns::new();
    let store = ns.store().await;
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
    assert_eq!(record.id, minted.id);
    assert_eq!(record.name, "ci");
    assert_eq!(record.hash, minted.hash);
    assert_eq!(record.scopes, vec!["send".to_string(), "read".to_string()]);
    assert_eq!(to_ms(record.created_at), to_ms(created_at));
    assert!(record.revoked_at.is_none());
    assert!(!record.sandbox);
    assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
    assert!(store.api_key("key_unknown").await.unwrap().is_none());
    let duplicate = NewApiKey {
        id: minted.id.clone(),
        name: "again".into(),
        hash: [0; 32],
        scopes: vec![],
        created_at,
        sandbox: false,
    };
    assert!(store.create_api_key(duplicate).await.is_err(), "ids are unique");

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
async fn ping_names_the_backend_that_is_down() {
    let ns = Ns::new();
    let healthy = ns.store().await;
    healthy.ping().await.expect("both backends up");

    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let no_broker = DistributedStore::connect(&Options {
        amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        ..ns.options()
    })
    .await
    .expect("an unreachable broker is not a start-up error");
    match no_broker.ping().await {
        Err(StoreError::Unavailable { backend: "rabbitmq", .. }) => {}
        other => panic!("expected rabbitmq unavailable, got {other:?}"),
    }
    assert!(matches!(
        no_broker.accept(message(&["a@example.test"])).await,
        Err(StoreError::Unavailable { backend: "rabbitmq", .. })
    ));

    let no_redis = DistributedStore::connect(&Options {
        redis_url: "redis://127.0.0.1:1".into(),
        ..ns.options()
    })
    .await
    .unwrap();
    match no_redis.ping().await {
        Err(e @ StoreError::Unavailable { backend: "redis", .. }) => {
            assert!(e.to_string().starts_with("redis"))
        }
        other => panic!("expected redis unavailable, got {other:?}"),
    }
    assert!(matches!(
        no_redis.message("msg_x").await,
        Err(StoreError::Unavailable { backend: "redis", .. })
    ));
    no_redis.close().await;
}

#[tokio::test]
async fn sandbox_flag_round_trips_on_keys_and_reaches_the_claimed_job() {
    let ns = Ns::new();
    let store = ns.store().await;
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
