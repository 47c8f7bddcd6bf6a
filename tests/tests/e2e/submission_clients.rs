//! SMTP submission from two more clients nobody on the project wrote: `swaks` (Debian's
//! package) with STARTTLS, AUTH LOGIN and an attachment, and lettre's async transport over
//! implicit TLS with AUTH PLAIN and an HTML body — each checked at the recipient's MX and in
//! the message's events.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;

use crate::{ip, mx_hosts, recipient, SOON};

#[tokio::test]
async fn swaks_submits_an_attachment_over_starttls_with_auth_login_and_it_arrives_intact() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(63), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let attachment = world.path().join("invoice.csv");
    std::fs::write(&attachment, "item,amount\nwidget,3\n").unwrap();
    let out = tokio::process::Command::new("swaks")
        .args(["--server", &app.submission_addr.to_string(), "--tls"])
        .args(["--auth", "LOGIN", "--auth-user", "apikey", "--auth-password", &app.key])
        .args(["--from", "billing@sender.test", "--to", "dee@sub.test"])
        .args(["--header", "Subject: Your invoice", "--header", "X-Postwire-Tags: invoice"])
        .args(["--body", "The invoice is attached.", "--attach-type", "text/csv"])
        .arg("--attach")
        .arg(format!("@{}", attachment.display()))
        .output()
        .await
        .expect("run swaks (apt-get install swaks)");
    let transcript = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "swaks failed:\n{transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines read under TLS are marked `<~`.
    assert!(transcript.contains("<~  235 2.7.0"), "AUTH LOGIN under TLS:\n{transcript}");
    let id = transcript
        .lines()
        .find_map(|l| l.strip_prefix("<~  250 2.0.0 Ok: queued as "))
        .unwrap_or_else(|| panic!("no DATA reply:\n{transcript}"))
        .trim()
        .to_string();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(m["source"], "smtp");
    assert_eq!(m["tags"], serde_json::json!(["invoice"]));
    assert_eq!(recipient(&m, "dee@sub.test")["status"], "delivered", "{m:#}");
    let got = hosts[0].received();
    let parsed = mail_parser::MessageParser::default().parse(&got[0].data).expect("MIME");
    assert_eq!(parsed.subject(), Some("Your invoice"));
    let part = parsed.attachments().next().expect("the attachment arrives");
    assert_eq!(part.contents(), b"item,amount\nwidget,3\n");
    assert!(parsed.header_raw("X-Postwire-Tags").is_none(), "Postwire headers are removed");
    app.stop().await;
}

#[tokio::test]
async fn lettre_submits_html_over_implicit_tls_with_auth_plain_and_it_is_delivered() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(64), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let host = app.submission_tls_addr.ip().to_string();
    let tls = TlsParameters::builder(host.clone())
        .dangerous_accept_invalid_certs(true)
        .dangerous_accept_invalid_hostnames(true)
        .build()
        .unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(app.submission_tls_addr.port())
        .tls(Tls::Wrapper(tls))
        .credentials(Credentials::new("apikey".into(), app.key.clone()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let envelope = Envelope::new(
        Some("app@sender.test".parse().unwrap()),
        vec!["eve@sub.test".parse().unwrap(), "hidden@sub.test".parse().unwrap()],
    )
    .unwrap();
    let message = "From: App <app@sender.test>\r\nTo: eve@sub.test\r\nSubject: Welcome\r\n\
        X-Postwire-Metadata: {\"plan\": \"pro\"}\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\n\r\n<p>Welcome, <b>Eve</b>!</p>\r\n";
    let reply = transport.send_raw(&envelope, message.as_bytes()).await.expect("lettre sends");
    let text = reply.message().collect::<Vec<_>>().join(" ");
    let id =
        text.strip_prefix("2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{text}")).to_string();
    let m = app.wait_final(&id, SOON).await.unwrap();
    for r in ["eve@sub.test", "hidden@sub.test"] {
        assert_eq!(recipient(&m, r)["status"], "delivered", "{m:#}");
    }
    let delivered =
        m["events"].as_array().unwrap().iter().find(|e| e["type"] == "message.delivered");
    assert_eq!(delivered.unwrap()["data"]["metadata"]["plan"], "pro");
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    let data = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(data.contains("<p>Welcome, <b>Eve</b>!</p>\r\n"), "{data}");
    assert!(!data.to_ascii_lowercase().contains("hidden@"), "Bcc stays out of the headers");
    app.stop().await;
}

/// `X-Postwire-Track` over SMTP: each recipient gets its own copy with the HTML part's links
/// rewritten and an open pixel — the text part and the other headers as written — and a click
/// redirects to the mailed URL and is recorded.
#[tokio::test]
async fn a_tracked_submission_gets_per_recipient_tracking_links_that_are_recorded() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sub.test", &[(10, ip(65), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
        app.submission_addr.ip().to_string(),
    )
    .port(app.submission_addr.port())
    .tls(Tls::None)
    .credentials(Credentials::new("apikey".into(), app.key.clone()))
    .authentication(vec![Mechanism::Plain])
    .build();
    let envelope = Envelope::new(
        Some("app@sender.test".parse().unwrap()),
        vec!["fay@sub.test".parse().unwrap(), "gil@sub.test".parse().unwrap()],
    )
    .unwrap();
    let message = "From: app@sender.test\r\nTo: fay@sub.test, gil@sub.test\r\nSubject: Sale\r\n\
        X-Postwire-Track: opens, clicks\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
        --alt\r\nContent-Type: text/plain\r\n\r\nSee https://shop.test/sale\r\n\
        --alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
        <p>See <a href=3D\"https://shop.test/sale\">the sale</a></p>\r\n--alt--\r\n";
    let reply = transport.send_raw(&envelope, message.as_bytes()).await.expect("lettre sends");
    let text = reply.message().collect::<Vec<_>>().join(" ");
    let id =
        text.strip_prefix("2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{text}")).to_string();
    app.wait_final(&id, SOON).await.unwrap();
    let got = hosts[0].received();
    assert_eq!(got.len(), 2, "one copy per recipient");
    let mut clicks = Vec::new();
    for copy in &got {
        let parsed = mail_parser::MessageParser::default().parse(&copy.data).unwrap();
        assert_eq!(parsed.body_text(0).unwrap().trim(), "See https://shop.test/sale");
        let html = parsed.body_html(0).unwrap().to_string();
        assert!(!html.contains("https://shop.test/sale"), "the link is rewritten: {html}");
        assert!(html.contains(&format!("{}/t/o/", app.base)), "an open pixel: {html}");
        let at = html.find(&format!("{}/t/c/", app.base)).expect("a click link");
        clicks.push(html[at..].split('"').next().unwrap().to_string());
        assert!(parsed.header_raw("X-Postwire-Track").is_none());
    }
    assert_ne!(clicks[0], clicks[1], "each copy has its own links");
    let r = app.client.get(&clicks[0]).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "https://shop.test/sale");
    let m = app
        .wait_message(&id, SOON, |m| m["engagements"].as_array().is_some_and(|e| !e.is_empty()))
        .await
        .unwrap();
    assert_eq!(m["engagements"][0]["type"], "click", "{m:#}");
    app.stop().await;
}
