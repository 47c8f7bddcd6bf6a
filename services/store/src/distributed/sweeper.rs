//! The lost-job sweeper: a job's only copy can vanish with a broker crash (the retry queues are
//! classic queues, and a copy in flight between two of them at the crash is gone), and a job
//! can have no copy at all when the gateway that stored its message was killed before it
//! published the job (the message and its idempotent answer are in Redis, so a retry is
//! answered 202 from them). Redis still lists the job in `{ns}:jobs`; this finds such jobs and
//! publishes them to the deliveries queue again.
//!
//! A job is taken for lost when no worker holds its lease, its earliest pending recipient was
//! due more than `overdue` ago, and the deliveries queue has nothing ready — with a backlog, an
//! overdue job may simply be waiting its turn. A copy published needlessly costs nothing worse
//! than a spare delivery: `claim` finds the job held, finished or not yet due and disposes of it.
//! `{ns}:swept:{id}:{domain}` keeps one job from being re-queued more than once per `overdue`.

use std::sync::LazyLock;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use redis::Script;

use super::queue::JobPayload;
use super::scripts::with_helpers;
use super::DistributedStore;
use crate::time::now_ms;
use crate::StoreError;

/// Jobs looked at per script call.
const BATCH: usize = 200;

/// Picks the lost jobs among some members of `{ns}:jobs` and marks them swept.
///
/// KEYS: per job, its lease, swept marker and recipients. ARGV: now ms, overdue ms, then per job
/// its domain and its `{ns}:jobs` member. Returns the members to publish again.
static LOST: LazyLock<Script> = LazyLock::new(|| {
    with_helpers(
        r#"
local now = tonumber(ARGV[1])
local overdue = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS / 3 do
  local lease, swept, rcpt = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local domain, member = ARGV[2 * i + 1], ARGV[2 * i + 2]
  if redis.call('EXISTS', lease) == 0 and redis.call('EXISTS', swept) == 0 then
    local earliest = nil
    for _, e in ipairs(load_recipients(rcpt)) do
      if e.r.domain == domain and is_pending(e.r.status) then
        -- A recipient never tried is due since it was stored.
        local due = e.r.next_attempt_at or e.r.updated_at or 0
        if earliest == nil or due < earliest then earliest = due end
      end
    end
    if earliest ~= nil and earliest + overdue < now then
      redis.call('SET', swept, '1', 'PX', overdue)
      out[#out + 1] = member
    end
  end
end
return out
"#,
    )
});

impl DistributedStore {
    /// See [`crate::Queue::recover_lost_jobs`].
    pub(crate) async fn sweep(&self, overdue: Duration) -> Result<u64, StoreError> {
        let keys = &self.inner.keys;
        let broker = self.broker().await?;
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let ready = self
            .amqp(broker.publisher.queue_declare(
                &keys.deliveries_queue(),
                passive,
                FieldTable::default(),
            ))
            .await?
            .message_count();
        if ready > 0 {
            return Ok(0);
        }
        let overdue_ms = overdue.as_millis().clamp(1, i64::MAX as u128) as i64;
        let mut con = self.redis().await?;
        let mut cursor: u64 = 0;
        let mut requeued = 0;
        loop {
            let (next, members): (u64, Vec<String>) = self
                .run_redis(
                    redis::cmd("SSCAN")
                        .arg(keys.jobs())
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut con),
                )
                .await?;
            let jobs: Vec<(&str, &str, &String)> = members
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(id, domain)| (id, domain, m)))
                .collect();
            if !jobs.is_empty() {
                let mut script = LOST.prepare_invoke();
                script.arg(now_ms()).arg(overdue_ms);
                for (id, domain, member) in &jobs {
                    script
                        .key(keys.lease(id, domain))
                        .key(keys.swept(id, domain))
                        .key(keys.recipients(id))
                        .arg(*domain)
                        .arg(*member);
                }
                let lost: Vec<String> = self.run_redis(script.invoke_async(&mut con)).await?;
                for member in lost {
                    let Some((message_id, domain)) = member.split_once(' ') else { continue };
                    let payload = serde_json::to_vec(&JobPayload {
                        message_id: message_id.to_string(),
                        domain: domain.to_string(),
                    })
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    self.publish(&broker, &keys.deliveries_queue(), &payload).await?;
                    tracing::warn!(
                        message_id,
                        domain,
                        "re-queued a delivery job whose every copy was lost by the broker"
                    );
                    requeued += 1;
                }
            }
            if next == 0 {
                return Ok(requeued);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_ns::TestNs;
    use crate::Queue;

    #[tokio::test]
    async fn a_job_whose_copies_were_lost_is_requeued_once_and_then_claimed() {
        let ns = TestNs::new().await;
        let store = &ns.store;
        let msg = crate::suppression::contract::message(&["lost@sweep.test"]);
        store.accept(msg.clone()).await.unwrap();
        ns.lose_every_copy().await;
        assert!(store.claim("w", Duration::from_secs(5)).await.unwrap().is_none());
        assert_eq!(store.depth().await.unwrap(), 1, "Redis still owes the job");

        // Not overdue yet: left alone.
        assert_eq!(store.recover_lost_jobs(Duration::from_secs(3600)).await.unwrap(), 0);
        assert!(store.claim("w", Duration::from_secs(5)).await.unwrap().is_none());

        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.recover_lost_jobs(Duration::from_millis(10)).await.unwrap(), 1);
        let job = store.claim("w", Duration::from_secs(5)).await.unwrap().expect("claimable again");
        assert_eq!(job.message_id, msg.id);

        // Held by a worker now: not lost, whatever its age.
        ns.lose_every_copy().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.recover_lost_jobs(Duration::from_millis(10)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn nothing_is_requeued_while_jobs_wait_in_the_deliveries_queue_or_were_just_swept() {
        let ns = TestNs::new().await;
        let store = &ns.store;
        store.accept(crate::suppression::contract::message(&["a@backlog.test"])).await.unwrap();
        let overdue = Duration::from_millis(300);
        tokio::time::sleep(overdue + Duration::from_millis(50)).await;
        // Its copy is ready in the queue: a backlog, not a loss.
        assert_eq!(store.recover_lost_jobs(overdue).await.unwrap(), 0);

        ns.lose_every_copy().await;
        assert_eq!(store.recover_lost_jobs(overdue).await.unwrap(), 1);
        // Lost again at once: the marker holds it back for `overdue`...
        ns.lose_every_copy().await;
        assert_eq!(store.recover_lost_jobs(overdue).await.unwrap(), 0);
        // ...and then it is re-queued again.
        tokio::time::sleep(overdue + Duration::from_millis(50)).await;
        assert_eq!(store.recover_lost_jobs(overdue).await.unwrap(), 1);
        assert_eq!(store.depth().await.unwrap(), 1, "one job, however many copies");
    }
}
