//! Sending domains in SQLite: one `domains` row per domain, and the one-row
//! `domain_generation` counter bumped in the same transaction as every add and removal.

use async_trait::async_trait;
use postwire_proto::SigningAlgorithm;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::domain::normalize;
use crate::time::{from_ms, to_ms};
use crate::{Domains, SendingDomain, StoreError};

/// Creates the `domains` and `domain_generation` tables; called from [`super::schema::migrate`].
pub fn migrate_domain(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        -- Sending domains and their DKIM keys; `domain` is lower-cased.
        CREATE TABLE IF NOT EXISTS domains (
            domain TEXT PRIMARY KEY,
            selector TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            private_key TEXT NOT NULL,
            public_record TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        -- Bumped with every change to `domains`, so workers know when their signers are stale.
        CREATE TABLE IF NOT EXISTS domain_generation (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL
        );
        INSERT OR IGNORE INTO domain_generation (id, value) VALUES (1, 0);
        ",
    )
}

const COLUMNS: &str = "domain, selector, algorithm, private_key, public_record, created_at";

type Row = (String, String, String, String, String, i64);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn entry(row: Row) -> Result<SendingDomain, StoreError> {
    let (domain, selector, algorithm, private_key, public_record, created_at) = row;
    let algorithm = SigningAlgorithm::parse(&algorithm).ok_or_else(|| {
        StoreError::Corrupt(format!("unknown DKIM algorithm {algorithm:?} for {domain}"))
    })?;
    Ok(SendingDomain {
        domain,
        selector,
        algorithm,
        private_key,
        public_record,
        created_at: from_ms(created_at),
    })
}

fn bump_generation(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE domain_generation SET value = value + 1 WHERE id = 1")?
        .execute([])?;
    Ok(())
}

#[async_trait]
impl Domains for SqliteStore {
    async fn create_domain(&self, domain: SendingDomain) -> Result<bool, StoreError> {
        let d = domain.normalized();
        self.write(move |conn| {
            let added =
                conn.prepare_cached(&format!(
                    "INSERT OR IGNORE INTO domains ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ))?
                .execute(params![
                    d.domain,
                    d.selector,
                    d.algorithm.as_str(),
                    d.private_key,
                    d.public_record,
                    to_ms(d.created_at)
                ])? == 1;
            if added {
                bump_generation(conn)?;
            }
            Ok(added)
        })
        .await
    }

    async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError> {
        let name = normalize(name);
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM domains WHERE domain = ?1"))?
                .query_row([name], row)
                .optional()?
                .map(entry)
                .transpose()
        })
        .await
    }

    async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM domains ORDER BY domain"))?;
            let rows = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(entry).collect()
        })
        .await
    }

    async fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        let name = normalize(name);
        self.write(move |conn| {
            let removed =
                conn.prepare_cached("DELETE FROM domains WHERE domain = ?1")?.execute([name])? == 1;
            if removed {
                bump_generation(conn)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn domains_generation(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let value: Option<i64> = conn
                .prepare_cached("SELECT value FROM domain_generation WHERE id = 1")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(value.unwrap_or(0).max(0) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract;

    use crate::embedded::temp_store as open;

    #[tokio::test]
    async fn embedded_domains_are_created_once_listed_and_deleted() {
        let (_dir, store) = open();
        contract::domains_are_created_once_listed_and_deleted(&store).await;
    }

    #[tokio::test]
    async fn embedded_of_concurrent_creates_exactly_one_wins() {
        let (_dir, store) = open();
        contract::of_concurrent_creates_exactly_one_wins(&store).await;
    }

    #[tokio::test]
    async fn domains_and_their_generation_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open store");
        assert!(store
            .create_domain(contract::domain("keep.test", "k1", 1_764_000_000_000))
            .await
            .unwrap());
        let gen = store.domains_generation().await.unwrap();
        store.close();
        drop(store);
        let store = SqliteStore::open(dir.path()).expect("reopen store");
        assert_eq!(store.domains_generation().await.unwrap(), gen);
        assert_eq!(store.domain("keep.test").await.unwrap().unwrap().selector, "k1");
    }
}
