//! The queue/state seam every Postwire service is built on, and its backends.
//!
//! Two traits split the work: [`Queue`] holds delivery jobs (accept, claim under a lease,
//! complete) and [`State`] holds everything else that must be shared (API keys, message and
//! recipient status, event history, webhook endpoints and the webhook outbox). A backend
//! implements both; the embedded one ([`embedded::SqliteStore`]) keeps them in one SQLite file so
//! a status change, its event and the webhook deliveries it causes commit together.
//!
//! - [`model`]: the values passed across the seam.
//! - [`embedded`]: SQLite in WAL mode with a group-committing writer thread.
//! - [`distributed`]: RabbitMQ for delivery jobs, Redis for everything else, for several
//!   gateways, workers and dispatchers on several machines.
//! - [`copies`]: the rendered, signed copies of each message ([`Copies`]), for `/raw` and POP3.
//! - [`domain`]: sending domains and their DKIM keys ([`Domains`]), signed with by the workers.
//! - [`ids`]: identifiers and API key material.
//! - [`suppression`]: the suppression list ([`Suppressions`]), screened at acceptance.
//! - [`ratelimit`]: per-API-key request and message limits ([`RateLimiter`]).
//! - [`messages`]: scheduled sending rules, message search and cancel ([`Messages`]), and which
//!   messages an API key may see ([`Visibility`]).
//! - [`engagement`]: opens and clicks folded per recipient and link, and when a hit emits an event.
//! - [`feedback`]: bounces and complaints that come back, and what each changes.
//! - [`template`]: stored templates ([`Templates`]) that the API renders into sends.
//! - [`retention`]: what `storage.retention` prunes, in small batches ([`Retention`]).
//! - [`webhook_log`]: the per-endpoint delivery log, replay, enable/disable and the event
//!   pull API ([`WebhookLog`]).

/// Runs each named contract test of the calling module against both backends: in a module
/// `embedded` on a fresh SQLite file in a temporary directory, and in a module `distributed`
/// under a namespace of its own on the local Redis and RabbitMQ (see `distributed::test_ns`).
/// Each name is an `async fn(&Store)` of the calling module; a suite is written once and listed
/// once.
#[cfg(test)]
#[macro_export]
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = $crate::embedded::temp_store();
                    super::$name(&store).await;
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test]
                async fn $name() {
                    let ns = $crate::distributed::test_ns::TestNs::new().await;
                    super::$name(&ns.store).await;
                }
            )*
        }
    };
}

pub mod copies;
pub mod distributed;
pub mod domain;
pub mod embedded;
pub mod engagement;
pub mod feedback;
pub mod idempotency;
pub mod ids;
pub mod messages;
pub mod model;
pub mod ratelimit;
pub mod retention;
pub mod sealing;
pub mod suppression;
pub mod template;
mod time;
pub mod webhook_log;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{Event, MessageView, Webhook};

pub use copies::{Copies, PopMarks, SentCopy};
pub use domain::{Domains, SendingDomain};
pub use engagement::{Hit, HitRecorded};
pub use feedback::{Feedback, FeedbackRecorded, Report};
pub use idempotency::*;
pub use messages::{
    Cancel, MessageCursor, MessageOwner, MessagePage, MessageQuery, Messages, Visibility,
};
pub use model::*;
pub use ratelimit::RateLimiter;
pub use retention::{Pruned, Retention};
pub use suppression::{NewSuppression, SuppressionCursor, SuppressionPage, Suppressions};
pub use template::{new_template, TemplateCursor, TemplatePage, TemplateWrite, Templates};
pub use webhook_log::{DeliveryPage, EventPage, EventQuery, WebhookLog};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("cannot open store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A secret stored encrypted could not be opened (see [`sealing`]).
    #[error("{0}")]
    Sealing(String),
    #[error("the store is shutting down")]
    Closed,
    /// The disk under the embedded store is full: nothing was written; the same write may
    /// succeed once space is freed.
    #[error("the disk holding the store is full")]
    DiskFull,
    #[error("not found")]
    NotFound,
    /// An accept carried an idempotent answer for a record its caller no longer owns (the
    /// lease lapsed and another request took the key over): nothing was stored.
    #[error("the Idempotency-Key record is no longer this request's")]
    IdempotencyLost,
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A backend cannot be reached right now (down, restarting, or not answering in time);
    /// the operation may succeed later. `backend` is `"rabbitmq"`, `"redis"`, or both.
    #[error("{backend} is unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
}

/// Delivery jobs: one per (message, recipient domain) that still has recipients pending.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Stores the message, its recipients and one job per recipient domain. Durable on return:
    /// the caller may answer 202 as soon as this resolves. A message whose id is already stored
    /// is not stored again (a request retried after a crash with [`ids::derived_id`] ids):
    /// that accept succeeds and changes nothing.
    /// With a future `request.send_at` the recipients are stored `scheduled` and no job is
    /// claimable before then (see [`messages`]).
    async fn accept(&self, message: NewMessage) -> Result<(), StoreError>;

    /// Hands out the next due job under a lease of `lease`, or `None` when nothing is due.
    /// Only recipients not yet in a final state are included.
    async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<ClaimedJob>, StoreError>;

    /// Hands out up to `max` due jobs in one round trip, each under its own lease of `lease`;
    /// empty when nothing is due. A worker with several free slots claims them all at once
    /// instead of waiting for one claim after another. The default claims one.
    async fn claim_many(
        &self,
        worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let _ = max;
        Ok(self.claim(worker, lease).await?.into_iter().collect())
    }

    /// Records each recipient's outcome with its event (and the webhook deliveries it causes),
    /// then deletes the job, or reschedules it at the earliest `next_attempt_at` of the
    /// deferred recipients. Outcomes for recipients already final are ignored, so a job run
    /// twice after a lease expiry cannot report a recipient delivered twice.
    async fn complete(
        &self,
        job: &ClaimedJob,
        outcomes: Vec<RecipientOutcome>,
    ) -> Result<(), StoreError>;

    /// Extends a claim's lease to `lease` from now while its delivery is still running, so a
    /// short lease (quick recovery after a crash) never expires under a slow transaction.
    /// False when the claim was lost (the lease had already expired and the job moved on).
    async fn renew(&self, job: &ClaimedJob, lease: Duration) -> Result<bool, StoreError>;

    /// Waits until new work may be claimable, or at most `max`.
    async fn wait_for_work(&self, max: Duration);

    /// Jobs not yet finished (queued, deferred or in flight).
    async fn depth(&self) -> Result<u64, StoreError>;

    /// Finds jobs no copy of which is left to be handed out — a retry copy lost in a broker
    /// crash — and queues them again: any unfinished job that no worker holds and that was due
    /// more than `overdue` ago, while nothing waits to be claimed. Returns how many it
    /// re-queued. Only a backend whose jobs live apart from their state can lose one; the
    /// embedded store's claims read the state itself, so it never has any.
    async fn recover_lost_jobs(&self, overdue: Duration) -> Result<u64, StoreError> {
        let _ = overdue;
        Ok(0)
    }
}

/// Shared state other than the delivery queue.
#[async_trait]
pub trait State: Send + Sync + 'static {
    /// Confirms the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_api_key(&self, key: NewApiKey) -> Result<(), StoreError>;
    /// Looks a key up by its public id; the caller compares the secret's hash in constant time.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Returns false when no such key exists.
    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError>;

    /// A message with every recipient's status and its event history, oldest event first.
    async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError>;

    /// Who sent a message (for the key boundaries of the API). `None` when unknown.
    async fn message_owner(&self, id: &str) -> Result<Option<MessageOwner>, StoreError>;

    /// Records one hit on a live tracking link: counts it in its engagement and, when
    /// [`engagement`]'s rule says so, stores its event and queues it for every subscribed
    /// webhook, in one atomic step. `None` when the message or recipient is unknown.
    async fn record_hit(&self, hit: Hit) -> Result<Option<HitRecorded>, StoreError>;

    /// Records a bounce or complaint about one recipient's copy as [`feedback`]'s rule says:
    /// the status change, the event and its webhook deliveries, and the suppression entry, in
    /// one atomic step. `None` when the message or recipient is unknown.
    async fn record_feedback(
        &self,
        feedback: Feedback,
    ) -> Result<Option<FeedbackRecorded>, StoreError>;

    async fn create_webhook(&self, webhook: NewWebhook) -> Result<Webhook, StoreError>;
    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    /// Removes the endpoint and drops its pending deliveries. False when unknown.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    /// Claims up to `limit` webhook deliveries that are due, each under a lease of `lease`.
    async fn claim_webhook_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Records the result of one delivery attempt in the delivery and its log, and the
    /// endpoint's failure streak: returns when its current run of failed attempts began
    /// (`None` after a success). See [`webhook_log`].
    async fn finish_webhook_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: WebhookAttempt,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Disables endpoint `id` (its pending deliveries end `failed`) and stores `event` (a
    /// `webhook.disabled`), queued for every other enabled endpoint, in one atomic step. False
    /// when the endpoint is unknown or already disabled (then nothing is stored).
    async fn disable_webhook(&self, id: &str, event: Event) -> Result<bool, StoreError>;

    /// When the next webhook delivery falls due, if any is pending.
    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
}
