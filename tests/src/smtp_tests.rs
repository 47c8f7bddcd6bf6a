//! Self-tests of the scripted SMTP server, over real sockets.
use super::*;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A hand-driven SMTP client over any stream.
struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads one (possibly multi-line) reply: its code and every line's text.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.io.read_line(&mut line)).await;
            assert!(read.unwrap().unwrap() > 0, "closed while waiting for a reply");
            text.push_str(&line[4..]);
            if line.as_bytes()[3] == b' ' {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// MAIL, one RCPT, DATA and `raw` (already stuffed and terminated): the final code.
    async fn transaction(&mut self, from: &str, to: &str, raw: &[u8]) -> u16 {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).await.0, 250);
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await.0, 250);
        assert_eq!(self.cmd("DATA").await.0, 354);
        self.send(raw).await;
        self.reply().await.0
    }

    /// Whether the server closes (EOF or reset) before sending anything more.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, self.io.read(&mut buf)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }
}

async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    Client { io: BufReader::new(stream) }
}

async fn start(script: Script) -> SmtpServer {
    SmtpServer::start(Ipv4Addr::LOCALHOST, 0, script).await.unwrap()
}

/// Connects, EHLOs, sends STARTTLS and runs a handshake trusting only `roots`.
async fn starttls(
    server: &SmtpServer,
    roots: rustls::RootCertStore,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut c = connect(server.addr()).await;
    c.reply().await;
    assert!(c.cmd("EHLO client.test").await.1.contains("STARTTLS"));
    assert_eq!(c.cmd("STARTTLS").await.0, 220);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("mx.postwire.test").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(name, c.io.into_inner()).await
}

#[tokio::test]
async fn a_plain_session_records_each_message_with_dot_stuffing_undone() {
    let server = start(Script::default()).await;
    let mut c = connect(server.addr()).await;
    assert_eq!(c.reply().await.0, 220);
    let (code, ehlo) = c.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("8BITMIME") && ehlo.contains("SIZE") && !ehlo.contains("STARTTLS"));
    assert_eq!(c.cmd("MAIL FROM:<bounce@sender.test> BODY=8BITMIME").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.test>").await.0, 250);
    assert_eq!(c.cmd("rcpt to: <bob@example.test>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    // A second transaction on the same connection.
    assert_eq!(c.cmd("RSET").await.0, 250);
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(c.transaction("", "carol@example.test", b"x\r\n.\r\n").await, 250);
    assert_eq!(c.cmd("QUIT").await.0, 221);

    let got = server.wait_for_messages(2, WAIT).await.unwrap();
    assert_eq!(got[0].mail_from, "bounce@sender.test");
    assert_eq!(got[0].rcpt_to, ["alice@example.test", "bob@example.test"]);
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
    assert_eq!((got[0].helo.as_str(), got[0].tls), ("client.test", false));
    assert_eq!((got[1].mail_from.as_str(), got[1].data.as_slice()), ("", &b"x\r\n"[..]));
    assert_eq!(got[0].connection, got[1].connection);
    assert_eq!(server.connections(), 1);
    assert!(!server.saw_bare_lf());
}

#[tokio::test]
async fn rcpt_replies_follow_the_script_per_address_and_attempt() {
    let script = Script::default().rcpt_reply(|addr, nth| match (addr, nth) {
        ("alice@example.test", 1) => (451, "4.7.1 Greylisted".into()),
        ("bob@example.test", _) => (550, "5.1.1 No such user".into()),
        _ => (250, "2.1.5 Ok".into()),
    });
    let server = start(script).await;
    for (alice, data) in [(451, 554), (250, 354)] {
        let mut c = connect(server.addr()).await;
        c.reply().await;
        c.cmd("EHLO client.test").await;
        c.cmd("MAIL FROM:<s@sender.test>").await;
        assert_eq!(c.cmd("RCPT TO:<alice@example.test>").await.0, alice);
        assert_eq!(c.cmd("RCPT TO:<bob@example.test>").await.0, 550);
        assert_eq!(c.cmd("DATA").await.0, data, "554 when no recipient was accepted");
    }
    assert_eq!(server.rcpt_attempts("Alice@example.test"), 2);
    assert_eq!(server.connections(), 2);
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn starttls_restarts_the_session_and_the_message_is_marked_tls() {
    let server = start(Script::default().starttls()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.certificate().unwrap()).unwrap();
    let tls = starttls(&server, roots).await.unwrap();
    let mut c = Client { io: BufReader::new(tls) };
    assert_eq!(c.cmd("MAIL FROM:<s@sender.test>").await.0, 503, "EHLO again first");
    let (code, ehlo) = c.cmd("EHLO again.test").await;
    assert_eq!(code, 250);
    assert!(!ehlo.contains("STARTTLS"));
    assert_eq!(c.transaction("s@sender.test", "a@example.test", b"hi\r\n.\r\n").await, 250);
    let got = server.wait_for_messages(1, WAIT).await.unwrap();
    assert!(got[0].tls);
    assert_eq!(got[0].helo, "again.test");
}

#[tokio::test]
async fn broken_tls_fails_the_client_handshake() {
    let server = start(Script::default().broken_tls()).await;
    assert!(starttls(&server, rustls::RootCertStore::empty()).await.is_err());
}

#[tokio::test]
async fn a_bare_lf_in_data_is_recorded() {
    let server = start(Script::default()).await;
    let mut c = connect(server.addr()).await;
    c.reply().await;
    c.cmd("HELO client.test").await;
    let raw = b"line one\nline two\r\n.\r\n";
    assert_eq!(c.transaction("s@sender.test", "a@example.test", raw).await, 250);
    assert!(server.saw_bare_lf());
}

#[tokio::test]
async fn refusing_greetings_and_dropped_connections_behave_as_scripted() {
    let refusing = start(Script::default().greeting(554, "5.7.1 Go away")).await;
    let mut c = connect(refusing.addr()).await;
    assert_eq!(c.reply().await.0, 554);
    assert_eq!(c.cmd("EHLO client.test").await.0, 503);
    assert_eq!(c.cmd("QUIT").await.0, 221);

    let busy = start(Script::default().greeting(421, "4.3.2 Busy")).await;
    let mut c = connect(busy.addr()).await;
    assert_eq!(c.reply().await.0, 421);
    assert!(c.closed().await);

    let dropping = start(Script::default().drop_after_greeting()).await;
    let mut c = connect(dropping.addr()).await;
    assert_eq!(c.reply().await.0, 220);
    assert!(c.closed().await);
    assert_eq!(dropping.connections(), 1);
}

#[tokio::test]
async fn data_replies_can_reject_a_message_and_nothing_is_recorded() {
    let server = start(Script::default().data_reply(452, "4.3.1 Out of space")).await;
    let mut c = connect(server.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.transaction("s@sender.test", "a@example.test", b"x\r\n.\r\n").await, 452);
    assert!(server.received().is_empty());
    let short = Duration::from_millis(50);
    assert!(server.wait_for_messages(1, short).await.is_err());
}

#[tokio::test]
async fn servers_on_several_loopback_addresses_share_one_port() {
    let port = pick_free_port();
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let a = SmtpServer::start(one, port, Script::default()).await.unwrap();
    let b = SmtpServer::start(two, port, Script::default()).await.unwrap();
    assert_eq!(a.addr().port(), b.addr().port());
    let mut c = connect(b.addr()).await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!((a.connections(), b.connections()), (0, 1));
}
