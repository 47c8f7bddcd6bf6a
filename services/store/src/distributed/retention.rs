//! Retention on Redis: a finished message's keys expire `storage.retention` after its last
//! change (set by the scripts that finish it, `scripts::settle_expiry`); a message with a
//! recipient still pending has no expiry at all. Redis removes expired keys itself, off every
//! request's path.
//!
//! [`Retention::prune`] keeps the global search index in step: it walks `{ns}:search` from the
//! oldest entry up to the cutoff, a batch at a time from where the last batch stopped, and
//! drops the entries whose message Redis has removed; those are the messages it reports
//! pruned. Entries of messages still stored (pending, or finished less than the retention
//! ago) stay. Idempotency records expire by themselves 24 h after their first request, so
//! none are reported here. Each batch also trims the global event log (`{ns}:events:log`
//! and `{ns}:events:body`) up to the cutoff and, from every endpoint's delivery log
//! (`{ns}:webhook:{id}:log`), the ids of deliveries Redis has expired.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::keys::Keys;
use super::DistributedStore;
use crate::{Pruned, Retention, StoreError};

#[async_trait]
impl Retention for DistributedStore {
    async fn prune(&self, cutoff: DateTime<Utc>, max: usize) -> Result<Pruned, StoreError> {
        let keys = &self.inner.keys;
        let max = max.max(1);
        let from = match self.inner.prune_cursor.lock().expect("cursor").clone() {
            Some(member) => format!("({member}"),
            None => "-".to_string(),
        };
        let to = format!("({}", Keys::search_member(cutoff.timestamp_millis(), ""));
        let mut con = self.redis().await?;
        let members: Vec<String> = self
            .run_redis(
                redis::cmd("ZRANGEBYLEX")
                    .arg(keys.search())
                    .arg(&from)
                    .arg(&to)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(max)
                    .query_async(&mut con),
            )
            .await?;
        let full = members.len() == max;
        *self.inner.prune_cursor.lock().expect("cursor") =
            if full { members.last().cloned() } else { None };
        let events = self.trim_events(cutoff.timestamp_millis(), max).await?
            + self.trim_delivery_logs(max).await?;
        let more = full || events >= max as u64;
        if members.is_empty() {
            return Ok(Pruned { events, more, ..Pruned::default() });
        }
        let mut exists = redis::pipe();
        for m in &members {
            let id = m.split_once(':').map_or(m.as_str(), |(_, id)| id);
            exists.exists(keys.message(id));
        }
        let present: Vec<bool> = self.run_redis(exists.query_async(&mut con)).await?;
        let gone: Vec<&String> =
            members.iter().zip(present).filter(|(_, p)| !p).map(|(m, _)| m).collect();
        // What ZREM removed is what this process counts: another pruner racing it on the
        // same entries counts none of them twice.
        let removed: u64 = if gone.is_empty() {
            0
        } else {
            self.run_redis(redis::cmd("ZREM").arg(keys.search()).arg(&gone).query_async(&mut con))
                .await?
        };
        Ok(Pruned { messages: removed, idempotency: 0, events, more })
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut con = self.redis().await?;
        let info: String =
            self.run_redis(redis::cmd("INFO").arg("memory").query_async(&mut con)).await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::distributed::test_ns::TestNs;
    use crate::retention::contract;

    #[tokio::test]
    async fn distributed_finished_messages_past_the_retention_are_pruned_and_pending_ones_kept() {
        let retention = Duration::from_secs(1);
        let ns = TestNs::with_retention(retention).await;
        contract::finished_messages_past_the_retention_are_pruned_and_pending_ones_kept(
            &ns.store, retention,
        )
        .await;
    }

    #[tokio::test]
    async fn distributed_the_event_log_and_the_delivery_log_are_pruned_past_the_retention() {
        let retention = Duration::from_secs(1);
        let ns = TestNs::with_retention(retention).await;
        contract::the_event_log_and_the_delivery_log_are_pruned_past_the_retention(
            &ns.store, retention,
        )
        .await;
    }
}
