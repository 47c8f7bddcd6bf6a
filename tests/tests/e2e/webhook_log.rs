//! The webhook delivery log, replay with the same `webhook-id`, auto-disable after
//! `webhooks.disable_after` (with `webhook.disabled` to the other endpoints), `PATCH` to enable
//! again, and the `GET /v1/events` pull API. SMTP sinks on 127.0.0.174–176.

use std::time::Duration;

use postwire_e2e::app::World;
use postwire_e2e::app::{simple_message, TestApp};
use postwire_e2e::smtp::Script;
use postwire_e2e::webhook::WebhookReceiver;
use serde_json::{json, Value};

use crate::{ip, mx_hosts, SOON};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(&app.key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> Value {
    let (status, body) = call(app, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Polls `GET path` until `done` holds, with a deadline.
async fn wait_for(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let body = get(app, path).await;
        if done(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out on {path}; last: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_delivery_log_shows_a_failing_endpoints_attempts_and_a_replay_keeps_the_webhook_id() {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "log.test", &[(10, ip(174), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    // The first attempt and its three retries fail; the replay succeeds.
    receiver.respond_with(|nth| if nth <= 4 { 500 } else { 200 });
    let app = TestApp::start(world.settings()).await.unwrap();
    let (hook, _) = app.create_webhook(&receiver.url(), &["message.delivered"]).await.unwrap();
    app.send_ok(&simple_message(&["ann@log.test"])).await.unwrap();

    let path = format!("/v1/webhooks/{hook}/deliveries");
    let log = wait_for(&app, &path, |l| l["data"][0]["state"] == "failed").await;
    let delivery = &log["data"][0];
    assert_eq!(delivery["type"], "message.delivered");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{log:#}");
    for a in attempts {
        assert_eq!(a["status"], 500, "{a}");
        assert!(a["latency_ms"].as_u64().is_some() && a["at"].is_string(), "{a}");
        assert!(a["error"].as_str().unwrap().contains("500"), "{a}");
    }
    assert!(delivery.get("next_attempt_at").is_none(), "given up: no next retry");

    let id = delivery["id"].as_str().unwrap();
    let (status, replay) =
        call(&app, reqwest::Method::POST, &format!("{path}/{id}/retry"), None).await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["state"], "pending");
    let got = receiver.wait_for_requests(5, SOON).await.unwrap();
    let first = got[0].header("webhook-id").unwrap();
    assert_eq!(got[4].header("webhook-id"), Some(first), "a replay is the same event");
    assert_eq!(first, delivery["event_id"].as_str().unwrap());
    let log = wait_for(&app, &path, |l| l["data"][0]["state"] == "delivered").await;
    let attempts = log["data"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5);
    assert_eq!(attempts[4]["status"], 200);

    let (status, _) =
        call(&app, reqwest::Method::POST, &format!("{path}/whd_999999/retry"), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&app, reqwest::Method::GET, &format!("{path}?cursor=nope"), None).await;
    assert_eq!(status, 422);
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_disable_after_is_disabled_and_the_other_endpoints_are_told() {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "disable.test", &[(10, ip(175), Script::default())]).await;
    let failing = WebhookReceiver::start().await;
    failing.respond_with(|_| 503);
    let healthy = WebhookReceiver::start().await;
    let mut settings = world.settings();
    // Attempts at about 0, 200 and 600 ms: the third is past the limit.
    settings.webhooks.disable_after = "300ms".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let (bad, _) = app.create_webhook(&failing.url(), &[]).await.unwrap();
    let (_good, _) = app.create_webhook(&healthy.url(), &["webhook.disabled"]).await.unwrap();
    app.send_ok(&simple_message(&["ann@disable.test"])).await.unwrap();

    let hook = wait_for(&app, &format!("/v1/webhooks/{bad}"), |w| w["enabled"] == false).await;
    assert!(hook["disabled_at"].is_string(), "{hook}");
    let told = healthy.wait_for_requests(1, SOON).await.unwrap();
    let event = told[0].json().unwrap();
    assert_eq!(event["type"], "webhook.disabled", "{event}");
    assert_eq!(event["data"]["webhook_id"], bad.as_str());
    assert!(event["data"]["reason"].as_str().unwrap().contains(&failing.url()), "{event}");
    let after = failing.requests().len();

    // Disabled: no replay, and later events do not reach it.
    let log = get(&app, &format!("/v1/webhooks/{bad}/deliveries")).await;
    assert!(log["data"].as_array().unwrap().iter().all(|d| d["state"] != "pending"), "{log:#}");
    let id = log["data"][0]["id"].as_str().unwrap().to_string();
    let retry = format!("/v1/webhooks/{bad}/deliveries/{id}/retry");
    assert_eq!(call(&app, reqwest::Method::POST, &retry, None).await.0, 409);

    let (status, hook) = call(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/webhooks/{bad}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{hook}");
    assert_eq!(hook["enabled"], true);
    assert!(hook.get("disabled_at").is_none(), "{hook}");
    failing.respond_with(|_| 200);
    assert_eq!(call(&app, reqwest::Method::POST, &retry, None).await.0, 202);
    failing.wait_for_requests(after + 1, SOON).await.unwrap();
    let (status, _) = call(
        &app,
        reqwest::Method::PATCH,
        &format!("/v1/webhooks/{bad}"),
        Some(json!({"enabled": "yes"})),
    )
    .await;
    assert_eq!(status, 422);
    app.stop().await;
}

#[tokio::test]
async fn events_lists_every_event_in_order_filtered_by_type_and_since_and_paged_by_cursor() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|addr, _| {
        if addr.starts_with("gone@") {
            (550, "5.1.1 no such user".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let _hosts = mx_hosts(&world, "events.test", &[(10, ip(176), script)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let start = chrono::Utc::now();
    let first = app.send_ok(&simple_message(&["ann@events.test"])).await.unwrap();
    app.wait_final(&first, SOON).await.unwrap();
    let second = app.send_ok(&simple_message(&["gone@events.test"])).await.unwrap();
    app.wait_final(&second, SOON).await.unwrap();

    let all = get(&app, "/v1/events").await;
    let kinds: Vec<_> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].clone(), e["data"]["message_id"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [(json!("message.delivered"), json!(first)), (json!("message.bounced"), json!(second))],
        "{all:#}"
    );

    let page = get(&app, "/v1/events?limit=1").await;
    assert_eq!(page["data"][0]["data"]["message_id"], first.as_str());
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let rest = get(&app, &format!("/v1/events?limit=1&cursor={cursor}")).await;
    assert_eq!(rest["data"][0]["data"]["message_id"], second.as_str());
    let cursor = rest["next_cursor"].as_str().unwrap().to_string();
    let none = get(&app, &format!("/v1/events?cursor={cursor}")).await;
    assert_eq!(none["data"], json!([]), "caught up");

    let bounced = get(&app, "/v1/events?type=message.bounced").await;
    assert_eq!(bounced["data"].as_array().unwrap().len(), 1);
    assert_eq!(bounced["data"][0]["data"]["message_id"], second.as_str());
    let since =
        (start + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let later = get(&app, &format!("/v1/events?since={}", since.replace('+', "%2B"))).await;
    assert_eq!(later["data"], json!([]));
    let since = start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let from_start = get(&app, &format!("/v1/events?since={since}")).await;
    assert_eq!(from_start["data"].as_array().unwrap().len(), 2);

    for bad in ["?type=message.nope", "?cursor=nope", "?limit=0", "?since=yesterday"] {
        let (status, body) =
            call(&app, reqwest::Method::GET, &format!("/v1/events{bad}"), None).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    app.stop().await;
}
