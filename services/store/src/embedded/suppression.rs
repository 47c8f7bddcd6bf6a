//! The suppression list in SQLite: the [`Suppressions`] implementation, and the helpers that
//! `queue.rs` calls inside its accept and complete transactions, so screening a recipient
//! (status, event, no job) and listing a hard bounce commit with the rest of the write.

use async_trait::async_trait;
use postwire_proto::{RecipientStatus, Suppression, SuppressionReason};
use rusqlite::{params, Connection, OptionalExtension};

use super::{state::insert_event, SqliteStore};
use crate::suppression::{key, suppressed_event, suppressed_response};
use crate::time::{from_ms, to_ms};
use crate::{
    NewMessage, NewSuppression, StoreError, SuppressionCursor, SuppressionPage, Suppressions,
};

/// Creates the `suppressions` table; called from [`super::schema::migrate`].
pub fn migrate_suppression(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        -- The suppression list: one row per address, in `crate::suppression::key` form.
        CREATE TABLE IF NOT EXISTS suppressions (
            email TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            smtp_response TEXT,
            message_id TEXT,
            created_at INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS suppressions_newest ON suppressions (created_at, email);
        ",
    )
}

const COLUMNS: &str = "email, reason, smtp_response, message_id, created_at";

/// A `suppressions` row as read, before its reason is parsed.
type Row = (String, String, Option<String>, Option<String>, i64);

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn entry(row: Row) -> Result<Suppression, StoreError> {
    let (email, reason, smtp_response, message_id, created_at) = row;
    let reason = SuppressionReason::parse(&reason)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown suppression reason {reason:?}")))?;
    Ok(Suppression { email, reason, smtp_response, message_id, created_at: from_ms(created_at) })
}

/// The entry for `email` (compared in [`key`] form).
fn lookup(conn: &Connection, email: &str) -> Result<Option<Suppression>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM suppressions WHERE email = ?1"))?
        .query_row([key(email)], entry_from_row)
        .optional()?;
    row.map(entry).transpose()
}

/// Inserts `entry` unless its address is listed; returns the entry now stored and whether it
/// is the new one.
pub(crate) fn insert(
    conn: &Connection,
    entry: Suppression,
) -> Result<(Suppression, bool), StoreError> {
    let added = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO suppressions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
        ))?
        .execute(params![
            entry.email,
            entry.reason.as_str(),
            entry.smtp_response,
            entry.message_id,
            to_ms(entry.created_at)
        ])?;
    if added == 1 {
        return Ok((entry, true));
    }
    let existing = lookup(conn, &entry.email)?
        .ok_or_else(|| StoreError::Corrupt("suppression vanished".into()))?;
    Ok((existing, false))
}

/// At acceptance, inside the accept transaction: when recipient `position` of `message` is
/// listed, stores it `suppressed` with its `message.suppressed` event (and webhook deliveries)
/// and returns true; the caller then stores no `queued` row and no job for it.
pub(crate) fn screen_recipient(
    conn: &Connection,
    message: &NewMessage,
    position: usize,
    created: i64,
) -> Result<bool, StoreError> {
    let recipient = &message.recipients[position];
    let Some(listed) = lookup(conn, &recipient.email)? else { return Ok(false) };
    let response = suppressed_response(&listed);
    conn.prepare_cached(
        "INSERT INTO recipients (message_id, position, email, domain, status, last_response, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message.id,
        position as i64,
        recipient.email,
        recipient.domain,
        RecipientStatus::Suppressed.as_str(),
        response,
        created
    ])?;
    insert_event(conn, &suppressed_event(message, &recipient.email, response))?;
    Ok(true)
}

/// At completion, inside the complete transaction: lists the address of a hard bounce
/// (an existing entry is kept).
pub(crate) fn record_hard_bounce(
    conn: &Connection,
    email: &str,
    smtp_response: &str,
    message_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    let entry = Suppression {
        email: key(email),
        reason: SuppressionReason::HardBounce,
        smtp_response: Some(smtp_response.to_string()),
        message_id: Some(message_id.to_string()),
        created_at: from_ms(now),
    };
    insert(conn, entry).map(|_| ())
}

#[async_trait]
impl Suppressions for SqliteStore {
    async fn list_suppressions(
        &self,
        after: Option<&SuppressionCursor>,
        limit: usize,
    ) -> Result<SuppressionPage, StoreError> {
        let after = after.cloned();
        let fetch = limit.saturating_add(1) as i64;
        self.read(move |conn| {
            let rows: Vec<_> = match &after {
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM suppressions ORDER BY created_at DESC, email DESC LIMIT ?1"
                    ))?
                    .query_map([fetch], entry_from_row)?
                    .collect::<Result<_, _>>()?,
                Some(c) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM suppressions
                         WHERE created_at < ?1 OR (created_at = ?1 AND email < ?2)
                         ORDER BY created_at DESC, email DESC LIMIT ?3"
                    ))?
                    .query_map(params![c.created_at_ms, c.email, fetch], entry_from_row)?
                    .collect::<Result<_, _>>()?,
            };
            let mut data = rows.into_iter().map(entry).collect::<Result<Vec<_>, _>>()?;
            let next = if data.len() > limit {
                data.truncate(limit);
                data.last().map(SuppressionCursor::after)
            } else {
                None
            };
            Ok(SuppressionPage { data, next })
        })
        .await
    }

    async fn add_suppression(
        &self,
        entry: NewSuppression,
    ) -> Result<(Suppression, bool), StoreError> {
        let entry = entry.into_entry();
        self.write(move |conn| insert(conn, entry)).await
    }

    async fn suppression(&self, email: &str) -> Result<Option<Suppression>, StoreError> {
        let email = email.to_string();
        self.read(move |conn| lookup(conn, &email)).await
    }

    async fn remove_suppression(&self, email: &str) -> Result<bool, StoreError> {
        let email = key(email);
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM suppressions WHERE email = ?1")?
                .execute([email])?
                == 1)
        })
        .await
    }

    async fn suppressed_among(&self, emails: &[String]) -> Result<Vec<String>, StoreError> {
        let emails = emails.to_vec();
        self.read(move |conn| {
            let mut listed = Vec::new();
            for email in emails {
                if lookup(conn, &email)?.is_some() {
                    listed.push(email);
                }
            }
            Ok(listed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::suppression::contract;

    #[tokio::test]
    async fn embedded_hard_bounce_suppresses_later_sends() {
        let (_dir, store) = crate::embedded::temp_store();
        contract::hard_bounce_suppresses_later_sends(&store).await;
    }

    #[tokio::test]
    async fn embedded_only_flagged_bounces_list_the_address() {
        let (_dir, store) = crate::embedded::temp_store();
        contract::only_flagged_bounces_list_the_address(&store).await;
    }

    #[tokio::test]
    async fn embedded_entries_page_newest_first() {
        let (_dir, store) = crate::embedded::temp_store();
        contract::entries_page_newest_first(&store).await;
    }

    #[tokio::test]
    async fn embedded_suppressed_event_is_queued_for_webhooks() {
        let (_dir, store) = crate::embedded::temp_store();
        contract::suppressed_event_is_queued_for_webhooks(&store).await;
    }
}
