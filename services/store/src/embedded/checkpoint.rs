//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
//! one writer thread every 202 waits for: that commit then also copies the WAL into the
//! database file and fsyncs it (5–9 ms spikes under load). Instead the writer's automatic
//! checkpoint is off and this thread, with its own connection, runs a `PASSIVE` checkpoint
//! whenever the WAL file is larger than [`THRESHOLD_PAGES`] pages (checked every [`EVERY`]). A passive
//! checkpoint never blocks the writer; it copies what no reader still needs, and the writer
//! starts the WAL over from the beginning once everything was copied.
//!
//! Under a constant load that last condition may never hold: the writer appends frames while
//! each passive checkpoint copies, so the log is never copied in full, never starts over, and
//! grows without bound (gigabytes in a 30-minute soak, each checkpoint then copying and syncing
//! hundreds of megabytes). So when a passive checkpoint leaves more than [`RESTART_PAGES`] frames
//! in the log, a `RESTART` checkpoint follows at once: it holds new writes back only while it
//! copies what the passive one could not (a few commits' worth) and waits for readers to move
//! on, and the next commit starts the log from the beginning.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL's size is looked at.
const EVERY: Duration = Duration::from_millis(200);

/// Half SQLite's own default threshold for its automatic checkpoint: smaller checkpoints,
/// each copying and syncing less.
pub(crate) const THRESHOLD_PAGES: i64 = 500;

/// The log length (in frames, i.e. pages) past which the log is made to start over: 16 MiB of
/// 4 KiB pages, a quarter of the `journal_size_limit` the WAL file is cut back to.
pub(crate) const RESTART_PAGES: i64 = 4096;

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
            let threshold = if stopping { 0 } else { THRESHOLD_PAGES };
            if let Err(e) = checkpoint(&conn, &wal, threshold, RESTART_PAGES) {
                tracing::warn!(error = %e, "sqlite: WAL checkpoint failed; retried shortly");
            }
            if stopping {
                return;
            }
        }
    })?;
    Ok(())
}

/// A passive checkpoint when the WAL file holds more than `threshold` pages' worth (`0`: any),
/// then a restarting one if the log still has more than `restart` frames. The file's size is a
/// high-water mark, so after the writer starts the WAL over it stays large and each tick
/// checkpoints; a passive checkpoint with nothing to copy costs little. Returns the log's
/// length in frames after the last checkpoint run (`None`: none ran).
fn checkpoint(
    conn: &Connection,
    wal: &std::path::Path,
    threshold: i64,
    restart: i64,
) -> rusqlite::Result<Option<i64>> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let size = std::fs::metadata(wal).map_or(0, |m| m.len() as i64);
    if size <= threshold * page {
        return Ok(None);
    }
    // (busy, frames in the log, frames copied into the database)
    let run = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
    };
    let (_, log) = run("PASSIVE")?;
    if log <= restart {
        return Ok(Some(log));
    }
    let (busy, log) = run("RESTART")?;
    if busy != 0 {
        tracing::warn!(frames = log, "sqlite: the WAL could not be restarted (readers held it)");
    }
    Ok(Some(log))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use rusqlite::Connection;

    use super::checkpoint;

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

    /// A writer committing small transactions back to back on `db` until `stop` is set, as the
    /// group-commit thread does under a constant load.
    fn busy_writer(db: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA busy_timeout = 10000;")
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                conn.execute("INSERT INTO t (v) VALUES (zeroblob(3000))", []).unwrap();
            }
        })
    }

    /// Readers one after another on `db` until `stop` is set, each a short read transaction
    /// over the newest rows, as the API and the worker read between commits.
    fn busy_readers(db: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM (SELECT id FROM t ORDER BY id DESC LIMIT 50)",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
            }
        })
    }

    /// Checkpoints every [`super::EVERY`], as the checkpoint thread does, for `ticks` ticks
    /// against a writer and readers that never pause; returns the log's length after each.
    fn log_under_constant_load(restart: i64, ticks: usize) -> Vec<i64> {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA busy_timeout = 10000;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = busy_writer(db.clone(), stop.clone());
        let readers =
            [busy_readers(db.clone(), stop.clone()), busy_readers(db.clone(), stop.clone())];
        let wal = db.with_extension("db-wal");
        let mut logs = Vec::new();
        while logs.len() < ticks {
            std::thread::sleep(super::EVERY);
            logs.extend(checkpoint(&conn, &wal, 0, restart).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        readers.into_iter().for_each(|r| r.join().unwrap());
        logs
    }

    #[test]
    fn a_log_that_passive_checkpoints_cannot_catch_up_with_is_made_to_start_over() {
        // With passive checkpoints only, this load grows the log on every tick without end
        // (measured: 50,000 frames, 210 MB, in six seconds). Past `restart` frames the log
        // must start over, so later ticks find it shorter than earlier ones (each tick's
        // figure is what one tick's commits wrote, then, not the whole history).
        let restart = 500;
        let logs = log_under_constant_load(restart, 15);
        let restarts = logs.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(restarts >= 3, "the log never started over: {logs:?}");
    }
}
