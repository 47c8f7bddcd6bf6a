//! The suppression list in Redis: the [`Suppressions`] implementation, and the pieces the
//! queue uses to screen recipients at acceptance (inside the accept `MULTI`) and to list hard
//! bounces (inside the `complete` script).
//!
//! Keys (see [`super::keys`]): `{ns}:suppressions` is a hash from address ([`crate::suppression::key`] form) to a JSON
//! [`StoredSuppression`]; `{ns}:suppressions:index` a sorted set of the same addresses scored by
//! `created_at` (unix ms), for newest-first paging. Both change together, in one script or
//! `MULTI`.

use std::sync::LazyLock;

use async_trait::async_trait;
use postwire_proto::{RecipientStatus, Suppression, SuppressionReason};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::keys::Keys;
use super::scripts::{HELPERS, PAGE_NEWEST_FIRST};
use super::DistributedStore;
use crate::suppression::suppressed_response;
use crate::time::{from_ms, now_ms, to_ms};
use crate::{
    NewMessage, NewSuppression, StoreError, SuppressionCursor, SuppressionPage, Suppressions,
};

/// One entry as stored in `{ns}:suppressions`. `created_at` is unix ms (also its score in
/// the index), so the `complete` script can read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSuppression {
    pub(crate) email: String,
    pub(crate) reason: String,
    #[serde(default)]
    pub(crate) smtp_response: Option<String>,
    #[serde(default)]
    pub(crate) message_id: Option<String>,
    pub(crate) created_at: i64,
}

impl StoredSuppression {
    pub(crate) fn from_entry(e: &Suppression) -> Self {
        Self {
            email: e.email.clone(),
            reason: e.reason.as_str().to_string(),
            smtp_response: e.smtp_response.clone(),
            message_id: e.message_id.clone(),
            created_at: to_ms(e.created_at),
        }
    }

    fn into_entry(self) -> Result<Suppression, StoreError> {
        let reason = SuppressionReason::parse(&self.reason).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown suppression reason {:?}", self.reason))
        })?;
        Ok(Suppression {
            email: self.email,
            reason,
            smtp_response: self.smtp_response,
            message_id: self.message_id,
            created_at: from_ms(self.created_at),
        })
    }

    fn parse(raw: &str) -> Result<Suppression, StoreError> {
        serde_json::from_str::<Self>(raw)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .into_entry()
    }
}

/// The `suppression` argument of one outcome in the `complete` script: the JSON entry to list
/// when the outcome is a hard bounce, else `''`.
pub(crate) fn hard_bounce_arg(
    outcome: &crate::RecipientOutcome,
    message_id: &str,
) -> Result<String, StoreError> {
    if !(outcome.suppress && outcome.result == crate::DeliveryResult::Bounced) {
        return Ok(String::new());
    }
    let stored = StoredSuppression {
        email: crate::suppression::key(&outcome.email),
        reason: SuppressionReason::HardBounce.as_str().to_string(),
        smtp_response: Some(outcome.response.clone()),
        message_id: Some(message_id.to_string()),
        created_at: now_ms(),
    };
    serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn list_key(ns: &str) -> String {
    format!("{ns}:suppressions")
}

fn index_key(ns: &str) -> String {
    format!("{ns}:suppressions:index")
}

/// Adds an entry unless the address is listed. KEYS: list, index. ARGV: email, created ms,
/// JSON. Returns `{1, json}` when added, `{0, existing json}` when already listed.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return {1, ARGV[3]}
end
return {0, redis.call('HGET', KEYS[1], ARGV[1])}
"#,
    )
});

/// Appends `message.suppressed` events and fans them out, inside the accept `MULTI`.
/// KEYS: events. ARGV: ns, now ms, retention s, then event id / body pairs.
static APPEND_SUPPRESSED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{HELPERS}\n{}",
        r#"
local ns, now = ARGV[1], tonumber(ARGV[2])
for i = 4, #ARGV, 2 do
  redis.call('RPUSH', KEYS[1], ARGV[i + 1])
  fanout(ns, ARGV[i], 'message.suppressed', ARGV[i + 1], now)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#
    )
});

impl DistributedStore {
    /// For each recipient of `message`, in order: the `last_response` to store it with when
    /// its address is listed, else `None`.
    pub(crate) async fn screen_recipients(
        &self,
        message: &NewMessage,
    ) -> Result<Vec<Option<String>>, StoreError> {
        if message.recipients.is_empty() {
            return Ok(Vec::new());
        }
        let emails: Vec<String> =
            message.recipients.iter().map(|r| crate::suppression::key(&r.email)).collect();
        let mut con = self.redis().await?;
        let raw: Vec<Option<String>> = self
            .run_redis(
                redis::cmd("HMGET")
                    .arg(list_key(self.inner.keys.ns()))
                    .arg(&emails)
                    .query_async(&mut con),
            )
            .await?;
        raw.into_iter()
            .map(|v| {
                v.map(|json| StoredSuppression::parse(&json).map(|e| suppressed_response(&e)))
                    .transpose()
            })
            .collect()
    }
}

/// The status a screened recipient is stored with.
pub(crate) fn screened_status(screened: &Option<String>) -> RecipientStatus {
    if screened.is_some() {
        RecipientStatus::Suppressed
    } else {
        RecipientStatus::Queued
    }
}

/// Adds the `message.suppressed` events of the screened recipients to the accept `MULTI`.
pub(crate) fn queue_suppressed_events(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    message: &NewMessage,
    screened: &[Option<String>],
    retention_s: u64,
) -> Result<(), StoreError> {
    let mut args: Vec<String> = Vec::new();
    for (r, response) in message.recipients.iter().zip(screened) {
        if let Some(response) = response {
            let event = crate::suppression::suppressed_event(message, &r.email, response.clone());
            args.push(event.id.clone());
            args.push(
                serde_json::to_string(&event).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
        }
    }
    if args.is_empty() {
        return Ok(());
    }
    pipe.cmd("EVAL")
        .arg(APPEND_SUPPRESSED.as_str())
        .arg(1)
        .arg(keys.events(&message.id))
        .arg(keys.ns())
        .arg(now_ms())
        .arg(retention_s)
        .arg(args)
        .ignore();
    Ok(())
}

#[async_trait]
impl Suppressions for DistributedStore {
    async fn list_suppressions(
        &self,
        after: Option<&SuppressionCursor>,
        limit: usize,
    ) -> Result<SuppressionPage, StoreError> {
        let ns = self.inner.keys.ns();
        let (max, cursor_email) = match after {
            Some(c) => (c.created_at_ms.to_string(), c.email.clone()),
            None => ("+inf".to_string(), String::new()),
        };
        let mut con = self.redis().await?;
        let raw: Vec<String> = self
            .run_redis(
                PAGE_NEWEST_FIRST
                    .key(index_key(ns))
                    .key(list_key(ns))
                    .arg(max)
                    .arg(cursor_email)
                    .arg(limit.saturating_add(1))
                    .invoke_async(&mut con),
            )
            .await?;
        let mut data =
            raw.iter().map(|r| StoredSuppression::parse(r)).collect::<Result<Vec<_>, _>>()?;
        let next = if data.len() > limit {
            data.truncate(limit);
            data.last().map(SuppressionCursor::after)
        } else {
            None
        };
        Ok(SuppressionPage { data, next })
    }

    async fn add_suppression(
        &self,
        entry: NewSuppression,
    ) -> Result<(Suppression, bool), StoreError> {
        let entry = entry.into_entry();
        let stored = StoredSuppression::from_entry(&entry);
        let json =
            serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ns = self.inner.keys.ns();
        let mut con = self.redis().await?;
        let (added, current): (i64, String) = self
            .run_redis(
                ADD.key(list_key(ns))
                    .key(index_key(ns))
                    .arg(&stored.email)
                    .arg(stored.created_at)
                    .arg(json)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok((StoredSuppression::parse(&current)?, added == 1))
    }

    async fn suppression(&self, email: &str) -> Result<Option<Suppression>, StoreError> {
        let mut con = self.redis().await?;
        let raw: Option<String> = self
            .run_redis(
                redis::cmd("HGET")
                    .arg(list_key(self.inner.keys.ns()))
                    .arg(crate::suppression::key(email))
                    .query_async(&mut con),
            )
            .await?;
        raw.map(|r| StoredSuppression::parse(&r)).transpose()
    }

    async fn remove_suppression(&self, email: &str) -> Result<bool, StoreError> {
        let ns = self.inner.keys.ns();
        let email = crate::suppression::key(email);
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(list_key(ns), &email).zrem(index_key(ns), &email).ignore();
        let mut con = self.redis().await?;
        let (removed,): (i64,) = self.run_redis(pipe.query_async(&mut con)).await?;
        Ok(removed == 1)
    }

    async fn suppressed_among(&self, emails: &[String]) -> Result<Vec<String>, StoreError> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let lower: Vec<String> = emails.iter().map(|e| crate::suppression::key(e)).collect();
        let mut con = self.redis().await?;
        let raw: Vec<Option<String>> = self
            .run_redis(
                redis::cmd("HMGET")
                    .arg(list_key(self.inner.keys.ns()))
                    .arg(&lower)
                    .query_async(&mut con),
            )
            .await?;
        Ok(emails.iter().zip(raw).filter(|(_, v)| v.is_some()).map(|(e, _)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::distributed::test_ns::TestNs;
    use crate::suppression::contract;

    #[tokio::test]
    async fn distributed_hard_bounce_suppresses_later_sends() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::hard_bounce_suppresses_later_sends(&store).await;
    }

    #[tokio::test]
    async fn distributed_only_flagged_bounces_list_the_address() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::only_flagged_bounces_list_the_address(&store).await;
    }

    #[tokio::test]
    async fn distributed_entries_page_newest_first() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::entries_page_newest_first(&store).await;
    }

    #[tokio::test]
    async fn distributed_suppressed_event_is_queued_for_webhooks() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::suppressed_event_is_queued_for_webhooks(&store).await;
    }
}
