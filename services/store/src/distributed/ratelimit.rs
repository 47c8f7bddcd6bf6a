//! Rate-limit counters in Redis, shared by every gateway of a namespace.
//!
//! Keys (see [`super::keys`]): `{ns}:rl:{key_id}:s:{unix_second}` counts requests and
//! `{ns}:rl:{key_id}:d:{day}` (days since the epoch, UTC) counts messages. One Lua script
//! reads both, applies the same check as [`crate::ratelimit::check`] and adds the cost only
//! when it fits both, so concurrent gateways can never overrun a limit. The script takes the
//! time from Redis (`TIME`), not from the calling host, so gateways with skewed clocks still
//! agree on which second and which day it is. Each counter expires on its own shortly after
//! its window ends.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::DistributedStore;
use crate::ratelimit::{Cost, Decision, Granted, Limited, Quota, RateLimiter, Window};
use crate::StoreError;

/// ARGV: key prefix `{ns}:rl:{key_id}`, requests, messages, per-second limit, per-day limit
/// (0 = unlimited). Returns `{verdict, used, now_ms}`: verdict 0 = granted (used = the second
/// window's count, this call included), 1 = refused by the second window, 2 = by the day
/// window, with what that window had used.
/// The window keys are computed here from Redis's clock (hence passed as a prefix).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = math.floor(now / 1000)
local day = math.floor(now / 86400000)
local skey = ARGV[1] .. ':s:' .. second
local dkey = ARGV[1] .. ':d:' .. day
local requests, messages = tonumber(ARGV[2]), tonumber(ARGV[3])
local per_second, per_day = tonumber(ARGV[4]), tonumber(ARGV[5])
local used_s = tonumber(redis.call('GET', skey) or '0')
local used_d = tonumber(redis.call('GET', dkey) or '0')
if per_second > 0 and requests > 0 and used_s + requests > per_second then return {1, used_s, now} end
if per_day > 0 and messages > 0 and used_d + messages > per_day then return {2, used_d, now} end
if requests > 0 then
  redis.call('INCRBY', skey, requests)
  redis.call('PEXPIRE', skey, 2000)
end
if messages > 0 then
  redis.call('INCRBY', dkey, messages)
  redis.call('PEXPIREAT', dkey, (day + 1) * 86400000 + 3600000)
end
return {0, used_s + requests, now}
"#,
    )
});

/// KEYS: a day counter. ARGV: messages to give back. Never below zero; a missing (expired)
/// counter stays missing.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local left = tonumber(redis.call('GET', KEYS[1]) or '-1')
if left < 0 then return 0 end
left = math.max(0, left - tonumber(ARGV[1]))
redis.call('SET', KEYS[1], left, 'KEEPTTL')
return left
"#,
    )
});

impl DistributedStore {
    fn rate_prefix(&self, key_id: &str) -> String {
        format!("{}:rl:{key_id}", self.inner.keys.ns())
    }
}

#[async_trait]
impl RateLimiter for DistributedStore {
    async fn acquire(
        &self,
        key_id: &str,
        quota: Quota,
        cost: Cost,
    ) -> Result<Decision, StoreError> {
        let mut con = self.redis().await?;
        let (verdict, used, now): (i64, u64, i64) = self
            .run_redis(
                ACQUIRE
                    .arg(self.rate_prefix(key_id))
                    .arg(cost.requests)
                    .arg(cost.messages)
                    .arg(quota.per_second)
                    .arg(quota.per_day)
                    .invoke_async(&mut con),
            )
            .await?;
        let (window, limit, requested) = match verdict {
            0 => {
                return Ok(Decision::Granted(Granted {
                    day: Window::Day.index(now),
                    second_used: used,
                    second_reset: Window::Second.reset_after(now),
                }))
            }
            1 => (Window::Second, quota.per_second, cost.requests),
            2 => (Window::Day, quota.per_day, cost.messages),
            other => {
                return Err(StoreError::Corrupt(format!("rate-limit script answered {other}")))
            }
        };
        Ok(Decision::Limited(Limited {
            window,
            limit: u64::from(limit),
            used,
            requested: u64::from(requested),
            reset_after: window.reset_after(now),
        }))
    }

    async fn release_messages(
        &self,
        key_id: &str,
        day: i64,
        messages: u32,
    ) -> Result<(), StoreError> {
        let mut con = self.redis().await?;
        let key = format!("{}:d:{day}", self.rate_prefix(key_id));
        self.run_redis(RELEASE.key(key).arg(messages).invoke_async::<i64>(&mut con)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against the local Redis (and RabbitMQ, which `connect` also reaches), each test under a
    //! namespace of its own that is deleted when it ends.

    use std::sync::Arc;

    use super::*;
    use crate::distributed::test_ns::TestNs;
    use crate::ratelimit::contract;

    #[tokio::test]
    async fn distributed_requests_over_the_per_second_limit_wait_for_the_next_second() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::requests_over_the_per_second_limit_wait_for_the_next_second(&store).await;
    }

    #[tokio::test]
    async fn distributed_messages_are_taken_from_the_day_all_or_nothing_and_can_be_given_back() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::messages_are_taken_from_the_day_all_or_nothing_and_can_be_given_back(&store)
            .await;
    }

    #[tokio::test]
    async fn distributed_concurrent_acquires_never_overrun_the_limit() {
        let ns = TestNs::new().await;
        let store = ns.store.clone();
        contract::concurrent_acquires_never_overrun_the_limit(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn two_stores_on_one_namespace_share_the_counters_and_counters_expire() {
        let ns = TestNs::new().await;
        let first = ns.store.clone();
        let second = ns.second_process().await;
        let quota = Quota { per_second: 0, per_day: 3 };
        assert!(matches!(
            first.acquire("key_a", quota, Cost::messages(2)).await.unwrap(),
            Decision::Granted(_)
        ));
        match second.acquire("key_a", quota, Cost::messages(2)).await.unwrap() {
            Decision::Limited(l) => assert_eq!((l.window, l.used), (Window::Day, 2)),
            other => panic!("the other gateway's messages count: {other:?}"),
        }
        let mut con = first.redis().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", first.rate_prefix("key_a")))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut con).await.unwrap();
        assert!(
            ttl > 3_600_000 && ttl <= 86_400_000 + 3_600_000,
            "the day counter expires after its day: {ttl}"
        );
    }
}
