//! One SMTP session with one MX address, on lettre's low-level [`AsyncSmtpConnection`].
//!
//! lettre's `send` stops at the first refused RCPT; an MTA must record every recipient's reply,
//! so the transaction is driven command by command here: MAIL FROM, one RCPT per recipient
//! (2xx accepted, 4xx deferred, 5xx bounced, full reply kept), DATA only when someone was
//! accepted, and the final reply applied to every accepted recipient. Several transactions (one
//! per recipient when the body is personalised for tracking) share the connection, with RSET
//! after an aborted one.
//!
//! TLS: STARTTLS whenever offered unless `smtp.tls = "disabled"`, without certificate checks
//! (MX hosts commonly present self-signed certificates, and opportunistic TLS only defends
//! against passive eavesdropping anyway). lettre turns a failed handshake into a dead
//! connection, so in opportunistic mode the host is dialled again in plain text; in required mode
//! a missing or failed STARTTLS fails the session.
//!
//! Sessions are opened and reused by [`crate::pool`]; this module holds the protocol steps:
//! `open`, `run_transactions`, `reset` before a reuse, `quit`.
//!
//! Every step runs under its own timeout (RFC 5321 §4.5.3.2): `connect_timeout` for TCP connect
//! and greeting+EHLO, `command_timeout` for each command, `data_timeout` for the final reply.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, CertificateStore, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::Address;
use postwire_config::{Smtp, TlsMode};

/// An SMTP reply: `550 5.1.1 no such user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Everything after the code, lines joined by spaces (enhanced status code included).
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

impl Reply {
    fn from_response(r: &Response) -> Self {
        let code = r.code().to_string().parse().unwrap_or(0);
        Self { code, text: r.message().collect::<Vec<_>>().join(" ").trim().to_owned() }
    }
}

/// The protocol step a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    StartTls,
    MailFrom,
    RcptTo,
    Data,
    /// Sending the message and waiting for the reply to the final ".".
    DataEnd,
    Rset,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "greeting",
            Stage::StartTls => "STARTTLS",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
        })
    }
}

/// A failure of the session as a whole (per-recipient replies are [`Answer`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TCP connect failed (refused, unreachable).
    #[error("connection to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    /// The greeting or the EHLO reply was negative.
    #[error("{reply}")]
    Greeting { reply: Reply },
    /// `smtp.tls = "required"` and the host does not offer STARTTLS.
    #[error("{host} does not offer STARTTLS, which smtp.tls = \"required\" demands")]
    TlsUnavailable { host: String },
    /// STARTTLS was refused or the handshake failed.
    #[error("TLS handshake with {host} failed: {reason}")]
    TlsHandshake { host: String, reason: String },
    /// No reply within the configured timeout.
    #[error("timed out waiting for the {stage} reply")]
    Timeout { stage: Stage },
    /// The connection closed, or the peer sent something that is not SMTP.
    #[error("connection lost during {stage}: {reason}")]
    ConnectionLost { stage: Stage, reason: String },
    /// MAIL FROM refused: applies to every recipient of the session.
    #[error("{reply}")]
    MailFrom { reply: Reply },
    /// The envelope sender is not an address lettre accepts.
    #[error("invalid envelope sender {address:?}")]
    BadSender { address: String },
}

/// How a host answered for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted and the message was taken (the DATA reply).
    Delivered(Reply),
    /// RCPT TO refused (or refused by us before sending, e.g. a malformed address).
    RcptRejected(Reply),
    /// Accepted at RCPT but the message was refused (DATA or end-of-data reply).
    DataRejected(Reply),
    /// Not sent: the host lacks an extension the message cannot do without (SMTPUTF8 for a
    /// UTF-8 address). Our own reply; it bounces, but says nothing against the address.
    Unsendable(Reply),
}

/// One SMTP transaction's worth of work.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// The envelope sender (MAIL FROM): the From address, or the copy's VERP return path.
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// CRLF-only message bytes.
    pub message: &'a [u8],
}

/// What one session achieved.
#[derive(Debug, Default)]
pub struct HostAttempt {
    /// Final answers, in the order they came.
    pub answers: Vec<(String, Answer)>,
    /// Set when the session broke off; recipients without an answer were not decided.
    pub failure: Option<SessionError>,
    /// Recipients accepted in the transaction that broke off: their fate is unknown.
    pub in_doubt: Vec<String>,
    /// Whether the session ran over TLS.
    pub encrypted: bool,
}

/// SMTP client settings, from `smtp.*`.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    pub helo: ClientId,
    pub port: u16,
    pub tls: TlsMode,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

impl SmtpOptions {
    /// `None` when `helo_name` is empty or contains whitespace.
    pub fn from_settings(smtp: &Smtp) -> Option<Self> {
        let name = smtp.helo_name.trim();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let helo = match name.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
            Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
            Err(_) => ClientId::Domain(name.to_owned()),
        };
        Some(Self {
            helo,
            port: smtp.port,
            tls: smtp.tls,
            connect_timeout: smtp.connect_timeout.std(),
            command_timeout: smtp.command_timeout.std(),
            data_timeout: smtp.data_timeout.std(),
        })
    }
}

/// A step's failure before it is placed in a stage.
enum StepError {
    Reply(Reply),
    Timeout,
    Lost(String),
}

impl StepError {
    fn in_stage(self, stage: Stage) -> SessionError {
        match self {
            // A negative reply where the session cannot go on (e.g. RSET refused).
            StepError::Reply(reply) => {
                SessionError::ConnectionLost { stage, reason: reply.to_string() }
            }
            StepError::Timeout => SessionError::Timeout { stage },
            StepError::Lost(reason) => SessionError::ConnectionLost { stage, reason },
        }
    }
}

fn classify(e: lettre::transport::smtp::Error) -> StepError {
    match e.status() {
        Some(code) => StepError::Reply(Reply {
            code: code.to_string().parse().unwrap_or(0),
            text: std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }),
        None => StepError::Lost(e.to_string()),
    }
}

async fn step<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(StepError::Timeout),
    }
}

/// Runs `transactions` one after another on an open connection, recording each recipient's
/// answer in `attempt`. `Err` when the session broke off: the connection must not be used again.
/// On `Ok` the connection is between transactions (possibly after an aborted one, which the next
/// user resets with `reset`).
pub(crate) async fn run_transactions(
    conn: &mut AsyncSmtpConnection,
    opts: &SmtpOptions,
    transactions: &[Transaction<'_>],
    attempt: &mut HostAttempt,
) -> Result<(), SessionError> {
    let mut need_rset = false;
    for tx in transactions {
        if need_rset {
            step(opts.command_timeout, conn.command(Rset))
                .await
                .map_err(|e| e.in_stage(Stage::Rset))?;
        }
        need_rset = !transaction(conn, opts, tx, attempt).await?;
    }
    Ok(())
}

/// RSET on a connection that waited idle: clears any state a previous transaction left and
/// proves the peer is still there. False when the connection is no longer usable.
pub(crate) async fn reset(conn: &mut AsyncSmtpConnection, limit: Duration) -> bool {
    step(limit, conn.command(Rset)).await.is_ok()
}

/// QUIT, waiting at most `limit` for the reply, then closes the connection.
pub(crate) async fn quit(mut conn: AsyncSmtpConnection, limit: Duration) {
    let _ = tokio::time::timeout(limit, conn.command(Quit)).await;
}

/// Connects, reads the greeting, EHLOs and negotiates STARTTLS as `opts.tls` says.
pub(crate) async fn open(
    opts: &SmtpOptions,
    addr: SocketAddr,
    host: &str,
) -> Result<AsyncSmtpConnection, SessionError> {
    let mut conn = connect_plain(opts, addr).await?;
    if opts.tls == TlsMode::Disabled {
        return Ok(conn);
    }
    if !conn.can_starttls() {
        if opts.tls == TlsMode::Required {
            let _ = tokio::time::timeout(opts.command_timeout, conn.command(Quit)).await;
            return Err(SessionError::TlsUnavailable { host: host.into() });
        }
        return Ok(conn);
    }
    let reason = match starttls(opts, &mut conn, host).await {
        Ok(()) => return Ok(conn),
        Err(reason) => reason,
    };
    drop(conn);
    if opts.tls == TlsMode::Required {
        return Err(SessionError::TlsHandshake { host: host.into(), reason });
    }
    tracing::info!(%addr, host, %reason, "STARTTLS failed; delivering in plain text");
    connect_plain(opts, addr).await
}

async fn starttls(
    opts: &SmtpOptions,
    conn: &mut AsyncSmtpConnection,
    host: &str,
) -> Result<(), String> {
    // Certificates are not checked, so skip loading the system roots on every handshake.
    let params = TlsParameters::builder(host.to_owned())
        .certificate_store(CertificateStore::None)
        .dangerous_accept_invalid_certs(true)
        .dangerous_accept_invalid_hostnames(true)
        .build()
        .map_err(|e| e.to_string())?;
    match step(opts.command_timeout, conn.starttls(params, &opts.helo)).await {
        Ok(()) => Ok(()),
        Err(StepError::Reply(r)) => Err(format!("STARTTLS refused: {r}")),
        Err(StepError::Timeout) => Err("timed out".into()),
        Err(StepError::Lost(reason)) => Err(reason),
    }
}

async fn connect_plain(
    opts: &SmtpOptions,
    addr: SocketAddr,
) -> Result<AsyncSmtpConnection, SessionError> {
    let tcp = match tokio::time::timeout(opts.connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => return Err(SessionError::Connect { addr, source }),
        Err(_) => return Err(SessionError::ConnectTimeout { addr }),
    };
    // lettre writes the message and its final "." in two writes; with Nagle on, the "." would
    // wait for the peer's (delayed) ACK of the body — up to 40 ms per message on a reused
    // connection.
    let _ = tcp.set_nodelay(true);
    step(
        opts.connect_timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &opts.helo),
    )
    .await
    .map_err(|e| match e {
        StepError::Reply(reply) => SessionError::Greeting { reply },
        other => other.in_stage(Stage::Greeting),
    })
}

/// One MAIL/RCPT/DATA transaction. `Ok(true)` when it ran to the end of DATA (no RSET needed).
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    opts: &SmtpOptions,
    tx: &Transaction<'_>,
    attempt: &mut HostAttempt,
) -> Result<bool, SessionError> {
    let sender = tx.sender;
    // The envelope carries A-label domains (RFC 5891 §4.2): only a UTF-8 local part, or UTF-8
    // in the header (RFC 6532), makes the transaction need SMTPUTF8.
    let envelope_sender = postwire_address::envelope(sender);
    let from: Address =
        envelope_sender.parse().map_err(|_| SessionError::BadSender { address: sender.into() })?;
    let info = conn.server_info();
    let mut params = Vec::new();
    if !tx.message.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let utf8_address = std::iter::once(sender)
        .chain(tx.recipients.iter().map(String::as_str))
        .find(|a| postwire_address::needs_smtputf8(a));
    let utf8_header = !header_block(tx.message).is_ascii();
    if utf8_address.is_some() || utf8_header {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            // RFC 6531 §3.2: without the extension a UTF-8 address cannot be sent at all, and
            // no downgrade is attempted (never a mangled address). Nothing is sent.
            let why = match utf8_address {
                Some(address) => format!("the address {address} has a UTF-8 local part"),
                None => "the message has UTF-8 header fields (RFC 6532)".into(),
            };
            let reply = Reply {
                code: 553,
                text: format!(
                    "5.6.7 not sent: the MX {} does not offer SMTPUTF8 (RFC 6531), and {why}",
                    info.name()
                ),
            };
            for r in tx.recipients {
                attempt.answers.push((r.clone(), Answer::Unsendable(reply.clone())));
            }
            return Ok(true);
        }
        params.push(MailParameter::SmtpUtfEight);
    }

    match step(opts.command_timeout, conn.command(Mail::new(Some(from), params))).await {
        Ok(_) => {}
        Err(StepError::Reply(reply)) => return Err(SessionError::MailFrom { reply }),
        Err(e) => return Err(e.in_stage(Stage::MailFrom)),
    }

    let mut accepted: Vec<&String> = Vec::new();
    for rcpt in tx.recipients {
        let Ok(address) = postwire_address::envelope(rcpt).parse::<Address>() else {
            let reply = Reply { code: 553, text: "5.1.3 invalid recipient address".into() };
            attempt.answers.push((rcpt.clone(), Answer::RcptRejected(reply)));
            continue;
        };
        match step(opts.command_timeout, conn.command(Rcpt::new(address, vec![]))).await {
            Ok(_) => accepted.push(rcpt),
            Err(StepError::Reply(reply)) => {
                attempt.answers.push((rcpt.clone(), Answer::RcptRejected(reply)))
            }
            Err(e) => {
                attempt.in_doubt = accepted.into_iter().cloned().collect();
                return Err(e.in_stage(Stage::RcptTo));
            }
        }
    }
    if accepted.is_empty() {
        return Ok(false);
    }

    match step(opts.command_timeout, conn.command(Data)).await {
        Ok(_) => {}
        Err(StepError::Reply(reply)) => {
            for r in accepted {
                attempt.answers.push((r.clone(), Answer::DataRejected(reply.clone())));
            }
            return Ok(false);
        }
        Err(e) => {
            attempt.in_doubt = accepted.into_iter().cloned().collect();
            return Err(e.in_stage(Stage::Data));
        }
    }
    // lettre appends "\r\n.\r\n" itself; a message already ending in CRLF would otherwise gain
    // an empty line.
    let body = tx.message.strip_suffix(b"\r\n").unwrap_or(tx.message);
    match step(opts.data_timeout, conn.message(body)).await {
        Ok(resp) => {
            let reply = Reply::from_response(&resp);
            for r in accepted {
                attempt.answers.push((r.clone(), Answer::Delivered(reply.clone())));
            }
            Ok(true)
        }
        Err(StepError::Reply(reply)) => {
            for r in accepted {
                attempt.answers.push((r.clone(), Answer::DataRejected(reply.clone())));
            }
            Ok(true)
        }
        Err(e) => {
            attempt.in_doubt = accepted.into_iter().cloned().collect();
            Err(e.in_stage(Stage::DataEnd))
        }
    }
}

/// The header section of a CRLF message: everything before the first empty line.
fn header_block(message: &[u8]) -> &[u8] {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    &message[..end]
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
