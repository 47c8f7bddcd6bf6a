//! SMTP submission (RFC 6409) against the running app: Python's `smtplib` as the client nobody
//! on the project wrote (STARTTLS + AUTH LOGIN, implicit TLS + AUTH PLAIN, pipelined commands),
//! the message checked at the recipient's MX; and the refusals, spoken over a raw socket so
//! every byte is ours to choose.

use std::net::SocketAddr;
use std::time::Duration;

use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{ip, mx_hosts, recipient, SOON};

/// Runs a Python `smtplib` session; its stdout is the reply to DATA.
async fn python(script: &str, addr: SocketAddr, key: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("HOST", addr.ip().to_string())
        .env("PORT", addr.port().to_string())
        .env("KEY", key)
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const MESSAGE: &str = "From: Shop <shop@sender.test>\r\n\
To: Ann <ann@sub.test>\r\n\
Cc: bo@sub.test\r\n\
Bcc: hidden@sub.test\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
X-Postwire-Tags: welcome, smtp\r\n\
X-Postwire-Metadata: {\"user\": 7}\r\n\
X-Mailer: smtplib-test\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Gr\u{fc}\u{df}e aus M\u{fc}nchen.\r\n\
.a line that starts with a dot\r\n";

/// STARTTLS, AUTH LOGIN, and MAIL/RCPT/DATA one by one; prints the DATA reply.
const STARTTLS_LOGIN: &str = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=20)
s.ehlo("client.test")
assert s.has_extn("starttls") and s.has_extn("pipelining") and s.has_extn("smtputf8"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo("client.test")
code, _ = s.docmd("AUTH", "LOGIN")
assert code == 334, code
import base64
code, _ = s.docmd(base64.b64encode(b"apikey").decode())
assert code == 334, code
code, resp = s.docmd(base64.b64encode(os.environ["KEY"].encode()).decode())
assert code == 235, (code, resp)
msg = os.environ["MSG"]
s.mail("bounces@sender.test", ["SMTPUTF8", "BODY=8BITMIME"])
for r in ["ann@sub.test", "bo@sub.test", "hidden@sub.test"]:
    code, resp = s.rcpt(r)
    assert code == 250, (r, code, resp)
code, resp = s.data(msg.encode("utf-8"))
print(code, resp.decode())
s.quit()
"#;

#[tokio::test]
async fn a_message_submitted_with_starttls_and_auth_is_delivered_as_written_minus_bcc_and_postwire_headers(
) {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(61), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let script = STARTTLS_LOGIN.replace("os.environ[\"MSG\"]", &format!("{MESSAGE:?}"));
    let reply = python(&script, app.submission_addr, &app.key).await;
    let id = reply
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("DATA reply: {reply}"))
        .to_string();
    assert!(id.starts_with("msg_"), "{reply}");

    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(m["source"], "smtp", "{m:#}");
    assert_eq!(m["subject"], "Grüße");
    assert_eq!(m["tags"], serde_json::json!(["welcome", "smtp"]));
    for r in ["ann@sub.test", "bo@sub.test", "hidden@sub.test"] {
        assert_eq!(recipient(&m, r)["status"], "delivered", "{m:#}");
    }
    let delivered =
        m["events"].as_array().unwrap().iter().find(|e| e["type"] == "message.delivered");
    assert_eq!(delivered.unwrap()["data"]["metadata"]["user"], 7, "{m:#}");

    let got = hosts[0].received();
    assert_eq!(got.len(), 1, "one transaction for the one domain");
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["ann@sub.test", "bo@sub.test", "hidden@sub.test"]);
    let text = String::from_utf8(got[0].data.clone()).expect("8-bit UTF-8 kept as sent");
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head.contains("\r\nbcc:") && !head.contains("hidden@"), "Bcc removed:\n{text}");
    assert!(!head.contains("x-postwire-"), "Postwire headers removed:\n{text}");
    assert!(head.contains("x-mailer: smtplib-test"), "other headers kept:\n{text}");
    assert!(head.contains("message-id: <") && head.contains("\r\ndate: "), "added:\n{text}");
    assert!(text.contains("Grüße aus München.\r\n.a line that starts with a dot\r\n"), "{text}");
    app.stop().await;
}

/// Implicit TLS and AUTH PLAIN through smtplib's own `login`, then `sendmail` (which pipelines
/// MAIL and RCPT when PIPELINING is offered).
const IMPLICIT_TLS_PLAIN: &str = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL(os.environ["HOST"], int(os.environ["PORT"]), context=ctx, timeout=20)
s.ehlo("client.test")
assert "PLAIN" in s.esmtp_features.get("auth", ""), s.esmtp_features
s.login("apikey", os.environ["KEY"])
refused = s.sendmail("app@sender.test", ["cy@sub.test"],
    b"From: app@sender.test\r\nTo: cy@sub.test\r\nSubject: tls\r\n\r\nover implicit TLS\r\n")
print("refused", refused)
s.quit()
"#;

#[tokio::test]
async fn implicit_tls_with_auth_plain_submits_and_the_message_is_delivered() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(62), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let out = python(IMPLICIT_TLS_PLAIN, app.submission_tls_addr, &app.key).await;
    assert_eq!(out, "refused {}");
    hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let got = hosts[0].received();
    assert_eq!(got[0].rcpt_to, ["cy@sub.test"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("over implicit TLS\r\n"));
    app.stop().await;
}

/// A line-at-a-time SMTP client over a raw socket.
struct Raw {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut raw = Raw { r: BufReader::new(r), w };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        raw
    }

    /// One whole reply (every line of a multi-line one), lines joined by `\n`.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("a reply within 10 s")
                .unwrap();
            if n == 0 {
                lines.push("<closed>".to_string());
                break;
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        lines.join("\n")
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// EHLO and AUTH PLAIN with `key` (allowed without TLS from loopback).
    async fn login(&mut self, key: &str) -> String {
        use base64::Engine;
        assert!(self.cmd("EHLO client.test").await.contains("AUTH PLAIN LOGIN"));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0apikey\0{key}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }
}

#[tokio::test]
async fn nothing_is_accepted_without_auth_or_with_a_wrong_key_and_guessing_is_slowed_down() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut c = Raw::connect(app.submission_addr).await;
    c.cmd("EHLO client.test").await;
    let mail = c.cmd("MAIL FROM:<a@sender.test>").await;
    assert!(mail.starts_with("530 5.7.0"), "no relay without AUTH: {mail}");
    let rcpt = c.cmd("RCPT TO:<victim@elsewhere.test>").await;
    assert!(rcpt.starts_with("503"), "{rcpt}");

    let wrong = "pw_nokey_0000000000000000000000000000000000000000";
    for attempt in 1..=4 {
        let r = Raw::connect(app.submission_addr).await.login(wrong).await;
        assert!(r.starts_with("535 5.7.8"), "attempt {attempt}: {r}");
    }
    let fifth = Raw::connect(app.submission_addr).await.login(wrong).await;
    assert!(fifth.starts_with("421 4.7.0"), "the fifth failure locks the address out: {fifth}");
    let mut next = TcpStream::connect(app.submission_addr).await.unwrap();
    let mut greeting = String::new();
    let mut r = BufReader::new(&mut next);
    r.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("421 4.7.0"), "a locked-out address is refused: {greeting}");
    app.stop().await;
}

#[tokio::test]
async fn bare_lf_too_many_recipients_and_oversize_are_refused_and_nothing_is_queued() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_recipients = 2;
    settings.limits.max_message_size = postwire_config::ByteSize(2_000);
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(63), Script::default())]).await;
    let app = TestApp::start(settings).await.unwrap();
    let mut c = Raw::connect(app.submission_addr).await;
    assert!(c.login(&app.key).await.starts_with("235 2.7.0"));

    // Pipelined: MAIL, three RCPTs and DATA in one write; replies come back in order.
    c.send(
        b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@sub.test>\r\nRCPT TO:<y@sub.test>\r\n\
          RCPT TO:<z@sub.test>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    let third = c.reply().await;
    assert!(third.starts_with("452 4.5.3"), "max_recipients is 2: {third}");
    assert!(c.reply().await.starts_with("354"));
    // A smuggling attempt: LF.LF would end DATA on a lenient server and start a new MAIL.
    c.send(
        b"From: a@sender.test\r\nTo: x@sub.test\r\n\r\nfirst\n.\nMAIL FROM:<evil@sender.test>\r\n\
          RCPT TO:<x@sub.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
    )
    .await;
    let refused = c.reply().await;
    assert!(refused.starts_with("554 5.6.0") && refused.contains("bare LF"), "{refused}");

    let size = c.cmd("MAIL FROM:<a@sender.test> SIZE=5000").await;
    assert!(size.starts_with("552 5.3.4"), "SIZE over the limit: {size}");
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@sub.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut big = b"From: a@sender.test\r\nTo: x@sub.test\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(&[b'y'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    c.send(&big).await;
    let too_big = c.reply().await;
    assert!(too_big.starts_with("552 5.3.4"), "{too_big}");
    assert!(c.cmd("QUIT").await.starts_with("221"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hosts[0].received().is_empty(), "nothing refused was delivered");
    let page = app
        .client
        .get(app.url("/v1/messages"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(0), "nothing queued: {page:#}");
    app.stop().await;
}

#[tokio::test]
async fn bdat_chunks_are_submitted_like_data() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(64), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut c = Raw::connect(app.submission_addr).await;
    assert!(c.login(&app.key).await.starts_with("235"));
    assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<dee@sub.test>").await.starts_with("250"));
    let part1 = b"From: a@sender.test\r\nTo: dee@sub.test\r\nSubject: chunks\r\n\r\n";
    let part2 = b".no stuffing in BDAT\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).await;
    c.send(part1).await;
    assert!(c.reply().await.starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes()).await;
    c.send(part2).await;
    let queued = c.reply().await;
    assert!(queued.starts_with("250 2.0.0 Ok: queued as msg_"), "{queued}");
    hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let text = String::from_utf8(hosts[0].received()[0].data.clone()).unwrap();
    assert!(text.contains("Subject: chunks\r\n\r\n.no stuffing in BDAT\r\n"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn every_250_queued_over_smtp_survives_kill_9_of_the_server() {
    use postwire_e2e::process::{create_key, serve_healthy};
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(65), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let key = create_key(&config, "smtp-crash");
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve_healthy(&config, &[], &base).await;
    let addr: SocketAddr = ([127, 0, 0, 1], world.submission_port).into();
    let mut c = Raw::connect(addr).await;
    assert!(c.login(&key).await.starts_with("235"));
    let mut ids = Vec::new();
    for i in 0..10 {
        assert!(c.cmd("MAIL FROM:<a@sender.test>").await.starts_with("250"));
        assert!(c.cmd(&format!("RCPT TO:<u{i}@sub.test>")).await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        let text = format!(
            "From: a@sender.test\r\nTo: u{i}@sub.test\r\nSubject: crash {i}\r\n\r\nx\r\n.\r\n"
        );
        c.send(text.as_bytes()).await;
        let queued = c.reply().await;
        let id =
            queued.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{queued}"));
        ids.push(id.to_string());
    }
    // Right after the last 250: nothing queued may be lost.
    server.kill9();
    let _server = serve_healthy(&config, &[], &base).await;
    let client = reqwest::Client::new();
    for id in &ids {
        let m = postwire_e2e::process::wait_delivered(&client, &base, &key, id).await;
        assert_eq!(m["source"], "smtp");
    }
    let mut delivered: Vec<String> =
        hosts[0].received().iter().flat_map(|r| r.rcpt_to.clone()).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 10, "every recipient got its message: {delivered:?}");
}

#[tokio::test]
async fn a_submitted_message_is_dkim_signed_and_dkimpy_verifies_it() {
    use postwire_config::DkimAlgorithm;
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(66), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim =
        vec![crate::dkim::publish_key(&world, "sender.test", "sub1", DkimAlgorithm::RsaSha256)];
    let app = TestApp::start(settings).await.unwrap();
    let script = STARTTLS_LOGIN.replace("os.environ[\"MSG\"]", &format!("{MESSAGE:?}"));
    let reply = python(&script, app.submission_addr, &app.key).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as msg_"), "{reply}");
    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let (ok, report) = crate::dkim::dkimpy_verify(&world, &got[0].data).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(ok, "dkimpy rejected the signature:\n{report}\n{text}");
    assert!(report.contains("ok d=sender.test s=sub1 a=rsa-sha256"), "{report}");
    app.stop().await;
}
