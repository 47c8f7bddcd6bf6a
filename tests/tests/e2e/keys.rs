//! API keys over HTTP: scopes enforced per route, keys created, listed and revoked by an admin
//! key, sandbox keys whose messages are recorded as delivered without DNS or SMTP, and the
//! boundaries between keys: none grants more than it holds, a sandbox key manages only sandbox keys.

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

/// What a sandbox message's recipients show as `last_response`.
const SANDBOX_MARKER: &str = "250 sandbox: not sent (sandbox API key)";

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /v1/keys` with the app's admin key, expecting 201; returns the body.
async fn create_key(app: &TestApp, body: Value) -> Value {
    let (status, created) =
        call(app, reqwest::Method::POST, "/v1/keys", &app.key, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// `method path` with `key`, expecting 403; returns the problem's `detail`.
async fn forbidden(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> String {
    let (status, problem) = call(app, method.clone(), path, key, body).await;
    assert_eq!(
        (status, problem["status"].as_u64()),
        (403, Some(403)),
        "{method} {path}: {problem}"
    );
    problem["detail"].as_str().unwrap().to_string()
}

/// The ids `GET /v1/keys` shows to `key`.
async fn listed_ids(app: &TestApp, key: &str) -> Vec<String> {
    let (status, list) = call(app, reqwest::Method::GET, "/v1/keys", key, None).await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_string()).collect()
}

fn field_names(problem: &Value) -> Vec<&str> {
    problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_send_only_key_made_over_http_can_send_but_not_read_or_manage() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let created = create_key(&app, json!({"name": "ci", "scopes": ["send"]})).await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("pw_key_"), "{created}");
    assert_eq!(created["scopes"], json!(["send"]));
    assert_eq!(created["sandbox"], false);
    assert_eq!(postwire_store::ids::split_api_key(key).unwrap().0, created["id"].as_str().unwrap());

    use reqwest::Method as M;
    let (status, sent) =
        call(&app, M::POST, "/v1/messages", key, Some(simple_message(&["a@example.org"]))).await;
    assert_eq!(status, 202, "{sent}");
    let message_path = format!("/v1/messages/{}", sent["id"].as_str().unwrap());
    let (status, problem) = call(&app, M::GET, &message_path, key, None).await;
    assert_eq!((status, problem["status"].as_u64()), (403, Some(403)), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("`read`"), "{problem}");
    for (method, path, body) in [
        (M::POST, "/v1/keys", Some(json!({"name": "escalate"}))),
        (M::GET, "/v1/keys", None),
        (M::DELETE, "/v1/keys/key_0000000000000000", None),
        (M::GET, "/v1/webhooks", None),
        (M::POST, "/v1/webhooks", Some(json!({"url": "http://127.0.0.1:9/hook"}))),
    ] {
        let (status, problem) = call(&app, method.clone(), path, key, body).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
    }

    // The other way round: a read-only key reads but cannot send. Reading passes the scope
    // check; another key's message is then not found (it is not this key's to see), while an
    // admin reader sees it.
    let reader = create_key(&app, json!({"name": "dashboard", "scopes": ["read"]})).await;
    let reader = reader["key"].as_str().unwrap();
    assert_eq!(call(&app, M::GET, "/v1/messages", reader, None).await.0, 200);
    assert_eq!(call(&app, M::GET, &message_path, reader, None).await.0, 404);
    let admin_reader = create_key(&app, json!({"name": "ops", "scopes": ["read", "admin"]})).await;
    let admin_reader = admin_reader["key"].as_str().unwrap();
    assert_eq!(call(&app, M::GET, &message_path, admin_reader, None).await.0, 200);
    assert_eq!(
        call(&app, M::POST, "/v1/messages", reader, Some(simple_message(&["a@example.org"])))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn listing_keys_shows_every_key_but_never_a_secret_or_hash() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let created = create_key(
        &app,
        json!({"name": "billing", "scopes": ["send", "read", "send"], "sandbox": true}),
    )
    .await;
    assert_eq!(created["scopes"], json!(["send", "read"]), "duplicates dropped");
    assert_eq!(created["sandbox"], true);
    let defaulted = create_key(&app, json!({"name": "  everything  "})).await;
    assert_eq!(
        defaulted["scopes"],
        json!(["send", "read", "admin"]),
        "no scopes given: all three, as in the CLI"
    );
    assert_eq!(defaulted["name"], "everything");

    let r = app.client.get(app.url("/v1/keys")).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [&app.key, created["key"].as_str().unwrap(), defaulted["key"].as_str().unwrap()] {
        let (_, secret) = postwire_store::ids::split_api_key(secret).unwrap();
        assert!(!text.contains(secret), "a secret leaked into the list: {text}");
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "the harness key and two new ones: {list:#}");
    let fields = |k: &Value| {
        let mut f: Vec<_> = k.as_object().unwrap().keys().cloned().collect();
        f.sort();
        f
    };
    for k in data {
        assert_eq!(
            fields(k),
            ["created_at", "id", "name", "revoked_at", "sandbox", "scopes"],
            "{k}"
        );
    }
    let listed = data.iter().find(|k| k["id"] == created["id"]).expect("the new key is listed");
    assert_eq!(listed["name"], "billing");
    assert_eq!(listed["scopes"], json!(["send", "read"]));
    assert_eq!(listed["sandbox"], true);
    assert_eq!(listed["created_at"], created["created_at"], "the 201 and the list agree");
    assert_eq!(listed["revoked_at"], Value::Null);
}

#[tokio::test]
async fn a_key_revoked_over_http_fails_with_401_at_once() {
    use reqwest::Method as M;
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let created = create_key(&app, json!({"name": "leaked", "scopes": ["send"]})).await;
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let body = simple_message(&["a@example.org"]);
    assert_eq!(call(&app, M::POST, "/v1/messages", key, Some(body.clone())).await.0, 202);

    assert_eq!(call(&app, M::DELETE, &format!("/v1/keys/{id}"), &app.key, None).await.0, 204);
    let (status, problem) = call(&app, M::POST, "/v1/messages", key, Some(body)).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(
        call(&app, M::DELETE, &format!("/v1/keys/{id}"), &app.key, None).await.0,
        204,
        "revoking twice is fine"
    );
    let (_, list) = call(&app, M::GET, "/v1/keys", &app.key, None).await;
    let listed = list["data"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap();
    assert!(listed["revoked_at"].is_string(), "{listed}");

    let (status, problem) =
        call(&app, M::DELETE, "/v1/keys/key_0000000000000000", &app.key, None).await;
    assert_eq!(status, 404, "{problem}");
    // The key making the request cannot revoke itself: it stays usable.
    let own = postwire_store::ids::split_api_key(&app.key).unwrap().0.to_string();
    let (status, problem) = call(&app, M::DELETE, &format!("/v1/keys/{own}"), &app.key, None).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(call(&app, M::GET, "/v1/keys", &app.key, None).await.0, 200);
}

#[tokio::test]
async fn bad_key_requests_get_422_naming_the_field() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    for (body, field) in [
        (json!({"name": "x", "scopes": ["send", "root"]}), "scopes[1]"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": " "}), "name"),
        (json!({"name": "tab\there"}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "x", "sandbox": "yes"}), "sandbox"),
        (json!({"name": "x", "scope": ["send"]}), "scope"),
        (json!({"scopes": ["send"]}), "(body)"),
    ] {
        let (status, problem) =
            call(&app, reqwest::Method::POST, "/v1/keys", &app.key, Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(field_names(&problem), [field], "{body}: {problem}");
    }
    let (_, problem) = call(
        &app,
        reqwest::Method::POST,
        "/v1/keys",
        &app.key,
        Some(json!({"name": "x", "scopes": ["root"]})),
    )
    .await;
    assert!(
        problem["errors"][0]["message"].as_str().unwrap().contains("unknown scope `root`"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_sandbox_key_message_is_delivered_without_dns_or_smtp_and_its_webhook_verifies() {
    let world = World::new().await;
    let hosts =
        mx_hosts(&world, "sandbox.test", &[(10, ip(70), postwire_e2e::smtp::Script::default())])
            .await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (_, secret) = app.create_webhook(&receiver.url(), &["message.delivered"]).await.unwrap();
    let sandbox =
        create_key(&app, json!({"name": "staging", "scopes": ["send"], "sandbox": true})).await;
    let sandbox_key = sandbox["key"].as_str().unwrap();

    // Validated like a live send: a bad address is still a 422.
    let bad = json!({"from": "app@sender.test", "to": ["broken@"], "text": "t"});
    assert_eq!(
        call(&app, reqwest::Method::POST, "/v1/messages", sandbox_key, Some(bad)).await.0,
        422
    );
    let body = json!({
        "from": "App <app@sender.test>", "to": ["ann@sandbox.test"], "cc": ["bob@sandbox.test"],
        "subject": "s", "text": "t", "tags": ["staging"], "metadata": {"run": 7},
    });
    let (status, sent) =
        call(&app, reqwest::Method::POST, "/v1/messages", sandbox_key, Some(body)).await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["id"].as_str().unwrap();
    let m = app.wait_final(id, SOON).await.unwrap();
    assert_eq!(m["status"], "delivered", "{m:#}");
    for email in ["ann@sandbox.test", "bob@sandbox.test"] {
        let r = recipient(&m, email);
        assert_eq!(
            (r["status"].as_str(), r["attempts"].as_u64()),
            (Some("delivered"), Some(1)),
            "{m:#}"
        );
        assert_eq!(r["last_response"], SANDBOX_MARKER);
    }
    let events = m["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{m:#}");
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "message.delivered"
                && e["data"]["smtp_response"] == SANDBOX_MARKER),
        "{m:#}"
    );

    let requests = receiver.wait_for_requests(2, SOON).await.unwrap();
    for req in &requests {
        let event = verify_standard_webhook(&secret, req)
            .expect("the sandbox event is signed like any other");
        assert_eq!(event["type"], "message.delivered");
        assert_eq!(event["data"]["message_id"], id);
        assert_eq!(event["data"]["smtp_response"], SANDBOX_MARKER);
        assert_eq!(event["data"]["metadata"], json!({"run": 7}));
    }
    assert_eq!(hosts[0].connections(), 0, "a sandbox message never opens an SMTP connection");
    assert_eq!(world.dns.queries_for("sandbox.test"), 0, "nor looks up the MX");
    assert_eq!(world.dns.queries_for("mx0.sandbox.test"), 0);

    // The same message from a live key goes over the wire: the zeros above are not vacuous.
    let live = app
        .send_ok(&json!({"from": "app@sender.test", "to": ["ann@sandbox.test"], "text": "t"}))
        .await
        .unwrap();
    let m = app.wait_final(&live, SOON).await.unwrap();
    assert_ne!(recipient(&m, "ann@sandbox.test")["last_response"], SANDBOX_MARKER);
    assert_eq!(hosts[0].received().len(), 1);
    assert!(world.dns.queries_for("sandbox.test") > 0);
}

#[tokio::test]
async fn sandbox_admin_key_cannot_create_a_live_key() {
    use reqwest::Method as M;
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let sandbox = create_key(
        &app,
        json!({"name": "staging", "scopes": ["send", "read", "admin"], "sandbox": true}),
    )
    .await;
    let sandbox_key = sandbox["key"].as_str().unwrap();
    let before = listed_ids(&app, &app.key).await;

    for body in [json!({"name": "escape"}), json!({"name": "escape", "sandbox": false})] {
        let detail = forbidden(&app, M::POST, "/v1/keys", sandbox_key, Some(body.clone())).await;
        assert!(detail.contains("sandbox"), "{body}: {detail}");
    }
    assert_eq!(listed_ids(&app, &app.key).await, before, "nothing was created");

    // Asked for explicitly, a sandbox key is fine, and without `scopes` it gets no admin.
    let (status, child) =
        call(&app, M::POST, "/v1/keys", sandbox_key, Some(json!({"name": "ci", "sandbox": true})))
            .await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(
        (child["sandbox"].as_bool(), &child["scopes"]),
        (Some(true), &json!(["send", "read"]))
    );
}

#[tokio::test]
async fn a_key_cannot_grant_scopes_it_lacks() {
    use reqwest::Method as M;
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let admin_only = create_key(&app, json!({"name": "ops", "scopes": ["admin"]})).await;
    let admin_only = admin_only["key"].as_str().unwrap();

    let body = json!({"name": "more", "scopes": ["send", "admin", "read"]});
    let detail = forbidden(&app, M::POST, "/v1/keys", admin_only, Some(body)).await;
    assert!(detail.contains("`send`") && detail.contains("`read`"), "{detail}");
    assert!(!detail.contains("`admin`"), "admin is its own: {detail}");
    let detail = forbidden(
        &app,
        M::POST,
        "/v1/keys",
        admin_only,
        Some(json!({"name": "more", "scopes": ["send"]})),
    )
    .await;
    assert!(detail.contains("`send`"), "{detail}");

    // Without `scopes` the default is cut down to what the caller holds.
    let (status, created) =
        call(&app, M::POST, "/v1/keys", admin_only, Some(json!({"name": "same"}))).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["scopes"], json!(["admin"]));
    // A sandbox key's default leaves out admin; with nothing left, the scopes must be named.
    let (status, problem) = call(
        &app,
        M::POST,
        "/v1/keys",
        admin_only,
        Some(json!({"name": "empty", "sandbox": true})),
    )
    .await;
    assert_eq!((status, field_names(&problem)), (422, vec!["scopes"]), "{problem}");
    // And a subset of its own scopes is allowed.
    let (status, created) = call(
        &app,
        M::POST,
        "/v1/keys",
        &app.key,
        Some(json!({"name": "sub", "scopes": ["read", "admin"]})),
    )
    .await;
    assert_eq!((status, &created["scopes"]), (201, &json!(["read", "admin"])), "{created}");
}

#[tokio::test]
async fn sandbox_key_cannot_revoke_a_live_key() {
    use reqwest::Method as M;
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let sandbox = create_key(
        &app,
        json!({"name": "staging", "scopes": ["send", "read", "admin"], "sandbox": true}),
    )
    .await;
    let sandbox_key = sandbox["key"].as_str().unwrap();
    let live = create_key(&app, json!({"name": "prod", "scopes": ["send"]})).await;
    let (live_id, live_key) = (live["id"].as_str().unwrap(), live["key"].as_str().unwrap());
    let harness_id = postwire_store::ids::split_api_key(&app.key).unwrap().0.to_string();

    for id in [live_id, harness_id.as_str()] {
        let detail = forbidden(&app, M::DELETE, &format!("/v1/keys/{id}"), sandbox_key, None).await;
        assert!(detail.contains("sandbox"), "{detail}");
    }
    let body = simple_message(&["a@example.org"]);
    assert_eq!(
        call(&app, M::POST, "/v1/messages", live_key, Some(body)).await.0,
        202,
        "still live"
    );
    assert_eq!(listed_ids(&app, &app.key).await.len(), 3, "the harness key still works");

    // Sandbox keys it may revoke; an unknown id is still a 404.
    let (_, child) =
        call(&app, M::POST, "/v1/keys", sandbox_key, Some(json!({"name": "ci", "sandbox": true})))
            .await;
    let child_id = child["id"].as_str().unwrap();
    assert_eq!(
        call(&app, M::DELETE, &format!("/v1/keys/{child_id}"), sandbox_key, None).await.0,
        204
    );
    let (status, problem) =
        call(&app, M::DELETE, "/v1/keys/key_0000000000000000", sandbox_key, None).await;
    assert_eq!(status, 404, "{problem}");
}

#[tokio::test]
async fn a_sandbox_key_lists_only_sandbox_keys() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let sandbox =
        create_key(&app, json!({"name": "staging", "scopes": ["read", "admin"], "sandbox": true}))
            .await;
    let other = create_key(&app, json!({"name": "qa", "scopes": ["send"], "sandbox": true})).await;
    let live = create_key(&app, json!({"name": "prod", "scopes": ["send"]})).await;

    let mut seen = listed_ids(&app, sandbox["key"].as_str().unwrap()).await;
    seen.sort();
    let mut expected = [sandbox["id"].as_str().unwrap(), other["id"].as_str().unwrap()];
    expected.sort();
    assert_eq!(seen, expected, "no live key is shown to a sandbox key");
    let all = listed_ids(&app, &app.key).await;
    assert_eq!(all.len(), 4, "a live admin key still sees every key: {all:?}");
    assert!(all.iter().any(|id| id == live["id"].as_str().unwrap()));
}

#[tokio::test]
async fn sandbox_keys_created_by_the_cli_binary_default_to_send_and_read() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let create = |args: &[&str]| {
        let out = postwire_e2e::process::postwire(&config)
            .args(["keys", "create", "--name", "cli"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let sandbox = create(&["--sandbox"]);
    assert!(
        sandbox.contains("sandbox API key") && sandbox.contains("scopes: send,read)"),
        "{sandbox}"
    );
    let live = create(&[]);
    assert!(live.contains("scopes: send,read,admin)"), "live keys keep all three: {live}");
}
