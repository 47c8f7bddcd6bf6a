//! The sandbox as a test inbox over POP3 (RFC 1939, STLS from RFC 2595, CAPA and response
//! codes from RFC 2449), on `sandbox.pop3_listen`.
//!
//! `USER` is accepted and ignored; `PASS` is a sandbox API key with the `read` scope (a live
//! key is refused: its mail really went out). The mailbox is the messages that key may see
//! (its own; a sandbox `admin` key every sandbox message), oldest first, up to
//! [`MAX_MESSAGES`] of the newest, each as `GET /v1/messages/{id}/raw` returns it — the
//! signed copy of its first recipient. The unique id (`UIDL`) is the message id. `DELE`
//! marks; `QUIT` then records the marks, and later sessions leave those messages out (the
//! messages themselves stay, readable through the API, until retention prunes them).
//!
//! As on the submission listener, the password is taken only under TLS (`STLS`) or from a
//! loopback client, and an address that fails [`crate::smtp_in::MAX_AUTH_FAILURES`] times is
//! refused for a while.
//!
//! - [`session`]: one conversation, state by state.
//! - [`mailbox`]: the messages of a key, their sizes, and the text of one.

pub mod mailbox;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use postwire_config::Settings;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::smtp_in::{AuthFailures, SmtpInError};
use crate::Gateway;

/// Messages in one mailbox at most: the newest ones.
pub const MAX_MESSAGES: usize = 1000;

/// Sessions open at once; a client beyond it is told `-ERR [SYS/TEMP]` and closed.
pub const MAX_SESSIONS: usize = 200;

/// Idle time before the server closes a session (RFC 1939 §3: at least 10 minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long open sessions may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every POP3 session shares.
pub struct Pop3Server {
    pub(crate) gw: Gateway,
    pub(crate) tls: TlsAcceptor,
    pub(crate) failures: AuthFailures,
    pub(crate) idle: Duration,
}

impl Pop3Server {
    /// With the submission listeners' certificate (`submission.tls_cert`/`tls_key`, or one
    /// self-signed for `smtp.helo_name`).
    pub fn from_settings(gw: Gateway, settings: &Settings) -> Result<Self, SmtpInError> {
        let sub = &settings.submission;
        let tls =
            crate::smtp_in::tls::acceptor(&sub.tls_cert, &sub.tls_key, &settings.smtp.helo_name)?;
        Ok(Self { gw, tls, failures: AuthFailures::default(), idle: IDLE_TIMEOUT })
    }
}

/// Accepts sessions on `listener` until `shutdown` fires, then gives open ones a short grace.
pub async fn serve(server: Arc<Pop3Server>, listener: TcpListener, shutdown: CancellationToken) {
    let limits =
        crate::sessions::Limits { max: MAX_SESSIONS, grace: SHUTDOWN_GRACE, label: "pop3" };
    crate::sessions::accept(listener, limits, shutdown.clone(), |stream, peer, permit| {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        async move {
            match permit {
                Some(_permit) => session::run(&server, stream, peer, shutdown).await,
                None => session::refuse(stream).await,
            }
        }
    })
    .await;
}
