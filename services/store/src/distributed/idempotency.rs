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
use postwire_proto::RecipientStatus;
use redis::Script;

use super::queue::{JobPayload, StoredRecipient};
use super::DistributedStore;
use crate::time::now_ms;
use crate::{ids, IdemAnswer, IdemBegin, Idempotency, StoreError};

/// KEYS: record. ARGV: body hash (hex), token, lease ms, expires_at (unix ms).
/// Returns `{'started'}`, `{'mismatch'}`, `{'in_progress'}` or
/// `{'replay', status, body, unpublished}` (see [`FINISH_LUA`]; `''` when published).
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'token', ARGV[2], 'expires_at', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'started'}
end
local rec = redis.call('HMGET', KEYS[1], 'hash', 'status', 'body', 'unpublished')
if rec[1] ~= ARGV[1] then return {'mismatch'} end
if not rec[2] then return {'in_progress'} end
return {'replay', rec[2], rec[3] or '', rec[4] or ''}
"#,
    )
});

/// KEYS: record. ARGV: token, status, body, and optionally the id of the message whose jobs are
/// still to be published. Returns 1 when stored, 0 when not the owner.
///
/// Also run (as `EVAL`) inside the accept's `MULTI`, so the answer lands with the message; the
/// accept then names its message as `unpublished` until the broker has confirmed its jobs. A
/// gateway killed in between leaves the mark, and the retry that replays the answer publishes
/// the jobs (see [`DistributedStore::publish_unpublished`]).
const FINISH_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'body', ARGV[3])
if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'unpublished', ARGV[4]) end
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

    /// Adds the storing of `answer` to the accept's atomic pipeline, marked as answering for
    /// message `unpublished` until [`Self::mark_published`] (`None`: nothing to publish).
    pub(crate) fn store_answer(
        &self,
        pipe: &mut redis::Pipeline,
        answer: &IdemAnswer,
        unpublished: Option<&str>,
    ) {
        let c = &answer.claim;
        pipe.cmd("EVAL")
            .arg(FINISH_LUA)
            .arg(1)
            .arg(self.idempotency_key(&c.key_id, &c.idem_key))
            .arg(&c.token)
            .arg(answer.status)
            .arg(&answer.body)
            .arg(unpublished.unwrap_or_default())
            .ignore();
    }

    /// Clears the mark [`Self::store_answer`] left, once the answer's jobs are on the broker.
    /// Failing to is harmless: a replay then publishes spare copies, which `claim` drops.
    pub(crate) async fn mark_published(&self, key_id: &str, idem_key: &str) {
        let cleared = async {
            let mut con = self.redis().await?;
            self.run_redis(
                redis::cmd("HDEL")
                    .arg(self.idempotency_key(key_id, idem_key))
                    .arg("unpublished")
                    .query_async::<()>(&mut con),
            )
            .await
        };
        if let Err(e) = cleared.await {
            tracing::warn!(error = %e, "cannot clear an idempotency record's unpublished mark");
        }
    }

    /// A replayed answer whose accept may have died before publishing message `id`'s jobs:
    /// publishes one copy of each job the message still owes (a copy that was published after
    /// all is a spare, which `claim` finds held or done and drops), then clears the mark.
    async fn publish_unpublished(
        &self,
        key_id: &str,
        idem_key: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let broker = self.broker().await?;
        let mut con = self.redis().await?;
        let stored: Vec<String> = self
            .run_redis(
                redis::cmd("HVALS").arg(self.inner.keys.recipients(id)).query_async(&mut con),
            )
            .await?;
        let mut domains: Vec<String> = Vec::new();
        for r in &stored {
            let r: StoredRecipient =
                serde_json::from_str(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let pending = RecipientStatus::parse(&r.status).is_some_and(|s| !s.is_final());
            if pending && !domains.contains(&r.domain) {
                domains.push(r.domain);
            }
        }
        for domain in domains {
            let payload = serde_json::to_vec(&JobPayload { message_id: id.to_string(), domain })
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let Err(e) =
                self.publish(&broker, &self.inner.keys.deliveries_queue(), &payload).await
            {
                broker.mark_broken();
                return Err(e);
            }
        }
        tracing::warn!(
            message_id = id,
            "published the jobs of an accept that died before it could"
        );
        self.mark_published(key_id, idem_key).await;
        Ok(())
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
                match answer.get(3).map(String::as_str) {
                    None | Some("") => {}
                    Some(id) => self.publish_unpublished(key_id, idem_key, id).await?,
                }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_ns::TestNs;
    use crate::{IdemBegin, IdemClaim, Idempotency, Queue};

    const LEASE: Duration = Duration::from_secs(3);
    const TTL: Duration = Duration::from_secs(3600);

    /// Begins `idem_key` for key `k1` and accepts a message for `rcpt` under it.
    async fn accept_under(ns: &TestNs, idem_key: &str, rcpt: &str) -> crate::NewMessage {
        let store = &ns.store;
        let IdemBegin::Started { token } =
            store.idempotency_begin("k1", idem_key, [7; 32], LEASE, TTL).await.unwrap()
        else {
            panic!("a new key starts");
        };
        let claim = IdemClaim { key_id: "k1".into(), idem_key: idem_key.into(), token };
        let mut msg = crate::suppression::contract::message(&[rcpt]);
        msg.idempotency = Some(claim.answer(202, format!("{{\"id\":\"{}\"}}", msg.id)));
        store.accept(msg.clone()).await.unwrap();
        msg
    }

    async fn unpublished_mark(ns: &TestNs, idem_key: &str) -> Option<String> {
        let mut con = ns.store.redis().await.unwrap();
        redis::cmd("HGET")
            .arg(ns.store.idempotency_key("k1", idem_key))
            .arg("unpublished")
            .query_async(&mut con)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_accept_clears_its_unpublished_mark_once_the_broker_has_its_jobs() {
        let ns = TestNs::new().await;
        accept_under(&ns, "idem-published", "a@published.test").await;
        assert_eq!(unpublished_mark(&ns, "idem-published").await, None);
        let replay = ns.store.idempotency_begin("k1", "idem-published", [7; 32], LEASE, TTL);
        assert!(matches!(replay.await.unwrap(), IdemBegin::Replay { status: 202, .. }));
        // One job, one copy: the replay published nothing more.
        assert!(ns.store.claim("w", Duration::from_secs(5)).await.unwrap().is_some());
        assert!(ns.store.claim("w", Duration::from_secs(5)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_replay_publishes_the_jobs_of_an_accept_killed_before_it_published_them() {
        let ns = TestNs::new().await;
        let msg = accept_under(&ns, "idem-killed", "b@killed.test").await;
        // What a gateway killed between the Redis MULTI and the broker's confirm leaves: the
        // message and its answer, still marked, and no copy of the job on the broker.
        ns.lose_every_copy().await;
        let mut con = ns.store.redis().await.unwrap();
        redis::cmd("HSET")
            .arg(ns.store.idempotency_key("k1", "idem-killed"))
            .arg("unpublished")
            .arg(&msg.id)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
        assert!(ns.store.claim("w", Duration::from_secs(5)).await.unwrap().is_none());

        let replay = ns.store.idempotency_begin("k1", "idem-killed", [7; 32], LEASE, TTL);
        let IdemBegin::Replay { status, body } = replay.await.unwrap() else {
            panic!("the stored answer is replayed");
        };
        assert_eq!((status, body.contains(&msg.id)), (202, true));
        assert_eq!(unpublished_mark(&ns, "idem-killed").await, None);
        let job = ns.store.claim("w", Duration::from_secs(5)).await.unwrap().expect("published");
        assert_eq!(job.message_id, msg.id);
    }
}
