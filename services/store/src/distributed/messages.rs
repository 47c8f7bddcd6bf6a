//! Message search and cancel on Redis: the [`Messages`] implementation, and the search index
//! entries `queue.rs` adds inside the accept `MULTI`.
//!
//! The index is a set of lexicographically ordered sorted sets (see [`super::keys`]): one for
//! every message, one per tag, one per recipient address. A search walks the most selective
//! one newest first with `ZRANGE … BYLEX REV`, loads each candidate's summary and recipients
//! in one pipeline per batch and filters the rest in Rust. Work per page is bounded by
//! [`MAX_SCAN`]: a page that has looked at that many candidates ends early, with a cursor to
//! continue from.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use async_trait::async_trait;
use postwire_proto::{RecipientStatus, SendRequest};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::keys::Keys;
use super::queue::StoredRecipient;
use super::scripts::HELPERS;
use super::DistributedStore;
use crate::messages::{canceled_event, normalize_address, shown_status, summary};
use crate::time::now_ms;
use crate::{
    Cancel, MessageCursor, MessageOwner, MessagePage, MessageQuery, Messages, NewMessage,
    StoreError, Visibility,
};

/// The most index entries one search page looks at.
pub(crate) const MAX_SCAN: usize = 500;

/// Candidates loaded per round trip.
const BATCH: usize = 100;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The `summary` field of `{ns}:msg:{id}`: what a search result shows, without the (possibly
/// large) request.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredSummary {
    #[serde(default)]
    from: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// The `summary` field for a new message.
pub(crate) fn summary_json(request: &SendRequest) -> Result<String, StoreError> {
    let s = StoredSummary {
        from: request.from.clone(),
        subject: request.subject.clone(),
        tags: request.tags.clone(),
    };
    serde_json::to_string(&s).map_err(corrupt)
}

/// Every index a message belongs to.
fn indexes(keys: &Keys, message: &NewMessage) -> Vec<String> {
    let tags: BTreeSet<&String> = message.request.tags.iter().collect();
    let rcpts: BTreeSet<String> =
        message.recipients.iter().map(|r| normalize_address(&r.email)).collect();
    let mut out = vec![keys.search()];
    out.extend(tags.into_iter().map(|t| keys.search_tag(t)));
    out.extend(rcpts.iter().map(|r| keys.search_recipient(r)));
    out
}

/// Adds the message to its search indexes (in the accept `MULTI`) and trims entries older
/// than the retention from the per-tag and per-recipient ones, which also expire with it.
pub(crate) fn index_message(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    message: &NewMessage,
    retention_s: u64,
) {
    let created = message.created_at.timestamp_millis();
    let member = Keys::search_member(created, &message.id);
    let cutoff = format!(
        "({}",
        Keys::search_member(now_ms() - (retention_s as i64).saturating_mul(1000), "")
    );
    let global = keys.search();
    for index in indexes(keys, message) {
        pipe.zadd(&index, &member, 0).ignore();
        // The global index is trimmed by the pruner, which keeps a pending message's entry
        // (see `retention`); the others are bounded by their own expiry.
        if index != global {
            pipe.cmd("ZREMRANGEBYLEX").arg(&index).arg("-").arg(&cutoff).ignore();
            pipe.expire(&index, retention_s as i64).ignore();
        }
    }
}

/// Takes the message out of its search indexes (undoing an accept whose jobs were not
/// published).
pub(crate) fn unindex_message(pipe: &mut redis::Pipeline, keys: &Keys, message: &NewMessage) {
    let member = Keys::search_member(message.created_at.timestamp_millis(), &message.id);
    for index in indexes(keys, message) {
        pipe.zrem(index, &member).ignore();
    }
}

/// Cancels a message's pending recipients whose job no worker holds.
///
/// KEYS: message, recipients, events, jobs. ARGV: ns, message id, now ms, retention s.
/// Returns `{-1, 0}` for an unknown message, else `{canceled, pending left in flight}`.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}\n{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local ns, id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
-- The `message.canceled` event prepared for each recipient that was pending when read.
local prepared = {}
for i = 5, #ARGV, 3 do prepared[ARGV[i]] = { id = ARGV[i + 1], body = ARGV[i + 2] } end
local held, canceled, in_flight = {}, 0, 0
for _, e in ipairs(load_recipients(KEYS[2])) do
  -- Final statuses never become pending again, so every pending one has its event.
  local event = prepared[tostring(e.pos)]
  if is_pending(e.r.status) and event then
    local domain = e.r.domain
    if held[domain] == nil then
      held[domain] = redis.call('EXISTS', ns .. ':lease:' .. id .. ':' .. domain) == 1
    end
    if held[domain] then
      in_flight = in_flight + 1
    else
      e.r.status = 'canceled'
      e.r.next_attempt_at = nil
      e.r.updated_at = now
      redis.call('HSET', KEYS[2], tostring(e.pos), cjson.encode(e.r))
      -- The job's copy in RabbitMQ finds nothing pending when it next arrives and is dropped.
      redis.call('SREM', KEYS[4], id .. ' ' .. domain)
      redis.call('RPUSH', KEYS[3], event.body)
      fanout(ns, event.id, 'message.canceled', event.body, now)
      canceled = canceled + 1
    end
  end
end
if canceled > 0 then settle_expiry(KEYS[1], ttl) end
return {canceled, in_flight}
"#
    ))
});

/// The cursor just after an index member, `None` if it is not one.
fn cursor_of(member: &str) -> Option<MessageCursor> {
    let (ms, id) = member.split_once(':')?;
    Some(MessageCursor { created_at_ms: ms.parse().ok()?, id: id.to_string() })
}

/// One candidate as loaded: `created_at`, `summary`, and its recipients hash.
type Loaded = (Option<String>, Option<String>, HashMap<String, String>);

impl DistributedStore {
    async fn search(
        &self,
        query: &MessageQuery,
        after: Option<&MessageCursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        let keys = &self.inner.keys;
        let index = match (query.recipient_normalized(), &query.tag) {
            (Some(rcpt), _) => keys.search_recipient(&rcpt),
            (None, Some(tag)) => keys.search_tag(tag),
            (None, None) => keys.search(),
        };
        // Exclusive upper bound: the cursor, or `until`; inclusive lower bound: `since`.
        let mut max = "+".to_string();
        if let Some(until) = query.until {
            max = format!("({}", Keys::search_member(until.timestamp_millis(), ""));
        }
        if let Some(c) = after {
            let bound = format!("({}", Keys::search_member(c.created_at_ms, &c.id));
            if max == "+" || bound < max {
                max = bound;
            }
        }
        let min = match query.since {
            Some(since) => format!("[{}", Keys::search_member(since.timestamp_millis(), "")),
            None => "-".to_string(),
        };
        let mut con = self.redis().await?;
        let now = now_ms();
        let mut data = Vec::new();
        let mut examined = 0;
        // Filters the index does not apply itself: expect to skip candidates, so load many at once.
        let filtered = query.status.is_some()
            || (query.recipient.is_some() && query.tag.is_some())
            || query.visibility != Visibility::All;
        loop {
            let needed = if filtered { BATCH } else { limit - data.len() };
            let want = needed.clamp(1, BATCH).min(MAX_SCAN - examined);
            let members: Vec<String> = self
                .run_redis(
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(&max)
                        .arg(&min)
                        .arg("BYLEX")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want)
                        .query_async(&mut con),
                )
                .await?;
            let exhausted = members.len() < want;
            let candidates: Vec<(String, MessageCursor)> =
                members.into_iter().filter_map(|m| cursor_of(&m).map(|c| (m, c))).collect();
            let mut pipe = redis::pipe();
            for (_, c) in &candidates {
                pipe.cmd("HMGET")
                    .arg(keys.message(&c.id))
                    .arg("created_at")
                    .arg("summary")
                    .arg("key_id")
                    .arg("sandbox");
                pipe.hgetall(keys.recipients(&c.id));
            }
            let flat: Vec<redis::Value> = if candidates.is_empty() {
                Vec::new()
            } else {
                self.run_redis(pipe.query_async(&mut con)).await?
            };
            let mut gone = Vec::new();
            for ((member, cursor), pair) in candidates.into_iter().zip(flat.chunks(2)) {
                examined += 1;
                max = format!("({member}");
                let (fields, rcpts): (Vec<Option<String>>, HashMap<String, String>) = (
                    redis::from_redis_value(&pair[0]).map_err(corrupt)?,
                    redis::from_redis_value(&pair[1]).map_err(corrupt)?,
                );
                let field = |i: usize| fields.get(i).cloned().flatten();
                let owner = MessageOwner {
                    key_id: field(2).unwrap_or_default(),
                    sandbox: field(3).is_some_and(|s| s == "1"),
                };
                let loaded: Loaded = (field(0), field(1), rcpts);
                let Some(found) = self.candidate(loaded, &cursor, now, &mut con).await? else {
                    // The message expired: its index entry goes too.
                    gone.push(member);
                    continue;
                };
                let (created, stored, recipients) = found;
                if !query.visibility.allows(&owner)
                    || !query.matches(created, &stored.tags, &recipients)
                {
                    continue;
                }
                data.push(summary(
                    cursor.id.clone(),
                    created,
                    stored.from,
                    stored.subject,
                    stored.tags,
                    recipients,
                ));
                if data.len() == limit {
                    break;
                }
            }
            if !gone.is_empty() {
                self.run_redis(
                    redis::cmd("ZREM").arg(&index).arg(&gone).query_async::<()>(&mut con),
                )
                .await?;
            }
            if data.len() == limit {
                // Anything older left to look at?
                let more: Vec<String> = self
                    .run_redis(
                        redis::cmd("ZRANGE")
                            .arg(&index)
                            .arg(&max)
                            .arg(&min)
                            .arg("BYLEX")
                            .arg("REV")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(1)
                            .query_async(&mut con),
                    )
                    .await?;
                let next =
                    if more.is_empty() { None } else { max.strip_prefix('(').and_then(cursor_of) };
                return Ok(MessagePage { data, next });
            }
            if exhausted {
                return Ok(MessagePage { data, next: None });
            }
            if examined >= MAX_SCAN {
                return Ok(MessagePage { data, next: max.strip_prefix('(').and_then(cursor_of) });
            }
        }
    }

    /// A loaded candidate as (created ms, summary, recipients with shown status), or `None`
    /// when the message no longer exists.
    async fn candidate(
        &self,
        (created, stored, rcpts): Loaded,
        cursor: &MessageCursor,
        now: i64,
        con: &mut redis::aio::ConnectionManager,
    ) -> Result<Option<(i64, StoredSummary, Vec<(String, RecipientStatus)>)>, StoreError> {
        let Some(created) = created else { return Ok(None) };
        let created: i64 = created.parse().map_err(corrupt)?;
        let stored = match stored {
            Some(json) => serde_json::from_str(&json).map_err(corrupt)?,
            // Stored before search existed: read the request itself.
            None => {
                let request: Option<String> = self
                    .run_redis(
                        redis::cmd("HGET")
                            .arg(self.inner.keys.message(&cursor.id))
                            .arg("request")
                            .query_async(con),
                    )
                    .await?;
                let request: SendRequest = match request {
                    Some(r) => serde_json::from_str(&r).map_err(corrupt)?,
                    None => return Ok(None),
                };
                StoredSummary { from: request.from, subject: request.subject, tags: request.tags }
            }
        };
        let mut positioned = rcpts
            .into_iter()
            .map(|(pos, json)| {
                let pos: u64 = pos.parse().map_err(corrupt)?;
                let r: StoredRecipient = serde_json::from_str(&json).map_err(corrupt)?;
                Ok((pos, r))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        positioned.sort_by_key(|(pos, _)| *pos);
        let recipients = positioned
            .into_iter()
            .map(|(_, r)| {
                let status = RecipientStatus::parse(&r.status).unwrap_or(RecipientStatus::Queued);
                (r.email, shown_status(status, r.next_attempt_at, now))
            })
            .collect();
        Ok(Some((created, stored, recipients)))
    }
}

#[async_trait]
impl Messages for DistributedStore {
    async fn search_messages(
        &self,
        query: &MessageQuery,
        after: Option<&MessageCursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        self.search(query, after, limit.max(1)).await
    }

    async fn cancel_message(&self, id: &str) -> Result<Cancel, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.redis().await?;
        // The events are made here, from the rule both backends share; the script stores the
        // ones of the recipients it cancels, with the status change.
        let (request, rcpts): (Option<String>, HashMap<String, String>) = self
            .run_redis(
                redis::pipe()
                    .hget(keys.message(id), "request")
                    .hgetall(keys.recipients(id))
                    .query_async(&mut con),
            )
            .await?;
        let Some(request) = request else { return Ok(Cancel::NotFound) };
        let request: SendRequest = serde_json::from_str(&request).map_err(corrupt)?;
        let mut prepared: Vec<String> = Vec::new();
        for (pos, json) in rcpts {
            let r: StoredRecipient = serde_json::from_str(&json).map_err(corrupt)?;
            let pending = RecipientStatus::parse(&r.status).is_some_and(|s| !s.is_final());
            if pending {
                let event = canceled_event(id, &request, &r.email);
                prepared.push(pos);
                prepared.push(event.id.clone());
                prepared.push(serde_json::to_string(&event).map_err(corrupt)?);
            }
        }
        let mut script = CANCEL.prepare_invoke();
        script
            .key(keys.message(id))
            .key(keys.recipients(id))
            .key(keys.events(id))
            .key(keys.jobs())
            .arg(keys.ns())
            .arg(id)
            .arg(now_ms())
            .arg(self.inner.options.retention.as_secs().max(1))
            .arg(prepared);
        let (canceled, in_flight): (i64, i64) =
            self.run_redis(script.invoke_async(&mut con)).await?;
        Ok(match canceled {
            -1 => Cancel::NotFound,
            0 => Cancel::NothingToCancel { in_flight: in_flight > 0 },
            n => Cancel::Canceled(n as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::test_ns::TestNs;
    use crate::messages::contract;
    use crate::{Queue, State};

    #[tokio::test]
    async fn distributed_scheduled_message_is_not_claimable_before_send_at() {
        let ns = TestNs::new().await;
        contract::scheduled_message_is_not_claimable_before_send_at(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_scheduled_recipient_shows_queued_once_due() {
        let ns = TestNs::new().await;
        contract::scheduled_recipient_shows_queued_once_due(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_canceled_scheduled_message_is_never_claimed() {
        let ns = TestNs::new().await;
        contract::canceled_scheduled_message_is_never_claimed(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_cancel_leaves_in_flight_and_final_recipients_alone() {
        let ns = TestNs::new().await;
        contract::cancel_leaves_in_flight_and_final_recipients_alone(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_search_pages_newest_first_through_every_filter() {
        let ns = TestNs::new().await;
        contract::search_pages_newest_first_through_every_filter(&ns.store).await;
    }

    #[tokio::test]
    async fn distributed_search_cursor_is_stable_under_new_messages() {
        let ns = TestNs::new().await;
        contract::search_cursor_is_stable_under_new_messages(&ns.store).await;
    }

    #[tokio::test]
    async fn a_scheduled_job_waits_in_the_delay_queue_not_the_deliveries_queue() {
        let ns = TestNs::new().await;
        let store = &ns.store;
        let mut msg = crate::suppression::contract::message(&["hal@wait.test"]);
        msg.request.send_at = Some(chrono::Utc::now() + chrono::TimeDelta::seconds(90));
        store.accept(msg.clone()).await.unwrap();
        let keys = &store.inner.keys;
        let broker = store.broker().await.unwrap();
        let parked = broker
            .publisher
            .queue_declare(
                &keys.retry_queue(60_000),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(parked.message_count(), 1, "the job waits in the largest step that fits (60 s)");
        assert!(store.claim("w", std::time::Duration::from_secs(5)).await.unwrap().is_none());
        assert_eq!(store.depth().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_search_drops_index_entries_of_expired_messages_and_bounds_its_work() {
        let ns = TestNs::new().await;
        let store = &ns.store;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let msg = crate::suppression::contract::message(&["ivy@expire.test"]);
            store.accept(msg.clone()).await.unwrap();
            ids.push(msg.id);
        }
        // The middle message expires (its keys vanish as Redis would expire them).
        let keys = store.inner.keys.clone();
        let mut con = store.redis().await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(keys.message(&ids[1]))
            .arg(keys.recipients(&ids[1]))
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(store.message(&ids[1]).await.unwrap().is_none());
        let page = store.search_messages(&MessageQuery::default(), None, 10).await.unwrap();
        let found: Vec<&str> = page.data.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(found, [ids[2].as_str(), ids[0].as_str()]);
        assert!(page.next.is_none());
        let left: u64 = redis::cmd("ZCARD").arg(keys.search()).query_async(&mut con).await.unwrap();
        assert_eq!(left, 2, "the expired message's entry was removed");

        // More non-matching entries than one page may look at: a short page with a cursor.
        let mut pipe = redis::pipe();
        for i in 0..(MAX_SCAN + 10) {
            pipe.zadd(
                keys.search(),
                Keys::search_member(1_000 + i as i64, &format!("msg_filler{i:04}")),
                0,
            )
            .ignore();
        }
        let _: () = pipe.query_async(&mut con).await.unwrap();
        let q = MessageQuery { since: Some(crate::time::from_ms(0)), ..MessageQuery::default() };
        let mut cursor = None;
        let mut pages = 0;
        let mut seen = Vec::new();
        loop {
            let page = store.search_messages(&q, cursor.as_ref(), 10).await.unwrap();
            pages += 1;
            seen.extend(page.data.into_iter().map(|m| m.id));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, [ids[2].as_str(), ids[0].as_str()]);
        assert!(pages >= 2, "one page may not look at every entry");
        let left: u64 = redis::cmd("ZCARD").arg(keys.search()).query_async(&mut con).await.unwrap();
        assert_eq!(left, 2, "the fillers (no such messages) were removed as they were met");
    }
}
