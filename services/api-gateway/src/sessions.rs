//! The accept loop of the line-protocol listeners (SMTP submission and bounces, POP3): one
//! task per connection, at most `max` sessions at once (a connection over it is handed to the
//! session function without a permit, to be refused politely), and on shutdown a grace period
//! for the open sessions to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a listener's sessions share: how many, how long they may finish, and its log name.
pub(crate) struct Limits {
    pub(crate) max: usize,
    pub(crate) grace: Duration,
    pub(crate) label: &'static str,
}

/// Accepts connections on `listener` until `shutdown` fires and runs `session` on each, with
/// a permit while under `limits.max` (it holds the permit for as long as the session runs).
pub(crate) async fn accept<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    shutdown: CancellationToken,
    session: F,
) where
    F: Fn(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, listener = limits.label, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned().ok();
        tasks.spawn(session(stream, peer, permit));
    }
    tasks.close();
    if tokio::time::timeout(limits.grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            listener = limits.label,
            "sessions still open after the shutdown grace period"
        );
    }
}
