//! The distributed backend: delivery jobs on RabbitMQ, everything else in Redis.
//!
//! Several gateways, workers and dispatchers share one RabbitMQ vhost and one Redis under a
//! namespace (`postwire` in production). The observable behaviour is the embedded backend's:
//! the same [`Queue`](crate::Queue) and [`State`](crate::State) contracts, the same event JSON.
//!
//! How a job moves:
//!
//! 1. `accept` writes the message and its recipients to Redis in one `MULTI`, then publishes
//!    one persistent job per recipient domain and waits for the broker's confirms: a 202 means
//!    both are durable. If a publish fails the Redis write is undone (best effort) and the
//!    caller gets an error.
//! 2. `claim` takes a delivery from the consumer (manual ack, bounded prefetch) and, in one Lua
//!    script, loads the recipients still pending and takes a Redis lease
//!    (`{ns}:lease:{message}:{domain}`, `PX` = the worker's lease, extended by `renew`). The lease
//!    makes a job exclusive even when RabbitMQ holds two copies of it (a redelivery after a
//!    connection loss racing a retry): a copy that finds the lease taken, or every pending
//!    recipient not yet due, is re-published to a delay queue and acked, never run.
//! 3. `complete` applies the outcomes, appends their events and queues the webhook deliveries
//!    they cause in one Lua script (recipients already final are left alone, so a job run twice
//!    records nothing twice), releases the lease, then publishes the retry (if recipients
//!    remain deferred) and waits for its confirm, and only then acks the delivery.
//!
//! A worker that dies holding a job: RabbitMQ returns its unacked deliveries when the
//! connection drops; the copy is re-delayed until the dead worker's Redis lease lapses, then
//! runs. Poison jobs (returned more than [`Options::delivery_limit`] times, or
//! unreadable) are dead-lettered to `{ns}.deliveries.dead` instead of looping.
//!
//! Connections recover by themselves: Redis through `ConnectionManager`; RabbitMQ through a
//! reconnect on the next use after a failure (new connection, topology re-declared, consumer
//! re-created; at most one attempt per [`RECONNECT_EVERY`]). Every broker and Redis call is
//! bounded by [`Options::op_timeout`]; meanwhile calls fail with
//! [`StoreError::Unavailable`] naming the backend.
//!
//! - [`keys`]: the Redis key schema and queue names (read this first if you operate it).
//! - `scripts`: the Lua scripts that make each multi-key change atomic.
//! - `queue`: the [`Queue`](crate::Queue) implementation.
//! - `state`: the [`State`](crate::State) implementation.
//! - `suppression`: the [`Suppressions`](crate::Suppressions) implementation and accept-time screening.
//! - `messages`: the [`Messages`](crate::Messages) implementation (search index, cancel).
//! - `engagement`: engagement records (opens, clicks) and the events they emit.
//! - `template`: the [`Templates`](crate::Templates) implementation.
//! - `ratelimit`: the [`RateLimiter`](crate::RateLimiter) implementation (one Lua script).
//! - `domain`: the [`Domains`](crate::Domains) implementation (sending domains and their keys).
//! - `retention`: the [`Retention`](crate::Retention) implementation (expiry once finished).

mod copies;
mod domain;
mod engagement;
mod feedback;
mod idempotency;
pub mod keys;
mod messages;
mod queue;
mod ratelimit;
mod retention;
mod scripts;
mod state;
mod suppression;
mod sweeper;
mod template;
#[cfg(test)]
pub(crate) mod test_ns;
#[cfg(test)]
mod tests;
mod webhook_log;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::acker::Acker;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::StoreError;
use keys::{Keys, RETRY_STEPS_MS};

/// At most one RabbitMQ reconnect attempt this often, so a down broker is not hammered.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

pub(crate) const RABBITMQ: &str = "rabbitmq";
pub(crate) const REDIS: &str = "redis";

/// Where the backend lives and how it behaves; see [`Options::from_settings`].
/// `Debug` leaves the URLs out: they may carry passwords.
#[derive(Clone)]
pub struct Options {
    /// `amqp.url`: plain `amqp://` (no TLS support is compiled in).
    pub amqp_url: String,
    /// `redis.url`.
    pub redis_url: String,
    /// `storage.namespace`: prefix of every Redis key and queue name (see [`keys`]).
    pub namespace: String,
    /// Deliveries RabbitMQ hands this process before any is acked (`basic.qos`); the
    /// worker's concurrency.
    pub prefetch: u16,
    /// `storage.retention`: how long a message, its recipients and events (and a finished
    /// webhook delivery) are kept after their last change.
    pub retention: Duration,
    /// Upper bound on every single RabbitMQ or Redis call.
    pub op_timeout: Duration,
    /// Returns (nack, or the consumer's connection dying) after which a job is dead-lettered
    /// to `{ns}.deliveries.dead` as poison. Every process sharing a namespace must use the same
    /// value: RabbitMQ refuses to re-declare a queue with other arguments.
    pub delivery_limit: u32,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("namespace", &self.namespace)
            .field("prefetch", &self.prefetch)
            .field("retention", &self.retention)
            .field("op_timeout", &self.op_timeout)
            .field("delivery_limit", &self.delivery_limit)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Defaults for everything but where the backends are.
    pub fn new(amqp_url: &str, redis_url: &str, namespace: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_string(),
            redis_url: redis_url.to_string(),
            namespace: namespace.to_string(),
            prefetch: 32,
            retention: Duration::from_secs(30 * 24 * 3600),
            op_timeout: Duration::from_secs(5),
            delivery_limit: 20,
        }
    }

    /// From `amqp.url`, `redis.url`, `storage.namespace`, `storage.retention` and
    /// `worker.concurrency` (the prefetch).
    pub fn from_settings(settings: &postwire_config::Settings) -> Self {
        Self {
            prefetch: u16::try_from(settings.worker.concurrency.max(1)).unwrap_or(u16::MAX),
            retention: settings.storage.retention.std(),
            ..Self::new(
                settings.amqp.url.expose(),
                settings.redis.url.expose(),
                &settings.storage.namespace,
            )
        }
    }
}

/// Queue on RabbitMQ and state in Redis. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct DistributedStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) keys: Keys,
    pub(crate) options: Options,
    redis_client: redis::Client,
    /// Made on first use (Redis may be down at start-up); reconnects by itself after that.
    redis: tokio::sync::Mutex<Option<ConnectionManager>>,
    broker: Mutex<Option<Arc<Broker>>>,
    /// Serialises reconnects; holds when the last failed attempt was made.
    reconnect: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
    /// Deliveries handed out by `claim` and not yet acked, by claim token.
    pub(crate) claims: Mutex<HashMap<String, HeldClaim>>,
    /// Deliveries taken from the consumer that could not be looked up (Redis down): tried
    /// again first by the next claim instead of being returned to the broker, which would
    /// count against the delivery limit.
    pub(crate) parked: Mutex<Vec<lapin::message::Delivery>>,
    /// Where pruning left off in `{ns}:search` (see `retention`).
    pub(crate) prune_cursor: Mutex<Option<String>>,
    closed: AtomicBool,
}

/// One delivery handed to a worker.
pub(crate) struct HeldClaim {
    pub(crate) generation: u64,
    /// The worker's lease, extended by `renew`. A claim left past it (its worker gave up on it
    /// without completing) is returned to the broker by the next `claim`, as the embedded
    /// backend makes an expired job claimable again; otherwise it would sit unacked until the
    /// broker's consumer timeout.
    pub(crate) lease_until: Instant,
    pub(crate) acker: Acker,
    pub(crate) payload: Vec<u8>,
}

/// One live RabbitMQ connection with its channels.
pub(crate) struct Broker {
    pub(crate) generation: u64,
    connection: Connection,
    /// Confirm mode: every publish is awaited until the broker has it.
    pub(crate) publisher: Channel,
    consumer_channel: Channel,
    /// Started by the first `claim`, not at connect: a process that never claims (the API
    /// gateway, the webhook dispatcher) must not sit on prefetched jobs it will never run.
    consumer: tokio::sync::Mutex<Option<Consumer>>,
    deliveries_queue: String,
    broken: AtomicBool,
}

impl Broker {
    /// The delivery consumer, started on first use.
    pub(crate) async fn consumer(
        &self,
    ) -> lapin::Result<tokio::sync::MappedMutexGuard<'_, Consumer>> {
        let mut slot = self.consumer.lock().await;
        if slot.is_none() {
            let consumer = self
                .consumer_channel
                .basic_consume(
                    &self.deliveries_queue,
                    "",
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            *slot = Some(consumer);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| c.as_mut().expect("consumer started above")))
    }

    fn healthy(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && self.connection.status().connected()
            && self.publisher.status().connected()
            && self.consumer_channel.status().connected()
    }

    /// Marks the connection unusable; the next operation reconnects.
    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }
}

impl DistributedStore {
    /// Connects to RabbitMQ and Redis and declares the queues under `options.namespace`.
    ///
    /// A malformed URL is an error. An unreachable backend is not: it is logged, and every
    /// operation (and [`State::ping`](crate::State::ping)) reports it as
    /// [`StoreError::Unavailable`] until it comes up, so `/readyz` can say which one is down.
    pub async fn connect(options: &Options) -> Result<Self, StoreError> {
        let options = options.clone();
        options.amqp_url.parse::<lapin::uri::AMQPUri>().map_err(|reason| {
            StoreError::Unavailable { backend: RABBITMQ, reason: format!("bad amqp.url: {reason}") }
        })?;
        let redis_client = redis::Client::open(options.redis_url.as_str())?;
        let store = Self {
            inner: Arc::new(Inner {
                keys: Keys::new(&options.namespace),
                options,
                redis_client,
                redis: tokio::sync::Mutex::new(None),
                broker: Mutex::new(None),
                reconnect: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                claims: Mutex::new(HashMap::new()),
                parked: Mutex::new(Vec::new()),
                prune_cursor: Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        };
        if let Err(e) = store.broker().await {
            tracing::warn!(error = %e, "rabbitmq not reachable at start-up; will retry on use");
        }
        if let Err(e) = store.redis().await {
            tracing::warn!(error = %e, "redis not reachable at start-up; will retry on use");
        }
        Ok(store)
    }

    /// Closes the RabbitMQ connection: deliveries claimed and not completed go back to the
    /// queue at once. Redis stays usable (completing a claim afterwards records its outcomes
    /// but cannot ack). Later queue operations fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let broker = self.inner.broker.lock().expect("broker lock").take();
        self.inner.claims.lock().expect("claims lock").clear();
        self.inner.parked.lock().expect("parked lock").clear();
        if let Some(b) = broker {
            let _ = tokio::time::timeout(
                self.inner.options.op_timeout,
                b.connection.close(200, "closing"),
            )
            .await;
        }
    }

    /// Deletes every queue and Redis key under this store's namespace. For tests and for
    /// tearing down a throw-away environment; never point it at production.
    pub async fn destroy_namespace(&self) -> Result<(), StoreError> {
        self.close().await;
        // A connection of its own that declares nothing, so queues declared with other
        // arguments (another delivery limit) are deleted too.
        let keys = &self.inner.keys;
        let connection = self
            .amqp(Connection::connect(&self.inner.options.amqp_url, self.connection_properties()))
            .await?;
        let channel = self.amqp(connection.create_channel()).await?;
        let mut queues = vec![keys.deliveries_queue(), keys.dead_queue()];
        queues.extend(RETRY_STEPS_MS.iter().map(|&s| keys.retry_queue(s)));
        for q in queues {
            self.amqp(channel.queue_delete(&q, QueueDeleteOptions::default())).await?;
        }
        let _ = self.amqp(connection.close(200, "namespace destroyed")).await;
        let mut con = self.redis().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run_redis(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(keys.pattern())
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut con),
                )
                .await?;
            if !batch.is_empty() {
                self.run_redis(redis::cmd("DEL").arg(&batch).query_async::<()>(&mut con)).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }

    /// A Redis connection (multiplexed; cloning is cheap).
    pub(crate) async fn redis(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.inner.redis.lock().await;
        if let Some(con) = slot.as_ref() {
            return Ok(con.clone());
        }
        let timeout = self.inner.options.op_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let made = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(self.inner.redis_client.clone(), config),
        )
        .await
        .map_err(|_| unavailable(REDIS, "no connection within the timeout"))?
        .map_err(redis_error)?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Runs one Redis call under the operation timeout.
    pub(crate) async fn run_redis<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.options.op_timeout, call).await {
            Ok(result) => result.map_err(redis_error),
            Err(_) => Err(unavailable(REDIS, "no answer within the timeout")),
        }
    }

    /// Runs one RabbitMQ call under the operation timeout.
    pub(crate) async fn amqp<T>(
        &self,
        call: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.options.op_timeout, call).await {
            Ok(result) => result.map_err(amqp_error),
            Err(_) => Err(unavailable(RABBITMQ, "no answer within the timeout")),
        }
    }

    /// The live broker connection, reconnecting (and re-declaring the topology) if the last
    /// one failed.
    pub(crate) async fn broker(&self) -> Result<Arc<Broker>, StoreError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        if let Some(b) = self.current_broker() {
            return Ok(b);
        }
        let mut last_failure = self.inner.reconnect.lock().await;
        if let Some(b) = self.current_broker() {
            return Ok(b);
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
            return Err(unavailable(RABBITMQ, "reconnecting"));
        }
        // Everything claimed on the old connection went back to the queue with it.
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.claims.lock().expect("claims lock").retain(|_, c| c.generation >= generation);
        self.inner.parked.lock().expect("parked lock").clear();
        if let Some(old) = self.inner.broker.lock().expect("broker lock").take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    old.connection.close(200, "reconnecting"),
                )
                .await;
            });
        }
        let opened =
            tokio::time::timeout(self.inner.options.op_timeout * 2, self.open_broker(generation))
                .await;
        match opened {
            Ok(Ok(broker)) => {
                let broker = Arc::new(broker);
                *self.inner.broker.lock().expect("broker lock") = Some(broker.clone());
                *last_failure = None;
                if generation > 1 {
                    tracing::info!(generation, "rabbitmq connection re-established");
                }
                Ok(broker)
            }
            Ok(Err(e)) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                Err(unavailable(RABBITMQ, "no connection within the timeout"))
            }
        }
    }

    fn current_broker(&self) -> Option<Arc<Broker>> {
        self.inner.broker.lock().expect("broker lock").as_ref().filter(|b| b.healthy()).cloned()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    fn connection_properties(&self) -> ConnectionProperties {
        ConnectionProperties::default()
            .with_connection_name(format!("postwire:{}", self.inner.keys.ns()).into())
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
    }

    async fn open_broker(&self, generation: u64) -> Result<Broker, StoreError> {
        let connection =
            Connection::connect(&self.inner.options.amqp_url, self.connection_properties())
                .await
                .map_err(amqp_error)?;
        connection.on_error(|e| tracing::warn!(error = %e, "rabbitmq connection failed"));
        let publisher = connection.create_channel().await.map_err(amqp_error)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(amqp_error)?;
        declare_topology(&publisher, &self.inner.keys, &self.inner.options)
            .await
            .map_err(amqp_error)?;
        let consumer_channel = connection.create_channel().await.map_err(amqp_error)?;
        consumer_channel
            .basic_qos(self.inner.options.prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp_error)?;
        Ok(Broker {
            generation,
            connection,
            publisher,
            consumer_channel,
            consumer: tokio::sync::Mutex::new(None),
            deliveries_queue: self.inner.keys.deliveries_queue(),
            broken: AtomicBool::new(false),
        })
    }
}

/// Declares every queue (idempotent: the same arguments each time).
async fn declare_topology(channel: &Channel, keys: &Keys, options: &Options) -> lapin::Result<()> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(&keys.dead_queue(), durable, FieldTable::default()).await?;

    // Quorum: replicated, and it counts returns so a job that keeps killing its worker is
    // dead-lettered after `delivery_limit` instead of looping forever.
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(options.delivery_limit)),
    );
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(keys.dead_queue().into()),
    );
    channel.queue_declare(&keys.deliveries_queue(), durable, args).await?;

    for step in RETRY_STEPS_MS {
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(step as i64));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(keys.deliveries_queue().into()),
        );
        channel.queue_declare(&keys.retry_queue(step), durable, args).await?;
    }
    Ok(())
}

pub(crate) fn unavailable(backend: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable { backend, reason: reason.into() }
}

/// Connection-level Redis failures are `Unavailable` (retry later); the rest keep their cause.
pub(crate) fn redis_error(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        unavailable(REDIS, e.to_string())
    } else {
        StoreError::Redis(e)
    }
}

/// A broker-side refusal (e.g. `PRECONDITION_FAILED`) keeps its cause; anything about the
/// connection or channel state is `Unavailable`.
pub(crate) fn amqp_error(e: lapin::Error) -> StoreError {
    match e {
        lapin::Error::ProtocolError(_)
        | lapin::Error::ParsingError(_)
        | lapin::Error::SerialisationError(_) => StoreError::Amqp(e),
        other => unavailable(RABBITMQ, other.to_string()),
    }
}
