//! Message copies in SQLite: `copy_bodies` holds each distinct body of a message once,
//! `copies` maps each recipient to its body.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::copies::{digest, recipient_key, Copies, PopMarks, SentCopy};
use crate::StoreError;

/// Creates the tables; called from [`super::schema::migrate`].
pub fn migrate_copies(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        CREATE TABLE IF NOT EXISTS copy_bodies (
            message_id TEXT NOT NULL,
            digest TEXT NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (message_id, digest)
        );
        -- Messages deleted from the sandbox POP3 mailbox.
        CREATE TABLE IF NOT EXISTS pop_deleted (message_id TEXT PRIMARY KEY);
        -- `recipient` lower-cased.
        CREATE TABLE IF NOT EXISTS copies (
            message_id TEXT NOT NULL,
            recipient TEXT NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (message_id, recipient)
        );
        ",
    )
}

/// Deletes every copy of message `id` (retention).
pub(crate) fn delete_copies(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM copies WHERE message_id = ?1")?.execute([id])?;
    conn.prepare_cached("DELETE FROM copy_bodies WHERE message_id = ?1")?.execute([id])?;
    conn.prepare_cached("DELETE FROM pop_deleted WHERE message_id = ?1")?.execute([id])?;
    Ok(())
}

#[async_trait]
impl Copies for SqliteStore {
    async fn store_copies(
        &self,
        message_id: &str,
        copies: Vec<SentCopy>,
    ) -> Result<(), StoreError> {
        let id = message_id.to_string();
        self.write(move |conn| {
            for copy in &copies {
                let digest = digest(&copy.bytes);
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO copy_bodies (message_id, digest, body) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, digest, copy.bytes])?;
                for r in &copy.recipients {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO copies (message_id, recipient, digest) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, recipient_key(r), digest])?;
                }
            }
            // Bodies an earlier attempt stored that no recipient points at any more.
            conn.prepare_cached(
                "DELETE FROM copy_bodies WHERE message_id = ?1
                 AND digest NOT IN (SELECT digest FROM copies WHERE message_id = ?1)",
            )?
            .execute([&id])?;
            Ok(())
        })
        .await
    }

    async fn sent_copy(
        &self,
        message_id: &str,
        recipients: &[String],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let id = message_id.to_string();
        let wanted: Vec<String> = recipients.iter().map(|r| recipient_key(r)).collect();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT b.body FROM copies c JOIN copy_bodies b
                   ON b.message_id = c.message_id AND b.digest = c.digest
                 WHERE c.message_id = ?1 AND c.recipient = ?2",
            )?;
            for r in &wanted {
                if let Some(body) =
                    stmt.query_row(params![id, r], |row| row.get::<_, Vec<u8>>(0)).optional()?
                {
                    return Ok(Some(body));
                }
            }
            Ok(None)
        })
        .await
    }
}

#[async_trait]
impl PopMarks for SqliteStore {
    async fn mark_popped(&self, message_ids: &[String]) -> Result<(), StoreError> {
        let ids = message_ids.to_vec();
        self.write(move |conn| {
            for id in &ids {
                conn.prepare_cached("INSERT OR IGNORE INTO pop_deleted (message_id) VALUES (?1)")?
                    .execute([id])?;
            }
            Ok(())
        })
        .await
    }

    async fn popped(&self, message_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = message_ids.to_vec();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM pop_deleted WHERE message_id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                if stmt.exists([&id])? {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::copies::contract;
    use crate::embedded::SqliteStore;

    #[tokio::test]
    async fn copies_are_found_per_recipient_and_replaced_by_a_later_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        contract::copies_are_found_per_recipient_and_replaced_by_a_later_attempt(&store).await;
    }

    #[tokio::test]
    async fn pop_marks_are_remembered_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        contract::pop_marks_are_remembered_per_message(&store).await;
    }
}
