//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! one writer thread every 202 waits for: that commit then also copies the WAL into the
//! database file and fsyncs it (5–9 ms spikes under load). Instead the writer's automatic
//! checkpoint is off and this thread, with its own connection, runs a `PASSIVE` checkpoint
//! whenever the WAL file is larger than [`THRESHOLD_PAGES`] pages (checked every [`EVERY`]). A passive
//! checkpoint never blocks the writer; it copies what no reader still needs, and the writer
//! starts the WAL over from the beginning once everything was copied.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL's size is looked at.
const EVERY: Duration = Duration::from_millis(200);

/// Half SQLite's own default threshold for its automatic checkpoint: smaller checkpoints,
/// each copying and syncing less.
pub(crate) const THRESHOLD_PAGES: i64 = 500;

/// Starts the checkpointer on `db`; it stops once `stop` is dropped, after a last checkpoint.
pub(crate) fn spawn(db: PathBuf, stop: mpsc::Receiver<()>) -> std::io::Result<()> {
    std::thread::Builder::new().name("postwire-sqlite-checkpoint".into()).spawn(move || {
        let conn = match Connection::open(&db) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "sqlite: the checkpointer cannot open the database");
                return;
            }
        };
        let _ = conn.busy_timeout(Duration::from_secs(10));
        let wal = db.with_extension("db-wal");
        loop {
            let stopping =
                matches!(stop.recv_timeout(EVERY), Err(mpsc::RecvTimeoutError::Disconnected));
            if let Err(e) = checkpoint(&conn, &wal, if stopping { 0 } else { THRESHOLD_PAGES }) {
                tracing::warn!(error = %e, "sqlite: WAL checkpoint failed; retried shortly");
            }
            if stopping {
                return;
            }
        }
    })?;
    Ok(())
}

/// A passive checkpoint when the WAL file holds more than `threshold` pages' worth (`0`: any).
/// The file's size is a high-water mark, so after the writer starts the WAL over it stays
/// large and each tick checkpoints; a passive checkpoint with nothing to copy costs little.
fn checkpoint(conn: &Connection, wal: &std::path::Path, threshold: i64) -> rusqlite::Result<()> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let size = std::fs::metadata(wal).map_or(0, |m| m.len() as i64);
    if size > threshold * page {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::embedded::temp_store as open;
    use crate::suppression::contract::message;
    use crate::Queue;

    #[tokio::test]
    async fn the_wal_reaches_the_database_file_without_the_writer_checkpointing() {
        let (dir, store) = open();
        let auto: i64 = store
            .write(|conn| Ok(conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(auto, 0, "the writer must not checkpoint inside commits");
        let db = dir.path().join("postwire.db");
        let before = std::fs::metadata(&db).unwrap().len();
        // Enough pages to pass the threshold: the WAL must be copied into the file by the
        // checkpoint thread, the only one that checkpoints.
        let writes = (0..2000).map(|_| store.accept(message(&["a@example.test"])));
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(15);
        while std::fs::metadata(&db).unwrap().len() <= before {
            let wal = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len());
            assert!(
                Instant::now() < deadline,
                "nothing was checkpointed into {} (WAL {wal} bytes)",
                db.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
