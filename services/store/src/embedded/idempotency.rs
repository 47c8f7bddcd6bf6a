//! Idempotency records in SQLite: one row per (API key id, idempotency key).
//!
//! `idempotency_begin` reads and writes in one operation on the single writer thread, so two
//! concurrent requests with one key are serialised there: the first inserts the row, the second
//! sees it. The row is durable (group commit) before the caller runs the request.
//!
//! A row in progress names its owner, the store open ([`SqliteStore::boot`]) that began it. The
//! embedded backend has one process; a row in progress owned by another open was left by a
//! process that died, so it is dead whatever its lease says, and the next request runs afresh.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::time::now_ms;
use crate::{ids, IdemAnswer, IdemBegin, Idempotency, StoreError};

/// Creates the `idempotency` table; called from [`super::schema::migrate`].
///
/// `status` and `body` are NULL while the first request runs; `lease_until` bounds how long
/// an unfinished owner holds the key, `expires_at` when the record is forgotten.
pub fn migrate_idempotency(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        CREATE TABLE IF NOT EXISTS idempotency (
            key_id TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            body_hash BLOB NOT NULL,
            token TEXT,
            status INTEGER,
            body TEXT,
            lease_until INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (key_id, idem_key)
        );
        CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
        ",
    )
}

/// Expired rows removed per `begin`, so the table stays small without a sweeper task.
const PRUNE_PER_BEGIN: i64 = 64;

type Row = (Vec<u8>, Option<i64>, Option<String>, i64, i64, Option<String>);

/// Stores `answer` on its record inside the caller's transaction (the accept of the message
/// it answers). [`StoreError::IdempotencyLost`] when the record is no longer the caller's, so
/// the savepoint rolls the message back with it.
pub(crate) fn store_answer(
    conn: &Connection,
    boot: &str,
    answer: &IdemAnswer,
) -> Result<(), StoreError> {
    let c = &answer.claim;
    let n = conn
        .prepare_cached(
            "UPDATE idempotency SET status = ?1, body = ?2, token = NULL
             WHERE key_id = ?3 AND idem_key = ?4 AND token = ?5 AND owner = ?6
               AND status IS NULL",
        )?
        .execute(params![
            i64::from(answer.status),
            answer.body,
            c.key_id,
            c.idem_key,
            c.token,
            boot
        ])?;
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::IdempotencyLost)
    }
}

#[async_trait]
impl Idempotency for SqliteStore {
    async fn idempotency_begin(
        &self,
        key_id: &str,
        idem_key: &str,
        body_hash: [u8; 32],
        lease: Duration,
        ttl: Duration,
    ) -> Result<IdemBegin, StoreError> {
        let (key_id, idem_key) = (key_id.to_string(), idem_key.to_string());
        let (lease_ms, ttl_ms) = (lease.as_millis() as i64, ttl.as_millis() as i64);
        let boot = self.boot().to_string();
        self.write(move |conn| {
            let now = now_ms();
            conn.prepare_cached(
                "DELETE FROM idempotency WHERE rowid IN
                 (SELECT rowid FROM idempotency WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, PRUNE_PER_BEGIN])?;
            let row: Option<Row> = conn
                .prepare_cached(
                    "SELECT body_hash, status, body, lease_until, expires_at, owner FROM idempotency
                     WHERE key_id = ?1 AND idem_key = ?2",
                )?
                .query_row(params![key_id, idem_key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .optional()?;
            if let Some((hash, status, body, lease_until, expires_at, owner)) = row {
                let owner_alive = lease_until > now && owner.as_deref() == Some(boot.as_str());
                let live = expires_at > now && (status.is_some() || owner_alive);
                if live {
                    return Ok(match status {
                        _ if hash != body_hash => IdemBegin::Mismatch,
                        None => IdemBegin::InProgress,
                        Some(status) => IdemBegin::Replay {
                            status: u16::try_from(status)
                                .map_err(|_| StoreError::Corrupt("idempotency status".into()))?,
                            body: body.unwrap_or_default(),
                        },
                    });
                }
            }
            let token = ids::new_id("idem");
            conn.prepare_cached(
                "INSERT OR REPLACE INTO idempotency
                 (key_id, idem_key, body_hash, token, status, body, lease_until, expires_at, owner)
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5, ?6, ?7)",
            )?
            .execute(params![
                key_id,
                idem_key,
                body_hash.as_slice(),
                token,
                now + lease_ms,
                now + ttl_ms,
                boot
            ])?;
            Ok(IdemBegin::Started { token })
        })
        .await
    }

    async fn idempotency_finish(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        status: u16,
        body: String,
    ) -> Result<bool, StoreError> {
        let (key_id, idem_key, token) =
            (key_id.to_string(), idem_key.to_string(), token.to_string());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE idempotency SET status = ?1, body = ?2, token = NULL
                     WHERE key_id = ?3 AND idem_key = ?4 AND token = ?5 AND status IS NULL",
                )?
                .execute(params![i64::from(status), body, key_id, idem_key, token])?;
            Ok(n == 1)
        })
        .await
    }

    async fn idempotency_renew(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (key_id, idem_key, token) =
            (key_id.to_string(), idem_key.to_string(), token.to_string());
        let lease_ms = lease.as_millis() as i64;
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE idempotency SET lease_until = ?1
                     WHERE key_id = ?2 AND idem_key = ?3 AND token = ?4 AND status IS NULL",
                )?
                .execute(params![now_ms() + lease_ms, key_id, idem_key, token])?;
            Ok(n == 1)
        })
        .await
    }

    async fn idempotency_abandon(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let (key_id, idem_key, token) =
            (key_id.to_string(), idem_key.to_string(), token.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "DELETE FROM idempotency WHERE key_id = ?1 AND idem_key = ?2 AND token = ?3 AND status IS NULL",
            )?
            .execute(params![key_id, idem_key, token])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! What only a SQLite file shows; the rest of the idempotency contract runs against both
    //! backends in `idempotency_tests.rs`.

    use super::*;

    const LEASE: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(24 * 3600);

    fn token(begin: IdemBegin) -> String {
        match begin {
            IdemBegin::Started { token } => token,
            other => panic!("expected Started, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_record_left_in_progress_by_an_earlier_process_is_dead_at_once() {
        let (dir, store) = crate::embedded::temp_store();
        token(store.idempotency_begin("key_a", "crash", [1; 32], LEASE, TTL).await.unwrap());
        store.close();
        // The same file opened again, as a restarted process does: the 60 s lease is no matter.
        let reopened = SqliteStore::open(dir.path()).unwrap();
        token(reopened.idempotency_begin("key_a", "crash", [1; 32], LEASE, TTL).await.unwrap());
        assert_eq!(
            reopened.idempotency_begin("key_a", "crash", [1; 32], LEASE, TTL).await.unwrap(),
            IdemBegin::InProgress
        );
    }
}
