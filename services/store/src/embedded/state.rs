//! Keys, message status, events and the webhook outbox in SQLite.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{
    Event, EventType, MessageSource, MessageView, RecipientStatus, RecipientView, SendRequest,
    Webhook,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::messages::shown_status;
use crate::model::overall_status;
use crate::time::{from_ms, now_ms, to_ms};
use crate::{
    ApiKeyRecord, Feedback, FeedbackRecorded, Hit, HitRecorded, MessageOwner, NewApiKey,
    NewWebhook, State, StoreError, WebhookAttempt, WebhookDelivery,
};

/// Stores an event and queues one webhook delivery per endpoint subscribed to its type,
/// in the caller's transaction (the outbox: no event without its deliveries).
pub(crate) fn insert_event(conn: &Connection, event: &Event) -> Result<(), StoreError> {
    let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO events (id, message_id, body, type, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![event.id, event.data.message_id, body, event.kind.as_str(), now])?;
    // A disabled endpoint gets no new deliveries (see `crate::webhook_log`).
    let mut endpoints =
        conn.prepare_cached("SELECT id, events FROM webhooks WHERE disabled_at IS NULL")?;
    let subscribed: Vec<String> = endpoints
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .filter_map(Result::ok)
        .filter(|(_, kinds)| {
            let kinds: Vec<EventType> = serde_json::from_str(kinds).unwrap_or_default();
            kinds.is_empty() || kinds.contains(&event.kind)
        })
        .map(|(id, _)| id)
        .collect();
    let mut queue = conn.prepare_cached(
        "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_id, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?3)",
    )?;
    for webhook_id in subscribed {
        queue.execute(params![webhook_id, event.id, now])?;
    }
    Ok(())
}

fn decode_hash(raw: Vec<u8>) -> Result<[u8; 32], StoreError> {
    raw.try_into().map_err(|_| StoreError::Corrupt("api key hash is not 32 bytes".into()))
}

type KeyRow = (String, String, Vec<u8>, String, i64, Option<i64>, bool);

/// The columns [`key_from_row`] reads, in order.
const KEY_COLUMNS: &str = "id, name, hash, scopes, created_at, revoked_at, sandbox";

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

fn key_record(row: KeyRow) -> Result<ApiKeyRecord, StoreError> {
    let (id, name, hash, scopes, created, revoked, sandbox) = row;
    Ok(ApiKeyRecord {
        id,
        name,
        hash: decode_hash(hash)?,
        scopes: scopes.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        created_at: from_ms(created),
        revoked_at: revoked.map(from_ms),
        sandbox,
    })
}

/// The columns [`webhook_from_row`] reads, in order.
pub(crate) const WEBHOOK_COLUMNS: &str = "id, url, events, created_at, disabled_at";

pub(crate) fn webhook_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    let events: String = r.get(2)?;
    let disabled_at: Option<i64> = r.get(4)?;
    Ok(Webhook {
        id: r.get(0)?,
        url: r.get(1)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        created_at: from_ms(r.get(3)?),
        enabled: disabled_at.is_none(),
        disabled_at: disabled_at.map(from_ms),
    })
}

#[async_trait]
impl State for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    async fn create_api_key(&self, key: NewApiKey) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_keys (id, name, hash, scopes, created_at, sandbox) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.id, key.name, key.hash.to_vec(), key.scopes.join(","), to_ms(key.created_at), key.sandbox],
            )?;
            Ok(())
        })
        .await
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
                .query_row([id], key_from_row)
                .optional()?
                .map(key_record)
                .transpose()
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], key_from_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(key_record).collect()
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2",
                params![now_ms(), id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn message(&self, id: &str) -> Result<Option<MessageView>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let Some((created, request, smtp, dkim)) = conn
                .prepare_cached(
                    "SELECT created_at, request, raw IS NOT NULL, dkim FROM messages WHERE id = ?1",
                )?
                .query_row([&id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })
                .optional()?
            else {
                return Ok(None);
            };
            let dkim = crate::messages::stored_dkim(dkim.as_deref())?;
            let request: SendRequest =
                serde_json::from_str(&request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut stmt = conn.prepare_cached(
                "SELECT email, status, attempts, last_response, next_attempt_at FROM recipients
                 WHERE message_id = ?1 ORDER BY position",
            )?;
            let now = now_ms();
            let recipients = stmt
                .query_map([&id], |r| {
                    let status: String = r.get(1)?;
                    let next_attempt_at: Option<i64> = r.get(4)?;
                    let stored = RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Queued);
                    Ok(RecipientView {
                        email: r.get(0)?,
                        status: shown_status(stored, next_attempt_at, now),
                        attempts: r.get::<_, i64>(2)? as u32,
                        last_response: r.get(3)?,
                        next_attempt_at: next_attempt_at.map(from_ms),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt =
                conn.prepare_cached("SELECT body FROM events WHERE message_id = ?1 ORDER BY seq")?;
            let events = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .map(|b| {
                    serde_json::from_str::<Event>(&b?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let emails: Vec<String> = recipients.iter().map(|r| r.email.clone()).collect();
            let engagements = super::engagement::engagements(conn, &id, &emails)?;
            Ok(Some(MessageView {
                id,
                status: overall_status(&recipients),
                created_at: from_ms(created),
                from: request.from,
                to: request.to,
                cc: request.cc,
                subject: request.subject,
                tags: request.tags,
                source: if smtp { MessageSource::Smtp } else { MessageSource::Api },
                dkim,
                recipients,
                events,
                engagements,
            }))
        })
        .await
    }

    async fn message_owner(&self, id: &str) -> Result<Option<MessageOwner>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT key_id, sandbox FROM messages WHERE id = ?1")?
                .query_row([id], |r| Ok(MessageOwner { key_id: r.get(0)?, sandbox: r.get(1)? }))
                .optional()?)
        })
        .await
    }

    async fn record_hit(&self, hit: Hit) -> Result<Option<HitRecorded>, StoreError> {
        self.record_hit_sqlite(hit).await
    }

    async fn record_feedback(
        &self,
        feedback: Feedback,
    ) -> Result<Option<FeedbackRecorded>, StoreError> {
        self.record_feedback_sqlite(feedback).await
    }

    async fn create_webhook(&self, webhook: NewWebhook) -> Result<Webhook, StoreError> {
        self.write(move |conn| {
            let events = serde_json::to_string(&webhook.events).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            conn.execute(
                "INSERT INTO webhooks (id, url, secret, events, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![webhook.id, webhook.url, webhook.secret, events, to_ms(webhook.created_at)],
            )?;
            // Answer with what was stored (millisecond precision), so the 201 body and a later
            // GET agree on `created_at`.
            let created_at = from_ms(to_ms(webhook.created_at));
            Ok(Webhook {
                id: webhook.id,
                url: webhook.url,
                events: webhook.events,
                created_at,
                enabled: true,
                disabled_at: None,
            })
        })
        .await
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], webhook_from_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND state = 'pending'",
                [&id],
            )?;
            Ok(conn.execute("DELETE FROM webhooks WHERE id = ?1", [&id])? > 0)
        })
        .await
    }

    async fn claim_webhook_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let lease_ms = lease.as_millis() as i64;
        self.write(move |conn| {
            let now = now_ms();
            let mut stmt = conn.prepare_cached(
                "UPDATE webhook_deliveries SET lease_until = ?1
                 WHERE id IN (SELECT id FROM webhook_deliveries
                              WHERE state = 'pending' AND next_attempt_at <= ?2 AND lease_until <= ?2
                              ORDER BY next_attempt_at LIMIT ?3)
                 RETURNING id",
            )?;
            let ids: Vec<i64> = stmt
                .query_map(params![now + lease_ms, now, limit as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut load = conn.prepare_cached(
                "SELECT d.webhook_id, w.url, w.secret, d.event_id, e.body, d.attempts
                 FROM webhook_deliveries d
                 JOIN webhooks w ON w.id = d.webhook_id
                 JOIN events e ON e.id = d.event_id
                 WHERE d.id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let row = load
                    .query_row([id], |r| {
                        Ok(WebhookDelivery {
                            id: crate::webhook_log::delivery_id(id),
                            webhook_id: r.get(0)?,
                            url: r.get(1)?,
                            secret: r.get(2)?,
                            event_id: r.get(3)?,
                            body: r.get(4)?,
                            attempts: r.get::<_, i64>(5)? as u32,
                        })
                    })
                    .optional()?;
                match row {
                    Some(d) => out.push(d),
                    // The endpoint was deleted after the event was queued.
                    None => {
                        conn.execute("UPDATE webhook_deliveries SET state = 'dropped' WHERE id = ?1", [id])?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn finish_webhook_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: WebhookAttempt,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let id = crate::webhook_log::delivery_seq(&delivery.id).unwrap_or(0);
        let webhook_id = delivery.webhook_id.clone();
        self.write(move |conn| {
            let (state, next) = match (attempt.succeeded, attempt.retry_at) {
                (true, _) => ("delivered", None),
                (false, Some(at)) => ("pending", Some(to_ms(at))),
                (false, None) => ("failed", None),
            };
            let log: Option<String> = conn
                .prepare_cached("SELECT attempt_log FROM webhook_deliveries WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?
                .flatten();
            let log = crate::webhook_log::append_attempt(log.as_deref(), &attempt);
            conn.prepare_cached(
                "UPDATE webhook_deliveries
                 SET state = ?1, attempts = attempts + 1, next_attempt_at = COALESCE(?2, next_attempt_at),
                     lease_until = 0, last_status = ?3, last_error = ?4, attempt_log = ?5
                 WHERE id = ?6",
            )?
            .execute(params![state, next, attempt.status, attempt.error, log, id])?;
            // The endpoint's failure streak: begun at its first failure since a success.
            let since: Option<i64> = conn
                .prepare_cached(
                    "UPDATE webhooks SET failing_since =
                         CASE WHEN ?2 THEN NULL ELSE COALESCE(failing_since, ?3) END
                     WHERE id = ?1 RETURNING failing_since",
                )?
                .query_row(params![webhook_id, attempt.succeeded, to_ms(attempt.at)], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(since.map(from_ms))
        })
        .await
    }

    async fn disable_webhook(&self, id: &str, event: Event) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| super::webhook_log::disable(conn, &id, Some(&event))).await
    }

    async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(|conn| {
            let at: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(MAX(next_attempt_at, lease_until)) FROM webhook_deliveries WHERE state = 'pending'",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(at.map(from_ms))
        })
        .await
    }
}
