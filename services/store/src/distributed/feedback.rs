//! Bounces and complaints in Redis: one pipeline reads the recipient, the message's request
//! and whether the recipient already complained; [`crate::feedback::decide`] rules in Rust;
//! one Lua script applies the change — only if what was read is still so — with its event,
//! webhook deliveries and suppression entry. A report that lost a race is read and judged
//! again.

use std::sync::LazyLock;

use postwire_proto::{RecipientStatus, SendRequest};
use redis::Script;

use super::queue::StoredRecipient;
use super::scripts::HELPERS;
use super::suppression::StoredSuppression;
use super::DistributedStore;
use crate::feedback::{decide, Change};
use crate::time::{now_ms, to_ms};
use crate::{Feedback, FeedbackRecorded, StoreError};

/// How often a report is judged again after losing a race to another change.
const ATTEMPTS: usize = 3;

/// Applies one report's change.
///
/// KEYS: message, recipients, events. ARGV: ns, position, change (`bounce` / `complain`), the
/// status as read, last_response, at ms, event id, event type, event body, suppression JSON or
/// '', now ms, retention s. Returns 1 when applied, 0 when the recipient changed since it was
/// read, -1 when the message is gone.
static APPLY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}\n{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return -1 end
local r = cjson.decode(raw)
if r.status ~= ARGV[4] then return 0 end
if ARGV[3] == 'bounce' then
  r.status = 'bounced'
  r.last_response = ARGV[5]
  r.next_attempt_at = nil
  r.updated_at = tonumber(ARGV[6])
  redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(r))
elseif redis.call('HSETNX', KEYS[1], 'complained:' .. ARGV[2], ARGV[6]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[9])
fanout(ARGV[1], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[11]))
list_suppression(ARGV[1], ARGV[10])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[12]) end
return 1
"#
    ))
});

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl DistributedStore {
    pub(crate) async fn record_feedback_redis(
        &self,
        fb: Feedback,
    ) -> Result<Option<FeedbackRecorded>, StoreError> {
        let keys = &self.inner.keys;
        let position = fb.recipient.to_string();
        let mut con = self.redis().await?;
        for _ in 0..ATTEMPTS {
            let (recipient, request, complained): (Option<String>, Option<String>, Option<String>) =
                self.run_redis(
                    redis::pipe()
                        .hget(keys.recipients(&fb.message_id), &position)
                        .hget(keys.message(&fb.message_id), "request")
                        .hget(keys.message(&fb.message_id), format!("complained:{position}"))
                        .query_async(&mut con),
                )
                .await?;
            let (Some(recipient), Some(request)) = (recipient, request) else { return Ok(None) };
            let recipient: StoredRecipient = serde_json::from_str(&recipient).map_err(corrupt)?;
            let status = RecipientStatus::parse(&recipient.status).ok_or_else(|| {
                corrupt(format!("unknown recipient status {:?}", recipient.status))
            })?;
            let change = match decide(&fb.report, status, complained.is_some()) {
                Change::Nothing => return Ok(Some(FeedbackRecorded { event: None })),
                Change::Bounce => "bounce",
                Change::Complain => "complain",
            };
            let request: SendRequest = serde_json::from_str(&request).map_err(corrupt)?;
            let event = fb.event(recipient.email.clone(), request.tags, request.metadata);
            let suppression = fb
                .suppression(&recipient.email)
                .map(|s| serde_json::to_string(&StoredSuppression::from_entry(&s)))
                .transpose()
                .map_err(corrupt)?;
            let applied: i64 = self
                .run_redis(
                    APPLY
                        .key(keys.message(&fb.message_id))
                        .key(keys.recipients(&fb.message_id))
                        .key(keys.events(&fb.message_id))
                        .arg(keys.ns())
                        .arg(&position)
                        .arg(change)
                        .arg(&recipient.status)
                        .arg(fb.bounce_response().unwrap_or_default())
                        .arg(to_ms(fb.at))
                        .arg(&event.id)
                        .arg(event.kind.as_str())
                        .arg(serde_json::to_string(&event).map_err(corrupt)?)
                        .arg(suppression.unwrap_or_default())
                        .arg(now_ms())
                        .arg(self.inner.options.retention.as_secs().max(1))
                        .invoke_async(&mut con),
                )
                .await?;
            match applied {
                1 => return Ok(Some(FeedbackRecorded { event: Some(event) })),
                -1 => return Ok(None),
                _ => continue,
            }
        }
        // Changed under us every time: whatever changed it was itself a final change.
        Ok(Some(FeedbackRecorded { event: None }))
    }
}

#[cfg(test)]
mod tests {
    use crate::distributed::test_ns::TestNs;
    use crate::feedback::contract;

    #[tokio::test]
    async fn a_late_hard_bounce_bounces_and_suppresses_only_that_recipient() {
        let ns = TestNs::new().await;
        contract::a_late_hard_bounce_bounces_and_suppresses_only_that_recipient(&ns.store).await;
    }

    #[tokio::test]
    async fn a_late_soft_bounce_does_not_suppress() {
        let ns = TestNs::new().await;
        contract::a_late_soft_bounce_does_not_suppress(&ns.store).await;
    }

    #[tokio::test]
    async fn a_complaint_emits_once_and_suppresses() {
        let ns = TestNs::new().await;
        contract::a_complaint_emits_once_and_suppresses(&ns.store).await;
    }

    #[tokio::test]
    async fn feedback_about_an_unknown_copy_records_nothing() {
        let ns = TestNs::new().await;
        contract::feedback_about_an_unknown_copy_records_nothing(&ns.store).await;
    }
}
