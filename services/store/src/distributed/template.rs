//! Stored templates in Redis: the [`Templates`] implementation.
//!
//! Keys (see [`super::keys`]): `{ns}:templates` is a hash from template id to the template's
//! JSON (the API's [`Template`] body); `{ns}:templates:index` a sorted set of the same ids
//! scored by `created_at` (unix ms), for newest-first paging. Both change together, in one
//! `MULTI` or script.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{Template, TemplateRequest};
use redis::Script;

use super::scripts::PAGE_NEWEST_FIRST;
use super::DistributedStore;
use crate::embedded::to_ms;
use crate::template::replaced;
use crate::{StoreError, TemplateCursor, TemplatePage, Templates};

fn parse(raw: &str) -> Result<Template, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("stored template: {e}")))
}

fn to_json(template: &Template) -> Result<String, StoreError> {
    serde_json::to_string(template).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Overwrites a template only while it exists, so a replace racing a delete never brings the
/// template back. KEYS: templates. ARGV: id, JSON. Returns 1 when written, 0 when unknown.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

#[async_trait]
impl Templates for DistributedStore {
    async fn create_template(&self, template: Template) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let json = to_json(&template)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(keys.templates(), &template.id, json)
            .ignore()
            .zadd(keys.templates_index(), &template.id, to_ms(template.created_at))
            .ignore();
        let mut con = self.redis().await?;
        self.run_redis(pipe.query_async::<()>(&mut con)).await
    }

    async fn template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        let mut con = self.redis().await?;
        let raw: Option<String> = self
            .run_redis(
                redis::cmd("HGET").arg(self.inner.keys.templates()).arg(id).query_async(&mut con),
            )
            .await?;
        raw.as_deref().map(parse).transpose()
    }

    async fn list_templates(
        &self,
        after: Option<&TemplateCursor>,
        limit: usize,
    ) -> Result<TemplatePage, StoreError> {
        let keys = &self.inner.keys;
        let (max, cursor_id) = match after {
            Some(c) => (c.created_at_ms.to_string(), c.id.clone()),
            None => ("+inf".to_string(), String::new()),
        };
        let mut con = self.redis().await?;
        let raw: Vec<String> = self
            .run_redis(
                PAGE_NEWEST_FIRST
                    .key(keys.templates_index())
                    .key(keys.templates())
                    .arg(max)
                    .arg(cursor_id)
                    .arg(limit.saturating_add(1))
                    .invoke_async(&mut con),
            )
            .await?;
        let mut data = raw.iter().map(|r| parse(r)).collect::<Result<Vec<_>, _>>()?;
        let next = if data.len() > limit {
            data.truncate(limit);
            data.last().map(TemplateCursor::after)
        } else {
            None
        };
        Ok(TemplatePage { data, next })
    }

    async fn replace_template(
        &self,
        id: &str,
        content: TemplateRequest,
        at: DateTime<Utc>,
    ) -> Result<Option<Template>, StoreError> {
        let Some(current) = self.template(id).await? else { return Ok(None) };
        let template = replaced(current, content, at);
        let json = to_json(&template)?;
        let mut con = self.redis().await?;
        let written: i64 = self
            .run_redis(
                REPLACE.key(self.inner.keys.templates()).arg(id).arg(json).invoke_async(&mut con),
            )
            .await?;
        Ok((written == 1).then_some(template))
    }

    async fn delete_template(&self, id: &str) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(keys.templates(), id).zrem(keys.templates_index(), id).ignore();
        let mut con = self.redis().await?;
        let (removed,): (i64,) = self.run_redis(pipe.query_async(&mut con)).await?;
        Ok(removed == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::distributed::test_ns::TestNs;
    use crate::template::contract;

    #[tokio::test]
    async fn distributed_template_round_trips_and_is_replaced_in_place() {
        let ns = TestNs::new().await;
        contract::a_template_round_trips_and_is_replaced_in_place(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_deleted_template_is_gone() {
        let ns = TestNs::new().await;
        contract::a_deleted_template_is_gone(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_templates_page_newest_first() {
        let ns = TestNs::new().await;
        contract::templates_page_newest_first(&ns.store).await;
    }
}
