//! Engagement records in Redis (`{ns}:msg:{id}:eng`, see [`super::keys`]).
//!
//! Recording a hit is read, decide, apply: one pipeline reads the recipient, the engagement and
//! the message's repeat-event count; [`crate::engagement::decide`] rules on them in Rust; one
//! Lua script then counts the hit and — only if the engagement and the message's count are
//! still what was read — stores the event and fans it out. A hit that lost a race to another
//! emitting hit is only counted: that other hit emitted just now, inside this one's window.

use std::collections::HashMap;
use std::sync::LazyLock;

use postwire_proto::{EngagementKind, SendRequest};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::queue::StoredRecipient;
use super::scripts::HELPERS;
use super::DistributedStore;
use crate::engagement::{decide, engagement_event, StoredEngagement, Tally};
use crate::time::{now_ms, to_ms};
use crate::{Hit, HitRecorded, StoreError};

/// Field on `{ns}:msg:{id}` counting the message's repeat engagement events.
pub(crate) const REPEATS_FIELD: &str = "engagement_repeats";

/// One value of the engagements hash.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredJson {
    pub kind: EngagementKind,
    pub recipient: u32,
    /// Empty for opens.
    #[serde(default)]
    pub url: String,
    #[serde(flatten)]
    pub tally: Tally,
}

impl StoredJson {
    pub(crate) fn into_stored(self) -> StoredEngagement {
        StoredEngagement {
            recipient: self.recipient,
            kind: self.kind,
            url: self.url,
            tally: self.tally,
        }
    }
}

/// Counts a hit and, if still due, emits its event.
///
/// KEYS: message, recipients, events, engagements.
/// ARGV: ns, engagement field, emit (`1`/`0`, Rust's verdict), the engagement's `events` as read
/// (0 when absent), the message's repeat count as read, hit time ms, retention s, the new
/// record's JSON (used when the field is absent), event id, event type, event body, now ms.
/// Returns `{count, emitted (1/0)}`, or `{-1, 0}` when the message is gone.
static RECORD_HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}\n{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local at = tonumber(ARGV[6])
local raw = redis.call('HGET', KEYS[4], ARGV[2])
local t
if raw then t = cjson.decode(raw) else t = cjson.decode(ARGV[8]) end
local emit = false
if ARGV[3] == '1' and (t.events or 0) == tonumber(ARGV[4]) then
  if tonumber(ARGV[4]) == 0 then
    emit = true
  else
    local repeats = tonumber(redis.call('HGET', KEYS[1], 'engagement_repeats') or '0')
    emit = repeats == tonumber(ARGV[5])
  end
end
if at < t.first_seen then t.first_seen = at end
if at > t.last_seen then t.last_seen = at end
t.count = t.count + 1
if emit then
  t.events = (t.events or 0) + 1
  t.last_event = at
  if t.events > 1 then redis.call('HINCRBY', KEYS[1], 'engagement_repeats', 1) end
  redis.call('RPUSH', KEYS[3], ARGV[11])
  fanout(ARGV[1], ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12]))
end
redis.call('HSET', KEYS[4], ARGV[2], cjson.encode(t))
if emit or not raw then settle_expiry(KEYS[1], tonumber(ARGV[7])) end
if emit then return {t.count, 1} end
return {t.count, 0}
"#
    ))
});

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl DistributedStore {
    pub(crate) async fn record_hit_redis(
        &self,
        hit: Hit,
    ) -> Result<Option<HitRecorded>, StoreError> {
        let keys = &self.inner.keys;
        let field = hit.engagement_key();
        let at = to_ms(hit.at);
        let mut con = self.redis().await?;
        let (recipient, prev, repeats): (Option<String>, Option<String>, Option<u64>) = self
            .run_redis(
                redis::pipe()
                    .hget(keys.recipients(&hit.message_id), hit.recipient.to_string())
                    .hget(keys.engagements(&hit.message_id), &field)
                    .hget(keys.message(&hit.message_id), REPEATS_FIELD)
                    .query_async(&mut con),
            )
            .await?;
        let Some(recipient) = recipient else { return Ok(None) };
        let email = serde_json::from_str::<StoredRecipient>(&recipient).map_err(corrupt)?.email;
        let prev: Option<StoredJson> =
            prev.map(|p| serde_json::from_str(&p)).transpose().map_err(corrupt)?;
        let prev_tally = prev.as_ref().map(|p| p.tally);
        let emit = decide(prev_tally.as_ref(), repeats.unwrap_or(0), at);
        let event = if emit {
            let request: Option<String> = self
                .run_redis(
                    redis::cmd("HGET")
                        .arg(keys.message(&hit.message_id))
                        .arg("request")
                        .query_async(&mut con),
                )
                .await?;
            let Some(request) = request else { return Ok(None) };
            let request: SendRequest = serde_json::from_str(&request).map_err(corrupt)?;
            Some(engagement_event(&hit, email, request.tags, request.metadata))
        } else {
            None
        };
        let fresh = StoredJson {
            kind: hit.kind,
            recipient: hit.recipient,
            url: hit.stored_url().to_string(),
            tally: Tally { first_seen: at, last_seen: at, count: 0, events: 0, last_event: at },
        };
        let body = event.as_ref().map(serde_json::to_string).transpose().map_err(corrupt)?;
        let (count, emitted): (i64, i64) = self
            .run_redis(
                RECORD_HIT
                    .key(keys.message(&hit.message_id))
                    .key(keys.recipients(&hit.message_id))
                    .key(keys.events(&hit.message_id))
                    .key(keys.engagements(&hit.message_id))
                    .arg(keys.ns())
                    .arg(&field)
                    .arg(if emit { "1" } else { "0" })
                    .arg(prev_tally.map_or(0, |t| t.events))
                    .arg(repeats.unwrap_or(0))
                    .arg(at)
                    .arg(self.inner.options.retention.as_secs().max(1))
                    .arg(serde_json::to_string(&fresh).map_err(corrupt)?)
                    .arg(event.as_ref().map(|e| e.id.as_str()).unwrap_or_default())
                    .arg(hit.kind.event_type().as_str())
                    .arg(body.unwrap_or_default())
                    .arg(now_ms())
                    .invoke_async(&mut con),
            )
            .await?;
        if count < 0 {
            return Ok(None);
        }
        Ok(Some(HitRecorded { count: count as u64, event: event.filter(|_| emitted == 1) }))
    }
}

/// The engagements hash of a message, as read for its view.
pub(crate) fn stored_engagements(
    hash: HashMap<String, String>,
) -> Result<Vec<StoredEngagement>, StoreError> {
    hash.into_values()
        .map(|json| serde_json::from_str::<StoredJson>(&json).map(StoredJson::into_stored))
        .collect::<Result<_, _>>()
        .map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use crate::distributed::test_ns::TestNs;
    use crate::engagement::contract;

    #[tokio::test]
    async fn hits_on_one_link_are_one_engagement_with_one_event_per_window() {
        let ns = TestNs::new().await;
        contract::hits_on_one_link_are_one_engagement_with_one_event_per_window(&ns.store).await;
    }

    #[tokio::test]
    async fn engagements_are_kept_apart_per_recipient_kind_and_url() {
        let ns = TestNs::new().await;
        contract::engagements_are_kept_apart_per_recipient_kind_and_url(&ns.store).await;
    }

    #[tokio::test]
    async fn repeat_events_of_one_message_stop_at_the_cap() {
        let ns = TestNs::new().await;
        contract::repeat_events_of_one_message_stop_at_the_cap(&ns.store).await;
    }

    #[tokio::test]
    async fn concurrent_first_hits_emit_exactly_one_event() {
        let ns = TestNs::new().await;
        contract::concurrent_first_hits_emit_exactly_one_event(&ns.store).await;
    }

    #[tokio::test]
    async fn a_hit_for_an_unknown_message_or_recipient_records_nothing() {
        let ns = TestNs::new().await;
        contract::a_hit_for_an_unknown_message_or_recipient_records_nothing(&ns.store).await;
    }
}
