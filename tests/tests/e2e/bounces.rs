//! The way back: with `[bounces] domain` set, every copy goes out from its own VERP return
//! path, and the reports sent back to it — DSNs in the shapes Postfix, Gmail, Exim, Microsoft
//! and old text-only MTAs produce, ARF complaints, auto-replies — are received on the bounce
//! listener by Python's `smtplib` as the sending MTA, and change exactly what they should.

use std::net::SocketAddr;

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::{Script, SmtpServer};
use postwire_e2e::webhook::WebhookReceiver;
use serde_json::Value;

use crate::{ip, mx_hosts, recipient, SOON};

const BOUNCE_DOMAIN: &str = "bounces.sender.test";

/// An app with the bounce domain set, and an MX for `rcpt.test` on `last` (127.0.0.`last`).
async fn start(world: &World, last: u8) -> (TestApp, SmtpServer) {
    let host = mx_hosts(world, "rcpt.test", &[(10, ip(last), Script::default())]).await.remove(0);
    let mut settings = world.settings();
    settings.bounces.domain = BOUNCE_DOMAIN.into();
    let app = TestApp::start(settings).await.unwrap();
    assert!(app.bounces_addr.is_some(), "the bounce listener runs");
    (app, host)
}

/// Sends to `recipients` over the API, waits until every one is delivered, and returns the
/// message id with each recipient's envelope sender as the MX saw it.
async fn delivered(app: &TestApp, mx: &SmtpServer, recipients: &[&str]) -> (String, Vec<String>) {
    let id = app.send_ok(&simple_message(recipients)).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    for r in recipients {
        assert_eq!(recipient(&m, r)["status"], "delivered", "{m:#}");
    }
    let got = mx.received();
    let paths = recipients
        .iter()
        .map(|r| {
            let t = got.iter().find(|t| t.rcpt_to == [r.to_string()]).expect("one copy each");
            t.mail_from.clone()
        })
        .collect();
    (id, paths)
}

/// A fixture (see `services/api-gateway/src/smtp_in/fixtures/`) with its placeholders filled
/// and every line ending CRLF.
fn fixture(name: &str, return_path: &str, rcpt: &str) -> String {
    let path = format!(
        "{}/../services/api-gateway/src/smtp_in/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("%RETURN_PATH%", return_path)
        .replace("%RCPT%", rcpt)
        .replace("%BOUNCE_DOMAIN%", BOUNCE_DOMAIN)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
}

/// Python's `smtplib` as the MTA sending a report: `MAIL FROM:<{from}>` (`""` is the null
/// sender), one RCPT, DATA. Prints each reply code: RCPT, then DATA.
const SEND_REPORT: &str = r#"
import os, smtplib
s = smtplib.SMTP(os.environ["HOST"], int(os.environ["PORT"]), timeout=20)
s.ehlo("mx.rcpt.test")
code, resp = s.mail(os.environ["FROM"])
assert code == 250, (code, resp)
code, resp = s.rcpt(os.environ["RCPT"])
print(code, resp.decode())
if code == 250:
    code, resp = s.data(os.environ["MSG"].encode("utf-8"))
    print(code, resp.decode())
s.quit()
"#;

async fn send_report(addr: SocketAddr, from: &str, rcpt: &str, message: &str) -> Vec<String> {
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SEND_REPORT)
        .env("HOST", addr.ip().to_string())
        .env("PORT", addr.port().to_string())
        .env("FROM", from)
        .env("RCPT", rcpt)
        .env("MSG", message)
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "smtplib failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// Sends a report and asserts both replies are 250.
async fn report(app: &TestApp, rcpt: &str, message: &str) {
    let replies = send_report(app.bounces_addr.unwrap(), "", rcpt, message).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].starts_with("250 "), "RCPT: {replies:?}");
    assert_eq!(replies[1], "250 2.0.0 Ok: report received");
}

async fn metric(app: &TestApp, kind: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let name = format!("postwire_inbound_messages_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&name)).map_or(0, |v| v.trim().parse().unwrap())
}

async fn suppression(app: &TestApp, email: &str) -> Option<Value> {
    let r = app
        .client
        .get(app.url(&format!("/v1/suppressions/{email}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return None;
    }
    Some(r.json().await.unwrap())
}

fn events<'a>(m: &'a Value, kind: &str) -> Vec<&'a Value> {
    m["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test]
async fn a_dsn_to_a_copys_return_path_bounces_that_delivered_recipient_and_suppresses_it() {
    let world = World::new().await;
    let (app, mx) = start(&world, 81).await;
    let receiver = WebhookReceiver::start().await;
    app.create_webhook(&receiver.url(), &["message.bounced"]).await.unwrap();
    let (id, paths) = delivered(&app, &mx, &["ann@rcpt.test", "bob@rcpt.test"]).await;
    for p in &paths {
        let (local, domain) = p.split_once('@').unwrap();
        assert_eq!(domain, BOUNCE_DOMAIN);
        assert!(local.starts_with("b-") && local.len() <= 64, "{p}");
    }
    assert_ne!(paths[0], paths[1], "each copy has its own return path");

    report(&app, &paths[1], &fixture("postfix-dsn.eml", &paths[1], "bob@rcpt.test")).await;

    let m = app.message(&id).await.unwrap();
    let bob = recipient(&m, "bob@rcpt.test");
    assert_eq!(bob["status"], "bounced", "{m:#}");
    assert_eq!(bob["last_response"], "5.1.1 unknown user: \"gone\"");
    assert_eq!(recipient(&m, "ann@rcpt.test")["status"], "delivered");
    let bounced = events(&m, "message.bounced");
    assert_eq!(bounced.len(), 1, "{m:#}");
    assert_eq!(bounced[0]["data"]["async"], true);
    assert_eq!(bounced[0]["data"]["bounce_type"], "hard");
    assert_eq!(bounced[0]["data"]["recipient"], "bob@rcpt.test");
    let listed = suppression(&app, "bob@rcpt.test").await.expect("bob is suppressed");
    assert_eq!(listed["reason"], "hard_bounce");
    assert_eq!(listed["message_id"], id.as_str());
    assert!(suppression(&app, "ann@rcpt.test").await.is_none());

    let hooks = receiver.wait_for_requests(1, SOON).await.unwrap();
    let body = hooks[0].json().unwrap();
    assert_eq!(body["type"], "message.bounced");
    assert_eq!(body["data"]["async"], true);
    assert_eq!(metric(&app, "dsn").await, 1);

    // The same DSN again (MTAs retry): nothing more happens.
    report(&app, &paths[1], &fixture("postfix-dsn.eml", &paths[1], "bob@rcpt.test")).await;
    let m = app.message(&id).await.unwrap();
    assert_eq!(events(&m, "message.bounced").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn dsns_shaped_like_gmail_exim_microsoft_and_text_bounces_each_bounce_their_recipient() {
    let world = World::new().await;
    let (app, mx) = start(&world, 82).await;
    let shapes = ["gmail-dsn.eml", "exim-dsn.eml", "microsoft-dsn.eml", "text-bounce.eml"];
    let rcpts = ["g@rcpt.test", "e@rcpt.test", "m@rcpt.test", "t@rcpt.test"];
    let (id, paths) = delivered(&app, &mx, &rcpts).await;
    for ((shape, rcpt), path) in shapes.iter().zip(rcpts).zip(&paths) {
        report(&app, path, &fixture(shape, path, rcpt)).await;
    }
    let m = app.message(&id).await.unwrap();
    for (shape, rcpt) in shapes.iter().zip(rcpts) {
        assert_eq!(recipient(&m, rcpt)["status"], "bounced", "{shape}: {m:#}");
        assert!(suppression(&app, rcpt).await.is_some(), "{shape}: a hard bounce suppresses");
    }
    assert!(recipient(&m, "m@rcpt.test")["last_response"]
        .as_str()
        .unwrap()
        .starts_with("5.1.10 550 5.1.10 RESOLVER.ADR.RecipientNotFound"));
    assert_eq!(metric(&app, "dsn").await, 4);
    app.stop().await;
}

#[tokio::test]
async fn a_soft_bounce_does_not_suppress_and_a_delay_notice_changes_nothing() {
    let world = World::new().await;
    let (app, mx) = start(&world, 83).await;
    let (id, paths) = delivered(&app, &mx, &["full@rcpt.test", "slow@rcpt.test"]).await;
    report(&app, &paths[0], &fixture("soft-dsn.eml", &paths[0], "full@rcpt.test")).await;
    report(&app, &paths[1], &fixture("delayed-dsn.eml", &paths[1], "slow@rcpt.test")).await;
    let m = app.message(&id).await.unwrap();
    assert_eq!(recipient(&m, "full@rcpt.test")["status"], "bounced");
    let bounced = events(&m, "message.bounced");
    assert_eq!(bounced.len(), 1, "{m:#}");
    assert_eq!(bounced[0]["data"]["bounce_type"], "soft");
    assert!(suppression(&app, "full@rcpt.test").await.is_none());
    assert_eq!(recipient(&m, "slow@rcpt.test")["status"], "delivered");
    assert_eq!(metric(&app, "dsn").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn an_arf_complaint_emits_message_complained_and_suppresses_with_reason_complaint() {
    let world = World::new().await;
    let (app, mx) = start(&world, 84).await;
    let receiver = WebhookReceiver::start().await;
    app.create_webhook(&receiver.url(), &["message.complained"]).await.unwrap();
    let (id, paths) = delivered(&app, &mx, &["ann@rcpt.test", "bob@rcpt.test"]).await;
    // To a fixed feedback address: the copy is named by the report's Original-Mail-From...
    let fbl = format!("fbl@{BOUNCE_DOMAIN}");
    report(&app, &fbl, &fixture("arf-abuse.eml", &paths[0], "ann@rcpt.test")).await;
    // ...or by the Return-Path of the headers it includes.
    let other = format!("complaints@{BOUNCE_DOMAIN}");
    report(&app, &other, &fixture("arf-headers-only.eml", &paths[1], "bob@rcpt.test")).await;

    let m = app.message(&id).await.unwrap();
    let complained = events(&m, "message.complained");
    assert_eq!(complained.len(), 2, "{m:#}");
    assert_eq!(complained[0]["data"]["feedback_type"], "abuse");
    for r in ["ann@rcpt.test", "bob@rcpt.test"] {
        assert_eq!(recipient(&m, r)["status"], "delivered", "a complaint keeps the status");
        let listed = suppression(&app, r).await.expect("suppressed");
        assert_eq!(listed["reason"], "complaint");
    }
    let hooks = receiver.wait_for_requests(2, SOON).await.unwrap();
    assert!(hooks.iter().all(|h| h.json().unwrap()["type"] == "message.complained"));
    assert_eq!(metric(&app, "arf").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn an_auto_reply_is_counted_and_changes_nothing() {
    let world = World::new().await;
    let (app, mx) = start(&world, 85).await;
    let (id, paths) = delivered(&app, &mx, &["away@rcpt.test"]).await;
    report(&app, &paths[0], &fixture("autoreply.eml", &paths[0], "away@rcpt.test")).await;
    let m = app.message(&id).await.unwrap();
    assert_eq!(recipient(&m, "away@rcpt.test")["status"], "delivered");
    assert!(events(&m, "message.bounced").is_empty());
    assert!(suppression(&app, "away@rcpt.test").await.is_none());
    assert_eq!(metric(&app, "autoreply").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn forged_and_foreign_return_paths_change_nothing_and_no_other_domain_is_accepted() {
    let world = World::new().await;
    let (app, mx) = start(&world, 86).await;
    let (id, paths) = delivered(&app, &mx, &["ann@rcpt.test"]).await;
    let genuine = &paths[0];
    // One hex digit changed inside the token.
    let mut forged = genuine.clone().into_bytes();
    forged[20] = if forged[20] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let not_ours = format!("b-{}@{BOUNCE_DOMAIN}", "0".repeat(56));
    for path in [&forged, &not_ours, &format!("postmaster@{BOUNCE_DOMAIN}")] {
        report(&app, path, &fixture("postfix-dsn.eml", path, "ann@rcpt.test")).await;
    }
    let m = app.message(&id).await.unwrap();
    assert_eq!(recipient(&m, "ann@rcpt.test")["status"], "delivered", "{m:#}");
    assert!(suppression(&app, "ann@rcpt.test").await.is_none());
    assert_eq!(metric(&app, "unknown").await, 3);
    assert_eq!(metric(&app, "dsn").await, 0);

    // Not a relay: mail for any other domain is refused at RCPT.
    let addr = app.bounces_addr.unwrap();
    for rcpt in ["ann@rcpt.test", "b-00@sender.test", "x@sub.bounces.sender.test"] {
        let replies = send_report(addr, "someone@else.test", rcpt, "Subject: x\r\n\r\nx\r\n").await;
        assert!(replies[0].starts_with("550 5.7.1"), "{rcpt}: {replies:?}");
    }
    assert!(mx.received().len() == 1, "nothing was relayed");
    app.stop().await;
}

/// The loop with a real MTA: a Postfix instance as the recipient's MX accepts `gone@pfx.test`
/// at RCPT (no recipient checks), fails local delivery afterwards and sends its own DSN to the
/// copy's return path, routed to the bounce listener by its transport map. The recipient goes
/// from `delivered` to `bounced`, the event says `async`, the address is suppressed.
#[tokio::test]
async fn a_real_postfix_that_accepts_at_rcpt_and_fails_later_bounces_the_recipient_with_its_dsn() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.bounces.domain = BOUNCE_DOMAIN.into();
    let app = TestApp::start(settings).await.unwrap();
    let bounces = app.bounces_addr.unwrap();
    world.dns.add_mx("pfx.test", 10, "mx.pfx.test");
    world.dns.add_a("mx.pfx.test", ip(87));
    let smtpd = SocketAddr::from((ip(87), world.smtp_port));
    let dir = world.path();
    let postfix = tokio::task::spawn_blocking(move || {
        postwire_e2e::postfix::Postfix::start(
            &dir,
            postwire_e2e::postfix::Config {
                smtpd,
                hostname: "mx.pfx.test",
                transport: vec![format!(
                    "{BOUNCE_DOMAIN} smtp:[{}]:{}",
                    bounces.ip(),
                    bounces.port()
                )],
                // Mail for pfx.test is local; any local part is accepted at RCPT, and local
                // delivery then finds no such user.
                main_extra: "mydestination = pfx.test\nlocal_recipient_maps =\n".into(),
            },
        )
    })
    .await
    .unwrap()
    .expect("start postfix");

    let id = app.send_ok(&simple_message(&["gone@pfx.test"])).await.unwrap();
    let m = app
        .wait_message(&id, SOON, |m| recipient(m, "gone@pfx.test")["status"] == "bounced")
        .await
        .unwrap_or_else(|e| panic!("{e}\npostfix log:\n{}", postfix.log()));
    let delivered = events(&m, "message.delivered");
    assert_eq!(delivered.len(), 1, "Postfix accepted it first: {m:#}");
    let bounced = events(&m, "message.bounced");
    assert_eq!(bounced.len(), 1, "{m:#}");
    assert_eq!(bounced[0]["data"]["async"], true);
    assert_eq!(bounced[0]["data"]["bounce_type"], "hard");
    let response = recipient(&m, "gone@pfx.test")["last_response"].as_str().unwrap().to_string();
    assert!(response.starts_with("5.1.1 unknown user"), "{response}");
    assert_eq!(
        suppression(&app, "gone@pfx.test").await.expect("suppressed")["reason"],
        "hard_bounce"
    );
    assert!(postfix.log().contains("sender non-delivery notification"), "{}", postfix.log());
    assert_eq!(metric(&app, "dsn").await, 1);
    app.stop().await;
}
