//! The embedded database schema. Timestamps are unix milliseconds.

use rusqlite::Connection;

/// Creates every table and index that does not exist yet.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        CREATE TABLE IF NOT EXISTS api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash BLOB NOT NULL,
            scopes TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            revoked_at INTEGER
        );
        CREATE TABLE IF NOT EXISTS messages (
            id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            request TEXT NOT NULL,
            message_id_header TEXT NOT NULL,
            key_id TEXT NOT NULL
        );
        -- One row per envelope recipient; `position` keeps the request's order.
        CREATE TABLE IF NOT EXISTS recipients (
            message_id TEXT NOT NULL REFERENCES messages(id),
            position INTEGER NOT NULL,
            email TEXT NOT NULL,
            domain TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            last_response TEXT,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (message_id, position)
        );
        -- A delivery job: one (message, domain) with recipients still pending.
        CREATE TABLE IF NOT EXISTS jobs (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id),
            domain TEXT NOT NULL,
            not_before INTEGER NOT NULL,
            lease_until INTEGER NOT NULL DEFAULT 0,
            claim_token TEXT,
            UNIQUE (message_id, domain)
        );
        CREATE INDEX IF NOT EXISTS jobs_due ON jobs (not_before, lease_until);
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            message_id TEXT NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS events_by_message ON events (message_id, seq);
        CREATE TABLE IF NOT EXISTS webhooks (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            secret TEXT NOT NULL,
            events TEXT NOT NULL,
            created_at INTEGER NOT NULL
        );
        -- The webhook outbox: one row per (event, endpoint), written with the event.
        CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id INTEGER PRIMARY KEY,
            webhook_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            lease_until INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            UNIQUE (webhook_id, event_id)
        );
        CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
        ",
    )?;
    super::idempotency::migrate_idempotency(conn)?;
    super::suppression::migrate_suppression(conn)?;
    super::messages::migrate_messages(conn)?;
    super::ratelimit::migrate_ratelimit(conn)?;
    super::domain::migrate_domain(conn)?;
    super::template::migrate_template(conn)?;
    super::engagement::migrate_engagement(conn)?;
    super::retention::migrate_retention(conn)?;
    super::copies::migrate_copies(conn)?;
    // Columns added after the first release: databases made before them gain them here.
    add_column(conn, "api_keys", "sandbox", "INTEGER NOT NULL DEFAULT 0")?;
    add_column(conn, "messages", "sandbox", "INTEGER NOT NULL DEFAULT 0")?;
    // A message submitted over SMTP: the client's RFC 5322 bytes (NULL for API sends).
    add_column(conn, "messages", "raw", "BLOB")?;
    // Whether the message is DKIM-signed, as JSON (`DkimStatus`); NULL before it was recorded.
    add_column(conn, "messages", "dkim", "TEXT")?;
    // The process (store open) that owns an idempotency record in progress.
    add_column(conn, "idempotency", "owner", "TEXT")?;
    super::webhook_log::migrate_webhook_log(conn)?;
    Ok(())
}

/// `ALTER TABLE … ADD COLUMN` unless the column is already there (SQLite has no `IF NOT EXISTS`
/// for columns).
pub(crate) fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    decl: &str,
) -> rusqlite::Result<()> {
    let exists: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    if !exists {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}
