//! A scriptable SMTP server that plays a recipient's MX host on loopback.
//!
//! [`SmtpServer::start`] binds `ip:port` (tests give each MX host its own `127.0.0.x` with one
//! shared port from [`pick_free_port`], because the MTA dials every MX on the same port). The
//! [`Script`] decides the greeting, whether STARTTLS is offered (with a fresh self-signed
//! certificate) or offered and then broken, whether SMTPUTF8 is offered, each RCPT reply, and
//! the reply to the end of DATA. Like a real MX (RFC 6531 §3.4), it refuses a UTF-8 address in
//! a transaction that did not ask for `SMTPUTF8`.
//! The server records what a real MX would have seen: one [`Received`] per accepted message,
//! the connection count, every command line, and whether a bare LF ever appeared in DATA.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;

/// Decides the reply to `RCPT TO:<address>`; `nth` counts, from 1, how many times this server
/// has seen that address (case-insensitively), across connections.
pub type RcptReply = Arc<dyn Fn(&str, u32) -> (u16, String) + Send + Sync>;

/// Decides the reply to the end of DATA; `nth` counts, from 1, the messages this server has
/// received data for, across connections.
pub type DataReply = Arc<dyn Fn(u32) -> (u16, String) + Send + Sync>;

/// How the server behaves. `Script::default()` is a plain, accepting MX without STARTTLS.
#[derive(Clone)]
pub struct Script {
    hostname: String,
    greeting: (u16, String),
    drop_after_greeting: bool,
    starttls: bool,
    broken_tls: bool,
    smtputf8: bool,
    rcpt_reply: RcptReply,
    data_reply: DataReply,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            hostname: "mx.postwire.test".into(),
            greeting: (220, "ESMTP postwire-e2e ready".into()),
            drop_after_greeting: false,
            starttls: false,
            broken_tls: false,
            smtputf8: false,
            rcpt_reply: Arc::new(|_, _| (250, "2.1.5 Recipient ok".into())),
            data_reply: Arc::new(|_| (250, "2.0.0 Queued".into())),
        }
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("hostname", &self.hostname)
            .field("greeting", &self.greeting)
            .field("drop_after_greeting", &self.drop_after_greeting)
            .field("starttls", &self.starttls)
            .field("broken_tls", &self.broken_tls)
            .field("smtputf8", &self.smtputf8)
            .finish_non_exhaustive()
    }
}

impl Script {
    /// The name the server gives in its greeting, EHLO reply and certificate.
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }

    /// The greeting reply. A 421 greeting closes the connection at once; any other non-220
    /// (e.g. 554) answers 503 to everything but QUIT, as RFC 5321 §3.1 asks.
    pub fn greeting(mut self, code: u16, text: &str) -> Self {
        self.greeting = (code, text.into());
        self
    }

    /// Send the greeting, then close the connection without reading anything.
    pub fn drop_after_greeting(mut self) -> Self {
        self.drop_after_greeting = true;
        self
    }

    /// Advertise STARTTLS and complete the handshake with a self-signed certificate (RFC 3207).
    pub fn starttls(mut self) -> Self {
        self.starttls = true;
        self
    }

    /// Advertise STARTTLS and answer 220 to it, then send garbage and close, so the client's
    /// handshake fails.
    pub fn broken_tls(mut self) -> Self {
        self.starttls = true;
        self.broken_tls = true;
        self
    }

    /// Advertise SMTPUTF8 (RFC 6531): UTF-8 addresses are then accepted in a transaction whose
    /// `MAIL FROM` carries the `SMTPUTF8` parameter.
    pub fn smtputf8(mut self) -> Self {
        self.smtputf8 = true;
        self
    }

    /// Script each RCPT reply, e.g. `|addr, nth| if nth == 1 { (451, "4.7.1 try later".into()) }
    /// else { (250, "2.1.5 ok".into()) }`.
    pub fn rcpt_reply(
        mut self,
        f: impl Fn(&str, u32) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        self.rcpt_reply = Arc::new(f);
        self
    }

    /// The same reply to the end of every DATA.
    pub fn data_reply(self, code: u16, text: &str) -> Self {
        let text = text.to_owned();
        self.data_reply_fn(move |_| (code, text.clone()))
    }

    /// Script the reply to the end of DATA per message.
    pub fn data_reply_fn(
        mut self,
        f: impl Fn(u32) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        self.data_reply = Arc::new(f);
        self
    }
}

/// One message the server accepted (a 2xx reply to the end of DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The reverse-path from `MAIL FROM:<...>`, without brackets; empty for the null path.
    pub mail_from: String,
    /// The `MAIL FROM` parameters after the path, as sent (e.g. `BODY=8BITMIME`, `SMTPUTF8`).
    pub mail_params: Vec<String>,
    /// The recipients whose RCPT got a 2xx reply, in order.
    pub rcpt_to: Vec<String>,
    /// The message as received, with the CRLF.CRLF terminator removed and dot-stuffing undone.
    pub data: Vec<u8>,
    /// Whether the transaction ran inside TLS.
    pub tls: bool,
    /// The name given in the EHLO (or HELO) of this session.
    pub helo: String,
    /// Which connection (counted from 1) carried the message: equal values mean reuse.
    pub connection: u32,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    connections: u32,
    rcpt_seen: HashMap<String, u32>,
    data_seen: u32,
    bare_lf: bool,
    commands: Vec<String>,
}

struct Shared {
    script: Script,
    tls: Option<TlsAcceptor>,
    certificate: Option<CertificateDer<'static>>,
    state: Mutex<State>,
    /// The number of received messages, for [`SmtpServer::wait_for_messages`].
    count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A running scripted SMTP server. Stops (with every open session) when dropped.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// A port free on `127.0.0.1` right now, to bind several [`SmtpServer`]s on `127.0.0.x`.
///
/// # Panics
/// If no ephemeral port can be bound.
pub fn pick_free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

impl SmtpServer {
    /// Binds `ip:port` and starts serving `script`. Port 0 picks a free port (see
    /// [`SmtpServer::addr`]).
    pub async fn start(ip: Ipv4Addr, port: u16, script: Script) -> anyhow::Result<SmtpServer> {
        let (tls, certificate) = if script.starttls {
            let (acceptor, cert) = tls_acceptor(&script.hostname)?;
            (Some(acceptor), Some(cert))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind((ip, port))
            .await
            .with_context(|| format!("bind SMTP server on {ip}:{port}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script,
            tls,
            certificate,
            state: Mutex::new(State::default()),
            count: watch::Sender::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(SmtpServer { addr, shared, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The self-signed certificate served after STARTTLS (when the script offers it), for a
    /// client that wants to trust it.
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.shared.certificate.clone()
    }

    /// Every message accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// How many TCP connections have been accepted.
    pub fn connections(&self) -> u32 {
        self.shared.lock().connections
    }

    /// How many times `RCPT TO` named `address` (case-insensitively).
    pub fn rcpt_attempts(&self, address: &str) -> u32 {
        let key = address.to_ascii_lowercase();
        self.shared.lock().rcpt_seen.get(&key).copied().unwrap_or(0)
    }

    /// Every command line received (outside DATA), across connections, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// Whether a bare LF (0x0A not preceded by 0x0D) ever appeared in any DATA stream, as
    /// received on the wire. RFC 5321 §2.3.8 allows only CRLF.
    pub fn saw_bare_lf(&self) -> bool {
        self.shared.lock().bare_lf
    }

    /// Waits until at least `n` messages were accepted, or fails after `timeout`.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let mut rx = self.shared.count.subscribe();
        let arrived = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await,
            Ok(Ok(_))
        );
        if arrived {
            return Ok(self.received());
        }
        let got = self.received().len();
        anyhow::bail!(
            "SMTP server {} got {got} of {n} messages within {timeout:?} ({} connections; commands: {:?})",
            self.addr,
            self.connections(),
            self.commands(),
        )
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of sessions, so aborting it ends them all.
        self.task.abort();
    }
}

fn tls_acceptor(hostname: &str) -> anyhow::Result<(TlsAcceptor, CertificateDer<'static>)> {
    let certified =
        rcgen::generate_simple_self_signed(vec![hostname.to_owned(), "localhost".into()])
            .context("generate self-signed certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), certified.cert.der().clone()))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while sessions.try_join_next().is_some() {}
        let connection = {
            let mut state = shared.lock();
            state.connections += 1;
            state.connections
        };
        let io: Box<dyn Io> = Box::new(stream);
        let session = Session {
            shared: Arc::clone(&shared),
            io: BufReader::new(io),
            connection,
            tls: false,
            helo: None,
            mail_from: None,
            mail_params: Vec::new(),
            rcpt_to: Vec::new(),
        };
        sessions.spawn(session.run());
    }
}

/// A byte stream the session can run over: plain TCP, then TLS after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Session {
    shared: Arc<Shared>,
    io: BufReader<Box<dyn Io>>,
    connection: u32,
    tls: bool,
    helo: Option<String>,
    mail_from: Option<String>,
    mail_params: Vec<String>,
    rcpt_to: Vec<String>,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

impl Session {
    async fn run(mut self) {
        let _ = self.serve().await; // a client hanging up is a normal end of session
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let script = self.shared.script.clone();
        let (code, text) = &script.greeting;
        self.reply(*code, &format!("{} {text}", script.hostname)).await?;
        if script.drop_after_greeting || *code == 421 {
            return Ok(());
        }
        let refused = *code != 220;
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(());
            };
            let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
            self.shared.lock().commands.push(line.clone());
            let next =
                if refused { self.refused(&line).await? } else { self.command(&line).await? };
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    /// After a non-220, non-421 greeting: only QUIT is honoured (RFC 5321 §3.1).
    async fn refused(&mut self, line: &str) -> anyhow::Result<Next> {
        if line.eq_ignore_ascii_case("QUIT") {
            self.reply(221, "2.0.0 Bye").await?;
            return Ok(Next::Close);
        }
        self.reply(503, "5.5.1 No service, only QUIT").await?;
        Ok(Next::Continue)
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<Next> {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(arg).await?,
            "HELO" => {
                self.helo = Some(arg.to_owned());
                self.reset();
                let host = self.shared.script.hostname.clone();
                self.reply(250, &host).await?;
            }
            "STARTTLS" => return self.starttls().await,
            "MAIL" => self.mail(arg).await?,
            "RCPT" => self.rcpt(arg).await?,
            "DATA" => self.data().await?,
            "RSET" => {
                self.reset();
                self.reply(250, "2.0.0 Reset").await?;
            }
            "NOOP" => self.reply(250, "2.0.0 OK").await?,
            "VRFY" => self.reply(252, "2.5.0 Cannot verify").await?,
            "QUIT" => {
                self.reply(221, "2.0.0 Bye").await?;
                return Ok(Next::Close);
            }
            _ => self.reply(500, "5.5.2 Command not recognized").await?,
        }
        Ok(Next::Continue)
    }

    async fn ehlo(&mut self, name: &str) -> anyhow::Result<()> {
        self.helo = Some(name.to_owned());
        self.reset();
        let mut lines = vec![
            format!("{} greets {name}", self.shared.script.hostname),
            "8BITMIME".to_owned(),
            "SIZE 52428800".to_owned(),
        ];
        if self.shared.script.starttls && !self.tls {
            lines.push("STARTTLS".to_owned());
        }
        if self.shared.script.smtputf8 {
            lines.push("SMTPUTF8".to_owned());
        }
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&format!("250{sep}{line}\r\n"));
        }
        self.write(out.as_bytes()).await
    }

    async fn starttls(&mut self) -> anyhow::Result<Next> {
        if !self.shared.script.starttls {
            self.reply(502, "5.5.1 STARTTLS not offered").await?;
            return Ok(Next::Continue);
        }
        if self.tls {
            self.reply(503, "5.5.1 TLS already active").await?;
            return Ok(Next::Continue);
        }
        self.reply(220, "2.0.0 Ready to start TLS").await?;
        if self.shared.script.broken_tls {
            self.write(b"\x15\x03\x03\x00\x02\x02\x28this is not TLS\r\n").await?;
            return Ok(Next::Close);
        }
        let Some(acceptor) = self.shared.tls.clone() else {
            return Ok(Next::Close);
        };
        // Anything the client pipelined after STARTTLS is discarded (RFC 3207 §4.2 forbids it).
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder)).into_inner();
        let stream = acceptor.accept(plain).await.context("TLS handshake")?;
        let io: Box<dyn Io> = Box::new(stream);
        self.io = BufReader::new(io);
        self.tls = true;
        // RFC 3207 §4.2: the session starts over; the client must EHLO again.
        self.helo = None;
        self.reset();
        Ok(Next::Continue)
    }

    async fn mail(&mut self, arg: &str) -> anyhow::Result<()> {
        if self.helo.is_none() {
            return self.reply(503, "5.5.1 EHLO first").await;
        }
        if self.mail_from.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command").await;
        }
        let Some(path) = strip_prefix_ci(arg, "FROM:") else {
            return self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        let params: Vec<String> = path
            .rsplit_once('>')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .map(String::from)
            .collect();
        let utf8 = params.iter().any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
        if utf8 && !self.shared.script.smtputf8 {
            return self.reply(555, "5.5.4 SMTPUTF8 not offered").await;
        }
        let from = address(path);
        if !from.is_ascii() && !utf8 {
            return self.reply(553, "5.6.7 UTF-8 address without SMTPUTF8").await;
        }
        self.mail_from = Some(from);
        self.mail_params = params;
        self.reply(250, "2.1.0 Sender ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> anyhow::Result<()> {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 MAIL first").await;
        }
        let Some(path) = strip_prefix_ci(arg, "TO:") else {
            return self.reply(501, "5.5.4 Syntax: RCPT TO:<address>").await;
        };
        let addr = address(path);
        if !addr.is_ascii() && !self.mail_params.iter().any(|p| p.eq_ignore_ascii_case("SMTPUTF8"))
        {
            return self.reply(553, "5.6.7 UTF-8 address without SMTPUTF8").await;
        }
        let nth = {
            let mut state = self.shared.lock();
            let seen = state.rcpt_seen.entry(addr.to_ascii_lowercase()).or_insert(0);
            *seen += 1;
            *seen
        };
        let (code, text) = (self.shared.script.rcpt_reply)(&addr, nth);
        if (200..300).contains(&code) {
            self.rcpt_to.push(addr);
        }
        self.reply(code, &text).await
    }

    async fn data(&mut self) -> anyhow::Result<()> {
        if self.mail_from.is_none() {
            return self.reply(503, "5.5.1 MAIL first").await;
        }
        if self.rcpt_to.is_empty() {
            return self.reply(554, "5.5.1 No valid recipients").await;
        }
        self.reply(354, "Start mail input; end with <CRLF>.<CRLF>").await?;
        let mut data = Vec::new();
        let mut bare_lf = false;
        loop {
            let Some(line) = self.read_line().await? else {
                anyhow::bail!("connection closed inside DATA");
            };
            let crlf = line.ends_with(b"\r\n");
            // `read_line` splits at LF, so only the last byte can be an LF.
            bare_lf |= line.ends_with(b"\n") && !crlf;
            // The terminator is "." alone on a line; a bare-LF one is tolerated (and recorded).
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // RFC 5321 §4.5.2: drop the first of a leading dot.
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(unstuffed);
        }
        let nth = {
            let mut state = self.shared.lock();
            state.bare_lf |= bare_lf;
            state.data_seen += 1;
            state.data_seen
        };
        let (code, text) = (self.shared.script.data_reply)(nth);
        if (200..300).contains(&code) {
            let received = Received {
                mail_from: self.mail_from.clone().unwrap_or_default(),
                mail_params: self.mail_params.clone(),
                rcpt_to: std::mem::take(&mut self.rcpt_to),
                data,
                tls: self.tls,
                helo: self.helo.clone().unwrap_or_default(),
                connection: self.connection,
            };
            let count = {
                let mut state = self.shared.lock();
                state.received.push(received);
                state.received.len()
            };
            // Recorded before the reply goes out, so a client that saw 250 finds it here.
            self.shared.count.send_replace(count);
        }
        self.reset();
        self.reply(code, &text).await
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.mail_params.clear();
        self.rcpt_to.clear();
    }

    /// One line including its LF (and CR), or `None` at EOF.
    async fn read_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let n = self.io.read_until(b'\n', &mut line).await?;
        Ok((n > 0).then_some(line))
    }

    async fn reply(&mut self, code: u16, text: &str) -> anyhow::Result<()> {
        self.write(format!("{code} {text}\r\n").as_bytes()).await
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let io = self.io.get_mut();
        io.write_all(bytes).await?;
        io.flush().await?;
        Ok(())
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| s[prefix.len()..].trim_start())
}

/// The address inside `<...>` (parameters after it ignored), or the first word without brackets.
fn address(path: &str) -> String {
    let path = path.trim();
    match (path.find('<'), path.find('>')) {
        (Some(start), Some(end)) if start < end => path[start + 1..end].to_owned(),
        _ => path.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

#[cfg(test)]
#[path = "smtp_tests.rs"]
mod tests;
