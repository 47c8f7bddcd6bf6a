//! Sending domains in Redis (see [`super::keys`]): a hash per domain at `{ns}:domain:{name}`,
//! the names in `{ns}:domains` (a sorted set, all scored 0, so it reads in name order), and the
//! counter `{ns}:domains:generation`. Adding and removing are Lua scripts, so the hash, the index
//! and the counter change together: a worker that sees the new generation sees the new key.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use postwire_proto::SigningAlgorithm;
use redis::Script;

use super::DistributedStore;
use crate::domain::normalize;
use crate::time::{from_ms, to_ms};
use crate::{Domains, SendingDomain, StoreError};

/// KEYS: domain hash, index, generation. ARGV: name, selector, algorithm, private key, public
/// record, created ms. Returns 1 when added, 0 when the domain exists.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'selector', ARGV[2], 'algorithm', ARGV[3], 'private_key', ARGV[4],
  'public_record', ARGV[5], 'created_at', ARGV[6])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"#,
    )
});

/// KEYS: domain hash, index, generation. ARGV: name. Returns 1 when removed, 0 when unknown.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"#,
    )
});

/// Reads one domain hash (as `HGETALL` answers it); `None` when the hash is empty (no domain).
fn from_hash(
    name: &str,
    mut h: HashMap<String, String>,
) -> Result<Option<SendingDomain>, StoreError> {
    if h.is_empty() {
        return Ok(None);
    }
    let mut take = |field: &str| {
        h.remove(field)
            .ok_or_else(|| StoreError::Corrupt(format!("domain {name} has no `{field}`")))
    };
    let selector = take("selector")?;
    let algorithm = take("algorithm")?;
    let private_key = take("private_key")?;
    let public_record = take("public_record")?;
    let created_at = take("created_at")?
        .parse::<i64>()
        .map_err(|e| StoreError::Corrupt(format!("domain {name} created_at: {e}")))?;
    let algorithm = SigningAlgorithm::parse(&algorithm).ok_or_else(|| {
        StoreError::Corrupt(format!("unknown DKIM algorithm {algorithm:?} for {name}"))
    })?;
    Ok(Some(SendingDomain {
        domain: name.to_string(),
        selector,
        algorithm,
        private_key,
        public_record,
        created_at: from_ms(created_at),
    }))
}

#[async_trait]
impl Domains for DistributedStore {
    async fn create_domain(&self, domain: SendingDomain) -> Result<bool, StoreError> {
        let d = domain.normalized();
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let added: i64 = self
            .run_redis(
                CREATE
                    .key(keys.domain(&d.domain))
                    .key(keys.domains())
                    .key(keys.domains_generation())
                    .arg(&d.domain)
                    .arg(&d.selector)
                    .arg(d.algorithm.as_str())
                    .arg(&d.private_key)
                    .arg(&d.public_record)
                    .arg(to_ms(d.created_at))
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(added == 1)
    }

    async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError> {
        let name = normalize(name);
        let mut con = self.redis().await?;
        let h: HashMap<String, String> = self
            .run_redis(
                redis::cmd("HGETALL").arg(self.inner.keys.domain(&name)).query_async(&mut con),
            )
            .await?;
        from_hash(&name, h)
    }

    async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let names: Vec<String> = self
            .run_redis(
                redis::cmd("ZRANGE").arg(keys.domains()).arg(0).arg(-1).query_async(&mut con),
            )
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HGETALL").arg(keys.domain(name));
        }
        let hashes: Vec<HashMap<String, String>> =
            self.run_redis(pipe.query_async(&mut con)).await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, h) in names.iter().zip(hashes) {
            // Removed between the two reads: skip it rather than fail the listing.
            if let Some(d) = from_hash(name, h)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        let name = normalize(name);
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let removed: i64 = self
            .run_redis(
                DELETE
                    .key(keys.domain(&name))
                    .key(keys.domains())
                    .key(keys.domains_generation())
                    .arg(&name)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(removed == 1)
    }

    async fn domains_generation(&self) -> Result<u64, StoreError> {
        let mut con = self.redis().await?;
        let value: Option<u64> = self
            .run_redis(
                redis::cmd("GET").arg(self.inner.keys.domains_generation()).query_async(&mut con),
            )
            .await?;
        Ok(value.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    //! Against the local RabbitMQ and Redis (`.ci/run` starts them; override with
    //! `POSTWIRE_TEST_AMQP_URL` / `POSTWIRE_TEST_REDIS_URL`), each test under a namespace of
    //! its own that is deleted when it ends.

    use super::*;
    use crate::distributed::test_ns::TestNs;
    use crate::domain::contract;

    #[tokio::test]
    async fn distributed_domains_are_created_once_listed_and_deleted() {
        let ns = TestNs::new().await;
        contract::domains_are_created_once_listed_and_deleted(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_of_concurrent_creates_exactly_one_wins() {
        let ns = TestNs::new().await;
        contract::of_concurrent_creates_exactly_one_wins(&ns.store).await;
    }

    #[tokio::test]
    async fn another_process_sees_a_new_domain_and_its_generation_at_once() {
        let ns = TestNs::new().await;
        let worker = ns.second_process().await;
        let before = worker.domains_generation().await.unwrap();
        assert!(worker.domain("brand.test").await.unwrap().is_none());
        assert!(ns
            .store
            .create_domain(contract::domain("brand.test", "s1", 1_764_000_000_000))
            .await
            .unwrap());
        assert!(worker.domains_generation().await.unwrap() > before);
        assert_eq!(
            worker.domain("brand.test").await.unwrap().unwrap().public_record,
            "v=DKIM1; k=ed25519; p=s1"
        );
    }
}
