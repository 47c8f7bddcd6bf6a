//! The HTTP accept loop: hyper connections with a request-head deadline, a request-body
//! deadline ([`crate::slow_body`]), a cap on connections per client address and in all, and
//! graceful shutdown.
//!
//! `axum::serve` has none of these: a client that opens a socket and sends half a request
//! line keeps it forever, and some thousands of those exhaust the file descriptors, so even
//! `/healthz` stops answering. Here a connection that has not sent a whole request head within
//! `http.header_read_timeout` (from opening, or from its previous response) is closed by hyper,
//! one address may hold at most `http.max_connections_per_ip` sockets, and the process at most
//! `http.max_connections`; connections beyond a cap are closed at once, before any read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::slow_body::{limit_body_time, BodyDeadline};

/// How long open requests may take to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(30);

/// The connection bounds of one listener (`http.*`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    /// `http.body_read_timeout` and `http.min_body_rate`.
    pub body: BodyDeadline,
    pub max_connections_per_ip: usize,
    pub max_connections: usize,
}

impl ConnLimits {
    pub fn from_settings(http: &postwire_config::Http) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout.std(),
            body: BodyDeadline {
                grace: http.body_read_timeout.std(),
                min_rate: http.min_body_rate.0,
            },
            max_connections_per_ip: http.max_connections_per_ip.max(1),
            max_connections: http.max_connections.max(1),
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn try_open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = self.0.lock().expect("per-ip counts");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { counts: self.clone(), ip })
    }
}

/// One connection's place in its address's count, given back when dropped.
struct IpSlot {
    counts: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().expect("per-ip counts");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then lets open requests finish
/// (up to 30 s) before returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let router = router.layer(axum::middleware::from_fn_with_state(limits.body, limit_body_time));
    let graceful = GracefulShutdown::new();
    let total = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: back off instead of spinning;
                    // the caps above keep this rare.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: http.max_connections reached");
            continue;
        };
        let Some(ip_slot) = per_ip.try_open(peer.ip(), limits.max_connections_per_ip) else {
            tracing::debug!(%peer, "connection refused: http.max_connections_per_ip reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, watcher) = (builder.clone(), router.clone(), graceful.watcher());
        let head = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's own deadline starts only once the first byte arrived (the protocol is
            // guessed from it): a socket that sends nothing at all is closed here instead.
            let mut first = [0u8; 1];
            if matches!(tokio::time::timeout(head, stream.peek(&mut first)).await, Ok(Ok(1..))) {
                let service = TowerToHyperService::new(router);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            drop((permit, ip_slot));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still open {DRAIN:?} after shutdown began; closing them");
    }
    Ok(())
}
