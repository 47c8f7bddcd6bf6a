//! The embedded backend: SQLite in WAL mode, one file under `storage.path`.
//!
//! Writes go through one writer thread that batches whatever is waiting into a single
//! transaction (group commit): many concurrent 202s share one fsync. Each operation runs in
//! its own savepoint, so one failing write never spoils its batch-mates, and no caller hears
//! "ok" before the commit that holds its write is on disk (`synchronous = FULL`).
//! Reads use a small pool of read-only connections on the blocking thread pool.
//!
//! - [`schema`]: tables and indexes.
//! - `queue`: the [`crate::Queue`] implementation (delivery jobs).
//! - `state`: the [`crate::State`] implementation (keys, status, events, webhooks).
//! - `domain`: the [`crate::Domains`] implementation (sending domains and their keys).
//! - `messages`: the [`crate::Messages`] implementation (search, cancel) and its indexes.
//! - `engagement`: engagement records (opens, clicks) and the events they emit.
//! - `suppression`: the [`crate::Suppressions`] implementation and the screening helpers
//!   the queue's transactions call.
//! - `ratelimit`: [`LocalRateLimiter`], the in-process [`crate::RateLimiter`].
//! - `template`: the [`crate::Templates`] implementation.
//! - `checkpoint`: WAL checkpoints on a thread of their own, never inside a commit.
//! - `retention`: the [`crate::Retention`] implementation (pruning finished messages).

mod checkpoint;
mod copies;
mod domain;
mod engagement;
mod feedback;
mod idempotency;
mod messages;
mod queue;
mod ratelimit;
mod retention;
pub mod schema;
mod state;
mod suppression;
mod template;
#[cfg(test)]
mod tests;
mod webhook_log;

pub use ratelimit::LocalRateLimiter;

/// A store in a fresh temporary directory, which lives as long as the returned guard.
#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open store");
    (dir, store)
}

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Notify};

use crate::StoreError;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 512;

/// Prepared statements kept per connection (room for every statement the store runs).
const STATEMENT_CACHE: usize = 256;

type Completion = Box<dyn FnOnce(Commit) + Send>;

/// How the transaction holding a batch of writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Done,
    DiskFull,
    Failed,
}

/// `SQLITE_FULL` (ENOSPC, or the database at its size limit) becomes [`StoreError::DiskFull`]:
/// temporary, unlike the other database errors.
fn disk_full_is_temporary(e: StoreError) -> StoreError {
    match &e {
        StoreError::Database(db) if is_disk_full(db) => StoreError::DiskFull,
        _ => e,
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}
type WriteOp = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Queue and state in one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    readers: Mutex<Vec<Connection>>,
    /// Woken after a commit that may have made a job claimable.
    work: Notify,
    /// Random per open: idempotency records in progress carry it, so records left by an
    /// earlier process (dead by definition) are recognised as such at once.
    boot: String,
    /// Where pruning left off (see `retention`).
    prune_cursor: retention::PruneCursor,
    /// Dropped to stop the checkpoint thread (see `checkpoint`).
    checkpoints: Mutex<Option<mpsc::Sender<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/postwire.db` and migrates the schema.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::Open { path: dir.display().to_string(), source })?;
        let path = dir.join("postwire.db");
        restrict_to_owner(dir, &path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let conn = Connection::open(&path)?;
        // Before any table exists (a new file) this makes pruning able to shrink the file; on
        // an older database it changes nothing and freed pages are only reused.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        // `wal_autocheckpoint = 0`: checkpoints run on their own thread (see `checkpoint`), not
        // inside a commit. `journal_size_limit`: the WAL is cut back to 64 MiB after a checkpoint instead of
        // keeping its largest size for ever.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;
             PRAGMA journal_size_limit = 67108864;
             PRAGMA wal_autocheckpoint = 0;",
        )?;
        // Every write goes through this connection; rusqlite's default of 16 cached statements
        // is fewer than one accept, claim and complete use between them, and a statement
        // evicted from the cache is compiled again on its next use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&conn)?;
        let (stop_checkpoints, stopped) = mpsc::channel();
        checkpoint::spawn(path.clone(), stopped)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let (tx, rx) = mpsc::channel::<WriteOp>();
        std::thread::Builder::new()
            .name("postwire-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                work: Notify::new(),
                boot: crate::ids::new_id("boot"),
                prune_cursor: retention::PruneCursor::default(),
                checkpoints: Mutex::new(Some(stop_checkpoints)),
            }),
        })
    }

    /// Writes a consistent copy of the database to `dest`, which must not exist (SQLite's
    /// `VACUUM INTO`: one read transaction, writers go on meanwhile). The copy is created
    /// readable by its owner only, like the database. Returns its size in bytes.
    pub async fn backup_to(&self, dest: &Path) -> Result<u64, StoreError> {
        let open_err = |source| StoreError::Open { path: dest.display().to_string(), source };
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
                .map_err(open_err)?;
        }
        let target = dest.to_string_lossy().into_owned();
        self.read(move |conn| {
            conn.execute("VACUUM INTO ?1", [&target])?;
            Ok(())
        })
        .await?;
        Ok(std::fs::metadata(dest).map_err(open_err)?.len())
    }

    /// Stops accepting writes; the writer thread exits once queued writes are committed.
    pub fn close(&self) {
        self.inner.writer.lock().expect("writer lock").take();
        self.inner.checkpoints.lock().expect("checkpoint lock").take();
    }

    /// Runs `f` inside the next group-commit transaction; resolves once it is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, wait) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit| {
                let _ = done.send(match (result, commit) {
                    (Ok(v), Commit::Done) => Ok(v),
                    (Ok(_), Commit::DiskFull) => Err(StoreError::DiskFull),
                    (Ok(_), Commit::Failed) => Err(StoreError::Corrupt("commit failed".into())),
                    (Err(e), _) => Err(disk_full_is_temporary(e)),
                });
            })
        });
        let sender =
            self.inner.writer.lock().expect("writer lock").clone().ok_or(StoreError::Closed)?;
        sender.send(op).map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection on the blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().expect("reader pool").pop() {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    c.busy_timeout(std::time::Duration::from_secs(10))?;
                    c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                    c
                }
            };
            let result = f(&conn);
            let mut pool = inner.readers.lock().expect("reader pool");
            if pool.len() < 8 {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn prune_cursor(&self) -> &retention::PruneCursor {
        &self.inner.prune_cursor
    }

    /// This open's id (see [`Inner::boot`]).
    pub(crate) fn boot(&self) -> &str {
        &self.inner.boot
    }

    pub(crate) fn notify_work(&self) {
        self.inner.work.notify_waiters();
    }

    pub(crate) fn work(&self) -> &Notify {
        &self.inner.work
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: these two run for every write, on the one thread all commits wait for.
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "sqlite: cannot begin a transaction");
            batch.into_iter().for_each(|op| drop(op));
            continue;
        }
        let completions: Vec<Completion> = batch.into_iter().map(|op| op(&conn)).collect();
        let commit = match conn.execute_batch("COMMIT") {
            Ok(()) => Commit::Done,
            Err(e) => {
                tracing::error!(error = %e, "sqlite: commit failed; every write in the batch is reported failed");
                let _ = conn.execute_batch("ROLLBACK");
                if is_disk_full(&e) {
                    Commit::DiskFull
                } else {
                    Commit::Failed
                }
            }
        };
        completions.into_iter().for_each(|c| c(commit));
    }
}

/// The store holds DKIM private keys and webhook secrets: its directory is made 0700 and the
/// database 0600 whatever the umask, before SQLite opens it. SQLite gives the `-wal` and
/// `-shm` files it creates the database file's mode; ones left by an earlier run are fixed too.
#[cfg(unix)]
fn restrict_to_owner(dir: &Path, db: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(db)?;
    for file in [db.to_path_buf(), db.with_extension("db-wal"), db.with_extension("db-shm")] {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_to_owner(_dir: &Path, _db: &Path) -> std::io::Result<()> {
    Ok(())
}
