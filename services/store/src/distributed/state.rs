//! Keys, message status, events and the webhook outbox in Redis.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{
    Event, MessageSource, MessageView, RecipientStatus, RecipientView, SendRequest, Webhook,
};

use super::queue::StoredRecipient;
use super::scripts::{CLAIM_WEBHOOKS, DELETE_WEBHOOK, FINISH_WEBHOOK, INSERT_INDEXED, REVOKE_KEY};
use super::{unavailable, DistributedStore, RABBITMQ, REDIS};
use crate::engagement::engagement_views;
use crate::messages::shown_status;
use crate::model::overall_status;
use crate::time::{from_ms, now_ms, to_ms};
use crate::{
    ApiKeyRecord, Feedback, FeedbackRecorded, Hit, HitRecorded, MessageOwner, NewApiKey,
    NewWebhook, State, StoreError, WebhookAttempt, WebhookDelivery,
};

type Fields = HashMap<String, String>;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn ms_field(fields: &Fields, name: &str) -> Result<i64, StoreError> {
    fields
        .get(name)
        .ok_or_else(|| corrupt(format!("missing field {name}")))?
        .parse()
        .map_err(corrupt)
}

fn key_record(fields: Fields) -> Result<ApiKeyRecord, StoreError> {
    let hash =
        hex::decode(fields.get("hash").map(String::as_str).unwrap_or_default()).map_err(corrupt)?;
    Ok(ApiKeyRecord {
        hash: hash.try_into().map_err(|_| corrupt("api key hash is not 32 bytes"))?,
        created_at: from_ms(ms_field(&fields, "created_at")?),
        revoked_at: fields.get("revoked_at").and_then(|v| v.parse().ok()).map(from_ms),
        scopes: fields
            .get("scopes")
            .map(|s| s.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
        name: fields.get("name").cloned().unwrap_or_default(),
        id: fields.get("id").cloned().unwrap_or_default(),
        // Absent on keys stored before sandbox keys existed: a live key.
        sandbox: fields.get("sandbox").is_some_and(|v| v == "1"),
    })
}

pub(crate) fn webhook_record(fields: Fields) -> Result<Webhook, StoreError> {
    let disabled_at = fields.get("disabled_at").and_then(|v| v.parse::<i64>().ok()).map(from_ms);
    Ok(Webhook {
        enabled: disabled_at.is_none(),
        disabled_at,
        created_at: from_ms(ms_field(&fields, "created_at")?),
        events: fields.get("events").and_then(|e| serde_json::from_str(e).ok()).unwrap_or_default(),
        url: fields.get("url").cloned().unwrap_or_default(),
        id: fields.get("id").cloned().unwrap_or_default(),
    })
}

impl DistributedStore {
    /// Every hash listed in a creation-ordered index, oldest first.
    async fn indexed(
        &self,
        index: String,
        key: impl Fn(&str) -> String,
    ) -> Result<Vec<Fields>, StoreError> {
        let mut con = self.redis().await?;
        let ids: Vec<String> = self
            .run_redis(redis::cmd("ZRANGE").arg(index).arg(0).arg(-1).query_async(&mut con))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(key(id));
        }
        let rows: Vec<Fields> = self.run_redis(pipe.query_async(&mut con)).await?;
        // A record deleted between the two reads comes back empty.
        Ok(rows.into_iter().filter(|f| !f.is_empty()).collect())
    }
}

#[async_trait]
impl State for DistributedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let redis = async {
            let mut con = self.redis().await?;
            self.run_redis(redis::cmd("PING").query_async::<String>(&mut con)).await.map(drop)
        };
        let (redis, broker) = tokio::join!(redis, self.broker());
        match (redis, broker) {
            (Ok(()), Ok(_)) => Ok(()),
            (Err(r), Err(b)) => Err(StoreError::Unavailable {
                backend: "rabbitmq and redis",
                reason: format!("{b}; {r}"),
            }),
            (Err(e), Ok(_)) => Err(match e {
                e @ StoreError::Unavailable { .. } => e,
                other => unavailable(REDIS, other.to_string()),
            }),
            (Ok(()), Err(e)) => Err(match e {
                e @ (StoreError::Unavailable { .. } | StoreError::Closed) => e,
                other => unavailable(RABBITMQ, other.to_string()),
            }),
        }
    }

    async fn create_api_key(&self, key: NewApiKey) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let created = to_ms(key.created_at);
        let mut con = self.redis().await?;
        self.run_redis(
            INSERT_INDEXED
                .key(keys.api_key(&key.id))
                .key(keys.api_keys())
                .arg(&key.id)
                .arg(created)
                .arg(&[
                    "id",
                    &key.id,
                    "name",
                    &key.name,
                    "hash",
                    &hex::encode(key.hash),
                    "scopes",
                    &key.scopes.join(","),
                ])
                .arg(&[
                    "created_at",
                    &created.to_string(),
                    "sandbox",
                    if key.sandbox { "1" } else { "0" },
                ])
                .invoke_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut con = self.redis().await?;
        let fields: Fields = self
            .run_redis(redis::cmd("HGETALL").arg(self.inner.keys.api_key(id)).query_async(&mut con))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        key_record(fields).map(Some)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let keys = self.inner.keys.clone();
        let rows = self.indexed(keys.api_keys(), |id| keys.api_key(id)).await?;
        rows.into_iter().map(key_record).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let mut con = self.redis().await?;
        let found: i64 = self
            .run_redis(
                REVOKE_KEY.key(self.inner.keys.api_key(id)).arg(now_ms()).invoke_async(&mut con),
            )
            .await?;
        Ok(found == 1)
    }

    async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let (message, recipients, events, engagements): (Fields, Fields, Vec<String>, Fields) =
            self.run_redis(
                redis::pipe()
                    .hgetall(keys.message(id))
                    .hgetall(keys.recipients(id))
                    .lrange(keys.events(id), 0, -1)
                    .hgetall(keys.engagements(id))
                    .query_async(&mut con),
            )
            .await?;
        if message.is_empty() {
            return Ok(None);
        }
        let request: SendRequest =
            serde_json::from_str(message.get("request").map(String::as_str).unwrap_or_default())
                .map_err(corrupt)?;
        let mut positioned = recipients
            .into_iter()
            .map(|(pos, json)| {
                let pos: u64 = pos.parse().map_err(corrupt)?;
                let r: StoredRecipient = serde_json::from_str(&json).map_err(corrupt)?;
                Ok((pos, r))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        positioned.sort_by_key(|(pos, _)| *pos);
        let now = now_ms();
        let recipients: Vec<RecipientView> = positioned
            .into_iter()
            .map(|(_, r)| RecipientView {
                status: shown_status(
                    RecipientStatus::parse(&r.status).unwrap_or(RecipientStatus::Queued),
                    r.next_attempt_at,
                    now,
                ),
                attempts: r.attempts,
                last_response: r.last_response,
                next_attempt_at: r.next_attempt_at.map(from_ms),
                email: r.email,
            })
            .collect();
        let events = events
            .iter()
            .map(|b| serde_json::from_str::<Event>(b).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        let emails: Vec<String> = recipients.iter().map(|r| r.email.clone()).collect();
        let engagements =
            engagement_views(super::engagement::stored_engagements(engagements)?, &emails);
        Ok(Some(MessageView {
            id: id.to_string(),
            status: overall_status(&recipients),
            created_at: from_ms(ms_field(&message, "created_at")?),
            dkim: crate::messages::stored_dkim(message.get("dkim").map(String::as_str))?,
            from: request.from,
            to: request.to,
            cc: request.cc,
            subject: request.subject,
            tags: request.tags,
            source: match message.get("source").map(String::as_str) {
                Some("smtp") => MessageSource::Smtp,
                _ => MessageSource::Api,
            },
            recipients,
            events,
            engagements,
        }))
    }

    async fn message_owner(&self, id: &str) -> Result<Option<MessageOwner>, StoreError> {
        let mut con = self.redis().await?;
        let (created, key_id, sandbox): (Option<String>, Option<String>, Option<String>) = self
            .run_redis(
                redis::cmd("HMGET")
                    .arg(self.inner.keys.message(id))
                    .arg("created_at")
                    .arg("key_id")
                    .arg("sandbox")
                    .query_async(&mut con),
            )
            .await?;
        Ok(created.map(|_| MessageOwner {
            key_id: key_id.unwrap_or_default(),
            sandbox: sandbox.is_some_and(|s| s == "1"),
        }))
    }

    async fn record_hit(&self, hit: Hit) -> Result<Option<HitRecorded>, StoreError> {
        self.record_hit_redis(hit).await
    }

    async fn record_feedback(
        &self,
        feedback: Feedback,
    ) -> Result<Option<FeedbackRecorded>, StoreError> {
        self.record_feedback_redis(feedback).await
    }

    async fn create_webhook(&self, webhook: NewWebhook) -> Result<Webhook, StoreError> {
        let keys = &self.inner.keys;
        let created = to_ms(webhook.created_at);
        let events = serde_json::to_string(&webhook.events).map_err(corrupt)?;
        let mut con = self.redis().await?;
        self.run_redis(
            INSERT_INDEXED
                .key(keys.webhook(&webhook.id))
                .key(keys.webhooks())
                .arg(&webhook.id)
                .arg(created)
                .arg(&[
                    "id",
                    &webhook.id,
                    "url",
                    &webhook.url,
                    "secret",
                    &webhook.secret,
                    "events",
                    &events,
                ])
                .arg(&["created_at", &created.to_string()])
                .invoke_async::<i64>(&mut con),
        )
        .await?;
        Ok(Webhook {
            id: webhook.id,
            url: webhook.url,
            events: webhook.events,
            created_at: webhook.created_at,
            enabled: true,
            disabled_at: None,
        })
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let keys = self.inner.keys.clone();
        let rows = self.indexed(keys.webhooks(), |id| keys.webhook(id)).await?;
        rows.into_iter().map(webhook_record).collect()
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let found: i64 = self
            .run_redis(
                DELETE_WEBHOOK
                    .key(keys.webhook(id))
                    .key(keys.webhooks())
                    .key(format!("{}:pending", keys.webhook(id)))
                    .key(keys.outbox())
                    .key(keys.webhook_log(id))
                    .arg(keys.ns())
                    .arg(id)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(found == 1)
    }

    async fn claim_webhook_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let keys = &self.inner.keys;
        let now = now_ms();
        let mut con = self.redis().await?;
        let flat: Vec<String> = self
            .run_redis(
                CLAIM_WEBHOOKS
                    .key(keys.outbox())
                    .arg(keys.ns())
                    .arg(now)
                    .arg(now + lease.as_millis() as i64)
                    .arg(limit)
                    .arg(self.inner.options.retention.as_secs().max(1))
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(flat
            .chunks_exact(7)
            .map(|d| WebhookDelivery {
                id: d[0].clone(),
                webhook_id: d[1].clone(),
                url: d[2].clone(),
                secret: d[3].clone(),
                event_id: d[4].clone(),
                body: d[5].clone(),
                attempts: d[6].parse().unwrap_or(0),
            })
            .collect())
    }

    async fn finish_webhook_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: WebhookAttempt,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let keys = &self.inner.keys;
        let entry =
            serde_json::to_string(&crate::webhook_log::attempt_view(&attempt)).map_err(corrupt)?;
        let (state, next) = match (attempt.succeeded, attempt.retry_at) {
            (true, _) => ("delivered", None),
            (false, Some(at)) => ("pending", Some(to_ms(at))),
            (false, None) => ("failed", None),
        };
        let mut con = self.redis().await?;
        let since: String = self
            .run_redis(
                FINISH_WEBHOOK
                    .key(keys.webhook_delivery(&delivery.id))
                    .key(keys.outbox())
                    .key(keys.webhook(&delivery.webhook_id))
                    .arg(keys.ns())
                    .arg(&delivery.id)
                    .arg(state)
                    .arg(next.map(|n| n.to_string()).unwrap_or_default())
                    .arg(attempt.status.map(|s| s.to_string()).unwrap_or_default())
                    .arg(attempt.error.unwrap_or_default())
                    .arg(self.inner.options.retention.as_secs().max(1))
                    .arg(entry)
                    .arg(crate::webhook_log::MAX_LOGGED_ATTEMPTS)
                    .arg(if attempt.succeeded { "1" } else { "0" })
                    .arg(to_ms(attempt.at))
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(since.parse::<i64>().ok().map(from_ms))
    }

    async fn disable_webhook(&self, id: &str, event: Event) -> Result<bool, StoreError> {
        self.disable(id, Some(&event)).await
    }

    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut con = self.redis().await?;
        let first: Vec<(String, f64)> = self
            .run_redis(
                redis::cmd("ZRANGE")
                    .arg(self.inner.keys.outbox())
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut con),
            )
            .await?;
        Ok(first.first().map(|(_, score)| from_ms(*score as i64)))
    }
}
