//! Open and click tracking: links that redirect only to the mailed URL, hits folded into one
//! engagement per recipient and link (one webhook per window, however hard a link is hit),
//! links that never name the recipient, and tokens that stop recording once expired.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::StreamExt;
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::{Script, SmtpServer};
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use postwire_tracking::{MailCopy, TrackingKeys};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

/// Extracts the HTML part of a received message.
fn html_of(data: &[u8]) -> String {
    let msg = mail_parser::MessageParser::default().parse(data).expect("parse received message");
    msg.body_html(0).expect("an HTML part").to_string()
}

/// Every attribute value in `html` starting with `marker`.
fn attr_values(html: &str, marker: &str) -> Vec<String> {
    html.match_indices(marker)
        .map(|(i, _)| {
            let rest = &html[i..];
            let end = rest.find(['"', '\'', ' ', '>']).unwrap();
            rest[..end].replace("&amp;", "&")
        })
        .collect()
}

/// A tracked message to `to` on `domain` (MX on `mx`), delivered; returns its id and the
/// pixel and click URLs in the copy received.
async fn delivered_tracked(
    app: &TestApp,
    hosts: &[SmtpServer],
    to: &str,
) -> (String, String, String) {
    let body = json!({
        "from": "app@sender.test", "to": [to], "subject": "Reset",
        "html": "<html><body><p>Hi</p><a href=\"https://app.example.com/reset?t=abc&amp;u=1\">Reset</a></body></html>",
        "track_opens": true, "track_clicks": true, "metadata": {"user_id": 42},
    });
    let id = app.send_ok(&body).await.unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let html = html_of(&got.last().unwrap().data);
    assert!(!html.contains("https://app.example.com/reset"), "the link must be rewritten: {html}");
    let pixel = attr_values(&html, &format!("{}/t/o/", app.base));
    let click = attr_values(&html, &format!("{}/t/c/", app.base));
    assert_eq!((pixel.len(), click.len()), (1, 1), "{html}");
    (id, pixel[0].clone(), click[0].clone())
}

fn engagements(m: &Value) -> &Vec<Value> {
    m["engagements"].as_array().expect("engagements listed")
}

#[tokio::test]
async fn opens_and_clicks_are_recorded_and_clicks_redirect_only_to_the_mailed_link() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "track.test", &[(10, ip(23), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (_, secret) =
        app.create_webhook(&receiver.url(), &["message.opened", "message.clicked"]).await.unwrap();
    let (id, pixel, click) = delivered_tracked(&app, &hosts, "reader@track.test").await;

    let open = app.client.get(&pixel).header("user-agent", "MailClient/1.0").send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["content-type"], "image/gif");
    let redirect = app.client.get(&click).send().await.unwrap();
    assert!(redirect.status().is_redirection());
    assert_eq!(redirect.headers()["location"], "https://app.example.com/reset?t=abc&u=1");

    // A forged or altered token redirects nowhere and records nothing.
    let mut forged = click.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    assert_eq!(app.client.get(&forged).send().await.unwrap().status(), 404);
    let as_open = click.replace("/t/c/", "/t/o/");
    assert_eq!(app.client.get(&as_open).send().await.unwrap().status(), 404);

    let m = app
        .wait_message(&id, SOON, |m| {
            m["events"].as_array().unwrap().iter().any(|e| e["type"] == "message.clicked")
        })
        .await
        .unwrap();
    let types: Vec<_> =
        m["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["message.delivered", "message.opened", "message.clicked"]);
    assert_eq!(recipient(&m, "reader@track.test")["status"], "delivered");
    let clicked = &m["events"][2]["data"];
    assert_eq!(clicked["url"], "https://app.example.com/reset?t=abc&u=1");
    assert_eq!(clicked["recipient"], "reader@track.test");
    assert_eq!(clicked["metadata"], json!({"user_id": 42}));
    assert_eq!(m["events"][1]["data"]["user_agent"], "MailClient/1.0");
    let summary: Vec<_> = engagements(&m)
        .iter()
        .map(|e| {
            (e["recipient"].as_str(), e["type"].as_str(), e["url"].as_str(), e["count"].as_u64())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("reader@track.test"), Some("open"), None, Some(1)),
            (
                Some("reader@track.test"),
                Some("click"),
                Some("https://app.example.com/reset?t=abc&u=1"),
                Some(1)
            ),
        ]
    );
    let hooks = receiver.wait_for_requests(2, SOON).await.unwrap();
    for h in &hooks {
        verify_standard_webhook(&secret, h).unwrap();
    }
}

/// Issue 9: 20,000 hits on a link stored 20,000 events and POSTed each to every webhook. Now
/// 2,000 hits are one engagement counting 2,000, one event and one webhook, and the message
/// view stays small.
#[tokio::test]
async fn two_thousand_hits_on_one_link_are_one_engagement_and_one_webhook() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "burst.test", &[(10, ip(24), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    app.create_webhook(&receiver.url(), &["message.opened", "message.clicked"]).await.unwrap();
    let (id, pixel, click) = delivered_tracked(&app, &hosts, "reader@burst.test").await;

    const HITS: usize = 2_000;
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..HITS)
        .map(|_| {
            let (client, click) = (app.client.clone(), click.clone());
            async move { client.get(&click).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 303 || *s == 302 || *s == 307), "every hit redirects");
    eprintln!("{HITS} clicks answered in {elapsed:?}");

    // One more, distinct engagement: its webhook marks the point by which any webhook the
    // burst caused was due too.
    assert_eq!(app.client.get(&pixel).send().await.unwrap().status(), 200);
    let deadline = Instant::now() + SOON;
    let hooks = loop {
        let hooks: Vec<Value> = receiver.requests().iter().map(|r| r.json().unwrap()).collect();
        if hooks.iter().any(|h| h["type"] == "message.opened") {
            break hooks;
        }
        assert!(Instant::now() < deadline, "no webhook for the open: {hooks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let clicked = hooks.iter().filter(|h| h["type"] == "message.clicked").count();
    assert_eq!(clicked, 1, "one webhook for the burst, not {clicked}");

    let raw = app
        .client
        .get(app.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m: Value = serde_json::from_slice(&raw).unwrap();
    eprintln!("message view after {HITS} clicks: {} bytes", raw.len());
    assert!(raw.len() < 8_000, "the view stays small: {} bytes", raw.len());
    let types: Vec<_> =
        m["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["message.delivered", "message.clicked", "message.opened"]);
    let click_record: Vec<_> = engagements(&m).iter().filter(|e| e["type"] == "click").collect();
    assert_eq!(click_record.len(), 1, "{m:#}");
    assert_eq!(click_record[0]["count"], HITS as u64);
    assert!(click_record[0]["first_seen_at"].as_str() <= click_record[0]["last_seen_at"].as_str());
}

/// Every way the address could hide in a link: as written, lower-cased, its local part alone,
/// percent-encoded, hex, and base64 in both alphabets at each of the three alignments it could
/// sit at inside a longer payload.
fn encodings_of(address: &str) -> Vec<String> {
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let local = address.split('@').next().unwrap().to_string();
    let mut out = Vec::new();
    for text in [address.to_string(), address.to_lowercase(), local] {
        out.push(text.replace('@', "%40").replace('+', "%2B"));
        out.push(hex_of(&text));
        for engine in &engines {
            for offset in 0..3 {
                let enc = engine.encode(format!("{}{text}", "x".repeat(offset)));
                // Only the characters the text alone decides: not the first group (it holds
                // the prefix) nor the last three (they depend on whatever follows).
                let start = if offset == 0 { 0 } else { 4 };
                let end = enc.len().saturating_sub(3);
                if end > start {
                    out.push(enc[start..end].to_string());
                }
            }
        }
        out.push(text);
    }
    out.retain(|s| s.len() >= 6);
    out
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_tracking_link_never_contains_the_recipient_address_in_any_encoding() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "privacy.test", &[(10, ip(25), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let address = "Jane.Doe+news@privacy.test";
    let (id, pixel, click) = delivered_tracked(&app, &hosts, address).await;
    let needles = encodings_of(address);
    // The check is real: the same needles find the address in the old token format.
    let old = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"k":"o","m":id,"r":address}).to_string());
    assert!(needles.iter().any(|n| old.contains(n.as_str())), "needles miss {old}");
    for link in [&pixel, &click] {
        let token = link.rsplit('/').next().unwrap();
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap();
        let decoded = String::from_utf8_lossy(&decoded).to_lowercase();
        for needle in &needles {
            assert!(!link.contains(needle.as_str()), "{link} contains {needle}");
            assert!(!decoded.contains(&needle.to_lowercase()), "{link} decodes to {decoded}");
        }
    }
    // Still attributed to the right recipient.
    assert_eq!(app.client.get(&pixel).send().await.unwrap().status(), 200);
    let m = app.wait_message(&id, SOON, |m| !engagements(m).is_empty()).await.unwrap();
    assert_eq!(engagements(&m)[0]["recipient"], address);
}

/// A token past its expiry (`storage.retention` after acceptance; minted here with the test
/// secret so no test has to wait for it) still redirects to its signed URL and still serves the
/// pixel, but records nothing; the same link while live records.
#[tokio::test]
async fn an_expired_link_still_redirects_but_records_nothing() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "expiry.test", &[(10, ip(26), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    app.create_webhook(&receiver.url(), &["message.opened", "message.clicked"]).await.unwrap();
    let (id, _, _) = delivered_tracked(&app, &hosts, "late@expiry.test").await;
    let keys = TrackingKeys::new(app.settings.tracking.secret.expose().as_bytes());
    let copy = |expires_at| MailCopy { message_id: &id, recipient: 0, expires_at };
    let expired = copy(SystemTime::now() - Duration::from_secs(1));
    let target = "https://app.example.com/later";

    let redirect =
        app.client.get(keys.click_url(&app.base, &expired, target)).send().await.unwrap();
    assert!(redirect.status().is_redirection(), "{}", redirect.status());
    assert_eq!(redirect.headers()["location"], target);
    let pixel = app.client.get(keys.open_url(&app.base, &expired)).send().await.unwrap();
    assert_eq!(pixel.status(), 200);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    let m = app.message(&id).await.unwrap();
    assert!(engagements(&m).is_empty(), "an expired link recorded: {m:#}");
    assert_eq!(m["events"].as_array().unwrap().len(), 1, "{m:#}");

    // The same link while live is recorded, and it is the only webhook.
    let live = copy(SystemTime::now() + Duration::from_secs(3_600));
    app.client.get(keys.click_url(&app.base, &live, target)).send().await.unwrap();
    let hooks = receiver.wait_for_requests(1, SOON).await.unwrap();
    assert_eq!(hooks[0].json().unwrap()["data"]["url"], target);
    let m = app.message(&id).await.unwrap();
    assert_eq!(engagements(&m).len(), 1, "{m:#}");
    assert_eq!(receiver.requests().len(), 1);
}
