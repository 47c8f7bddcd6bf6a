//! The suppression list: a 5xx to RCPT TO lists the address, later sends to it are recorded
//! `suppressed` (never attempted) with a `message.suppressed` event, and the list is managed
//! through `/v1/suppressions`. SMTP sinks on 127.0.0.60–62.

use std::time::Duration;

use chrono::Utc;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use postwire_store::{ids, NewApiKey};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    call(app, reqwest::Method::GET, path, Some(&app.key), None).await
}

async fn add(app: &TestApp, body: Value) -> (u16, Value) {
    call(app, reqwest::Method::POST, "/v1/suppressions", Some(&app.key), Some(body)).await
}

async fn remove(app: &TestApp, email: &str) -> u16 {
    call(app, reqwest::Method::DELETE, &format!("/v1/suppressions/{email}"), Some(&app.key), None)
        .await
        .0
}

/// A key with only `scopes`.
async fn key_with(app: &TestApp, scopes: &[&str]) -> String {
    let minted = ids::mint_api_key();
    app.state
        .create_api_key(NewApiKey {
            id: minted.id.clone(),
            name: "limited".into(),
            hash: minted.hash,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created_at: Utc::now(),
            sandbox: false,
        })
        .await
        .expect("create key");
    minted.key
}

#[tokio::test]
async fn rcpt_550_suppresses_the_address_until_it_is_removed() {
    let world = World::new().await;
    // gone@ is refused the first time only, so the send after the removal is delivered.
    let script = Script::default().rcpt_reply(|addr, nth| {
        if addr.to_ascii_lowercase().starts_with("gone@") && nth == 1 {
            (550, "5.1.1 gone: no such user".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let hosts = mx_hosts(&world, "supp.test", &[(10, ip(60), script)]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (_, secret) = app.create_webhook(&receiver.url(), &["message.suppressed"]).await.unwrap();

    // 1. The hard bounce lists the address, lower-cased.
    let first = app.send_ok(&simple_message(&["Gone@supp.test"])).await.unwrap();
    let m = app.wait_final(&first, SOON).await.unwrap();
    assert_eq!(recipient(&m, "Gone@supp.test")["status"], "bounced", "{m:#}");
    let (status, entry) = get(&app, "/v1/suppressions/gone@supp.test").await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["email"], "gone@supp.test");
    assert_eq!(entry["reason"], "hard_bounce");
    assert_eq!(entry["message_id"], first.as_str());
    assert!(entry["smtp_response"].as_str().unwrap().contains("550"), "{entry}");
    assert!(entry["created_at"].is_string());

    // 2. A later send: the listed recipient is suppressed in the 202 and in the message; the
    //    other one is delivered; the sink never sees the listed address again.
    let (status, accepted) = app
        .send(&json!({"from": "app@sender.test", "to": ["gone@supp.test", "ok@supp.test"], "text": "t", "tags": ["t1"]}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(recipient(&accepted, "gone@supp.test")["status"], "suppressed", "{accepted}");
    assert_eq!(recipient(&accepted, "ok@supp.test")["status"], "queued");
    assert_eq!(accepted["status"], "queued");
    let second = accepted["id"].as_str().unwrap().to_string();
    let m = app.wait_final(&second, SOON).await.unwrap();
    let gone = recipient(&m, "gone@supp.test");
    assert_eq!(gone["status"], "suppressed", "{m:#}");
    assert_eq!(gone["attempts"], 0);
    assert!(
        gone["last_response"].as_str().unwrap().starts_with("suppressed: hard_bounce"),
        "{gone}"
    );
    assert_eq!(recipient(&m, "ok@supp.test")["status"], "delivered");
    let suppressed_events: Vec<&Value> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message.suppressed")
        .collect();
    assert_eq!(suppressed_events.len(), 1, "{m:#}");
    assert_eq!(suppressed_events[0]["data"]["recipient"], "gone@supp.test");
    assert_eq!(
        hosts[0].rcpt_attempts("gone@supp.test"),
        1,
        "only the bounced attempt reached the MX"
    );
    assert!(hosts[0]
        .received()
        .iter()
        .all(|r| !r.rcpt_to.iter().any(|a| a.eq_ignore_ascii_case("gone@supp.test"))));

    // The subscribed webhook receives the event, signed.
    let requests = receiver.wait_for_requests(1, SOON).await.unwrap();
    let event = verify_standard_webhook(&secret, &requests[0])
        .expect("signature verifies with the reference library");
    assert_eq!(event["type"], "message.suppressed");
    assert_eq!(event["data"]["message_id"], second.as_str());
    assert_eq!(event["data"]["recipient"], "gone@supp.test");
    assert_eq!(event["data"]["tags"], json!(["t1"]));

    // 3. Its only recipient suppressed: the whole message is suppressed at once, no job.
    let (status, accepted) = app.send(&simple_message(&["gone@supp.test"])).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "suppressed");
    let m = app.message(accepted["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(m["status"], "suppressed", "{m:#}");

    // 4. Removed (any case, `@` encoded or not): the next send goes through.
    assert_eq!(remove(&app, "GONE%40supp.test").await, 204);
    assert_eq!(get(&app, "/v1/suppressions/gone@supp.test").await.0, 404);
    assert_eq!(remove(&app, "gone@supp.test").await, 404);
    let (status, accepted) = app.send(&simple_message(&["gone@supp.test"])).await.unwrap();
    assert_eq!(status, 202);
    assert_eq!(recipient(&accepted, "gone@supp.test")["status"], "queued");
    let m = app.wait_final(accepted["id"].as_str().unwrap(), SOON).await.unwrap();
    assert_eq!(recipient(&m, "gone@supp.test")["status"], "delivered", "{m:#}");
    assert_eq!(hosts[0].rcpt_attempts("gone@supp.test"), 2);
}

#[tokio::test]
async fn a_451_or_a_data_554_does_not_suppress() {
    let world = World::new().await;
    let soft = Script::default().rcpt_reply(|_, _| (451, "4.2.1 mailbox busy".into()));
    let _soft = mx_hosts(&world, "softsupp.test", &[(10, ip(61), soft)]).await;
    let data = Script::default().data_reply(554, "5.7.1 message refused as spam");
    let _data = mx_hosts(&world, "datasupp.test", &[(10, ip(62), data)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();

    let deferred = app.send_ok(&simple_message(&["busy@softsupp.test"])).await.unwrap();
    app.wait_message(&deferred, SOON, |m| {
        recipient(m, "busy@softsupp.test")["status"] == "deferred"
    })
    .await
    .unwrap();
    let refused = app.send_ok(&simple_message(&["spam@datasupp.test"])).await.unwrap();
    let m = app.wait_final(&refused, SOON).await.unwrap();
    assert_eq!(recipient(&m, "spam@datasupp.test")["status"], "bounced", "{m:#}");

    assert_eq!(get(&app, "/v1/suppressions/busy@softsupp.test").await.0, 404);
    assert_eq!(get(&app, "/v1/suppressions/spam@datasupp.test").await.0, 404);
    let (status, list) = get(&app, "/v1/suppressions").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]), "{list}");
    assert_eq!(list["next_cursor"], Value::Null);
}

#[tokio::test]
async fn suppression_list_pages_newest_first_and_blocks_manual_entries() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let emails = ["a@pages.test", "b@pages.test", "c@pages.test", "d@pages.test"];
    for email in emails {
        let (status, entry) = add(&app, json!({"email": email})).await;
        assert_eq!(status, 201, "{entry}");
        assert_eq!(entry["reason"], "manual");
        assert_eq!(entry["smtp_response"], Value::Null);
        // Distinct creation times, so "newest first" has one right answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, again) =
        add(&app, json!({"email": "A@pages.test", "reason": "hard_bounce"})).await;
    assert_eq!(status, 200, "an address already listed keeps its entry");
    assert_eq!(again["reason"], "manual");

    let mut seen = Vec::new();
    let mut path = "/v1/suppressions?limit=1".to_string();
    loop {
        let (status, page) = get(&app, &path).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 1, "{page}");
        seen.extend(data.iter().map(|e| e["email"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/suppressions?limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= emails.len(), "pagination does not end: {seen:?}");
    }
    assert_eq!(seen, ["d@pages.test", "c@pages.test", "b@pages.test", "a@pages.test"]);

    // A manual entry blocks sends too.
    let (status, entry) = add(&app, json!({"email": "Blocked@Manual.TEST"})).await;
    assert_eq!(status, 201);
    assert_eq!(entry["email"], "blocked@manual.test");
    let (status, accepted) = app.send(&simple_message(&["blocked@manual.test"])).await.unwrap();
    assert_eq!(status, 202);
    assert_eq!(recipient(&accepted, "blocked@manual.test")["status"], "suppressed", "{accepted}");
    let m = app.message(accepted["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(recipient(&m, "blocked@manual.test")["status"], "suppressed", "{m:#}");
    assert!(recipient(&m, "blocked@manual.test")["last_response"]
        .as_str()
        .unwrap()
        .contains("manual"));
}

#[tokio::test]
async fn suppression_routes_check_keys_scopes_and_input() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    use reqwest::Method;

    // 401 without a key.
    assert_eq!(call(&app, Method::GET, "/v1/suppressions", None, None).await.0, 401);
    assert_eq!(
        call(&app, Method::POST, "/v1/suppressions", None, Some(json!({"email": "x@y.test"})))
            .await
            .0,
        401
    );
    assert_eq!(
        call(&app, Method::DELETE, "/v1/suppressions/x@y.test", Some("pw_key_bogus"), None).await.0,
        401
    );

    // 403: `read` for GET, `admin` for POST and DELETE.
    let send_only = key_with(&app, &["send"]).await;
    let read_only = key_with(&app, &["read"]).await;
    assert_eq!(call(&app, Method::GET, "/v1/suppressions", Some(&send_only), None).await.0, 403);
    assert_eq!(
        call(&app, Method::GET, "/v1/suppressions/x@y.test", Some(&send_only), None).await.0,
        403
    );
    assert_eq!(call(&app, Method::GET, "/v1/suppressions", Some(&read_only), None).await.0, 200);
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/suppressions",
        Some(&read_only),
        Some(json!({"email": "x@y.test"})),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(
        call(&app, Method::DELETE, "/v1/suppressions/x@y.test", Some(&read_only), None).await.0,
        403
    );

    // 404 for an address not listed.
    assert_eq!(get(&app, "/v1/suppressions/nobody@y.test").await.0, 404);
    assert_eq!(remove(&app, "nobody@y.test").await, 404);

    // 422, naming the field.
    for (body, field) in [
        (json!({"email": "not-an-address"}), "email"),
        (json!({"email": "x@y.test", "reason": "because"}), "reason"),
        (json!({"email": "x@y.test", "extra": 1}), "(body)"),
    ] {
        let (status, problem) = add(&app, body.clone()).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert!(
            problem["errors"][0]["field"].as_str().unwrap().contains(field) || field == "(body)",
            "{problem}"
        );
    }
    for path in [
        "/v1/suppressions?limit=0",
        "/v1/suppressions?limit=101",
        "/v1/suppressions?cursor=garbage!",
    ] {
        let (status, problem) = get(&app, path).await;
        assert_eq!(status, 422, "{path} → {problem}");
    }
    assert_eq!(get(&app, "/v1/suppressions/not-an-address").await.0, 422);
}
