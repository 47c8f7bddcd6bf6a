//! Message search and cancel in SQLite: the [`Messages`] implementation, its tables and
//! indexes, and the tag rows `queue.rs` writes inside the accept transaction.

use async_trait::async_trait;
use postwire_proto::{RecipientStatus, SendRequest};
use rusqlite::{params, Connection, OptionalExtension};

use super::{state::insert_event, SqliteStore};
use crate::messages::{canceled_event, shown_status, summary};
use crate::time::now_ms;
use crate::{
    Cancel, MessageCursor, MessagePage, MessageQuery, Messages, NewMessage, StoreError, Visibility,
};

/// Creates the search table and indexes; called from [`super::schema::migrate`]. Works on a
/// database made before search existed: the tags of messages already stored are copied from
/// their requests when the table is first made.
pub fn migrate_messages(conn: &Connection) -> rusqlite::Result<()> {
    let had_tags: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'message_tags'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(
        "
        -- One row per (tag, message), for `GET /v1/messages?tag=`.
        CREATE TABLE IF NOT EXISTS message_tags (
            tag TEXT NOT NULL,
            message_id TEXT NOT NULL,
            PRIMARY KEY (tag, message_id)
        ) WITHOUT ROWID;
        -- Search walks messages newest first; the cursor is (created_at, id).
        CREATE INDEX IF NOT EXISTS messages_newest ON messages (created_at, id);
        CREATE INDEX IF NOT EXISTS recipients_by_email ON recipients (email, message_id);
        ",
    )?;
    if !had_tags {
        conn.execute_batch(
            "INSERT OR IGNORE INTO message_tags (tag, message_id)
             SELECT t.value, m.id FROM messages m, json_each(m.request, '$.tags') t
             WHERE json_valid(m.request) AND t.type = 'text'",
        )?;
    }
    Ok(())
}

/// Inside the accept transaction: indexes the message's tags.
pub(crate) fn insert_tags(conn: &Connection, message: &NewMessage) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached("INSERT OR IGNORE INTO message_tags (tag, message_id) VALUES (?1, ?2)")?;
    for tag in &message.request.tags {
        stmt.execute(params![tag, message.id])?;
    }
    Ok(())
}

/// The status a recipient shows at `now`, in SQL (see [`shown_status`]).
const SHOWN_STATUS: &str =
    "CASE WHEN r.status = 'scheduled' AND COALESCE(r.next_attempt_at, 0) <= ?1 THEN 'queued' ELSE r.status END";

type SummaryRow = (String, i64, Option<String>, Option<String>, Option<String>);

fn search(
    conn: &Connection,
    query: &MessageQuery,
    after: Option<&MessageCursor>,
    limit: usize,
) -> Result<MessagePage, StoreError> {
    let now = now_ms();
    // Numbered parameters: each filter is either NULL (off) or its value.
    let sql = format!(
        "SELECT m.id, m.created_at, json_extract(m.request, '$.from'), json_extract(m.request, '$.subject'),
                json_extract(m.request, '$.tags')
         FROM messages m
         WHERE (?2 IS NULL OR (m.created_at, m.id) < (?2, ?3))
           AND (?4 IS NULL OR m.created_at >= ?4)
           AND (?5 IS NULL OR m.created_at < ?5)
           AND (?6 IS NULL OR EXISTS (SELECT 1 FROM message_tags t WHERE t.tag = ?6 AND t.message_id = m.id))
           AND (?7 IS NULL OR EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                AND r.domain = ?12 AND substr(r.email, 1, length(?13)) = ?13))
           AND (?8 IS NULL OR EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {SHOWN_STATUS} = ?8))
           AND (?10 IS NULL OR m.key_id = ?10)
           AND (?11 = 0 OR m.sandbox = 1)
         ORDER BY m.created_at DESC, m.id DESC
         LIMIT ?9"
    );
    let fetch = limit.saturating_add(1);
    // `Visibility` as two filters: the sending key, and sandbox messages only.
    let (sent_by, sandbox_only) = match &query.visibility {
        Visibility::All => (None, false),
        Visibility::Sandbox => (None, true),
        Visibility::SentBy(key) => (Some(key.as_str()), false),
    };
    // The recipient as stored is as written (`ann@bücher.test` or `ann@xn--bcher-kva.test`):
    // it matches on the A-label in `domain` and the exact local part before its `@` (a dot-atom
    // local part has no `@`).
    let wanted = query.recipient_normalized();
    let (wanted_domain, wanted_local) = match wanted.as_deref().and_then(|w| w.rsplit_once('@')) {
        Some((local, domain)) => (Some(domain.to_string()), Some(format!("{local}@"))),
        None => (None, None),
    };
    let rows: Vec<SummaryRow> = conn
        .prepare_cached(&sql)?
        .query_map(
            params![
                now,
                after.map(|c| c.created_at_ms),
                after.map(|c| c.id.as_str()),
                query.since.map(|t| t.timestamp_millis()),
                query.until.map(|t| t.timestamp_millis()),
                query.tag,
                wanted,
                query.status.map(RecipientStatus::as_str),
                fetch as i64,
                sent_by,
                sandbox_only,
                wanted_domain,
                wanted_local,
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit;
    let mut recipients = conn.prepare_cached(
        "SELECT email, status, next_attempt_at FROM recipients WHERE message_id = ?1 ORDER BY position",
    )?;
    let mut data = Vec::with_capacity(limit.min(rows.len()));
    for (id, created_at, from, subject, tags) in rows.into_iter().take(limit) {
        let statuses = recipients
            .query_map([&id], |r| {
                let status: String = r.get(1)?;
                let stored = RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Queued);
                Ok((r.get::<_, String>(0)?, shown_status(stored, r.get(2)?, now)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let tags: Vec<String> =
            tags.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        data.push(summary(
            id,
            created_at,
            from.unwrap_or_default(),
            subject.unwrap_or_default(),
            tags,
            statuses,
        ));
    }
    let next = if more {
        data.last().map(|m| MessageCursor {
            created_at_ms: m.created_at.timestamp_millis(),
            id: m.id.clone(),
        })
    } else {
        None
    };
    Ok(MessagePage { data, next })
}

fn cancel(conn: &Connection, id: &str) -> Result<Cancel, StoreError> {
    let known = conn
        .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some();
    if !known {
        return Ok(Cancel::NotFound);
    }
    let now = now_ms();
    // A job under a live lease is in flight: its recipients are left to the worker.
    let canceled: Vec<String> = conn
        .prepare_cached(
            "UPDATE recipients SET status = 'canceled', next_attempt_at = NULL, updated_at = ?2
             WHERE message_id = ?1 AND status IN ('queued', 'scheduled', 'deferred')
               AND domain NOT IN (SELECT domain FROM jobs WHERE message_id = ?1 AND lease_until > ?2)
             RETURNING email",
        )?
        .query_map(params![id, now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if canceled.is_empty() {
        let in_flight: bool = conn
            .prepare_cached(
                "SELECT COUNT(*) > 0 FROM recipients
                 WHERE message_id = ?1 AND status IN ('queued', 'scheduled', 'deferred')",
            )?
            .query_row([id], |r| r.get(0))?;
        return Ok(Cancel::NothingToCancel { in_flight });
    }
    // Every job not leased now has no pending recipient left.
    conn.prepare_cached("DELETE FROM jobs WHERE message_id = ?1 AND lease_until <= ?2")?
        .execute(params![id, now])?;
    // Each canceled recipient's event, in the same transaction (the outbox).
    let request: String = conn
        .prepare_cached("SELECT request FROM messages WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let request: SendRequest =
        serde_json::from_str(&request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    for email in &canceled {
        insert_event(conn, &canceled_event(id, &request, email))?;
    }
    Ok(Cancel::Canceled(canceled.len() as u32))
}

#[async_trait]
impl Messages for SqliteStore {
    async fn search_messages(
        &self,
        query: &MessageQuery,
        after: Option<&MessageCursor>,
        limit: usize,
    ) -> Result<MessagePage, StoreError> {
        let (query, after) = (query.clone(), after.cloned());
        self.read(move |conn| search(conn, &query, after.as_ref(), limit)).await
    }

    async fn cancel_message(&self, id: &str) -> Result<Cancel, StoreError> {
        let id = id.to_string();
        self.write(move |conn| cancel(conn, &id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::contract;

    use crate::embedded::temp_store as open;

    #[tokio::test]
    async fn embedded_scheduled_message_is_not_claimable_before_send_at() {
        let (_dir, store) = open();
        contract::scheduled_message_is_not_claimable_before_send_at(&store).await;
    }

    #[tokio::test]
    async fn embedded_scheduled_recipient_shows_queued_once_due() {
        let (_dir, store) = open();
        contract::scheduled_recipient_shows_queued_once_due(&store).await;
    }

    #[tokio::test]
    async fn embedded_canceled_scheduled_message_is_never_claimed() {
        let (_dir, store) = open();
        contract::canceled_scheduled_message_is_never_claimed(&store).await;
    }

    #[tokio::test]
    async fn embedded_cancel_leaves_in_flight_and_final_recipients_alone() {
        let (_dir, store) = open();
        contract::cancel_leaves_in_flight_and_final_recipients_alone(&store).await;
    }

    #[tokio::test]
    async fn embedded_search_pages_newest_first_through_every_filter() {
        let (_dir, store) = open();
        contract::search_pages_newest_first_through_every_filter(&store).await;
    }

    #[tokio::test]
    async fn embedded_search_cursor_is_stable_under_new_messages() {
        let (_dir, store) = open();
        contract::search_cursor_is_stable_under_new_messages(&store).await;
    }

    #[test]
    fn tags_of_messages_stored_before_search_existed_are_indexed_by_the_migration() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, request TEXT NOT NULL,
                                    message_id_header TEXT NOT NULL, key_id TEXT NOT NULL);
             CREATE TABLE recipients (message_id TEXT NOT NULL, position INTEGER NOT NULL, email TEXT NOT NULL,
                                      domain TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                                      next_attempt_at INTEGER, last_response TEXT, updated_at INTEGER NOT NULL);
             INSERT INTO messages VALUES ('msg_old', 1, '{\"from\":\"a@b.test\",\"tags\":[\"legacy\",\"x\"]}', 'h', 'k');
             INSERT INTO messages VALUES ('msg_untagged', 2, '{\"from\":\"a@b.test\"}', 'h', 'k');",
        )
        .unwrap();
        migrate_messages(&conn).unwrap();
        let tagged: Vec<(String, String)> = conn
            .prepare("SELECT tag, message_id FROM message_tags ORDER BY tag")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tagged,
            [
                ("legacy".to_string(), "msg_old".to_string()),
                ("x".to_string(), "msg_old".to_string())
            ]
        );
        // Running it again (every start) changes nothing.
        migrate_messages(&conn).unwrap();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM message_tags", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
    }
}
