//! One SMTP session, from the greeting to QUIT, on a submission or the bounce listener.
//!
//! Commands are parsed by `smtp-proto`. Every complete line already received is answered
//! before the next read, so a client that pipelines (RFC 2920) MAIL, RCPT and DATA in one
//! packet gets its replies in order, and replies are flushed before any wait for input. After
//! STARTTLS, input the client sent before the handshake is thrown away (it could have been
//! injected in plain text) and the session starts over: EHLO again, AUTH again.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::data::{has_bare_line_ending, BodyError, DataReader};
use super::message::{submit, Envelope};
use super::{Listener, SmtpServer};
use crate::auth::{verify_key, ApiKey};
use crate::validate::EmailAddress;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 says 512; extensions add more).
const MAX_LINE: usize = 4096;

/// Unknown or out-of-order commands tolerated before the session is closed.
const MAX_ERRORS: u32 = 20;

/// How a session ended: the `result` label of `postwire_smtp_in_sessions_total`.
pub type End = &'static str;

/// Tells a client it cannot be served now and closes.
pub async fn refuse(mut stream: TcpStream, reply: &str) -> End {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        stream.write_all(format!("{reply}\r\n").as_bytes()),
    )
    .await;
    "refused"
}

/// Runs a session on a fresh connection.
pub async fn run(
    sub: &SmtpServer,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    shutdown: CancellationToken,
) -> End {
    if sub.failures.locked_out(peer.ip()) {
        return refuse(stream, "421 4.7.0 Too many failed authentications; try again later").await;
    }
    let mut state = State::new(peer, kind == Listener::Bounces);
    match kind {
        Listener::ImplicitTls => {
            let tls =
                match tokio::time::timeout(Duration::from_secs(30), sub.tls.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return "error",
                };
            state.tls = true;
            converse(sub, Conn::new(tls), &mut state, true, &shutdown).await.0
        }
        Listener::StartTls | Listener::Bounces => {
            let (end, plain) = converse(sub, Conn::new(stream), &mut state, true, &shutdown).await;
            let Some(plain) = plain else { return end };
            // STARTTLS: whatever the client sent in plain text after it is discarded.
            let tls = match tokio::time::timeout(Duration::from_secs(30), sub.tls.accept(plain.io))
                .await
            {
                Ok(Ok(tls)) => tls,
                _ => return "error",
            };
            state.restart_after_tls();
            converse(sub, Conn::new(tls), &mut state, false, &shutdown).await.0
        }
    }
}

/// The session's state across commands.
struct State {
    peer: SocketAddr,
    /// On the bounce listener: no AUTH, mail only for the bounce domain.
    bounces: bool,
    tls: bool,
    greeted: bool,
    key: Option<ApiKey>,
    mail: bool,
    envelope: Envelope,
    /// BDAT chunks so far, and whether one already went over the size limit.
    chunks: Option<(Vec<u8>, bool)>,
    errors: u32,
}

impl State {
    fn new(peer: SocketAddr, bounces: bool) -> Self {
        Self {
            peer,
            bounces,
            tls: false,
            greeted: false,
            key: None,
            mail: false,
            envelope: Envelope::default(),
            chunks: None,
            errors: 0,
        }
    }

    fn reset(&mut self) {
        self.mail = false;
        self.envelope = Envelope::default();
        self.chunks = None;
    }

    fn restart_after_tls(&mut self) {
        self.reset();
        self.tls = true;
        self.greeted = false;
        self.key = None;
    }

    /// AUTH is offered under TLS, or to a client on this machine; never for bounces.
    fn may_auth(&self) -> bool {
        !self.bounces && (self.tls || self.peer.ip().is_loopback())
    }
}

/// A connection with its input buffer and pending replies.
struct Conn<S> {
    io: S,
    input: Vec<u8>,
    output: Vec<u8>,
}

enum Read {
    Data,
    Closed,
    TimedOut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Self {
        Self { io, input: Vec::with_capacity(4096), output: Vec::with_capacity(1024) }
    }

    fn reply(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            let out = std::mem::take(&mut self.output);
            tokio::time::timeout(Duration::from_secs(60), self.io.write_all(&out))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??;
            self.io.flush().await?;
            self.output = out;
            self.output.clear();
        }
        Ok(())
    }

    /// Flushes the replies, then waits up to `timeout` for more input.
    async fn fill(&mut self, timeout: Duration) -> Read {
        if self.flush().await.is_err() {
            return Read::Closed;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(timeout, self.io.read(&mut chunk)).await {
            Err(_) => Read::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
            Ok(Ok(n)) => {
                self.input.extend_from_slice(&chunk[..n]);
                Read::Data
            }
        }
    }

    /// The next complete line (with its LF), if one is buffered; `Err` when a line is longer
    /// than [`MAX_LINE`].
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, ()> {
        match self.input.iter().position(|&b| b == b'\n') {
            Some(i) if i < MAX_LINE => Ok(Some(self.input.drain(..=i).collect())),
            Some(_) => Err(()),
            None if self.input.len() >= MAX_LINE => Err(()),
            None => Ok(None),
        }
    }

    /// The next line, reading as needed.
    async fn line(&mut self, timeout: Duration) -> Result<Vec<u8>, End> {
        loop {
            match self.take_line() {
                Ok(Some(line)) => return Ok(line),
                Err(()) => {
                    self.reply("500 5.5.2 Line too long");
                    let _ = self.flush().await;
                    return Err("error");
                }
                Ok(None) => self.fill_or_end(timeout).await?,
            }
        }
    }

    /// [`fill`](Self::fill), the session's end when nothing came: closed, or timed out (and
    /// told so).
    async fn fill_or_end(&mut self, timeout: Duration) -> Result<(), End> {
        match self.fill(timeout).await {
            Read::Data => Ok(()),
            Read::Closed => Err("closed"),
            Read::TimedOut => Err(self.timed_out().await),
        }
    }

    async fn timed_out(&mut self) -> End {
        self.reply("421 4.4.2 Timeout; closing the connection");
        let _ = self.flush().await;
        "timeout"
    }
}

/// Speaks SMTP on `conn` until the session ends, or until STARTTLS, when the plain connection
/// is handed back for the handshake.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    sub: &SmtpServer,
    mut conn: Conn<S>,
    state: &mut State,
    greet: bool,
    shutdown: &CancellationToken,
) -> (End, Option<Conn<S>>) {
    if greet {
        conn.reply(&format!("220 {} ESMTP Postwire", sub.hostname));
    }
    loop {
        if shutdown.is_cancelled() {
            conn.reply("421 4.3.2 Service shutting down; try again later");
            let _ = conn.flush().await;
            return ("closed", None);
        }
        let line = tokio::select! {
            line = conn.line(sub.timeouts.command) => line,
            _ = shutdown.cancelled(), if conn.input.is_empty() => continue,
        };
        let line = match line {
            Ok(line) => line,
            Err(end) => return (end, None),
        };
        match step(sub, &mut conn, state, &line).await {
            Step::Next => {}
            Step::End(end) => {
                let _ = conn.flush().await;
                return (end, None);
            }
            Step::StartTls => {
                if conn.flush().await.is_err() {
                    return ("closed", None);
                }
                conn.input.clear();
                return ("quit", Some(conn));
            }
        }
        if state.errors >= MAX_ERRORS {
            conn.reply("421 4.7.0 Too many errors; closing the connection");
            let _ = conn.flush().await;
            return ("error", None);
        }
    }
}

enum Step {
    Next,
    End(End),
    StartTls,
}

/// Answers one command line.
async fn step<S: AsyncRead + AsyncWrite + Unpin>(
    sub: &SmtpServer,
    conn: &mut Conn<S>,
    state: &mut State,
    line: &[u8],
) -> Step {
    let request = match Request::parse(&mut line.iter()) {
        Ok(r) => r,
        Err(e) => {
            state.errors += 1;
            conn.reply(&parse_error(&e));
            return Step::Next;
        }
    };
    let max_size = sub.gw.limits.max_message_size.0;
    match request {
        Request::Ehlo { host } => {
            state.reset();
            state.greeted = true;
            let mut lines = vec![format!("{} greets {host}", sub.hostname)];
            lines.push(format!("SIZE {max_size}"));
            lines.extend(
                ["PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"]
                    .map(String::from),
            );
            if !state.tls {
                lines.push("STARTTLS".into());
            }
            if state.may_auth() && state.key.is_none() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            let last = lines.len() - 1;
            for (i, l) in lines.iter().enumerate() {
                conn.reply(&format!("250{}{l}", if i == last { ' ' } else { '-' }));
            }
        }
        Request::Helo { host } | Request::Lhlo { host } => {
            state.reset();
            state.greeted = true;
            conn.reply(&format!("250 {} greets {host}", sub.hostname));
        }
        Request::StartTls if state.tls => {
            state.errors += 1;
            conn.reply("503 5.5.1 TLS is already active");
        }
        Request::StartTls => {
            conn.reply("220 2.0.0 Ready to start TLS");
            return Step::StartTls;
        }
        Request::Auth { .. } if state.bounces => {
            state.errors += 1;
            conn.reply("503 5.5.1 AUTH is not offered here");
        }
        Request::Auth { mechanism, initial_response } => {
            return auth(sub, conn, state, mechanism, initial_response.to_string()).await;
        }
        Request::Mail { .. } if !state.greeted => {
            state.errors += 1;
            conn.reply("503 5.5.1 Send EHLO first");
        }
        Request::Mail { .. } if state.mail => {
            state.errors += 1;
            conn.reply("503 5.5.1 A transaction is already open; RSET first");
        }
        Request::Mail { from } => {
            if !state.bounces && state.key.is_none() {
                match trusted_key(sub, state).await {
                    Some(key) => state.key = Some(key),
                    None => {
                        conn.reply("530 5.7.0 Authentication required");
                        return Step::Next;
                    }
                }
            }
            if from.size > 0 && from.size as u64 > max_size {
                conn.reply(&format!(
                    "552 5.3.4 Message size exceeds the limit of {max_size} bytes"
                ));
                return Step::Next;
            }
            state.mail = true;
            conn.reply("250 2.1.0 Sender ok");
        }
        Request::Rcpt { .. } if !state.mail => {
            state.errors += 1;
            conn.reply("503 5.5.1 MAIL first");
        }
        Request::Rcpt { to } => {
            if state.envelope.recipients.len() >= sub.gw.limits.max_recipients {
                conn.reply(&format!(
                    "452 4.5.3 Too many recipients (at most {} per message)",
                    sub.gw.limits.max_recipients
                ));
                return Step::Next;
            }
            if state.bounces {
                if sub.bounce_local_part(&to.address).is_some_and(|l| !l.is_empty()) {
                    state.envelope.recipients.push(to.address.to_string());
                    conn.reply("250 2.1.5 Recipient ok");
                } else {
                    conn.reply(&format!(
                        "550 5.7.1 Relaying denied: only mail for {} is accepted here",
                        sub.bounce_domain.as_deref().unwrap_or("the bounce domain")
                    ));
                }
                return Step::Next;
            }
            match EmailAddress::parse(&to.address) {
                Ok(address) => {
                    state.envelope.recipients.push(address.as_str().to_string());
                    conn.reply("250 2.1.5 Recipient ok");
                }
                Err(e) => conn.reply(&format!("553 5.1.3 {e}")),
            }
        }
        Request::Data => {
            if !state.mail || state.envelope.recipients.is_empty() {
                state.errors += 1;
                conn.reply(if state.mail {
                    "554 5.5.1 No valid recipients"
                } else {
                    "503 5.5.1 MAIL first"
                });
                return Step::Next;
            }
            conn.reply("354 End data with <CR><LF>.<CR><LF>");
            let body = match read_data(sub, conn, max_size).await {
                Ok(body) => body,
                Err(end) => return Step::End(end),
            };
            let reply = match body {
                Ok(text) => submit_for(sub, state, text).await,
                Err(e) => body_refusal(e, max_size),
            };
            conn.reply(&reply);
            state.reset();
        }
        Request::Bdat { chunk_size, is_last } => {
            let chunk = match read_exact(sub, conn, chunk_size).await {
                Ok(chunk) => chunk,
                Err(end) => return Step::End(end),
            };
            if !state.mail || state.envelope.recipients.is_empty() {
                state.errors += 1;
                conn.reply("503 5.5.1 MAIL and RCPT first");
                return Step::Next;
            }
            let (text, over) = state.chunks.get_or_insert_with(|| (Vec::new(), false));
            match chunk {
                Some(chunk) if !*over && (text.len() + chunk.len()) as u64 <= max_size => {
                    text.extend_from_slice(&chunk);
                }
                _ => {
                    *over = true;
                    *text = Vec::new();
                }
            }
            if !is_last {
                conn.reply(&format!("250 2.0.0 {chunk_size} octets received"));
                return Step::Next;
            }
            let (text, over) = state.chunks.take().unwrap_or_default();
            let reply = if over {
                body_refusal(BodyError::TooBig, max_size)
            } else if has_bare_line_ending(&text) {
                body_refusal(BodyError::BareLineEnding, max_size)
            } else {
                submit_for(sub, state, text).await
            };
            conn.reply(&reply);
            state.reset();
        }
        Request::Rset => {
            state.reset();
            conn.reply("250 2.0.0 Ok");
        }
        Request::Noop { .. } => conn.reply("250 2.0.0 Ok"),
        Request::Vrfy { .. } | Request::Expn { .. } => {
            conn.reply("252 2.5.0 Cannot verify addresses; send the message and it will be tried")
        }
        Request::Help { .. } => conn.reply("214 2.0.0 See https://www.rfc-editor.org/rfc/rfc6409"),
        Request::Quit => {
            conn.reply("221 2.0.0 Bye");
            return Step::End("quit");
        }
        Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
            state.errors += 1;
            conn.reply("502 5.5.1 Command not implemented");
        }
    }
    Step::Next
}

/// The key a trusted network submits as, when the client is in one.
async fn trusted_key(sub: &SmtpServer, state: &State) -> Option<ApiKey> {
    if !sub.is_trusted(state.peer.ip()) {
        return None;
    }
    let presented = sub.trusted_key.as_deref()?;
    match verify_key(&sub.gw, presented).await {
        Ok(key) if key.require("send").is_ok() => Some(key),
        _ => {
            tracing::warn!("submission.trusted_key is not a valid API key with the send scope");
            None
        }
    }
}

async fn submit_for(sub: &SmtpServer, state: &State, text: Vec<u8>) -> String {
    if state.bounces {
        return super::bounces::receive(sub, &state.envelope.recipients, &text).await;
    }
    match &state.key {
        Some(key) => submit(&sub.gw, key, &state.envelope, text).await,
        None => "530 5.7.0 Authentication required".into(),
    }
}

fn body_refusal(e: BodyError, max_size: u64) -> String {
    match e {
        BodyError::TooBig => {
            format!("552 5.3.4 Message size exceeds the limit of {max_size} bytes")
        }
        BodyError::BareLineEnding => "554 5.6.0 Message refused: a line ends with a bare LF or \
             bare CR; every line must end with CRLF"
            .into(),
    }
}

/// Reads a DATA body. The outer `Err` ends the session (closed or timed out).
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    sub: &SmtpServer,
    conn: &mut Conn<S>,
    max: u64,
) -> Result<Result<Vec<u8>, BodyError>, End> {
    let mut reader = DataReader::new(usize::try_from(max).unwrap_or(usize::MAX));
    loop {
        let (used, done) = reader.feed(&conn.input);
        conn.input.drain(..used);
        if done {
            return Ok(reader.finish());
        }
        conn.fill_or_end(sub.timeouts.data).await?;
    }
}

/// Reads exactly `n` bytes of a BDAT chunk; `None` when `n` is over the size limit (the
/// bytes are read and dropped, never held).
async fn read_exact<S: AsyncRead + AsyncWrite + Unpin>(
    sub: &SmtpServer,
    conn: &mut Conn<S>,
    n: usize,
) -> Result<Option<Vec<u8>>, End> {
    let keep = (n as u64) <= sub.gw.limits.max_message_size.0;
    let mut chunk = Vec::with_capacity(if keep { n.min(1 << 20) } else { 0 });
    let mut left = n;
    loop {
        let take = left.min(conn.input.len());
        if keep {
            chunk.extend_from_slice(&conn.input[..take]);
        }
        conn.input.drain(..take);
        left -= take;
        if left == 0 {
            return Ok(keep.then_some(chunk));
        }
        conn.fill_or_end(sub.timeouts.data).await?;
    }
}

/// AUTH PLAIN / LOGIN with an API key as the password.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    sub: &SmtpServer,
    conn: &mut Conn<S>,
    state: &mut State,
    mechanism: u64,
    initial: String,
) -> Step {
    if state.key.is_some() {
        conn.reply("503 5.5.1 Already authenticated");
        return Step::Next;
    }
    if !state.may_auth() {
        conn.reply("538 5.7.11 Encryption required: STARTTLS first");
        return Step::Next;
    }
    if state.mail {
        conn.reply("503 5.5.1 AUTH is not allowed during a transaction");
        return Step::Next;
    }
    let timeout = sub.timeouts.command;
    let password = match mechanism {
        AUTH_PLAIN => {
            let response = if initial.is_empty() {
                conn.reply("334 ");
                match conn.line(timeout).await {
                    Ok(l) => trim_line(&l),
                    Err(end) => return Step::End(end),
                }
            } else {
                initial
            };
            decode(&response).and_then(|plain| {
                // authzid NUL authcid NUL passwd
                plain.split('\0').nth(2).map(String::from)
            })
        }
        AUTH_LOGIN => {
            let user = if initial.is_empty() {
                conn.reply("334 VXNlcm5hbWU6");
                match conn.line(timeout).await {
                    Ok(l) => trim_line(&l),
                    Err(end) => return Step::End(end),
                }
            } else {
                initial
            };
            if user == "*" {
                conn.reply("501 5.0.0 Authentication canceled");
                return Step::Next;
            }
            conn.reply("334 UGFzc3dvcmQ6");
            match conn.line(timeout).await {
                Ok(l) => decode(&trim_line(&l)),
                Err(end) => return Step::End(end),
            }
        }
        _ => {
            conn.reply("504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN");
            return Step::Next;
        }
    };
    let Some(password) = password else {
        conn.reply("501 5.5.2 Cannot decode the response (base64 expected)");
        return Step::Next;
    };
    match verify_key(&sub.gw, password.trim()).await {
        Ok(key) if key.require("send").is_ok() => {
            sub.failures.clear(state.peer.ip());
            state.key = Some(key);
            conn.reply("235 2.7.0 Authentication successful");
            Step::Next
        }
        Err(crate::error::ApiError::Unavailable(_)) => {
            conn.reply("454 4.7.0 Temporary authentication failure; try again");
            Step::Next
        }
        _ => {
            if sub.failures.record(state.peer.ip()) {
                conn.reply("421 4.7.0 Too many failed authentications; try again later");
                return Step::End("refused");
            }
            conn.reply("535 5.7.8 Authentication credentials invalid");
            Step::Next
        }
    }
}

fn trim_line(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end_matches(['\r', '\n']).trim().to_string()
}

fn decode(b64: &str) -> Option<String> {
    if b64 == "*" {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

fn parse_error(e: &smtp_proto::Error) -> String {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => "500 5.5.2 Command unrecognized".into(),
        Error::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".into(),
        Error::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax".into(),
        Error::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
        Error::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}"),
        Error::UnsupportedParameter { param } => {
            format!("555 5.5.4 Unsupported parameter {}", param.escape_debug())
        }
        _ => "500 5.5.2 Syntax error".into(),
    }
}
