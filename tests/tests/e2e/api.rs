//! The HTTP API's contract: auth, validation errors, limits, webhook endpoints, ops routes.

use postwire_e2e::app::{simple_message, TestApp, World};
use serde_json::{json, Value};

async fn post_raw(
    app: &TestApp,
    key: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String, Value) {
    let mut req = app
        .client
        .post(app.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_problem_json() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = simple_message(&["a@example.org"]).to_string();
    for key in [
        None,
        Some("pw_key_0000000000000000_deadbeef"),
        Some("not-a-key"),
        Some(&app.key[..app.key.len() - 1]),
    ] {
        let (status, ct, problem) = post_raw(&app, key, body.clone()).await;
        assert_eq!(status, 401, "key {key:?}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(problem["status"], 401);
    }
    let (status, _, _) = post_raw(&app, Some(&app.key), body).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = simple_message(&["a@example.org"]);
    assert_eq!(app.send(&body).await.unwrap().0, 202);
    let id = postwire_store::ids::split_api_key(&app.key).unwrap().0.to_string();
    assert!(app.state.revoke_api_key(&id).await.unwrap());
    assert_eq!(app.send(&body).await.unwrap().0, 401);
}

#[tokio::test]
async fn every_invalid_field_is_listed_in_one_422() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = json!({
        "from": "not an address",
        "to": ["ok@example.org", "broken@", "Name <x@example.org"],
        "subject": "hello",
        "text": "hi",
        "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "%%%"}],
    });
    let (status, ct, problem) = post_raw(&app, Some(&app.key), body.to_string()).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(fields(&problem), ["from", "to[1]", "to[2]", "attachments[0].content"]);
}

#[tokio::test]
async fn missing_recipients_and_missing_body_are_422() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (status, problem) =
        app.send(&json!({"from": "a@sender.test", "subject": "s"})).await.unwrap();
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["to", "text"]);
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_name_the_field() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut body = simple_message(&["a@example.org"]);
    body["subjet"] = json!("typo");
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422);
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("subjet"), "{problem}");
    let mut body = simple_message(&["a@example.org"]);
    // A single string is a fine `to` (see `papercuts`); an object is not.
    body["to"] = json!({"email": "a@example.org"});
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422);
    assert_eq!(fields(&problem), ["to"]);
}

#[tokio::test]
async fn broken_json_is_a_400() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (status, ct, problem) = post_raw(&app, Some(&app.key), "{\"from\": ").await;
    assert_eq!(status, 400);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(problem["status"], 400);
}

#[tokio::test]
async fn crlf_injection_in_headers_and_subject_is_refused() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut body = simple_message(&["a@example.org"]);
    body["subject"] = json!("Hi\r\nBcc: victim@example.net");
    body["headers"] = json!({
        "X-Campaign": "ok",
        "X-Evil": "x\r\nBcc: victim@example.net",
        "X-Nul": "a\u{0}b",
        "Bad:Name": "v",
        "Bcc": "victim@example.net",
    });
    body["from"] = json!("Evil\nBcc: victim@example.net <app@sender.test>");
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    let f = fields(&problem);
    for expected in
        ["from", "subject", "headers.X-Evil", "headers.X-Nul", "headers.Bad:Name", "headers.Bcc"]
    {
        assert!(f.iter().any(|x| x == expected), "{expected} not reported in {f:?}");
    }
    assert!(!f.iter().any(|x| x == "headers.X-Campaign"));
}

#[tokio::test]
async fn bodies_over_the_request_limit_get_413() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_request_size = "4KB".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["a@example.org"]);
    body["text"] = json!("x".repeat(8_000));
    let (status, ct, problem) = post_raw(&app, Some(&app.key), body.to_string()).await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(ct, "application/problem+json");
}

#[tokio::test]
async fn messages_over_the_rendered_size_limit_get_413() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_message_size = "1KB".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["a@example.org"]);
    body["text"] = json!("y".repeat(2_000));
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 413, "{problem}");
}

#[tokio::test]
async fn unknown_message_is_a_404() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let r = app
        .client
        .get(app.url("/v1/messages/msg_nope"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn accepted_message_is_listed_queued_with_its_recipients() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let body = json!({
        "from": "App <app@sender.test>", "to": ["A <a@example.org>"], "cc": ["b@example.org"], "bcc": ["c@example.org", "A@example.org"],
        "subject": "s", "text": "t", "tags": ["reset"],
    });
    let (status, accepted) = app.send(&body).await.unwrap();
    assert_eq!(status, 202);
    assert_eq!(accepted["status"], "queued");
    let emails: Vec<_> = accepted["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@example.org", "b@example.org", "c@example.org"], "duplicates collapse");
    let m = app.message(accepted["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(m["recipients"].as_array().unwrap().len(), 3);
    assert_eq!(m["tags"], json!(["reset"]));
}

#[tokio::test]
async fn webhook_endpoints_can_be_created_listed_and_deleted() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (id, secret) =
        app.create_webhook("http://127.0.0.1:9/hook", &["message.delivered"]).await.unwrap();
    assert!(secret.starts_with("whsec_"));
    let list: Value = app
        .client
        .get(app.url("/v1/webhooks"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert!(list["data"][0].get("secret").is_none(), "the secret is shown once only");
    let del = app
        .client
        .delete(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let again = app
        .client
        .get(app.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn private_webhook_targets_are_refused_unless_allowed() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.webhooks.allow_private_targets = false;
    let app = TestApp::start(settings).await.unwrap();
    for url in [
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/x",
        "http://192.168.1.1/x",
        "http://[::1]/x",
        "ftp://example.com/x",
    ] {
        let r = app
            .client
            .post(app.url("/v1/webhooks"))
            .bearer_auth(&app.key)
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{url}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(fields(&problem), ["url"], "{url}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.send_ok(&simple_message(&["m@metrics.invalid"])).await.unwrap();
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("postwire_messages_accepted_total 1"), "{text}");
    assert!(
        text.contains("postwire_http_requests_total{route=\"/v1/messages\",status=\"202\"} 1"),
        "{text}"
    );
    for name in [
        "postwire_deliveries_total",
        "postwire_queue_depth",
        "postwire_webhook_deliveries_total",
        "postwire_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn served_openapi_matches_the_checked_in_spec_and_docs_render() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let served =
        app.client.get(app.url("/openapi.json")).send().await.unwrap().text().await.unwrap();
    let generated = postwire_api_gateway::openapi::spec_json();
    assert_eq!(served, generated);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale: regenerate with `UPDATE_OPENAPI=1 cargo test -p postwire-e2e openapi`"
    );
    let spec: Value = serde_json::from_str(&served).unwrap();
    assert!(spec["paths"]["/v1/messages"]["post"].is_object());

    // The docs UI must work offline: the page and every asset it loads come from us.
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    let docs = if docs.status().is_redirection() {
        let location = docs.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(location, "/docs/", "relative asset paths need the trailing slash");
        app.client.get(app.url(&location)).send().await.unwrap()
    } else {
        docs
    };
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("<html"));
    let refs: Vec<&str> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1).map(|rest| &rest[..rest.find('"').unwrap()]))
        .collect();
    for r in &refs {
        let absolute = r.starts_with("http:") || r.starts_with("https:") || r.starts_with("//");
        assert!(!absolute || r.starts_with(&app.url("/")), "docs page loads {r} from another host");
    }
    let scripts: Vec<&&str> = refs.iter().filter(|r| r.ends_with(".js")).collect();
    assert!(!scripts.is_empty(), "docs page references no script: {html}");
    for asset in scripts.iter().copied().chain(refs.iter().filter(|r| r.ends_with(".css"))) {
        let path = match asset.strip_prefix('/') {
            Some(_) => asset.to_string(),
            None => format!("/docs/{}", asset.trim_start_matches("./")),
        };
        let r = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(!r.bytes().await.unwrap().is_empty(), "{path} is empty");
    }
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "the UI reads our own spec: {init}");
    assert!(!init.contains("https://"), "the UI calls out to another host: {init}");
}
