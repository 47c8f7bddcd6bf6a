//! API habits users of Postmark and Resend expect (issue 13): `to`/`cc`/`bcc` as one string,
//! attachment types guessed from the filename, `RateLimit-*` on every answer, problem+json
//! with a stable `code` everywhere (unknown routes and wrong methods included),
//! `message.canceled` events, and templates addressed by alias. SMTP sinks on 127.0.0.220–223.

use std::collections::BTreeSet;

use base64::Engine;
use chrono::{TimeDelta, Utc};
use mail_parser::MimeHeaders;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, SOON};

/// An answer: status, headers and JSON body (null when there is none).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts a problem+json answer with `status` and `code`.
    fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.body);
        assert_eq!(self.body["status"], status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
    }
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut req = app.client.request(method, app.url(path));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.expect("request");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    Answer { status, headers, body: r.json().await.unwrap_or(Value::Null) }
}

fn rcpt_emails(answer: &Value) -> Vec<&str> {
    answer["recipients"].as_array().unwrap().iter().map(|r| r["email"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn to_cc_and_bcc_take_one_address_as_a_plain_string_as_well_as_a_list() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "strings.test", &[(10, ip(220), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = json!({
        "from": "app@sender.test",
        "to": "Ann Example <ann@strings.test>",
        "cc": "cy@strings.test",
        "bcc": "hidden@strings.test",
        "subject": "one string each", "text": "hi",
    });
    let (status, accepted) = app.send(&body).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        rcpt_emails(&accepted),
        ["ann@strings.test", "cy@strings.test", "hidden@strings.test"]
    );
    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["ann@strings.test", "cy@strings.test", "hidden@strings.test"]);
    let parsed = mail_parser::MessageParser::default().parse(&got[0].data).unwrap();
    let to = parsed.to().and_then(|a| a.first()).expect("a To header");
    assert_eq!((to.name(), to.address()), (Some("Ann Example"), Some("ann@strings.test")));
    let cc = parsed.cc().and_then(|a| a.first()).expect("a Cc header");
    assert_eq!(cc.address(), Some("cy@strings.test"));
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(!text.contains("hidden@strings.test"), "bcc stays off the headers: {text}");

    // Lists behave as before, and the two forms mix in a batch.
    let listed = json!({"from": "app@sender.test", "to": ["a@strings.test", "b@strings.test"],
                        "subject": "s", "text": "t"});
    let single =
        json!({"from": "app@sender.test", "to": "c@strings.test", "subject": "s", "text": "t"});
    let batch = call(
        &app,
        reqwest::Method::POST,
        "/v1/messages/batch",
        Some(&app.key),
        Some(&json!({"messages": [listed, single]})),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(rcpt_emails(&batch.body["results"][0]), ["a@strings.test", "b@strings.test"]);
    assert_eq!(rcpt_emails(&batch.body["results"][1]), ["c@strings.test"]);

    // Neither a string nor a list: a 422 on the field, naming both forms.
    let (status, problem) = app
        .send(&json!({"from": "app@sender.test", "to": 7, "subject": "s", "text": "t"}))
        .await
        .unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "to", "{problem}");
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("an address string or a list"), "{message}");
}

#[tokio::test]
async fn an_attachment_without_content_type_is_typed_from_its_filename() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "attach.test", &[(10, ip(221), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let content = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 tiny");
    let mut body = simple_message(&["ann@attach.test"]);
    body["attachments"] = json!([
        {"filename": "invoice.pdf", "content": content},
        {"filename": "photo.PNG", "content": content},
        {"filename": "blob.unknownext", "content": content},
        {"filename": "README", "content": content},
        {"filename": "table.pdf", "content_type": "text/csv", "content": content},
    ]);
    let id = app.send_ok(&body).await.unwrap();
    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&got[0].data).unwrap();
    let types: Vec<(String, String)> = parsed
        .attachments()
        .map(|a| {
            let ct = a.content_type().unwrap();
            let full = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default());
            (a.attachment_name().unwrap_or_default().to_string(), full)
        })
        .collect();
    assert_eq!(
        types,
        [
            ("invoice.pdf".to_string(), "application/pdf".to_string()),
            ("photo.PNG".to_string(), "image/png".to_string()),
            ("blob.unknownext".to_string(), "application/octet-stream".to_string()),
            ("README".to_string(), "application/octet-stream".to_string()),
            ("table.pdf".to_string(), "text/csv".to_string()),
        ],
        "guessed from the extension; a given type wins"
    );
    app.wait_final(&id, SOON).await.unwrap();

    // A given type is still checked.
    body["attachments"] = json!([{"filename": "a.pdf", "content_type": "pdf", "content": content}]);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "attachments[0].content_type");
}

#[tokio::test]
async fn every_v1_answer_to_a_known_key_carries_its_request_window_in_ratelimit_headers() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.per_key_per_second = 40;
    let app = TestApp::start(settings).await.unwrap();
    let key = Some(app.key.as_str());
    let check = |a: &Answer, what: &str| {
        assert_eq!(a.header("ratelimit-limit"), Some("40"), "{what}: {:?}", a.headers);
        assert_eq!(a.header("ratelimit-policy"), Some("40;w=1"), "{what}");
        assert_eq!(a.header("ratelimit-reset"), Some("1"), "{what}");
        let left: u32 = a.header("ratelimit-remaining").unwrap().parse().unwrap();
        assert!(left < 40, "{what}: this request counted ({left} left)");
        left
    };
    let sent = call(
        &app,
        reqwest::Method::POST,
        "/v1/messages",
        key,
        Some(&simple_message(&["a@ratelimit.invalid"])),
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    check(&sent, "a 202");
    let listed = call(&app, reqwest::Method::GET, "/v1/templates", key, None).await;
    assert_eq!(listed.status, 200);
    check(&listed, "a 200");
    let missing = call(&app, reqwest::Method::GET, "/v1/messages/msg_nope", key, None).await;
    missing.assert_problem(404, "not_found");
    check(&missing, "a 404");
    let invalid = call(
        &app,
        reqwest::Method::POST,
        "/v1/messages",
        key,
        Some(&json!({"from": "x", "to": [], "text": "t"})),
    )
    .await;
    invalid.assert_problem(422, "validation_failed");
    check(&invalid, "a 422");
    // No key, no window: a 401 says nothing about anyone's limits.
    let anonymous = call(&app, reqwest::Method::GET, "/v1/templates", None, None).await;
    anonymous.assert_problem(401, "unauthorized");
    assert_eq!(anonymous.header("ratelimit-limit"), None);
    // Nor do routes outside /v1.
    let health = call(&app, reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(health.header("ratelimit-limit"), None);

    // With no per-second limit there is no window to describe.
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.per_key_per_second = 0;
    let open = TestApp::start(settings).await.unwrap();
    let listed = call(&open, reqwest::Method::GET, "/v1/templates", Some(&open.key), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("ratelimit-limit"), None);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_problem_json_with_allow() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let key = Some(app.key.as_str());
    for path in ["/v1/nope", "/v2/messages", "/nothing-here"] {
        let a = call(&app, reqwest::Method::GET, path, key, None).await;
        a.assert_problem(404, "route_not_found");
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains(path) && detail.contains("GET"), "{detail}");
    }
    let long = format!("/v1/{}", "x".repeat(5_000));
    let a = call(&app, reqwest::Method::GET, &long, key, None).await;
    a.assert_problem(404, "route_not_found");
    assert!(a.body["detail"].as_str().unwrap().len() < 400, "a long path is not echoed whole");
    let a = call(&app, reqwest::Method::PATCH, "/v1/messages", key, Some(&json!({}))).await;
    a.assert_problem(405, "method_not_allowed");
    let allow: BTreeSet<&str> = a.header("allow").unwrap().split(',').map(str::trim).collect();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow:?}");
    assert!(!allow.contains("PATCH"), "{allow:?}");
    let a = call(&app, reqwest::Method::PUT, "/v1/messages/msg_x", key, None).await;
    a.assert_problem(405, "method_not_allowed");
    let allow = a.header("allow").unwrap();
    assert!(allow.contains("DELETE") && allow.contains("GET"), "{allow}");
}

#[tokio::test]
async fn each_kind_of_error_carries_its_stable_code() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_message_size = postwire_config::ByteSize(20_000);
    let app = TestApp::start(settings).await.unwrap();
    let key = Some(app.key.as_str());
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move { call(app, reqwest::Method::POST, path, key, Some(&body)).await }
    };

    call(&app, reqwest::Method::GET, "/v1/templates", Some("pw_bad_key"), None)
        .await
        .assert_problem(401, "unauthorized");
    let reader = post("/v1/keys", json!({"name": "reader", "scopes": ["read"]})).await;
    assert_eq!(reader.status, 201, "{}", reader.body);
    let reader = reader.body["key"].as_str().unwrap().to_string();
    call(
        &app,
        reqwest::Method::POST,
        "/v1/messages",
        Some(&reader),
        Some(&simple_message(&["a@codes.invalid"])),
    )
    .await
    .assert_problem(403, "forbidden");
    call(&app, reqwest::Method::GET, "/v1/messages/msg_nope", key, None)
        .await
        .assert_problem(404, "not_found");
    post("/v1/messages", json!({"from": "nobody", "to": ["a@codes.invalid"], "text": "t"}))
        .await
        .assert_problem(422, "validation_failed");
    let broken = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body): (u16, Value) = (broken.status().as_u16(), broken.json().await.unwrap());
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let mut big = simple_message(&["a@codes.invalid"]);
    big["text"] = json!("x".repeat(30_000));
    post("/v1/messages", big).await.assert_problem(413, "payload_too_large");

    // The same Idempotency-Key with another body.
    let idem = |body: Value| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url("/v1/messages"))
                .bearer_auth(&app.key)
                .header("idempotency-key", "codes-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(idem(simple_message(&["a@codes.invalid"])).await.0, 202);
    let (status, problem) = idem(simple_message(&["b@codes.invalid"])).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("idempotency_conflict")),
        "{problem}"
    );

    // A plain conflict: canceling what is already final.
    let sent = post("/v1/messages", simple_message(&["x@codes.invalid"])).await;
    let id = sent.body["id"].as_str().unwrap().to_string();
    app.wait_final(&id, SOON).await.unwrap();
    call(&app, reqwest::Method::DELETE, &format!("/v1/messages/{id}"), key, None)
        .await
        .assert_problem(409, "conflict");

    // A batch item refused carries the code its own send would have had.
    let batch = post(
        "/v1/messages/batch",
        json!({"messages": [simple_message(&["ok@codes.invalid"]), {"from": "bad", "to": ["b@codes.invalid"], "text": "t"}]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert!(batch.body["results"][0]["id"].is_string(), "{}", batch.body);
    assert_eq!(batch.body["results"][1]["code"], "validation_failed", "{}", batch.body);
    assert_eq!(batch.body["results"][1]["errors"][0]["field"], "from", "{}", batch.body);
}

#[tokio::test]
async fn canceling_a_message_emits_message_canceled_per_recipient_to_webhooks_and_the_event_log() {
    let world = World::new().await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let key = Some(app.key.as_str());
    let (_, secret) = app
        .create_webhook(&format!("{}/canceled", receiver.url()), &["message.canceled"])
        .await
        .unwrap();
    let mut body = simple_message(&["ann@cancelhooks.test", "bob@cancelhooks.test"]);
    body["send_at"] = json!((Utc::now() + TimeDelta::hours(1)).to_rfc3339());
    body["tags"] = json!(["reset"]);
    body["metadata"] = json!({"user": 7});
    let id = app.send_ok(&body).await.unwrap();

    let canceled =
        call(&app, reqwest::Method::DELETE, &format!("/v1/messages/{id}"), key, None).await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    let recipients_of = |events: &Value| -> BTreeSet<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "message.canceled" && e["data"]["message_id"] == id.as_str())
            .map(|e| e["data"]["recipient"].as_str().unwrap().to_string())
            .collect()
    };
    let both: BTreeSet<String> =
        ["ann@cancelhooks.test", "bob@cancelhooks.test"].map(String::from).into();
    assert_eq!(recipients_of(&canceled.body["events"]), both, "{}", canceled.body);
    let view = app.message(&id).await.unwrap();
    assert_eq!(view["events"].as_array().unwrap().len(), 2, "{view:#}");

    let log = call(&app, reqwest::Method::GET, "/v1/events?type=message.canceled", key, None).await;
    assert_eq!(log.status, 200, "{}", log.body);
    assert_eq!(recipients_of(&log.body["data"]), both, "{}", log.body);

    let requests = receiver.wait_for_requests(2, SOON).await.unwrap();
    let mut hooked = BTreeSet::new();
    for req in &requests {
        let event = verify_standard_webhook(&secret, req).expect("signed");
        assert_eq!(event["type"], "message.canceled");
        assert_eq!(event["data"]["message_id"], id.as_str());
        assert_eq!(event["data"]["tags"], json!(["reset"]));
        assert_eq!(event["data"]["metadata"], json!({"user": 7}));
        hooked.insert(event["data"]["recipient"].as_str().unwrap().to_string());
    }
    assert_eq!(hooked, both);
}

#[tokio::test]
async fn templates_are_read_replaced_deleted_and_sent_by_their_unique_alias() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "alias.test", &[(10, ip(223), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let key = Some(app.key.as_str());
    let template = |alias: &str, subject: &str| json!({"name": "reset", "alias": alias, "subject": subject, "text": "Code {{ code }}"});
    let created = call(
        &app,
        reqwest::Method::POST,
        "/v1/templates",
        key,
        Some(&template("password-reset", "Reset {{ code }}")),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["alias"], "password-reset");
    let id = created.body["id"].as_str().unwrap().to_string();
    let got = call(&app, reqwest::Method::GET, "/v1/templates/password-reset", key, None).await;
    assert_eq!((got.status, got.body["id"].as_str()), (200, Some(id.as_str())), "{}", got.body);

    // Unique: a second template cannot take it, and a malformed one is a 422 on `alias`.
    let twin = call(
        &app,
        reqwest::Method::POST,
        "/v1/templates",
        key,
        Some(&template("password-reset", "Other")),
    )
    .await;
    twin.assert_problem(409, "conflict");
    assert!(twin.body["detail"].as_str().unwrap().contains("`password-reset`"), "{}", twin.body);
    for bad in ["Password Reset", "tpl_sneaky", "-x"] {
        let a = call(&app, reqwest::Method::POST, "/v1/templates", key, Some(&template(bad, "s")))
            .await;
        a.assert_problem(422, "validation_failed");
        assert_eq!(a.body["errors"][0]["field"], "alias", "{bad}: {}", a.body);
    }

    // A send names it by alias in `template_id`.
    let send = json!({"from": "app@sender.test", "to": ["ann@alias.test"],
                      "template_id": "password-reset", "variables": {"code": "4711"}});
    let sent = app.send_ok(&send).await.unwrap();
    let received = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&received[0].data).unwrap();
    assert_eq!(parsed.subject(), Some("Reset 4711"));
    app.wait_final(&sent, SOON).await.unwrap();

    // Replaced through the alias, renaming it: the old alias is free, the new one works.
    let replaced = call(
        &app,
        reqwest::Method::PUT,
        "/v1/templates/password-reset",
        key,
        Some(&template("reset-v2", "New {{ code }}")),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(
        (replaced.body["id"].as_str(), replaced.body["alias"].as_str()),
        (Some(id.as_str()), Some("reset-v2"))
    );
    call(&app, reqwest::Method::GET, "/v1/templates/password-reset", key, None)
        .await
        .assert_problem(404, "not_found");
    let (status, problem) = app.send(&send).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "template_id");
    assert_eq!(
        call(&app, reqwest::Method::GET, &format!("/v1/templates/{id}"), key, None).await.body
            ["alias"],
        "reset-v2"
    );

    // Deleted by alias; the alias can then be used again.
    let deleted = call(&app, reqwest::Method::DELETE, "/v1/templates/reset-v2", key, None).await;
    assert_eq!(deleted.status, 204);
    call(&app, reqwest::Method::GET, &format!("/v1/templates/{id}"), key, None)
        .await
        .assert_problem(404, "not_found");
    let again =
        call(&app, reqwest::Method::POST, "/v1/templates", key, Some(&template("reset-v2", "s")))
            .await;
    assert_eq!(again.status, 201, "{}", again.body);
}
