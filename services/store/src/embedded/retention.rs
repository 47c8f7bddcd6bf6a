//! Retention in SQLite: finished messages past `storage.retention` deleted in small batches.
//!
//! A batch first finds its candidates on a read connection (off the writer thread), walking
//! `messages_newest` from a cursor so old messages still pending are stepped over once per pass
//! instead of being read again by every batch. The deletions then run as one write among the
//! group commit's others; each message is checked again there, so one that is pending is never
//! deleted whatever the read saw. Freed pages are reused by later writes; a database made with
//! `auto_vacuum = INCREMENTAL` (every database this version creates) also gives pages back to
//! the file system when more than a quarter of the file is free, a few hundred per batch.

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::time::{now_ms, to_ms};
use crate::{Pruned, Retention, StoreError};

/// Where the last batch stopped: `(created_at, id)` of its last candidate.
pub(crate) type PruneCursor = Mutex<Option<(i64, String)>>;

/// Pages returned to the file system per batch, at most.
const VACUUM_PAGES: i64 = 256;

/// Creates what pruning needs; called from [`super::schema::migrate`].
pub fn migrate_retention(conn: &Connection) -> rusqlite::Result<()> {
    // The outbox rows of a message's events are found by event id.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_by_event ON webhook_deliveries (event_id);",
    )
}

const FINISHED: &str = "NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                          AND r.status IN ('queued', 'scheduled', 'deferred'))
                        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id)";

#[async_trait]
impl Retention for SqliteStore {
    async fn prune(&self, cutoff: DateTime<Utc>, max: usize) -> Result<Pruned, StoreError> {
        let cutoff = to_ms(cutoff);
        let max = max.max(1);
        let (after_at, after_id) = self
            .prune_cursor()
            .lock()
            .expect("cursor")
            .clone()
            .unwrap_or((i64::MIN, String::new()));
        let candidates: Vec<(String, i64, bool)> = self
            .read(move |conn| {
                let sql = format!(
                    "SELECT m.id, m.created_at, {FINISHED} FROM messages m
                     WHERE m.created_at < ?1 AND (m.created_at > ?2 OR (m.created_at = ?2 AND m.id > ?3))
                     ORDER BY m.created_at, m.id LIMIT ?4"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt
                    .query_map(params![cutoff, after_at, after_id, max as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        let full = candidates.len() == max;
        // A short page ends the pass: the next batch starts again from the oldest message.
        *self.prune_cursor().lock().expect("cursor") =
            if full { candidates.last().map(|(id, at, _)| (*at, id.clone())) } else { None };
        let doomed: Vec<String> = candidates
            .into_iter()
            .filter(|(_, _, finished)| *finished)
            .map(|(id, ..)| id)
            .collect();
        let (messages, idempotency, events) = self
            .write(move |conn| {
                let mut messages = 0;
                for id in &doomed {
                    messages += delete_if_finished(conn, id)?;
                }
                let events = delete_messageless_events(conn, cutoff, max)?;
                let idempotency =
                    conn.prepare_cached(
                        "DELETE FROM idempotency WHERE rowid IN
                         (SELECT rowid FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
                    )?
                    .execute(params![now_ms(), max as i64])? as u64;
                if messages + idempotency + events > 0 {
                    give_back_free_pages(conn)?;
                }
                Ok((messages, idempotency, events))
            })
            .await?;
        let more = full || idempotency == max as u64 || events == max as u64;
        Ok(Pruned { messages, idempotency, events, more })
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let db = self.path().to_path_buf();
        let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(size(db.clone()) + size(db.with_extension("db-wal")))
    }
}

/// Deletes message `id` and everything about it, unless it is not finished (after all).
fn delete_if_finished(conn: &Connection, id: &str) -> Result<u64, StoreError> {
    let finished: bool = conn
        .prepare_cached(&format!("SELECT {FINISHED} FROM messages m WHERE m.id = ?1"))?
        .query_row([id], |r| r.get(0))
        .unwrap_or(false);
    if !finished {
        return Ok(0);
    }
    super::copies::delete_copies(conn, id)?;
    for sql in [
        "DELETE FROM webhook_deliveries WHERE event_id IN (SELECT id FROM events WHERE message_id = ?1)",
        "DELETE FROM events WHERE message_id = ?1",
        "DELETE FROM engagements WHERE message_id = ?1",
        "DELETE FROM message_tags WHERE message_id = ?1 AND tag IN
         (SELECT t.value FROM messages m, json_each(m.request, '$.tags') t
          WHERE m.id = ?1 AND json_valid(m.request))",
        "DELETE FROM recipients WHERE message_id = ?1",
        "DELETE FROM messages WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)?.execute([id])?;
    }
    Ok(1)
}

/// Up to `max` events about no message (`webhook.disabled`) stored before `cutoff`, none of
/// whose deliveries is still pending, deleted with their deliveries (the delivery log).
fn delete_messageless_events(
    conn: &Connection,
    cutoff: i64,
    max: usize,
) -> Result<u64, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT e.id FROM events e WHERE e.message_id = '' AND e.created_at < ?1
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                               WHERE d.event_id = e.id AND d.state = 'pending')
             ORDER BY e.created_at LIMIT ?2",
        )?
        .query_map(params![cutoff, max as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        conn.prepare_cached("DELETE FROM webhook_deliveries WHERE event_id = ?1")?.execute([id])?;
        conn.prepare_cached("DELETE FROM events WHERE id = ?1")?.execute([id])?;
    }
    Ok(ids.len() as u64)
}

/// With `auto_vacuum = INCREMENTAL`: returns up to [`VACUUM_PAGES`] free pages to the file
/// system while more than a quarter of the file is free (the rest is kept for reuse).
fn give_back_free_pages(conn: &Connection) -> Result<(), StoreError> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != 2 {
        return Ok(());
    }
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free * 4 > pages {
        let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::embedded::temp_store as open;
    use crate::retention::contract;
    use crate::suppression::contract::message;
    use crate::{DeliveryResult, Hit, Idempotency, NewWebhook, Queue, RecipientOutcome, State};

    async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
        store.read(move |conn| Ok(conn.query_row(sql, [], |r| r.get(0))?)).await.unwrap()
    }

    /// Accepts, claims and delivers `n` messages, each with a tag, an event, a webhook outbox
    /// row and an open.
    async fn deliver(store: &SqliteStore, n: usize) {
        for _ in 0..n {
            let m = message(&["ann@done.test"]);
            store.accept(m.clone()).await.unwrap();
            let job = store.claim("w", Duration::from_secs(60)).await.unwrap().expect("due");
            let outcome = RecipientOutcome {
                email: "ann@done.test".into(),
                result: DeliveryResult::Delivered,
                response: "250 ok".into(),
                mx_host: None,
                suppress: false,
            };
            store.complete(&job, vec![outcome]).await.unwrap();
            let hit = Hit {
                message_id: m.id.clone(),
                recipient: 0,
                kind: postwire_proto::EngagementKind::Open,
                url: None,
                user_agent: None,
                at: Utc::now(),
            };
            store.record_hit(hit).await.unwrap().expect("recorded");
        }
    }

    #[tokio::test]
    async fn finished_messages_past_the_retention_are_pruned_and_pending_ones_kept() {
        let (_dir, store) = open();
        let retention = Duration::from_secs(1);
        contract::finished_messages_past_the_retention_are_pruned_and_pending_ones_kept(
            &store, retention,
        )
        .await;
    }

    #[tokio::test]
    async fn the_event_log_and_the_delivery_log_are_pruned_past_the_retention() {
        let (_dir, store) = open();
        let retention = Duration::from_secs(1);
        contract::the_event_log_and_the_delivery_log_are_pruned_past_the_retention(
            &store, retention,
        )
        .await;
    }

    #[tokio::test]
    async fn pruning_removes_every_row_about_a_message_and_expired_idempotency_records() {
        let (_dir, store) = open();
        let webhook = NewWebhook {
            id: crate::ids::new_id("wh"),
            url: "https://hooks.test/x".into(),
            events: vec![],
            secret: "whsec_x".into(),
            created_at: Utc::now(),
        };
        store.create_webhook(webhook).await.unwrap();
        deliver(&store, 3).await;
        store
            .idempotency_begin("key_a", "old", [1; 32], Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        for table in [
            "messages",
            "recipients",
            "events",
            "webhook_deliveries",
            "message_tags",
            "engagements",
        ] {
            let sql: &'static str =
                Box::leak(format!("SELECT COUNT(*) FROM {table}").into_boxed_str());
            assert!(count(&store, sql).await > 0, "{table} is empty before pruning");
        }
        let mut total = Pruned::default();
        loop {
            let p = store.prune(Utc::now() + chrono::TimeDelta::seconds(1), 2).await.unwrap();
            total.messages += p.messages;
            total.idempotency += p.idempotency;
            if !p.more {
                break;
            }
        }
        assert_eq!((total.messages, total.idempotency), (3, 1));
        for table in [
            "messages",
            "recipients",
            "events",
            "webhook_deliveries",
            "message_tags",
            "engagements",
            "idempotency",
        ] {
            let sql: &'static str =
                Box::leak(format!("SELECT COUNT(*) FROM {table}").into_boxed_str());
            assert_eq!(count(&store, sql).await, 0, "{table} still has rows");
        }
    }

    #[tokio::test]
    async fn under_a_steady_load_pruning_keeps_the_file_from_growing() {
        let (_dir, store) = open();
        let (mut sizes, mut slowest) = (Vec::new(), Duration::ZERO);
        for _ in 0..6 {
            // The retention keeps one round: what came before this round is pruned after it.
            let round_start = Utc::now();
            deliver(&store, 100).await;
            loop {
                let started = std::time::Instant::now();
                let pruned = store.prune(round_start, 50).await.unwrap();
                slowest = slowest.max(started.elapsed());
                if !pruned.more {
                    break;
                }
            }
            // Pages in use by the database (the WAL's high-water mark aside).
            sizes.push(count(&store, "SELECT page_count FROM pragma_page_count").await);
        }
        println!("database pages after each round: {sizes:?}; slowest batch of 50: {slowest:?}");
        // Once a round's worth is kept, later rounds reuse the pages the pruned ones freed. One
        // page of slack: where a B-tree split falls relative to a round's end moves with the
        // row size, so the count steps between two neighbouring values (e.g. 96, 97, 96, 97);
        // growth would climb by several pages a round.
        assert!(sizes[5] <= sizes[2] + 1, "the file kept growing: {sizes:?}");
    }
}
