//! Idempotency records in Redis: one hash per (API key id, idempotency key) at
//! `{ns}:idem:{key_id}:{idempotency key}` (see [`super::keys`]).
//!
//! `begin` is a Lua script (check and create as one step, the equivalent of `SET NX` that can
//! also answer with the stored record): of concurrent requests with one key exactly one creates
//! the record. While in progress the hash expires with the owner's lease; once finished it
//! expires at `expires_at` (the first request plus the TTL).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::DistributedStore;
use crate::time::now_ms;
use crate::{ids, IdemAnswer, IdemBegin, Idempotency, StoreError};

/// KEYS: record. ARGV: body hash (hex), token, lease ms, expires_at (unix ms).
/// Returns `{'started'}`, `{'mismatch'}`, `{'in_progress'}` or `{'replay', status, body}`.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'token', ARGV[2], 'expires_at', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'started'}
end
local rec = redis.call('HMGET', KEYS[1], 'hash', 'status', 'body')
if rec[1] ~= ARGV[1] then return {'mismatch'} end
if not rec[2] then return {'in_progress'} end
return {'replay', rec[2], rec[3] or ''}
"#,
    )
});

/// KEYS: record. ARGV: token, status, body. Returns 1 when stored, 0 when not the owner.
/// Also run (as `EVAL`) inside the accept's `MULTI`, so the answer lands with the message.
const FINISH_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'body', ARGV[3])
redis.call('HDEL', KEYS[1], 'token')
redis.call('PEXPIREAT', KEYS[1], redis.call('HGET', KEYS[1], 'expires_at'))
return 1
"#;

static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH_LUA));

/// KEYS: record. ARGV: token, lease ms. Returns 1 when the owner's lease was extended.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rec = redis.call('HMGET', KEYS[1], 'token', 'status')
if rec[1] ~= ARGV[1] or rec[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: record. ARGV: token. Deletes the record if the caller still owns it.
static ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#,
    )
});

impl DistributedStore {
    pub(crate) fn idempotency_key(&self, key_id: &str, idem_key: &str) -> String {
        format!("{}:idem:{key_id}:{idem_key}", self.inner.keys.ns())
    }

    /// Before an accept that carries `answer`: [`StoreError::IdempotencyLost`] unless the caller
    /// still owns the record. The owner renews a lease of seconds, so the record cannot change
    /// hands between this check and the accept's `MULTI` a moment later.
    pub(crate) async fn check_claim(&self, answer: &IdemAnswer) -> Result<(), StoreError> {
        let c = &answer.claim;
        let mut con = self.redis().await?;
        let token: Option<String> = self
            .run_redis(
                redis::cmd("HGET")
                    .arg(self.idempotency_key(&c.key_id, &c.idem_key))
                    .arg("token")
                    .query_async(&mut con),
            )
            .await?;
        if token.as_deref() == Some(c.token.as_str()) {
            Ok(())
        } else {
            Err(StoreError::IdempotencyLost)
        }
    }

    /// Adds the storing of `answer` to the accept's atomic pipeline.
    pub(crate) fn store_answer(&self, pipe: &mut redis::Pipeline, answer: &IdemAnswer) {
        let c = &answer.claim;
        pipe.cmd("EVAL")
            .arg(FINISH_LUA)
            .arg(1)
            .arg(self.idempotency_key(&c.key_id, &c.idem_key))
            .arg(&c.token)
            .arg(answer.status)
            .arg(&answer.body)
            .ignore();
    }
}

#[async_trait]
impl Idempotency for DistributedStore {
    async fn idempotency_begin(
        &self,
        key_id: &str,
        idem_key: &str,
        body_hash: [u8; 32],
        lease: Duration,
        ttl: Duration,
    ) -> Result<IdemBegin, StoreError> {
        let token = ids::new_id("idem");
        let expires_at = now_ms() + ttl.as_millis() as i64;
        // PEXPIRE 0 would delete the key at once; a lease is at least a millisecond.
        let lease_ms = lease.as_millis().max(1) as u64;
        let mut con = self.redis().await?;
        let answer: Vec<String> = self
            .run_redis(
                BEGIN
                    .key(self.idempotency_key(key_id, idem_key))
                    .arg(hex::encode(body_hash))
                    .arg(&token)
                    .arg(lease_ms)
                    .arg(expires_at)
                    .invoke_async(&mut con),
            )
            .await?;
        let corrupt = || StoreError::Corrupt(format!("idempotency script answered {answer:?}"));
        match answer.first().map(String::as_str) {
            Some("started") => Ok(IdemBegin::Started { token }),
            Some("mismatch") => Ok(IdemBegin::Mismatch),
            Some("in_progress") => Ok(IdemBegin::InProgress),
            Some("replay") => {
                let status = answer.get(1).and_then(|s| s.parse().ok()).ok_or_else(corrupt)?;
                Ok(IdemBegin::Replay { status, body: answer.get(2).cloned().unwrap_or_default() })
            }
            _ => Err(corrupt()),
        }
    }

    async fn idempotency_finish(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        status: u16,
        body: String,
    ) -> Result<bool, StoreError> {
        let mut con = self.redis().await?;
        let stored: i64 = self
            .run_redis(
                FINISH
                    .key(self.idempotency_key(key_id, idem_key))
                    .arg(token)
                    .arg(status)
                    .arg(body)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(stored == 1)
    }

    async fn idempotency_renew(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let mut con = self.redis().await?;
        let renewed: i64 = self
            .run_redis(
                RENEW
                    .key(self.idempotency_key(key_id, idem_key))
                    .arg(token)
                    .arg(lease.as_millis().max(1) as u64)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn idempotency_abandon(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let mut con = self.redis().await?;
        self.run_redis(
            ABANDON
                .key(self.idempotency_key(key_id, idem_key))
                .arg(token)
                .invoke_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }
}
