//! Message copies in Redis: one hash per message, `{ns}:msg:{id}:copies` (see [`super::keys`]).

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;

use super::DistributedStore;
use crate::copies::{digest, recipient_key, Copies, PopMarks, SentCopy};
use crate::StoreError;

/// KEYS: copies hash, message hash. ARGV: pairs of (field, value). Sets the fields, drops the
/// bodies no recipient points at any more, and gives the hash the message's remaining TTL
/// when the message is already finished (it has one).
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
-- Field names only: the bodies stay where they are (a tracked message has one per recipient).
local fields = redis.call('HKEYS', KEYS[1])
local used = {}
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'r:' then used['b:' .. redis.call('HGET', KEYS[1], f)] = true end
end
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'b:' and not used[f] then redis.call('HDEL', KEYS[1], f) end
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#,
    )
});

#[async_trait]
impl Copies for DistributedStore {
    async fn store_copies(
        &self,
        message_id: &str,
        copies: Vec<SentCopy>,
    ) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let mut invocation = STORE.prepare_invoke();
        invocation.key(keys.copies(message_id)).key(keys.message(message_id));
        for copy in &copies {
            let digest = digest(&copy.bytes);
            invocation.arg(format!("b:{digest}")).arg(copy.bytes.as_slice());
            for r in &copy.recipients {
                invocation.arg(format!("r:{}", recipient_key(r))).arg(&digest);
            }
        }
        let mut con = self.redis().await?;
        let _: i64 = self.run_redis(invocation.invoke_async(&mut con)).await?;
        Ok(())
    }

    async fn sent_copy(
        &self,
        message_id: &str,
        recipients: &[String],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if recipients.is_empty() {
            return Ok(None);
        }
        let key = self.inner.keys.copies(message_id);
        let mut con = self.redis().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&key);
        for r in recipients {
            cmd.arg(format!("r:{}", recipient_key(r)));
        }
        let digests: Vec<Option<String>> = self.run_redis(cmd.query_async(&mut con)).await?;
        let Some(digest) = digests.into_iter().flatten().next() else {
            return Ok(None);
        };
        let body: Option<Vec<u8>> = self
            .run_redis(
                redis::cmd("HGET").arg(&key).arg(format!("b:{digest}")).query_async(&mut con),
            )
            .await?;
        Ok(body)
    }
}

/// The POP3 deletion mark is the `popped` field of the message's copies hash, so it lives and
/// expires with the copies.
#[async_trait]
impl PopMarks for DistributedStore {
    async fn mark_popped(&self, message_ids: &[String]) -> Result<(), StoreError> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in message_ids {
            pipe.hset(self.inner.keys.copies(id), "popped", "1").ignore();
        }
        let mut con = self.redis().await?;
        let _: () = self.run_redis(pipe.query_async(&mut con)).await?;
        Ok(())
    }

    async fn popped(&self, message_ids: &[String]) -> Result<Vec<String>, StoreError> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in message_ids {
            pipe.hexists(self.inner.keys.copies(id), "popped");
        }
        let mut con = self.redis().await?;
        let marks: Vec<bool> = self.run_redis(pipe.query_async(&mut con)).await?;
        Ok(message_ids.iter().zip(marks).filter(|(_, m)| *m).map(|(id, _)| id.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::copies::contract;
    use crate::distributed::test_ns::TestNs;

    #[tokio::test]
    async fn distributed_copies_are_found_per_recipient_and_replaced_by_a_later_attempt() {
        let ns = TestNs::new().await;
        contract::copies_are_found_per_recipient_and_replaced_by_a_later_attempt(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_pop_marks_are_remembered_per_message() {
        let ns = TestNs::new().await;
        contract::pop_marks_are_remembered_per_message(&ns.store).await;
    }
}
