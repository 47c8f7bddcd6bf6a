//! Stored templates in Redis: the [`Templates`] implementation.
//!
//! Keys (see [`super::keys`]): `{ns}:templates` is a hash from template id to the template's
//! JSON (the API's [`Template`] body); `{ns}:templates:index` a sorted set of the same ids
//! scored by `created_at` (unix ms), for newest-first paging; `{ns}:templates:alias` a hash
//! from alias to id. All three change together, in one script.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{Template, TemplateRequest};
use redis::Script;

use super::scripts::PAGE_NEWEST_FIRST;
use super::DistributedStore;
use crate::template::{is_id, replaced};
use crate::time::to_ms;
use crate::{StoreError, TemplateCursor, TemplatePage, TemplateWrite, Templates};

fn parse(raw: &str) -> Result<Template, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("stored template: {e}")))
}

fn to_json(template: &Template) -> Result<String, StoreError> {
    serde_json::to_string(template).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Resolves an id or alias to the id (`false` when unknown); shared by the scripts below.
/// KEYS[1] templates, KEYS[3] aliases.
const RESOLVE: &str = r#"
local function resolve(key, by_id)
  if by_id == '1' then
    if redis.call('HEXISTS', KEYS[1], key) == 1 then return key end
    return false
  end
  local id = redis.call('HGET', KEYS[3], key)
  if id and redis.call('HEXISTS', KEYS[1], id) == 1 then return id end
  return false
end
local function alias_of(id)
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then return nil end
  local alias = cjson.decode(raw).alias
  if type(alias) == 'string' then return alias end
  return nil
end
"#;

/// Writes a template, new or replacing: KEYS templates, index, aliases. ARGV: id or alias,
/// '1' if that is an id, the JSON (whose `id` is the template's), its id, its alias or '',
/// created_at ms, '1' to create. Returns 1 written, 0 unknown (replace), -1 alias taken.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RESOLVE}\n{}",
        r#"
local json, id, alias, created, create = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7] == '1'
if not create then
  local found = resolve(ARGV[1], ARGV[2])
  if not found then return 0 end
  id = found
end
if alias ~= '' then
  local holder = redis.call('HGET', KEYS[3], alias)
  if holder and holder ~= id and redis.call('HEXISTS', KEYS[1], holder) == 1 then return -1 end
end
local old = alias_of(id)
if old and old ~= alias and redis.call('HGET', KEYS[3], old) == id then
  redis.call('HDEL', KEYS[3], old)
end
if alias ~= '' then redis.call('HSET', KEYS[3], alias, id) end
redis.call('HSET', KEYS[1], id, json)
if create then redis.call('ZADD', KEYS[2], created, id) end
return 1
"#
    ))
});

/// Removes a template and frees its alias: KEYS templates, index, aliases. ARGV: id or alias,
/// '1' if that is an id. Returns 1 removed, 0 unknown.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RESOLVE}\n{}",
        r#"
local id = resolve(ARGV[1], ARGV[2])
if not id then return 0 end
local alias = alias_of(id)
if alias and redis.call('HGET', KEYS[3], alias) == id then redis.call('HDEL', KEYS[3], alias) end
redis.call('HDEL', KEYS[1], id)
redis.call('ZREM', KEYS[2], id)
return 1
"#
    ))
});

fn by_id(id_or_alias: &str) -> &'static str {
    if is_id(id_or_alias) {
        "1"
    } else {
        "0"
    }
}

impl DistributedStore {
    /// Runs [`WRITE`] for `template`, found by `id_or_alias` unless `create`.
    async fn write_template(
        &self,
        id_or_alias: &str,
        template: Template,
        create: bool,
    ) -> Result<TemplateWrite, StoreError> {
        let keys = &self.inner.keys;
        let json = to_json(&template)?;
        let mut con = self.redis().await?;
        let written: i64 = self
            .run_redis(
                WRITE
                    .key(keys.templates())
                    .key(keys.templates_index())
                    .key(keys.templates_alias())
                    .arg(id_or_alias)
                    .arg(by_id(id_or_alias))
                    .arg(json)
                    .arg(&template.id)
                    .arg(template.alias.as_deref().unwrap_or(""))
                    .arg(to_ms(template.created_at))
                    .arg(if create { "1" } else { "0" })
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(match written {
            1 => TemplateWrite::Written(template),
            0 => TemplateWrite::NotFound,
            _ => TemplateWrite::AliasTaken,
        })
    }
}

#[async_trait]
impl Templates for DistributedStore {
    async fn create_template(&self, template: Template) -> Result<TemplateWrite, StoreError> {
        let id = template.id.clone();
        self.write_template(&id, template, true).await
    }

    async fn template(&self, id_or_alias: &str) -> Result<Option<Template>, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let id = if is_id(id_or_alias) {
            Some(id_or_alias.to_string())
        } else {
            self.run_redis(
                redis::cmd("HGET")
                    .arg(keys.templates_alias())
                    .arg(id_or_alias)
                    .query_async(&mut con),
            )
            .await?
        };
        let Some(id) = id else { return Ok(None) };
        let raw: Option<String> = self
            .run_redis(redis::cmd("HGET").arg(keys.templates()).arg(&id).query_async(&mut con))
            .await?;
        let template = raw.as_deref().map(parse).transpose()?;
        // An alias hash entry outliving a racing rename never names the wrong template.
        Ok(template.filter(|t| is_id(id_or_alias) || t.alias.as_deref() == Some(id_or_alias)))
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
        id_or_alias: &str,
        content: TemplateRequest,
        at: DateTime<Utc>,
    ) -> Result<TemplateWrite, StoreError> {
        let Some(current) = self.template(id_or_alias).await? else {
            return Ok(TemplateWrite::NotFound);
        };
        // The script finds the template by its id: an alias renamed meanwhile still resolves.
        let id = current.id.clone();
        self.write_template(&id, replaced(current, content, at), false).await
    }

    async fn delete_template(&self, id_or_alias: &str) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        let removed: i64 = self
            .run_redis(
                DELETE
                    .key(keys.templates())
                    .key(keys.templates_index())
                    .key(keys.templates_alias())
                    .arg(id_or_alias)
                    .arg(by_id(id_or_alias))
                    .invoke_async(&mut con),
            )
            .await?;
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

    #[tokio::test]
    async fn distributed_alias_names_one_template_until_it_is_let_go() {
        let ns = TestNs::new().await;
        contract::an_alias_names_one_template_until_it_is_let_go(&ns.store).await;
    }
}
