//! DKIM status per message: the 202 body, batch items and `GET /v1/messages/{id}` say whether
//! and with which key a message is signed, for API and SMTP sends alike; the signature the MX
//! receives matches; `signing.require_dkim` refuses what would go out unsigned (422 naming
//! `from`, a 5xx over SMTP).

use std::net::SocketAddr;

use postwire_config::DkimAlgorithm;
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::dkim::publish_key;
use crate::{ip, mx_hosts, SOON};

/// Submits `message` over implicit TLS with Python's smtplib; prints `ok <DATA reply>` or
/// `refused <code> <text>`.
const SUBMIT: &str = r#"
import os, smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL(os.environ["HOST"], int(os.environ["PORT"]), context=ctx, timeout=20)
s.login("apikey", os.environ["KEY"])
s.mail(os.environ["FROM"])
s.rcpt(os.environ["TO"])
code, resp = s.data(("From: " + os.environ["FROM"] + "\r\nTo: " + os.environ["TO"]
    + "\r\nSubject: over smtp\r\n\r\nhello\r\n").encode())
print("ok" if code == 250 else "refused", code, resp.decode())
s.quit()
"#;

async fn submit(addr: SocketAddr, key: &str, from: &str, to: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .args(["-c", SUBMIT])
        .env("HOST", addr.ip().to_string())
        .env("PORT", addr.port().to_string())
        .env("KEY", key)
        .env("FROM", from)
        .env("TO", to)
        .output()
        .await
        .expect("run python3");
    assert!(out.status.success(), "smtplib failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn queued_id(reply: &str) -> String {
    reply
        .strip_prefix("ok 250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("DATA reply: {reply}"))
        .to_string()
}

/// The `s=` of each DKIM-Signature header in a received message.
fn selectors(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ").replace("\r\n\t", " ");
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .filter_map(|l| l.split(';').map(str::trim).find_map(|t| t.strip_prefix("s=")))
        .map(str::to_owned)
        .collect()
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).bearer_auth(&app.key).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_message_says_whether_and_with_which_key_it_is_signed_and_the_mx_sees_that_key() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "status.test", &[(10, ip(210), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(&world, "sender.test", "cfg1", DkimAlgorithm::Ed25519Sha256)];
    let app = TestApp::start(settings).await.unwrap();

    // A configured key: the 202 body, then the message view.
    let (status, accepted) = app
        .send(&json!({"from": "Shop <shop@Sender.test>", "to": ["r1@status.test"],
            "cc": ["c1@status.test"], "subject": "s", "text": "t"}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let expected = json!({"signed": true, "domain": "sender.test", "selector": "cfg1"});
    assert_eq!(accepted["dkim"], expected, "{accepted:#}");
    let id = accepted["id"].as_str().unwrap();
    let m = app.wait_final(id, SOON).await.unwrap();
    assert_eq!(m["dkim"], expected, "{m:#}");
    assert_eq!(m["to"], json!(["r1@status.test"]), "{m:#}");
    assert_eq!(m["cc"], json!(["c1@status.test"]), "{m:#}");

    // No key for the From domain: unsigned, with the reason.
    let (_, unsigned) = app
        .send(&json!({"from": "a@nokey.test", "to": ["r2@status.test"], "text": "t"}))
        .await
        .unwrap();
    assert_eq!(unsigned["dkim"]["signed"], false, "{unsigned:#}");
    assert!(unsigned["dkim"]["reason"].as_str().unwrap().contains("nokey.test"), "{unsigned:#}");
    let m = app.wait_final(unsigned["id"].as_str().unwrap(), SOON).await.unwrap();
    assert_eq!(m["dkim"], unsigned["dkim"], "{m:#}");

    // A key made through the API signs at once, and the status names it (batch items too).
    let (status, domain) =
        post(&app, "/v1/domains", &json!({"domain": "apikey.test", "selector": "made1"})).await;
    assert_eq!(status, 201, "{domain}");
    let (status, batch) = post(
        &app,
        "/v1/messages/batch",
        &json!({"messages": [
            {"from": "x@apikey.test", "to": ["r3@status.test"], "text": "t"},
            {"from": "x@sender.test", "to": ["r4@status.test"], "text": "t"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["results"][0]["dkim"]["selector"], "made1", "{batch:#}");
    assert_eq!(batch["results"][1]["dkim"]["selector"], "cfg1", "{batch:#}");

    // Over SMTP submission: recorded the same way.
    let reply =
        submit(app.submission_tls_addr, &app.key, "ops@sender.test", "r5@status.test").await;
    let smtp_id = queued_id(&reply);
    let m = app.wait_final(&smtp_id, SOON).await.unwrap();
    assert_eq!(m["source"], "smtp");
    assert_eq!(m["dkim"], expected, "{m:#}");

    // What the MX received carries exactly the keys the statuses named.
    hosts[0].wait_for_messages(5, SOON).await.unwrap();
    for got in hosts[0].received() {
        let want: Vec<&str> = match got.rcpt_to[0].as_str() {
            "r1@status.test" | "c1@status.test" | "r4@status.test" | "r5@status.test" => {
                vec!["cfg1"]
            }
            "r2@status.test" => vec![],
            "r3@status.test" => vec!["made1"],
            other => panic!("unexpected recipient {other}"),
        };
        assert_eq!(selectors(&got.data), want, "{:?}", got.rcpt_to);
    }
    app.stop().await;
}

#[tokio::test]
async fn require_dkim_refuses_unsigned_mail_with_a_422_naming_from_and_a_5xx_over_smtp() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "strict.test", &[(10, ip(211), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(&world, "sender.test", "cfg1", DkimAlgorithm::Ed25519Sha256)];
    settings.signing.require_dkim = true;
    let app = TestApp::start(settings).await.unwrap();

    let (status, problem) = app
        .send(&json!({"from": "a@nokey.test", "to": ["r@strict.test"], "text": "t"}))
        .await
        .unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "from", "{problem:#}");
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("signing.require_dkim") && message.contains("nokey.test"),
        "{message}"
    );

    // In a batch only the unsigned item is refused.
    let (status, batch) = post(
        &app,
        "/v1/messages/batch",
        &json!({"messages": [
            {"from": "a@nokey.test", "to": ["r@strict.test"], "text": "t"},
            {"from": "a@sender.test", "to": ["r@strict.test"], "text": "t"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["results"][0]["errors"][0]["field"], "from", "{batch:#}");
    assert_eq!(batch["results"][1]["dkim"]["signed"], true, "{batch:#}");

    let reply = submit(app.submission_tls_addr, &app.key, "ops@nokey.test", "r@strict.test").await;
    assert!(reply.starts_with("refused 550"), "{reply}");
    assert!(reply.contains("DKIM") && reply.contains("signing.require_dkim"), "{reply}");
    let reply = submit(app.submission_tls_addr, &app.key, "ops@sender.test", "r@strict.test").await;
    queued_id(&reply);

    // Only the two signed messages left.
    hosts[0].wait_for_messages(2, SOON).await.unwrap();
    let got = hosts[0].received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| selectors(&g.data) == ["cfg1"]));
    app.stop().await;
}

#[tokio::test]
async fn config_check_shows_require_dkim_and_the_env_override_sets_it() {
    let world = World::new().await;
    let config = world.path().join("postwire.toml");
    std::fs::write(&config, "[signing]\nrequire_dkim = false\n").unwrap();
    let check = |env: Option<&str>| {
        let mut cmd = postwire_e2e::process::postwire(&config);
        cmd.args(["config", "check"]);
        if let Some(v) = env {
            cmd.env("POSTWIRE__SIGNING__REQUIRE_DKIM", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
        printed["signing"]["require_dkim"].as_bool()
    };
    assert_eq!(check(None), Some(false));
    assert_eq!(check(Some("true")), Some(true));
}
