//! The webhook delivery log, endpoint enable/disable and the event pull API in Redis: the
//! [`WebhookLog`] implementation and [`DistributedStore::disable`], which `state.rs` calls for
//! auto-disable. Keys: see [`super::keys`] (`…:webhook:{id}:log`, `…:events:log`,
//! `…:events:body`, and the `disabled_at`/`failing_since`/`log` fields).

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use postwire_proto::{Event, EventType, Webhook, WebhookDeliveryState, WebhookDeliveryView};
use redis::Script;

use super::scripts::HELPERS;
use super::state::webhook_record;
use super::DistributedStore;
use crate::time::{from_ms, now_ms, to_ms};
use crate::webhook_log::{delivery_seq, parse_attempts};
use crate::{DeliveryPage, EventPage, EventQuery, StoreError, WebhookLog};

/// Disables an endpoint: `disabled_at` set, its pending deliveries `failed` (and expiring like
/// any final one), and the event, if given, stored and fanned out to the endpoints still
/// enabled.
///
/// KEYS: endpoint, its pending set, outbox. ARGV: ns, now ms, retention s, then event id, type
/// and body, or nothing. Returns 1, or 0 when unknown or already disabled.
static DISABLE_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}\n{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'disabled_at') == 1 then
  return 0
end
local ns, now = ARGV[1], tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'disabled_at', now)
for _, did in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('HSET', ns .. ':whd:' .. did, 'state', 'failed')
  redis.call('EXPIRE', ns .. ':whd:' .. did, ARGV[3])
  redis.call('ZREM', KEYS[3], did)
end
redis.call('DEL', KEYS[2])
if ARGV[4] then fanout(ns, ARGV[4], ARGV[5], ARGV[6], now) end
return 1
"#
    ))
});

/// Makes a logged delivery of an endpoint due now, whatever its state.
///
/// KEYS: delivery, outbox, the endpoint's pending set, its log. ARGV: delivery id, endpoint id,
/// now ms. Returns 1, or 0 when the endpoint has no such delivery.
static RETRY_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'webhook_id') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'next_attempt_at', ARGV[3])
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"#,
    )
});

/// A logged delivery as listed.
fn delivery_view(
    id: &str,
    fields: &HashMap<String, String>,
) -> Result<WebhookDeliveryView, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("webhook delivery {id}: {what}"));
    let body = fields.get("body").ok_or_else(|| corrupt("no body"))?;
    let kind = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).and_then(EventType::parse))
        .ok_or_else(|| corrupt("no known event type"))?;
    let state = fields
        .get("state")
        .and_then(|s| WebhookDeliveryState::parse(s))
        .ok_or_else(|| corrupt("unknown state"))?;
    let ms = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
    Ok(WebhookDeliveryView {
        id: id.to_string(),
        event_id: fields.get("event_id").cloned().unwrap_or_default(),
        kind,
        created_at: from_ms(ms("created_at").unwrap_or(0)),
        next_attempt_at: (state == WebhookDeliveryState::Pending)
            .then(|| ms("next_attempt_at").map(from_ms))
            .flatten(),
        state,
        attempts: parse_attempts(fields.get("log").map(String::as_str)),
    })
}

/// A `GET /v1/events` position: `{created_at:015}:{event_id}`.
fn valid_position(raw: &str) -> bool {
    raw.split_once(':').is_some_and(|(ms, id)| {
        ms.len() == 15 && ms.bytes().all(|b| b.is_ascii_digit()) && id.starts_with("evt_")
    })
}

impl DistributedStore {
    /// See [`DISABLE_WEBHOOK`].
    pub(crate) async fn disable(
        &self,
        id: &str,
        event: Option<&Event>,
    ) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let mut call = DISABLE_WEBHOOK.prepare_invoke();
        call.key(keys.webhook(id))
            .key(format!("{}:pending", keys.webhook(id)))
            .key(keys.outbox())
            .arg(keys.ns())
            .arg(now_ms())
            .arg(self.inner.options.retention.as_secs().max(1));
        if let Some(event) = event {
            let body =
                serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            call.arg(&event.id).arg(event.kind.as_str()).arg(body);
        }
        let mut con = self.redis().await?;
        let done: i64 = self.run_redis(call.invoke_async(&mut con)).await?;
        Ok(done == 1)
    }

    /// Drops up to `max` `GET /v1/events` entries stored before `cutoff` (ms); how many.
    pub(crate) async fn trim_events(&self, cutoff: i64, max: usize) -> Result<u64, StoreError> {
        let keys = &self.inner.keys;
        let bound = format!("({cutoff:015}");
        let mut con = self.redis().await?;
        let old: Vec<String> = self
            .run_redis(
                redis::cmd("ZRANGEBYLEX")
                    .arg(keys.events_log())
                    .arg("-")
                    .arg(&bound)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max)
                    .query_async(&mut con),
            )
            .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> =
            old.iter().filter_map(|m| m.split_once(':').map(|(_, id)| id)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(keys.events_body(), &ids).ignore().zrem(keys.events_log(), &old);
        let (removed,): (u64,) = self.run_redis(pipe.query_async(&mut con)).await?;
        Ok(removed)
    }

    /// Drops, from each endpoint's delivery log, up to `max` of its oldest entries whose
    /// delivery hash has expired (finished deliveries expire with the retention); how many.
    pub(crate) async fn trim_delivery_logs(&self, max: usize) -> Result<u64, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let endpoints: Vec<String> = self
            .run_redis(
                redis::cmd("ZRANGE").arg(keys.webhooks()).arg(0).arg(-1).query_async(&mut con),
            )
            .await?;
        let mut removed = 0;
        for endpoint in endpoints {
            let log = keys.webhook_log(&endpoint);
            let ids: Vec<String> = self
                .run_redis(
                    redis::cmd("ZRANGE").arg(&log).arg(0).arg(max as i64 - 1).query_async(&mut con),
                )
                .await?;
            if ids.is_empty() {
                continue;
            }
            let mut exists = redis::pipe();
            for id in &ids {
                exists.exists(keys.webhook_delivery(id));
            }
            let present: Vec<bool> = self.run_redis(exists.query_async(&mut con)).await?;
            let gone: Vec<&String> =
                ids.iter().zip(present).filter(|(_, p)| !p).map(|(id, _)| id).collect();
            if !gone.is_empty() {
                let n: u64 = self
                    .run_redis(redis::cmd("ZREM").arg(&log).arg(&gone).query_async(&mut con))
                    .await?;
                removed += n;
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl WebhookLog for DistributedStore {
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let mut con = self.redis().await?;
        let fields: HashMap<String, String> = self
            .run_redis(redis::cmd("HGETALL").arg(self.inner.keys.webhook(id)).query_async(&mut con))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        webhook_record(fields).map(Some)
    }

    async fn set_webhook_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Option<Webhook>, StoreError> {
        if self.webhook(id).await?.is_none() {
            return Ok(None);
        }
        if enabled {
            let mut con = self.redis().await?;
            self.run_redis(
                redis::cmd("HDEL")
                    .arg(self.inner.keys.webhook(id))
                    .arg("disabled_at")
                    .arg("failing_since")
                    .query_async::<i64>(&mut con),
            )
            .await?;
        } else {
            self.disable(id, None).await?;
        }
        self.webhook(id).await
    }

    async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        let keys = &self.inner.keys;
        let log = keys.webhook_log(webhook_id);
        let mut con = self.redis().await?;
        let mut data = Vec::with_capacity(limit);
        let mut max = before.map_or("+inf".to_string(), |b| format!("({b}"));
        let mut more = false;
        'pages: loop {
            let ids: Vec<String> = self
                .run_redis(
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(&log)
                        .arg(&max)
                        .arg("-inf")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit + 1)
                        .query_async(&mut con),
                )
                .await?;
            if ids.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(keys.webhook_delivery(id));
            }
            let rows: Vec<HashMap<String, String>> =
                self.run_redis(pipe.query_async(&mut con)).await?;
            for (id, fields) in ids.iter().zip(rows) {
                max = format!("({}", delivery_seq(id).unwrap_or(0));
                if fields.is_empty() {
                    // Expired with the retention: forget it.
                    self.run_redis(
                        redis::cmd("ZREM").arg(&log).arg(id).query_async::<i64>(&mut con),
                    )
                    .await?;
                    continue;
                }
                if data.len() == limit {
                    more = true;
                    break 'pages;
                }
                data.push(delivery_view(id, &fields)?);
            }
        }
        let next = if more { data.last().and_then(|d| delivery_seq(&d.id)) } else { None };
        Ok(DeliveryPage { data, next })
    }

    async fn retry_webhook_delivery(
        &self,
        webhook_id: &str,
        delivery_id: &str,
    ) -> Result<Option<WebhookDeliveryView>, StoreError> {
        if delivery_seq(delivery_id).is_none() {
            return Ok(None);
        }
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let done: i64 = self
            .run_redis(
                RETRY_WEBHOOK
                    .key(keys.webhook_delivery(delivery_id))
                    .key(keys.outbox())
                    .key(format!("{}:pending", keys.webhook(webhook_id)))
                    .key(keys.webhook_log(webhook_id))
                    .arg(delivery_id)
                    .arg(webhook_id)
                    .arg(now_ms())
                    .invoke_async(&mut con),
            )
            .await?;
        if done == 0 {
            return Ok(None);
        }
        let fields: HashMap<String, String> = self
            .run_redis(
                redis::cmd("HGETALL").arg(keys.webhook_delivery(delivery_id)).query_async(&mut con),
            )
            .await?;
        delivery_view(delivery_id, &fields).map(Some)
    }

    async fn events(
        &self,
        query: &EventQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError> {
        if after.is_some_and(|a| !valid_position(a)) {
            return Ok(None);
        }
        let keys = &self.inner.keys;
        let since = query.since.map(|s| format!("[{:015}", to_ms(s)));
        // After the cursor, or from `since`, whichever is later.
        let mut start = match (after, since) {
            (Some(a), Some(s)) if s[1..] > *a => s,
            (Some(a), _) => format!("({a}"),
            (None, Some(s)) => s,
            (None, None) => "-".to_string(),
        };
        let mut con = self.redis().await?;
        let mut data = Vec::with_capacity(limit);
        let mut last: Option<String> = None;
        while data.len() < limit {
            let members: Vec<String> = self
                .run_redis(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(keys.events_log())
                        .arg(&start)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit.max(50))
                        .query_async(&mut con),
                )
                .await?;
            let Some(final_member) = members.last().cloned() else { break };
            let ids: Vec<&str> =
                members.iter().filter_map(|m| m.split_once(':').map(|(_, id)| id)).collect();
            let bodies: Vec<Option<String>> = self
                .run_redis(
                    redis::cmd("HMGET").arg(keys.events_body()).arg(&ids).query_async(&mut con),
                )
                .await?;
            for (member, body) in members.iter().zip(bodies) {
                last = Some(member.clone());
                let Some(body) = body else { continue };
                let event: Event =
                    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if query.kind.is_none_or(|k| k == event.kind) {
                    data.push(event);
                    if data.len() == limit {
                        break;
                    }
                }
            }
            start = format!("({final_member}");
        }
        Ok(Some(EventPage { data, next: last }))
    }
}
