//! `Idempotency-Key` on the send routes and `POST /v1/messages/batch`, proven on the wire: a
//! retried or raced request reaches the SMTP peer once, and every accepted batch message is
//! delivered.

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

/// `POST path` with this app's key and, when given, an `Idempotency-Key`.
async fn post(
    app: &TestApp,
    path: &str,
    idem: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut req = app.client.post(app.url(path)).bearer_auth(&app.key).json(body);
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

/// `postwire_messages_accepted_total` from `/metrics`: messages queued by this app so far.
async fn accepted_total(app: &TestApp) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("postwire_messages_accepted_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn the_same_key_and_body_twice_answers_the_same_id_and_sends_once() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "idem.test", &[(10, ip(50), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = simple_message(&["ann@idem.test"]);
    let (s1, _, first) = post(&app, "/v1/messages", Some("reset-ann-1"), &body).await;
    assert_eq!(s1, 202, "{first}");
    let (s2, _, second) = post(&app, "/v1/messages", Some("reset-ann-1"), &body).await;
    assert_eq!(s2, 202, "{second}");
    assert_eq!(first, second, "the replay is the first answer, byte for byte");
    let id = first["id"].as_str().unwrap();
    let m = app.wait_final(id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "ann@idem.test")["status"], "delivered", "{m:#}");
    assert_eq!(hosts[0].received().len(), 1);
    assert_eq!(accepted_total(&app).await, 1);
    // Without the header (or with another key) the same body is a new message.
    let (s3, _, third) = post(&app, "/v1/messages", Some("reset-ann-2"), &body).await;
    assert_eq!(s3, 202);
    assert_ne!(third["id"], first["id"]);
    hosts[0].wait_for_messages(2, SOON).await.unwrap();
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_409_problem() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (s1, _, _) =
        post(&app, "/v1/messages", Some("k-409"), &simple_message(&["a@conflict.invalid"])).await;
    assert_eq!(s1, 202);
    let (s2, ct, problem) =
        post(&app, "/v1/messages", Some("k-409"), &simple_message(&["b@conflict.invalid"])).await;
    assert_eq!(s2, 409, "{problem}");
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    assert!(problem["detail"].as_str().unwrap().contains("different request body"), "{problem}");
    assert_eq!(accepted_total(&app).await, 1);
}

#[tokio::test]
async fn a_validation_error_is_replayed_for_its_key_too() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let bad = json!({"from": "nobody", "to": ["a@replay.invalid"], "subject": "s", "text": "t"});
    let (s1, _, first) = post(&app, "/v1/messages", Some("k-422"), &bad).await;
    let (s2, ct, second) = post(&app, "/v1/messages", Some("k-422"), &bad).await;
    assert_eq!((s1, s2), (422, 422));
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    assert_eq!(first, second);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_a_400() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = simple_message(&["a@badkey.invalid"]);
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "tab\there"] {
        let (status, ct, problem) = post(&app, "/v1/messages", Some(key), &body).await;
        assert_eq!(status, 400, "key {key:?}: {problem}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"), "{problem}");
    }
    assert_eq!(accepted_total(&app).await, 0);
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_accept_exactly_one_message() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "race.test", &[(10, ip(51), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = simple_message(&["cy@race.test"]);
    let answers = futures::future::join_all(
        (0..10).map(|_| post(&app, "/v1/messages", Some("race-1"), &body)),
    )
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (status, _, json) in &answers {
        match status {
            202 => {
                ids.insert(json["id"].as_str().unwrap().to_string());
            }
            409 => assert!(json["detail"].as_str().unwrap().contains("in progress"), "{json}"),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 202 carries the one id: {answers:?}");
    let id = ids.into_iter().next().unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(hosts[0].received().len(), 1);
    assert_eq!(accepted_total(&app).await, 1);
}

#[tokio::test]
async fn a_batch_with_one_invalid_message_accepts_the_others_in_order_and_delivers_them() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "batch.test", &[(10, ip(52), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut typo = simple_message(&["bad@batch.test"]);
    typo["subjet"] = json!("typo");
    let body = json!({"messages": [
        simple_message(&["one@batch.test"]),
        json!({"from": "App <app@sender.test>", "to": ["broken@"], "subject": "s", "text": "t"}),
        simple_message(&["two@batch.test"]),
        typo,
    ]});
    let (status, ct, answer) = post(&app, "/v1/messages/batch", None, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ct.as_deref(), Some("application/json"));
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["recipients"][0]["email"], "one@batch.test");
    assert_eq!(results[1]["errors"][0]["field"], "to[0]", "{answer}");
    assert!(results[1].get("id").is_none());
    assert_eq!(results[2]["recipients"][0]["email"], "two@batch.test");
    assert_eq!(results[3]["errors"][0]["field"], "subjet", "{answer}");
    for (i, email) in [(0, "one@batch.test"), (2, "two@batch.test")] {
        assert_eq!(results[i]["status"], "queued");
        let m = app.wait_final(results[i]["id"].as_str().unwrap(), SOON).await.unwrap();
        assert_eq!(recipient(&m, email)["status"], "delivered", "{m:#}");
    }
    assert_eq!(hosts[0].received().len(), 2);
    assert_eq!(accepted_total(&app).await, 2);
}

#[tokio::test]
async fn a_batch_retried_with_its_key_is_replayed_and_sent_once() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "batchidem.test", &[(10, ip(53), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = json!({"messages": [simple_message(&["a@batchidem.test"]), simple_message(&["b@batchidem.test"])]});
    let (s1, _, first) = post(&app, "/v1/messages/batch", Some("batch-1"), &body).await;
    let (s2, _, second) = post(&app, "/v1/messages/batch", Some("batch-1"), &body).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first, second);
    for r in first["results"].as_array().unwrap() {
        app.wait_final(r["id"].as_str().unwrap(), SOON).await.unwrap();
    }
    assert_eq!(hosts[0].received().len(), 2);
    assert_eq!(accepted_total(&app).await, 2);
}

#[tokio::test]
async fn a_batch_of_501_messages_or_of_none_is_a_422() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let one = simple_message(&["x@many.invalid"]);
    for n in [501, 0] {
        let body = json!({"messages": vec![one.clone(); n]});
        let (status, ct, problem) = post(&app, "/v1/messages/batch", None, &body).await;
        assert_eq!(status, 422, "{n} messages: {problem}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert_eq!(problem["errors"][0]["field"], "messages");
    }
    let (status, _, answer) =
        post(&app, "/v1/messages/batch", None, &json!({"messages": vec![one; 500]})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"].as_array().unwrap().len(), 500);
    assert_eq!(accepted_total(&app).await, 500);
}
