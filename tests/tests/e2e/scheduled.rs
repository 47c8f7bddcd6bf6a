//! Scheduled sending (`send_at`) and cancel (`DELETE /v1/messages/{id}`): nothing reaches the
//! MX before `send_at`, a canceled message never does. SMTP sinks on 127.0.0.150–153.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use postwire_store::{ids, NewApiKey};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

async fn cancel(app: &TestApp, id: &str, key: &str) -> (u16, Option<String>, Value) {
    let r = app
        .client
        .delete(app.url(&format!("/v1/messages/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("DELETE message");
    let status = r.status().as_u16();
    let content_type =
        r.headers().get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
    (status, content_type, r.json().await.unwrap_or(Value::Null))
}

fn at(message: &Value, send_at: DateTime<Utc>) -> Value {
    let mut m = message.clone();
    m["send_at"] = Value::String(send_at.to_rfc3339());
    m
}

/// How long until `t`, zero if it has passed.
fn until(t: DateTime<Utc>) -> Duration {
    (t - Utc::now()).to_std().unwrap_or_default()
}

#[tokio::test]
async fn a_scheduled_message_is_not_sent_before_send_at_and_is_delivered_after() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "sched.test", &[(10, ip(150), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let send_at = Utc::now() + TimeDelta::seconds(3);

    let (status, accepted) =
        app.send(&at(&simple_message(&["ann@sched.test"]), send_at)).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "scheduled");
    assert_eq!(recipient(&accepted, "ann@sched.test")["status"], "scheduled");
    let id = accepted["id"].as_str().unwrap().to_string();
    let m = app.message(&id).await.unwrap();
    assert_eq!(m["status"], "scheduled", "{m:#}");
    let r = recipient(&m, "ann@sched.test");
    assert_eq!(r["status"], "scheduled");
    assert_eq!(r["attempts"], 0);
    let next: DateTime<Utc> = r["next_attempt_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.timestamp_millis(), send_at.timestamp_millis());

    // Until shortly before send_at, the MX host sees nothing at all.
    let quiet = until(send_at).saturating_sub(Duration::from_millis(200));
    assert!(
        hosts[0].wait_for_messages(1, quiet).await.is_err(),
        "a message arrived before send_at"
    );
    assert_eq!(hosts[0].connections(), 0, "no SMTP connection before send_at");
    assert_eq!(app.message(&id).await.unwrap()["status"], "scheduled");

    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let arrived = Utc::now();
    assert!(arrived >= send_at, "delivered at {arrived}, before send_at {send_at}");
    assert_eq!(got[0].rcpt_to, ["ann@sched.test"]);
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "ann@sched.test");
    assert_eq!(r["status"], "delivered", "{m:#}");
    assert_eq!(r["attempts"], 1);
    let delivered_at: DateTime<Utc> =
        m["events"][0]["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(delivered_at >= send_at);
    assert_eq!(hosts[0].received().len(), 1, "sent exactly once");
}

#[tokio::test]
async fn a_canceled_scheduled_message_is_never_delivered() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "cancel.test", &[(10, ip(151), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let send_at = Utc::now() + TimeDelta::seconds(2);
    let body = at(&simple_message(&["bo@cancel.test", "cy@cancel.test"]), send_at);
    let id = app.send_ok(&body).await.unwrap();

    let (status, content_type, view) = cancel(&app, &id, &app.key).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["status"], "canceled");
    for email in ["bo@cancel.test", "cy@cancel.test"] {
        let r = recipient(&view, email);
        assert_eq!(r["status"], "canceled", "{view:#}");
        assert_eq!(r["attempts"], 0);
        assert!(r["next_attempt_at"].is_null());
    }
    // Nothing is left to cancel now.
    let (status, content_type, problem) = cancel(&app, &id, &app.key).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));

    // Well past send_at (a distributed job comes back from its delay queue after ~1 s, then is
    // dropped), the MX host has still seen nothing.
    let window = until(send_at) + Duration::from_secs(3);
    assert!(
        hosts[0].wait_for_messages(1, window).await.is_err(),
        "a canceled message was delivered"
    );
    assert_eq!(hosts[0].connections(), 0);
    let m = app.message(&id).await.unwrap();
    assert_eq!(m["status"], "canceled", "{m:#}");
    let events: Vec<(&str, &str)> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["data"]["recipient"].as_str().unwrap()))
        .collect();
    assert_eq!(events.len(), 2, "one event per canceled recipient: {m:#}");
    assert!(events.iter().all(|(kind, _)| *kind == "message.canceled"), "{m:#}");
}

#[tokio::test]
async fn cancel_after_delivery_is_a_conflict_and_an_unknown_id_is_not_found() {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "late.test", &[(10, ip(152), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    // A send_at in the past means now.
    let body = at(&simple_message(&["di@late.test"]), Utc::now() - TimeDelta::minutes(5));
    let (status, accepted) = app.send(&body).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let id = accepted["id"].as_str().unwrap().to_string();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "di@late.test")["status"], "delivered", "{m:#}");

    let (status, content_type, problem) = cancel(&app, &id, &app.key).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(problem["status"], 409);
    assert_eq!(app.message(&id).await.unwrap()["status"], "delivered");

    let (status, _, problem) = cancel(&app, "msg_doesnotexist", &app.key).await;
    assert_eq!(status, 404, "{problem}");

    // Canceling needs the `send` scope.
    let minted = ids::mint_api_key();
    app.state
        .create_api_key(NewApiKey {
            id: minted.id.clone(),
            name: "reader".into(),
            hash: minted.hash,
            scopes: vec!["read".into()],
            created_at: Utc::now(),
            sandbox: false,
        })
        .await
        .unwrap();
    let (status, _, _) = cancel(&app, &id, &minted.key).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn send_at_more_than_seven_days_ahead_is_refused() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "far.test", &[(10, ip(153), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (status, problem) = app
        .send(&at(&simple_message(&["ed@far.test"]), Utc::now() + TimeDelta::days(8)))
        .await
        .unwrap();
    assert_eq!(status, 422, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["send_at"]);

    // Six days ahead is fine: scheduled, and canceled here so it never goes out.
    let (status, accepted) = app
        .send(&at(&simple_message(&["ed@far.test"]), Utc::now() + TimeDelta::days(6)))
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "scheduled");
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(cancel(&app, id, &app.key).await.0, 200);

    // In a batch, each message is checked on its own.
    let batch = json!({"messages": [
        at(&simple_message(&["ed@far.test"]), Utc::now() + TimeDelta::days(2)),
        at(&simple_message(&["ed@far.test"]), Utc::now() + TimeDelta::days(8)),
    ]});
    let r = app
        .client
        .post(app.url("/v1/messages/batch"))
        .bearer_auth(&app.key)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let results: Value = r.json().await.unwrap();
    assert_eq!(results["results"][0]["status"], "scheduled", "{results:#}");
    assert_eq!(results["results"][0]["recipients"][0]["status"], "scheduled");
    assert_eq!(results["results"][1]["errors"][0]["field"], "send_at", "{results:#}");

    // Not RFC 3339: a 422 naming the field.
    let mut body = simple_message(&["ed@far.test"]);
    body["send_at"] = Value::String("tomorrow at noon".into());
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "send_at");
    assert!(hosts[0].received().is_empty());
}
