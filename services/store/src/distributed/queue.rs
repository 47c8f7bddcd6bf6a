//! Delivery jobs on RabbitMQ, their recipients' state in Redis.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use postwire_proto::{Event, RecipientStatus, SendRequest};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::keys::{retry_step, Keys, RETRY_STEPS_MS};
use super::scripts::{CLAIM, COMPLETE, RENEW};
use super::suppression;
use super::{amqp_error, unavailable, Broker, DistributedStore, HeldClaim, RABBITMQ};
use crate::time::{from_ms, now_ms, to_ms};
use crate::{ids, ClaimedJob, NewMessage, PendingRecipient, Queue, RecipientOutcome, StoreError};

/// How long `claim` waits for a delivery before answering `None`.
const CLAIM_WAIT: Duration = Duration::from_millis(250);

/// Written into an event's `attempt` field in Rust and replaced by the recipient's real
/// attempt count inside the `complete` script, which is the only place that knows it. Every
/// field serialized before `attempt` is a string, so this is its first unquoted occurrence.
const ATTEMPT_PLACEHOLDER: u32 = u32::MAX;

/// The body of one delivery job message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JobPayload {
    pub(crate) message_id: String,
    pub(crate) domain: String,
}

/// A recipient as stored in `{ns}:msg:{id}:rcpt` (see [`super::keys`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredRecipient {
    pub(crate) email: String,
    pub(crate) domain: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) next_attempt_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_response: Option<String>,
    #[serde(default)]
    pub(crate) updated_at: i64,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn job_id(message_id: &str, domain: &str) -> String {
    format!("{message_id}/{domain}")
}

impl DistributedStore {
    /// Whether message `id` is stored.
    async fn message_stored(&self, id: &str) -> Result<bool, StoreError> {
        let mut con = self.redis().await?;
        self.run_redis(redis::cmd("EXISTS").arg(self.inner.keys.message(id)).query_async(&mut con))
            .await
    }

    /// Publishes one persistent job to `queue` and waits for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        broker: &Broker,
        queue: &str,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let confirm = self
            .amqp(broker.publisher.basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                payload,
                persistent(),
            ))
            .await?;
        confirmed(self.amqp(confirm).await?)
    }

    /// Puts a job copy that must not run yet into the delay queue for `delay_ms`, then acks it.
    async fn redelay(
        &self,
        broker: &Broker,
        delivery: Delivery,
        delay_ms: i64,
    ) -> Result<(), StoreError> {
        let queue = self.inner.keys.retry_queue(retry_step(delay_ms));
        if let Err(e) = self.publish(broker, &queue, &delivery.data).await {
            broker.mark_broken();
            return Err(e);
        }
        self.ack(broker, &delivery.acker).await;
        Ok(())
    }

    /// Acks; a failure means the channel is gone, and the broker will hand the copy out again
    /// (where `claim` finds it finished or not yet due), so it is only logged.
    async fn ack(&self, broker: &Broker, acker: &lapin::acker::Acker) {
        if let Err(e) = self.amqp(acker.ack(BasicAckOptions::default())).await {
            tracing::warn!(error = %e, "rabbitmq: ack failed; the job will be redelivered and skipped");
            broker.mark_broken();
        }
    }

    fn park(&self, generation: u64, delivery: Delivery) {
        if generation == self.generation() {
            self.inner.parked.lock().expect("parked lock").push(delivery);
        }
    }

    /// Looks one delivery up in Redis and either hands it out or disposes of it.
    async fn try_claim(
        &self,
        broker: &Broker,
        delivery: Delivery,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let job: JobPayload = match serde_json::from_slice(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                // Poison: dead-lettered to `{ns}.deliveries.dead` for a human to look at.
                tracing::error!(error = %e, "rabbitmq: unreadable delivery job dead-lettered");
                let _ =
                    self.amqp(delivery.acker.reject(BasicRejectOptions { requeue: false })).await;
                return Ok(None);
            }
        };
        let keys = &self.inner.keys;
        let token = ids::new_id("claim");
        let lease_ms = lease.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut con = match self.redis().await {
            Ok(con) => con,
            Err(e) => {
                self.park(broker.generation, delivery);
                return Err(e);
            }
        };
        let answer: Vec<Option<String>> = match self
            .run_redis(
                CLAIM
                    .key(keys.message(&job.message_id))
                    .key(keys.recipients(&job.message_id))
                    .key(keys.lease(&job.message_id, &job.domain))
                    .key(keys.jobs())
                    .arg(&job.domain)
                    .arg(&token)
                    .arg(lease_ms)
                    .arg(now_ms())
                    .arg(Keys::job_member(&job.message_id, &job.domain))
                    .invoke_async(&mut con),
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                self.park(broker.generation, delivery);
                return Err(e);
            }
        };
        let field = |i: usize| answer.get(i).cloned().flatten().unwrap_or_default();
        match field(0).as_str() {
            "missing" | "done" => {
                self.ack(broker, &delivery.acker).await;
                Ok(None)
            }
            // Another claim holds this job (this is a duplicate copy), or nothing is due yet:
            // wait in a delay queue rather than run it twice or early.
            "held" | "early" => {
                let delay = field(1).parse::<i64>().unwrap_or(0);
                self.redelay(broker, delivery, delay).await?;
                Ok(None)
            }
            "claimed" => {
                let created_at = from_ms(field(1).parse::<i64>().map_err(corrupt)?);
                let request: SendRequest = serde_json::from_str(&field(2)).map_err(corrupt)?;
                let raw = match field(5).as_str() {
                    "smtp" => match self.raw_message(&mut con, &job.message_id).await {
                        Ok(raw) => Some(raw),
                        Err(e) => {
                            // Claimed in Redis but not handed out: it is claimable again once
                            // the lease lapses.
                            self.park(broker.generation, delivery);
                            return Err(e);
                        }
                    },
                    _ => None,
                };
                let recipients = answer[6..]
                    .chunks(3)
                    .map(|triple| {
                        let number = |i: usize| {
                            triple.get(i).cloned().flatten().and_then(|a| a.parse().ok())
                        };
                        PendingRecipient {
                            email: triple[0].clone().unwrap_or_default(),
                            attempts: number(1).unwrap_or(0),
                            position: number(2).unwrap_or(0),
                        }
                    })
                    .collect();
                let claimed = ClaimedJob {
                    job_id: job_id(&job.message_id, &job.domain),
                    claim_token: token.clone(),
                    message_id: job.message_id,
                    created_at,
                    request,
                    message_id_header: field(3),
                    domain: job.domain,
                    recipients,
                    // Absent on messages stored before sandbox keys existed: a live message.
                    sandbox: field(4) == "1",
                    raw,
                };
                let held = HeldClaim {
                    generation: broker.generation,
                    lease_until: Instant::now() + lease,
                    acker: delivery.acker,
                    payload: delivery.data,
                };
                self.inner.claims.lock().expect("claims lock").insert(token, held);
                Ok(Some(claimed))
            }
            other => Err(corrupt(format!("unexpected claim answer {other:?}"))),
        }
    }

    /// The RFC 5322 text of a message submitted over SMTP.
    async fn raw_message(
        &self,
        con: &mut redis::aio::ConnectionManager,
        message_id: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let encoded: Option<String> =
            self.run_redis(con.get(self.inner.keys.raw(message_id))).await?;
        let encoded = encoded.ok_or_else(|| corrupt("a submitted message's text is missing"))?;
        BASE64.decode(encoded).map_err(corrupt)
    }

    /// Returns claims whose lease ran out without a completion to the broker, which hands
    /// them out again (the Redis lease has lapsed too, so the next claimer runs them).
    async fn release_expired_claims(&self, broker: &Broker) {
        let now = Instant::now();
        let expired: Vec<HeldClaim> = {
            let mut claims = self.inner.claims.lock().expect("claims lock");
            let tokens: Vec<String> = claims
                .iter()
                .filter(|(_, c)| c.lease_until <= now)
                .map(|(t, _)| t.clone())
                .collect();
            tokens.iter().filter_map(|t| claims.remove(t)).collect()
        };
        for claim in expired {
            if claim.generation != broker.generation {
                continue;
            }
            let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            if self.amqp(claim.acker.nack(requeue)).await.is_err() {
                broker.mark_broken();
            }
        }
    }

    fn take_parked(&self) -> Option<Delivery> {
        self.inner.parked.lock().expect("parked lock").pop()
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into())
}

fn confirmed(confirmation: Confirmation) -> Result<(), StoreError> {
    match confirmation {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(unavailable(RABBITMQ, "the broker refused a publish (nack)")),
    }
}

/// The event for one outcome (built as the embedded backend builds it), with the attempt
/// count left for the `complete` script to fill in.
fn outcome_event(
    job: &ClaimedJob,
    outcome: &RecipientOutcome,
) -> (RecipientStatus, Option<i64>, Event) {
    let (status, event) = crate::model::outcome_event(job, outcome, ATTEMPT_PLACEHOLDER);
    (status, event.data.next_attempt_at.map(to_ms), event)
}

#[async_trait]
impl Queue for DistributedStore {
    async fn accept(&self, message: NewMessage) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        // The broker first: when it is down, nothing is written.
        let broker = self.broker().await?;
        let request = serde_json::to_string(&message.request).map_err(corrupt)?;
        let created = to_ms(message.created_at);
        if let Some(answer) = &message.idempotency {
            self.check_claim(answer).await?;
        }
        if self.message_stored(&message.id).await? {
            return Ok(()); // Stored by an earlier run of the same request.
        }
        // Suppression list: listed recipients are stored `suppressed` with their event, no job.
        let screened = self.screen_recipients(&message).await?;
        let mut domains: Vec<&str> = Vec::new();
        for r in
            message.recipients.iter().zip(&screened).filter(|(_, s)| s.is_none()).map(|(r, _)| r)
        {
            if !domains.contains(&r.domain.as_str()) {
                domains.push(&r.domain);
            }
        }
        let retention = self.inner.options.retention.as_secs().max(1);
        // Scheduled send: recipients wait as `scheduled` until `send_at`, the job in the delay queues.
        let send_at = crate::messages::scheduled_for(&message.request, created);
        let (msg_key, rcpt_key) = (keys.message(&message.id), keys.recipients(&message.id));
        // Retention starts once the message is finished (see `scripts::settle_expiry`): a
        // message with a recipient to send to is stored without an expiry.
        let pending = !domains.is_empty();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &msg_key,
                &[
                    ("created_at", created.to_string()),
                    ("request", request),
                    ("message_id_header", message.message_id_header.clone()),
                    ("key_id", message.key_id.clone()),
                    ("sandbox", if message.sandbox { "1" } else { "0" }.to_string()),
                    ("summary", super::messages::summary_json(&message.request)?),
                    ("dkim", serde_json::to_string(&message.dkim).map_err(corrupt)?),
                ],
            )
            .ignore();
        if !pending {
            pipe.expire(&msg_key, retention as i64).ignore();
        }
        if let Some(raw) = &message.raw {
            pipe.hset(&msg_key, "source", "smtp")
                .ignore()
                .set(keys.raw(&message.id), BASE64.encode(raw))
                .ignore();
            if !pending {
                pipe.expire(keys.raw(&message.id), retention as i64).ignore();
            }
        }
        super::messages::index_message(&mut pipe, keys, &message, retention);
        for (i, r) in message.recipients.iter().enumerate() {
            let status = match (suppression::screened_status(&screened[i]), send_at) {
                (RecipientStatus::Queued, Some(_)) => RecipientStatus::Scheduled,
                (status, _) => status,
            };
            let stored = StoredRecipient {
                email: r.email.clone(),
                domain: r.domain.clone(),
                status: status.as_str().into(),
                attempts: 0,
                next_attempt_at: send_at.filter(|_| status == RecipientStatus::Scheduled),
                last_response: screened[i].clone(),
                updated_at: created,
            };
            pipe.hset(&rcpt_key, i, serde_json::to_string(&stored).map_err(corrupt)?).ignore();
        }
        if !message.recipients.is_empty() && !pending {
            pipe.expire(&rcpt_key, retention as i64).ignore();
        }
        suppression::queue_suppressed_events(&mut pipe, keys, &message, &screened, retention)?;
        if pending {
            pipe.persist(keys.events(&message.id)).ignore();
        }
        let members: Vec<String> =
            domains.iter().map(|d| Keys::job_member(&message.id, d)).collect();
        if !members.is_empty() {
            pipe.sadd(keys.jobs(), &members).ignore();
        }
        // The idempotent answer lands with the message: a retry finds one or neither.
        if let Some(answer) = &message.idempotency {
            self.store_answer(&mut pipe, answer, pending.then_some(message.id.as_str()));
        }
        let mut con = self.redis().await?;
        self.run_redis(pipe.query_async::<()>(&mut con)).await?;

        // Publish every job, then wait for every confirm: durable before the caller's 202. A
        // scheduled job goes straight into the delay queue that fits its wait (see `claim`).
        let first_queue = match send_at.map(|at| at - now_ms()) {
            Some(wait) if wait >= RETRY_STEPS_MS[0] as i64 => keys.retry_queue(retry_step(wait)),
            _ => keys.deliveries_queue(),
        };
        let published: Result<(), StoreError> = async {
            let mut confirms = Vec::with_capacity(domains.len());
            for domain in &domains {
                let payload = serde_json::to_vec(&JobPayload {
                    message_id: message.id.clone(),
                    domain: domain.to_string(),
                })
                .map_err(corrupt)?;
                let confirm = self
                    .amqp(broker.publisher.basic_publish(
                        "",
                        &first_queue,
                        BasicPublishOptions::default(),
                        &payload,
                        persistent(),
                    ))
                    .await?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                confirmed(self.amqp(confirm).await?)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = published {
            broker.mark_broken();
            // Undo, so the message is not left "queued" with no job behind it. A job that did
            // reach the broker finds the message gone and is dropped.
            let mut undo = redis::pipe();
            undo.del(&[&msg_key, &rcpt_key, &keys.events(&message.id), &keys.raw(&message.id)])
                .ignore();
            super::messages::unindex_message(&mut undo, keys, &message);
            if !members.is_empty() {
                undo.srem(keys.jobs(), &members).ignore();
            }
            // The answer goes too: the caller answers 503, and a retry runs afresh.
            if let Some(answer) = &message.idempotency {
                let c = &answer.claim;
                undo.del(self.idempotency_key(&c.key_id, &c.idem_key)).ignore();
            }
            if let Err(undo_error) = self.run_redis(undo.query_async::<()>(&mut con)).await {
                tracing::error!(message_id = %message.id, error = %undo_error, "cannot undo a message whose jobs were not published");
            }
            return Err(e);
        }
        if let Some(answer) = message.idempotency.as_ref().filter(|_| pending) {
            self.mark_published(&answer.claim.key_id, &answer.claim.idem_key).await;
        }
        Ok(())
    }

    async fn claim(
        &self,
        _worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let deadline = Instant::now() + CLAIM_WAIT;
        let broker = self.broker().await?;
        self.release_expired_claims(&broker).await;
        loop {
            let delivery = match self.take_parked() {
                Some(d) => d,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let next = tokio::time::timeout(left, async {
                        match broker.consumer().await {
                            Ok(mut consumer) => consumer.next().await,
                            Err(e) => Some(Err(e)),
                        }
                    })
                    .await;
                    match next {
                        Err(_) => return Ok(None),
                        Ok(None) => {
                            broker.mark_broken();
                            return Err(unavailable(
                                RABBITMQ,
                                "the delivery consumer was cancelled",
                            ));
                        }
                        Ok(Some(Err(e))) => {
                            broker.mark_broken();
                            return Err(amqp_error(e));
                        }
                        Ok(Some(Ok(d))) => d,
                    }
                }
            };
            if let Some(job) = self.try_claim(&broker, delivery, lease).await? {
                return Ok(Some(job));
            }
        }
    }

    async fn complete(
        &self,
        job: &ClaimedJob,
        outcomes: Vec<RecipientOutcome>,
    ) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let mut script = COMPLETE.prepare_invoke();
        script
            .key(keys.message(&job.message_id))
            .key(keys.recipients(&job.message_id))
            .key(keys.events(&job.message_id))
            .key(keys.lease(&job.message_id, &job.domain))
            .key(keys.jobs())
            .arg(keys.ns())
            .arg(&job.domain)
            .arg(&job.claim_token)
            .arg(now_ms())
            .arg(self.inner.options.retention.as_secs().max(1))
            .arg(Keys::job_member(&job.message_id, &job.domain))
            .arg(format!("\"attempt\":{ATTEMPT_PLACEHOLDER}"));
        for outcome in &outcomes {
            let (status, next, event) = outcome_event(job, outcome);
            let body = serde_json::to_string(&event).map_err(corrupt)?;
            script
                .arg(&outcome.email)
                .arg(status.as_str())
                .arg(next.map(|n| n.to_string()).unwrap_or_default())
                .arg(&outcome.response)
                .arg(&event.id)
                .arg(event.kind.as_str())
                .arg(body)
                .arg(suppression::hard_bounce_arg(outcome, &job.message_id)?);
        }
        let mut con = self.redis().await?;
        let (remaining, earliest, ours): (i64, i64, i64) =
            self.run_redis(script.invoke_async(&mut con)).await?;

        // A claim this process no longer holds (its connection dropped) went back to the queue
        // with its connection; whoever gets it next finds these outcomes recorded.
        let Some(held) = self.inner.claims.lock().expect("claims lock").remove(&job.claim_token)
        else {
            return Ok(());
        };
        let Some(broker) = self.current_broker().filter(|b| b.generation == held.generation) else {
            return Ok(());
        };
        // Only the holder of the lease reschedules: after a lease expiry another worker holds
        // this job and will reschedule it itself (the embedded backend's rule).
        if remaining > 0 && ours == 1 {
            let delay = if earliest == 0 { 0 } else { earliest - now_ms() };
            let queue = keys.retry_queue(retry_step(delay));
            if let Err(e) = self.publish(&broker, &queue, &held.payload).await {
                // Give the delivery back rather than lose the job: it comes back at once, finds
                // nothing due yet and is re-delayed.
                if self
                    .amqp(held.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }))
                    .await
                    .is_err()
                {
                    broker.mark_broken();
                }
                return Err(e);
            }
        }
        self.ack(&broker, &held.acker).await;
        Ok(())
    }

    async fn renew(&self, job: &ClaimedJob, lease: Duration) -> Result<bool, StoreError> {
        let lease_ms = lease.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut con = self.redis().await?;
        let held: i64 = self
            .run_redis(
                RENEW
                    .key(self.inner.keys.lease(&job.message_id, &job.domain))
                    .arg(&job.claim_token)
                    .arg(lease_ms)
                    .invoke_async(&mut con),
            )
            .await?;
        if held == 1 {
            if let Some(claim) =
                self.inner.claims.lock().expect("claims lock").get_mut(&job.claim_token)
            {
                claim.lease_until = Instant::now() + lease;
            }
        }
        Ok(held == 1)
    }

    async fn wait_for_work(&self, max: Duration) {
        // `claim` already waits for a delivery; this only paces a caller that found none.
        if self.inner.parked.lock().expect("parked lock").is_empty() {
            tokio::time::sleep(max.min(Duration::from_millis(50))).await;
        }
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let mut con = self.redis().await?;
        self.run_redis(redis::cmd("SCARD").arg(self.inner.keys.jobs()).query_async(&mut con)).await
    }

    async fn recover_lost_jobs(&self, overdue: Duration) -> Result<u64, StoreError> {
        self.sweep(overdue).await
    }
}
