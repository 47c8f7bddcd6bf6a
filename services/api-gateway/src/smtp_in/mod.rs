//! Postwire's SMTP server: two roles on one protocol engine.
//!
//! **Submission** (RFC 6409): applications that speak SMTP hand their messages to Postwire
//! here, authenticated with an API key, and each message then goes the way of a
//! `POST /v1/messages`: validated, rate-limited, stored durably before the `250` that accepts
//! it, delivered and reported by the same workers. Two listeners (`[submission]`): `listen`
//! offers STARTTLS (RFC 3207) and `tls_listen` speaks TLS from the first byte (RFC 8314). AUTH
//! PLAIN and LOGIN (RFC 4954) are offered only under TLS or to a loopback client; the user name
//! is ignored and the password is an API key with the `send` scope. Clients in
//! `trusted_networks` may submit without AUTH as `trusted_key`. Nobody else can submit
//! anything, for any domain: this is not a relay.
//!
//! **Bounces** (`[bounces]`): with a bounce domain set, `bounces.listen` takes mail for that
//! domain only (`550 5.7.1` for any other), from any sender including `<>`, without AUTH: the
//! DSNs, feedback reports and auto-replies sent back to the VERP return paths of the copies
//! Postwire sent.
//!
//! - [`session`]: one SMTP conversation, command by command (pipelining included).
//! - [`data`]: the DATA and BDAT bodies: dot-unstuffing, bare CR/LF refusal, the size limit.
//! - [`message`]: the submitted text → the message to store, and the reply to DATA.
//! - [`report`]: what a received report is (DSN, ARF, auto-reply, text bounce).
//! - [`bounces`]: a received report → the copy it names → what it changes.
//! - [`tls`]: the certificate (configured, or self-signed at start).

pub mod bounces;
pub mod data;
pub mod message;
pub mod report;
pub mod session;
pub mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postwire_config::{IpNet, Settings};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Gateway;

/// Sessions open at once on one listener; a client beyond it is told `421` and closed.
pub const MAX_SESSIONS: usize = 1000;

/// Failed AUTH attempts from one address before it is refused for [`AUTH_LOCKOUT`].
pub const MAX_AUTH_FAILURES: u32 = 5;

/// How long an address that failed AUTH [`MAX_AUTH_FAILURES`] times is refused (`421`).
pub const AUTH_LOCKOUT: Duration = Duration::from_secs(60);

/// How long in-progress sessions may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the submission listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum SmtpInError {
    #[error("cannot read {key} {path}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path}: {message}")]
    Pem { key: &'static str, path: String, message: String },
    #[error("submission.tls_cert and submission.tls_key must be set together")]
    HalfConfigured,
    #[error("the TLS certificate and key do not make a server configuration")]
    Tls(#[from] tokio_rustls::rustls::Error),
    #[error("cannot generate a self-signed certificate")]
    SelfSigned(#[from] rcgen::Error),
}

/// RFC 5321 §4.5.3.2 server timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Waiting for the next command (5 minutes).
    pub command: Duration,
    /// Waiting for the next block of message data (3 minutes between reads; the whole
    /// message is bounded by the size limit).
    pub data: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { command: Duration::from_secs(300), data: Duration::from_secs(180) }
    }
}

/// What every submission session shares.
pub struct SmtpServer {
    pub(crate) gw: Gateway,
    pub(crate) tls: TlsAcceptor,
    /// The name in the greeting and the EHLO reply (`smtp.helo_name`).
    pub(crate) hostname: String,
    pub(crate) trusted_networks: Vec<IpNet>,
    /// `submission.trusted_key`, when set.
    pub(crate) trusted_key: Option<String>,
    pub(crate) timeouts: Timeouts,
    pub(crate) failures: AuthFailures,
    /// `bounces.domain`, lower-cased, when set: the only domain the bounce listener takes
    /// mail for.
    pub(crate) bounce_domain: Option<String>,
}

impl SmtpServer {
    /// From `[submission]` and `smtp.helo_name`, with the certificate loaded or generated.
    pub fn from_settings(gw: Gateway, settings: &Settings) -> Result<Self, SmtpInError> {
        let sub = &settings.submission;
        let tls = tls::acceptor(&sub.tls_cert, &sub.tls_key, &settings.smtp.helo_name)?;
        let trusted_key =
            (!sub.trusted_key.is_empty()).then(|| sub.trusted_key.expose().to_string());
        Ok(Self {
            gw,
            tls,
            hostname: settings.smtp.helo_name.clone(),
            trusted_networks: sub.trusted_networks.clone(),
            trusted_key,
            timeouts: Timeouts::default(),
            failures: AuthFailures::default(),
            bounce_domain: Some(settings.bounces.domain.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
        })
    }

    /// The local part of `address` when it is on the bounce domain.
    pub(crate) fn bounce_local_part<'a>(&self, address: &'a str) -> Option<&'a str> {
        let domain = self.bounce_domain.as_deref()?;
        let (local, at) = address.rsplit_once('@')?;
        at.eq_ignore_ascii_case(domain).then_some(local)
    }

    /// Whether `ip` may submit without AUTH (as `trusted_key`).
    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_key.is_some() && self.trusted_networks.iter().any(|n| n.contains(&ip))
    }
}

/// Which listener a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `submission.listen`: plain, STARTTLS offered.
    StartTls,
    /// `submission.tls_listen`: TLS from the first byte.
    ImplicitTls,
    /// `bounces.listen`: reports to the bounce domain from any sender, no AUTH; STARTTLS
    /// offered.
    Bounces,
}

impl Listener {
    /// The `listener` label of `postwire_smtp_in_sessions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::StartTls => "submission",
            Self::ImplicitTls => "submission_tls",
            Self::Bounces => "bounces",
        }
    }
}

/// Accepts sessions on `listener` until `shutdown` fires, then lets open sessions finish for
/// up to 30 s (a message being stored completes; idle sessions are told `421`).
pub async fn serve(
    sub: Arc<SmtpServer>,
    listener: TcpListener,
    kind: Listener,
    shutdown: CancellationToken,
) {
    let limits =
        crate::sessions::Limits { max: MAX_SESSIONS, grace: SHUTDOWN_GRACE, label: kind.label() };
    crate::sessions::accept(listener, limits, shutdown.clone(), |stream, peer, permit| {
        let (sub, shutdown) = (sub.clone(), shutdown.clone());
        async move {
            let result = match permit {
                Some(_permit) => session::run(&sub, stream, peer, kind, shutdown).await,
                None => {
                    session::refuse(stream, "421 4.3.2 Too many connections; try again later").await
                }
            };
            sub.gw.metrics.smtp_in_sessions.with_label_values(&[kind.label(), result]).inc();
        }
    })
    .await;
}

/// Failed AUTH attempts per client address: after [`MAX_AUTH_FAILURES`] the address is
/// refused for [`AUTH_LOCKOUT`], so a key cannot be guessed at line speed.
#[derive(Default)]
pub struct AuthFailures {
    by_ip: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Addresses remembered at most; the oldest are forgotten beyond it.
const MAX_REMEMBERED: usize = 10_000;

impl AuthFailures {
    /// Whether `ip` is refused right now.
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let map = self.by_ip.lock().expect("auth failures lock");
        map.get(&ip)
            .is_some_and(|(n, last)| *n >= MAX_AUTH_FAILURES && last.elapsed() < AUTH_LOCKOUT)
    }

    /// Counts one failure; true when this one locks the address out.
    pub fn record(&self, ip: IpAddr) -> bool {
        let mut map = self.by_ip.lock().expect("auth failures lock");
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, (_, last)| last.elapsed() < AUTH_LOCKOUT);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= AUTH_LOCKOUT {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.1 = Instant::now();
        entry.0 >= MAX_AUTH_FAILURES
    }

    /// A successful AUTH clears the address's count.
    pub fn clear(&self, ip: IpAddr) {
        self.by_ip.lock().expect("auth failures lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_five_failures_and_a_success_clears_it() {
        let failures = AuthFailures::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..4 {
            assert!(!failures.record(ip));
        }
        assert!(!failures.locked_out(ip));
        assert!(failures.record(ip), "the fifth failure locks the address out");
        assert!(failures.locked_out(ip));
        assert!(!failures.locked_out("192.0.2.8".parse().unwrap()), "other addresses are not");
        failures.clear(ip);
        assert!(!failures.locked_out(ip));
    }
}
