//! Reused SMTP connections, pooled per MX host.
//!
//! Opening a session costs a TCP handshake, the greeting, EHLO and often a TLS handshake: more
//! round trips than the transaction itself. [`SmtpPool`] keeps a connection that finished its
//! transactions cleanly and hands it to the next delivery to the same host, which starts with
//! RSET (a liveness probe and a clean slate; a connection that fails it is closed and the next
//! one tried). A connection that broke in any way — timeout, lost connection, refused MAIL FROM,
//! garbled reply — is dropped on the spot and never goes back to the pool.
//!
//! The pool is keyed by MX host name, port and TLS mode; each key has a cap on connections open
//! at once, busy and idle together (`smtp.max_connections_per_host`). A delivery to a host at its
//! cap waits for a connection to come free. Idle connections live for
//! `smtp.connection_idle_timeout` (then QUIT), and a connection older than
//! [`MAX_CONNECTION_AGE`] is closed after its transaction rather than kept.
//!
//! STARTTLS, the plain-text retry after a failed handshake and `tls = "required"` all happen
//! when a connection is opened ([`crate::session`]); a pooled connection keeps what was
//! negotiated, so a reused one is exactly as encrypted as a new one would be.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use postwire_config::{Smtp, TlsMode};
use tokio::sync::Semaphore;

use crate::session::{self, HostAttempt, SmtpOptions, Transaction};

/// A connection opened longer ago than this is closed after its transaction instead of being
/// kept (Postfix's `smtp_connection_reuse_time_limit`): a long-lived session should not pin one
/// MX address when the domain's DNS may have moved on.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Longest wait for the RSET that starts a reuse (Postfix's `smtp_rset_timeout`). A peer that
/// takes longer is treated as gone and a new connection is opened.
const RESET_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for the reply to QUIT when closing an idle connection.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool sizing, from `smtp.*`.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Connections open at once per host (busy and idle); at least 1.
    pub max_per_host: usize,
    /// How long an idle connection is kept; zero turns reuse off.
    pub idle_timeout: Duration,
}

impl PoolLimits {
    pub fn from_settings(smtp: &Smtp) -> Self {
        Self {
            max_per_host: smtp.max_connections_per_host.max(1),
            idle_timeout: smtp.connection_idle_timeout.std(),
        }
    }
}

/// What a pool entry is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostKey {
    host: String,
    port: u16,
    tls: TlsMode,
}

/// A connection waiting for its next transaction.
struct Idle {
    conn: AsyncSmtpConnection,
    ip: IpAddr,
    opened: Instant,
    since: Instant,
}

/// One host's connections: a permit per open connection, and the idle ones.
struct HostConnections {
    /// A delivery holds a permit while it uses a connection. Idle connections hold none; the
    /// cap still counts them because a permit holder always takes an idle connection before
    /// opening one, and closes one when the host would otherwise go over (see `make_room`).
    busy: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
}

struct Inner {
    opts: SmtpOptions,
    limits: PoolLimits,
    hosts: Mutex<HashMap<HostKey, Arc<HostConnections>>>,
}

/// SMTP connections shared by every delivery of one worker. Cheap to clone.
#[derive(Clone)]
pub struct SmtpPool {
    inner: Arc<Inner>,
}

impl SmtpPool {
    /// A pool for sessions with `opts`. Starts a task that closes idle connections, so it must
    /// be called inside a tokio runtime; the task ends with the last clone of the pool.
    pub fn new(opts: SmtpOptions, limits: PoolLimits) -> Self {
        let inner = Arc::new(Inner { opts, limits, hosts: Mutex::new(HashMap::new()) });
        if !limits.idle_timeout.is_zero() {
            tokio::spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// The SMTP settings every session of this pool uses.
    pub fn options(&self) -> &SmtpOptions {
        &self.inner.opts
    }

    /// Runs `transactions` against `ip`, one of `host`'s addresses, on a pooled connection or a
    /// new one. Never fails as a whole: the result says what was decided and why the rest was
    /// not, exactly as [`session::deliver_to_host`] does.
    pub async fn deliver(
        &self,
        ip: IpAddr,
        host: &str,
        transactions: &[Transaction<'_>],
    ) -> HostAttempt {
        let opts = &self.inner.opts;
        let entry = self.entry(host);
        let _permit = Arc::clone(&entry.busy)
            .acquire_owned()
            .await
            .expect("the per-host semaphore is never closed");
        let mut attempt = HostAttempt::default();
        let (mut conn, opened) = match self.reuse(&entry, ip).await {
            Some(found) => found,
            None => {
                self.make_room(&entry);
                match session::open(opts, SocketAddr::new(ip, opts.port), host).await {
                    Ok(conn) => (conn, Instant::now()),
                    Err(e) => {
                        attempt.failure = Some(e);
                        return attempt;
                    }
                }
            }
        };
        attempt.encrypted = conn.is_encrypted();
        match session::run_transactions(&mut conn, opts, transactions, &mut attempt).await {
            Ok(()) => self.put_back(&entry, conn, ip, opened),
            // Dropped without QUIT: after a timeout or a garbled reply the peer may never answer.
            Err(e) => attempt.failure = Some(e),
        }
        attempt
    }

    /// Closes every idle connection with QUIT. Deliveries still running keep theirs.
    pub async fn close(&self) {
        let idle: Vec<Idle> = {
            let hosts = self.inner.hosts.lock().expect("pool lock");
            hosts
                .values()
                .flat_map(|h| std::mem::take(&mut *h.idle.lock().expect("pool lock")))
                .collect()
        };
        futures::future::join_all(idle.into_iter().map(|i| session::quit(i.conn, QUIT_TIMEOUT)))
            .await;
    }

    /// Connections open to `host` right now, busy and idle (for tests and diagnostics).
    pub fn open_connections(&self, host: &str) -> usize {
        let hosts = self.inner.hosts.lock().expect("pool lock");
        hosts.get(&self.key(host)).map_or(0, |h| {
            self.inner.limits.max_per_host - h.busy.available_permits()
                + h.idle.lock().expect("pool lock").len()
        })
    }

    fn key(&self, host: &str) -> HostKey {
        HostKey {
            host: host.to_ascii_lowercase(),
            port: self.inner.opts.port,
            tls: self.inner.opts.tls,
        }
    }

    fn entry(&self, host: &str) -> Arc<HostConnections> {
        let key = self.key(host);
        let mut hosts = self.inner.hosts.lock().expect("pool lock");
        Arc::clone(hosts.entry(key).or_insert_with(|| {
            Arc::new(HostConnections {
                busy: Arc::new(Semaphore::new(self.inner.limits.max_per_host)),
                idle: Mutex::new(Vec::new()),
            })
        }))
    }

    /// The most recently used idle connection to `ip` that still answers RSET.
    async fn reuse(
        &self,
        entry: &HostConnections,
        ip: IpAddr,
    ) -> Option<(AsyncSmtpConnection, Instant)> {
        let limits = self.inner.limits;
        loop {
            let idle = {
                let mut idle = entry.idle.lock().expect("pool lock");
                let i = idle.iter().rposition(|c| c.ip == ip)?;
                idle.remove(i)
            };
            if idle.since.elapsed() >= limits.idle_timeout {
                tokio::spawn(session::quit(idle.conn, QUIT_TIMEOUT));
                continue;
            }
            let mut conn = idle.conn;
            let limit = self.inner.opts.command_timeout.min(RESET_TIMEOUT);
            if session::reset(&mut conn, limit).await {
                return Some((conn, idle.opened));
            }
            tracing::debug!(%ip, "pooled SMTP connection failed RSET; closing it");
        }
    }

    /// Before opening a connection: if the host's open connections would exceed the cap (idle
    /// ones to its other addresses count too), closes the oldest idle one.
    fn make_room(&self, entry: &HostConnections) {
        let busy = self.inner.limits.max_per_host - entry.busy.available_permits();
        let evicted = {
            let mut idle = entry.idle.lock().expect("pool lock");
            (busy + idle.len() > self.inner.limits.max_per_host && !idle.is_empty())
                .then(|| idle.remove(0))
        };
        if let Some(old) = evicted {
            tokio::spawn(session::quit(old.conn, QUIT_TIMEOUT));
        }
    }

    fn put_back(
        &self,
        entry: &HostConnections,
        conn: AsyncSmtpConnection,
        ip: IpAddr,
        opened: Instant,
    ) {
        if self.inner.limits.idle_timeout.is_zero() || opened.elapsed() >= MAX_CONNECTION_AGE {
            tokio::spawn(session::quit(conn, QUIT_TIMEOUT));
            return;
        }
        entry.idle.lock().expect("pool lock").push(Idle {
            conn,
            ip,
            opened,
            since: Instant::now(),
        });
    }
}

/// Every half idle timeout: QUITs connections idle for longer than the timeout and forgets hosts
/// with nothing open. Ends when the pool is dropped.
async fn sweep(pool: Weak<Inner>) {
    let period = match pool.upgrade() {
        Some(inner) => (inner.limits.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        let expired: Vec<Idle> = {
            let mut hosts = inner.hosts.lock().expect("pool lock");
            let mut expired = Vec::new();
            for entry in hosts.values() {
                let mut idle = entry.idle.lock().expect("pool lock");
                let (old, keep) = std::mem::take(&mut *idle)
                    .into_iter()
                    .partition(|c| c.since.elapsed() >= inner.limits.idle_timeout);
                *idle = keep;
                expired.extend::<Vec<Idle>>(old);
            }
            // A host nobody holds (the map has the only reference, so no delivery is waiting
            // on or using it) and with nothing idle is forgotten, so the map stays bounded.
            hosts.retain(|_, entry| {
                Arc::strong_count(entry) > 1 || !entry.idle.lock().expect("pool lock").is_empty()
            });
            expired
        };
        drop(inner);
        for idle in expired {
            tokio::spawn(session::quit(idle.conn, QUIT_TIMEOUT));
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
