//! `GET /v1/messages/{id}/raw`: the bytes a real MX received, byte for byte; a sandbox key's
//! message rendered and signed as it would have been sent (dkimpy verifies it) though nothing
//! left the host; per-recipient copies of a tracked message; the visibility of
//! `GET /v1/messages/{id}`; `"sandbox": true` in a sandbox message's events.

use postwire_config::DkimAlgorithm;
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::dkim::{dkimpy_verify, publish_key};
use crate::{ip, mx_hosts, SOON};

/// `GET path` with `key`: status, Content-Type and body bytes.
pub(crate) async fn get_bytes(app: &TestApp, path: &str, key: &str) -> (u16, String, Vec<u8>) {
    let r = app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, r.bytes().await.unwrap().to_vec())
}

async fn call(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).bearer_auth(key).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A new key made with the app's admin key: its bearer token.
pub(crate) async fn new_key(app: &TestApp, body: Value) -> String {
    let (status, created) = call(app, "/v1/keys", &app.key, &body).await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn raw_is_what_the_mx_received_and_a_sandbox_copy_is_signed_the_same_way() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "inbox.test", &[(10, ip(212), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(&world, "sender.test", "raw1", DkimAlgorithm::RsaSha256)];
    let app = TestApp::start(settings).await.unwrap();
    let sandbox = new_key(&app, json!({"name": "test inbox", "sandbox": true})).await;
    let message = json!({"from": "Shop <shop@sender.test>", "to": ["ann@inbox.test"],
        "cc": ["bo@inbox.test"], "subject": "Your receipt", "text": "Thanks!\n.dot line\n",
        "html": "<p>Thanks!</p>"});

    // Live: /raw is byte for byte what the MX was handed.
    let live = app.send_ok(&message).await.unwrap();
    app.wait_final(&live, SOON).await.unwrap();
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    let (status, content_type, raw) =
        get_bytes(&app, &format!("/v1/messages/{live}/raw"), &app.key).await;
    assert_eq!((status, content_type.as_str()), (200, "message/rfc822"));
    assert_eq!(raw, got[0].data, "/raw is the received message byte for byte");
    let (status, _, by_cc) =
        get_bytes(&app, &format!("/v1/messages/{live}/raw?recipient=BO@inbox.test"), &app.key)
            .await;
    assert_eq!((status, &by_cc), (200, &raw), "one body for both: nothing tracked");

    // Sandbox: nothing reaches the MX, yet the copy is rendered and DKIM-signed as if sent.
    let (status, accepted) = call(&app, "/v1/messages", &sandbox, &message).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["dkim"]["selector"], "raw1");
    let id = accepted["id"].as_str().unwrap().to_string();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let (status, content_type, copy) =
        get_bytes(&app, &format!("/v1/messages/{id}/raw"), &sandbox).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "message/rfc822"),
        "{}",
        String::from_utf8_lossy(&copy)
    );
    let text = String::from_utf8_lossy(&copy);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=raw1; d=sender.test;"),
        "{text}"
    );
    assert!(
        text.contains("Subject: Your receipt\r\n") && text.contains("\r\n.dot line\r\n"),
        "{text}"
    );
    let (ok, report) = dkimpy_verify(&world, &copy).await;
    assert!(ok, "dkimpy verifies the sandbox copy:\n{report}\n{text}");
    assert_eq!(hosts[0].received().len(), 1, "the sandbox message was not sent");
    // Its events say sandbox; a live message's do not.
    let events = m["events"].as_array().unwrap();
    assert!(!events.is_empty() && events.iter().all(|e| e["data"]["sandbox"] == true), "{m:#}");
    let live_view = app.message(&live).await.unwrap();
    assert!(live_view["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["data"].get("sandbox").is_none()));

    // Visibility: as GET /v1/messages/{id}.
    let (status, ..) = get_bytes(&app, &format!("/v1/messages/{live}/raw"), &sandbox).await;
    assert_eq!(status, 404, "a sandbox key never sees a live message");
    let other = new_key(&app, json!({"name": "other", "scopes": ["send", "read"]})).await;
    let (status, ..) = get_bytes(&app, &format!("/v1/messages/{live}/raw"), &other).await;
    assert_eq!(status, 404, "another key's message is not revealed");
    let (status, ..) = get_bytes(&app, "/v1/messages/msg_nope/raw", &app.key).await;
    assert_eq!(status, 404);
    let (status, _, body) =
        get_bytes(&app, &format!("/v1/messages/{id}/raw?recipient=stranger@inbox.test"), &sandbox)
            .await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    app.stop().await;
}

#[tokio::test]
async fn a_tracked_message_has_one_copy_per_recipient_chosen_with_the_recipient_query() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "track.test", &[(10, ip(213), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app
        .send_ok(&json!({"from": "news@sender.test", "to": ["a@track.test", "b@track.test"],
            "subject": "links", "html": "<p><a href=\"https://example.com/x\">x</a></p>",
            "track_clicks": true}))
        .await
        .unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let got = hosts[0].received();
    assert_eq!(got.len(), 2, "one transaction per tracked copy");
    let for_rcpt = |r: &str| got.iter().find(|g| g.rcpt_to == [r]).unwrap().data.clone();
    let (_, _, first) = get_bytes(&app, &format!("/v1/messages/{id}/raw"), &app.key).await;
    let (_, _, b) =
        get_bytes(&app, &format!("/v1/messages/{id}/raw?recipient=b@track.test"), &app.key).await;
    assert_eq!(first, for_rcpt("a@track.test"), "the first recipient's copy by default");
    assert_eq!(b, for_rcpt("b@track.test"));
    assert_ne!(first, b, "tracking links differ per recipient");
    app.stop().await;
}
