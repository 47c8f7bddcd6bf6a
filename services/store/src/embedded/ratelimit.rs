//! Rate-limit counters for the embedded backend: in process, because one process serves the
//! API in embedded mode.
//!
//! The per-second counts live only in memory: losing them in a restart costs at most one
//! second's limit. The day's message count must not reset with the process (a restart would
//! hand every key a fresh quota), yet writing a counter row per send would add a write to
//! every request. It is rebuilt instead: on a key's first message of a UTC day in this
//! process, the count starts from the messages that key already has stored that day
//! (`messages.key_id`, `messages.created_at`, indexed by `messages_by_key`). Messages given back
//! with `release_messages` were never stored, so the two agree.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::ratelimit::{check, Cost, Decision, Granted, Quota, RateLimiter, Window, DAY_MS};
use crate::time::now_ms;
use crate::StoreError;

/// Creates the index the day count is rebuilt from; called from [`super::schema::migrate`].
pub fn migrate_ratelimit(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_by_key ON messages (key_id, created_at);",
    )
}

/// One key's windows.
#[derive(Debug, Default)]
struct Counts {
    second: i64,
    requests: u64,
    /// The day `messages` belongs to; `None` until it has been read from the database.
    day: Option<i64>,
    messages: u64,
}

/// [`RateLimiter`] for one embedded process; share it (`Arc`) between every gateway handler.
pub struct LocalRateLimiter {
    store: SqliteStore,
    keys: Mutex<HashMap<String, Counts>>,
}

impl LocalRateLimiter {
    /// Counters over `store`, which the day's counts are rebuilt from.
    pub fn new(store: SqliteStore) -> Self {
        Self { store, keys: Mutex::new(HashMap::new()) }
    }

    fn day_loaded(&self, key_id: &str, day: i64) -> bool {
        self.keys.lock().expect("rate counters").get(key_id).is_some_and(|c| c.day == Some(day))
    }

    /// Messages `key_id` has stored during `day`.
    async fn stored_messages(&self, key_id: &str, day: i64) -> Result<u64, StoreError> {
        let key_id = key_id.to_string();
        self.store
            .read(move |conn| {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM messages WHERE key_id = ?1 AND created_at >= ?2 AND created_at < ?3",
                    )?
                    .query_row(params![key_id, day * DAY_MS, (day + 1) * DAY_MS], |r| r.get(0))?;
                Ok(n.max(0) as u64)
            })
            .await
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(
        &self,
        key_id: &str,
        quota: Quota,
        cost: Cost,
    ) -> Result<Decision, StoreError> {
        let now = now_ms();
        let (second, day) = (Window::Second.index(now), Window::Day.index(now));
        // Read outside the lock; a concurrent first use may read too, and the first to store
        // its count wins (no message of the day can be taken before one of them has).
        let stored = match cost.messages > 0 && !self.day_loaded(key_id, day) {
            true => Some(self.stored_messages(key_id, day).await?),
            false => None,
        };
        let mut keys = self.keys.lock().expect("rate counters");
        let counts = keys.entry(key_id.to_string()).or_default();
        if counts.second != second {
            counts.second = second;
            counts.requests = 0;
        }
        if let (Some(n), false) = (stored, counts.day == Some(day)) {
            counts.day = Some(day);
            counts.messages = n;
        }
        if let Some(refused) = check(quota, cost, counts.requests, counts.messages, now) {
            return Ok(Decision::Limited(refused));
        }
        counts.requests += u64::from(cost.requests);
        counts.messages += u64::from(cost.messages);
        Ok(Decision::Granted(Granted {
            day,
            second_used: counts.requests,
            second_reset: Window::Second.reset_after(now),
        }))
    }

    async fn release_messages(
        &self,
        key_id: &str,
        day: i64,
        messages: u32,
    ) -> Result<(), StoreError> {
        if let Some(counts) = self.keys.lock().expect("rate counters").get_mut(key_id) {
            if counts.day == Some(day) {
                counts.messages = counts.messages.saturating_sub(u64::from(messages));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ratelimit::contract;
    use crate::Queue;

    use crate::embedded::temp_store as open;

    #[tokio::test]
    async fn embedded_requests_over_the_per_second_limit_wait_for_the_next_second() {
        let (_dir, store) = open();
        contract::requests_over_the_per_second_limit_wait_for_the_next_second(
            &LocalRateLimiter::new(store),
        )
        .await;
    }

    #[tokio::test]
    async fn embedded_messages_are_taken_from_the_day_all_or_nothing_and_can_be_given_back() {
        let (_dir, store) = open();
        contract::messages_are_taken_from_the_day_all_or_nothing_and_can_be_given_back(
            &LocalRateLimiter::new(store),
        )
        .await;
    }

    #[tokio::test]
    async fn embedded_concurrent_acquires_never_overrun_the_limit() {
        let (_dir, store) = open();
        contract::concurrent_acquires_never_overrun_the_limit(Arc::new(LocalRateLimiter::new(
            store,
        )))
        .await;
    }

    #[tokio::test]
    async fn the_days_count_survives_a_restart_through_the_stored_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open store");
        for _ in 0..3 {
            // `contract::message` is sent with the key id `key_test`.
            store.accept(crate::suppression::contract::message(&["a@example.test"])).await.unwrap();
        }
        store.close();
        drop(store);
        let reopened = SqliteStore::open(dir.path()).expect("reopen store");
        let limiter = LocalRateLimiter::new(reopened);
        let quota = Quota { per_second: 0, per_day: 4 };
        match limiter.acquire("key_test", quota, Cost::messages(2)).await.unwrap() {
            Decision::Limited(l) => assert_eq!((l.used, l.remaining()), (3, 1)),
            other => panic!("three stored messages count against the day: {other:?}"),
        }
        assert!(matches!(
            limiter.acquire("key_test", quota, Cost::messages(1)).await.unwrap(),
            Decision::Granted(_)
        ));
        assert!(matches!(
            limiter.acquire("key_other", quota, Cost::messages(4)).await.unwrap(),
            Decision::Granted(_)
        ));
    }
}
