//! Templates: managed over `/v1/templates`, rendered into sends that name one with
//! `template_id` + `variables`, proven on the wire (the SMTP peer receives the rendered
//! subject and bodies, HTML-escaped in the HTML part only). SMTP sinks on 127.0.0.80–83.

use chrono::Utc;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::{Received, Script};
use postwire_store::{ids, NewApiKey};
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `POST /v1/templates` with the app's key, expecting 201; returns the template.
async fn create(app: &TestApp, body: Value) -> Value {
    let (status, created) =
        call(app, reqwest::Method::POST, "/v1/templates", &app.key, Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    created
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

/// `postwire_messages_accepted_total` from `/metrics`: messages queued by this app so far.
async fn accepted_total(app: &TestApp) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("postwire_messages_accepted_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// The fields of a 422 problem's `errors`.
fn error_fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|es| es.iter().map(|e| e["field"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// (subject, text, html) of a received message, decoded.
fn parts(received: &Received) -> (String, String, String) {
    let msg = mail_parser::MessageParser::default()
        .parse(&received.data)
        .expect("parse received message");
    (
        msg.subject().unwrap_or_default().to_string(),
        msg.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
        msg.body_html(0).map(|h| h.to_string()).unwrap_or_default(),
    )
}

fn templated(to: &str, template_id: &Value, variables: Value) -> Value {
    json!({"from": "App <app@sender.test>", "to": [to], "template_id": template_id, "variables": variables})
}

#[tokio::test]
async fn templates_are_created_listed_replaced_and_deleted() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();

    let welcome = create(
        &app,
        json!({"name": "welcome", "subject": "Welcome, {{ name }}", "text": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>"}),
    )
    .await;
    let id = welcome["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("tpl_"), "{welcome}");
    assert_eq!(welcome["name"], "welcome");
    assert_eq!(welcome["subject"], "Welcome, {{ name }}");
    assert_eq!(welcome["text"], "Hi {{ name }}");
    assert_eq!(welcome["html"], "<p>Hi {{ name }}</p>");
    assert_eq!(welcome["created_at"], welcome["updated_at"]);
    let reset =
        create(&app, json!({"name": "reset", "subject": "Reset", "text": "Code {{ code }}"})).await;
    assert_eq!(reset["html"], Value::Null);

    let (status, got) =
        call(&app, reqwest::Method::GET, &format!("/v1/templates/{id}"), &app.key, None).await;
    assert_eq!((status, &got), (200, &welcome));

    // Listed newest first, one per page, the cursor leading to the next.
    let (status, page) =
        call(&app, reqwest::Method::GET, "/v1/templates?limit=1", &app.key, None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"], json!([reset]));
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    let (_, page) = call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/templates?limit=1&cursor={cursor}"),
        &app.key,
        None,
    )
    .await;
    assert_eq!(page["data"], json!([welcome]));
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    let (status, bad) =
        call(&app, reqwest::Method::GET, "/v1/templates?cursor=nonsense", &app.key, None).await;
    assert_eq!((status, error_fields(&bad)), (422, vec!["cursor"]));

    // Replaced in place: created_at kept, fields left out cleared.
    let v2 =
        json!({"name": "welcome v2", "subject": "Hello {{ name }}", "html": "<h1>{{ name }}</h1>"});
    let (status, replaced) =
        call(&app, reqwest::Method::PUT, &format!("/v1/templates/{id}"), &app.key, Some(&v2)).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["id"], welcome["id"]);
    assert_eq!(replaced["name"], "welcome v2");
    assert_eq!(replaced["text"], Value::Null);
    assert_eq!(replaced["created_at"], welcome["created_at"]);
    let time = |v: &Value| v.as_str().unwrap().parse::<chrono::DateTime<Utc>>().unwrap();
    assert!(time(&replaced["updated_at"]) >= time(&welcome["updated_at"]), "{replaced}");
    let (_, got) =
        call(&app, reqwest::Method::GET, &format!("/v1/templates/{id}"), &app.key, None).await;
    assert_eq!(got, replaced);
    let (status, _) =
        call(&app, reqwest::Method::PUT, "/v1/templates/tpl_unknown", &app.key, Some(&v2)).await;
    assert_eq!(status, 404);

    // Deleted: gone, and a second delete is a 404.
    let path = format!("/v1/templates/{id}");
    assert_eq!(call(&app, reqwest::Method::DELETE, &path, &app.key, None).await.0, 204);
    assert_eq!(call(&app, reqwest::Method::GET, &path, &app.key, None).await.0, 404);
    assert_eq!(call(&app, reqwest::Method::DELETE, &path, &app.key, None).await.0, 404);
    let (_, page) = call(&app, reqwest::Method::GET, "/v1/templates", &app.key, None).await;
    assert_eq!(page["data"], json!([reset]));
}

#[tokio::test]
async fn template_syntax_and_scopes_are_checked_when_written() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let post = |key: String, body: Value| {
        let app = &app;
        async move { call(app, reqwest::Method::POST, "/v1/templates", &key, Some(&body)).await }
    };

    let (status, problem) = post(
        app.key.clone(),
        json!({"name": "broken", "subject": "ok", "html": "<p>{{ name </p>"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(error_fields(&problem), ["html"]);
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("syntax error"), "the engine's message: {message}");
    let (status, problem) = post(
        app.key.clone(),
        json!({"name": "x", "subject": "{% if a %}", "text": "{% endfor %}"}),
    )
    .await;
    assert_eq!((status, error_fields(&problem)), (422, vec!["subject", "text"]), "{problem}");
    let (status, problem) = post(app.key.clone(), json!({"name": "", "subject": "s"})).await;
    assert_eq!((status, error_fields(&problem)), (422, vec!["name", "text"]), "{problem}");
    let (status, problem) =
        post(app.key.clone(), json!({"name": "n", "subject": "s", "text": "t", "body": "?"})).await;
    assert_eq!(status, 422, "unknown fields are refused: {problem}");
    let (_, page) = call(&app, reqwest::Method::GET, "/v1/templates", &app.key, None).await;
    assert_eq!(page["data"], json!([]), "nothing invalid was stored");

    // Writing needs `send` or `admin`; reading needs `read`.
    let body = json!({"name": "n", "subject": "s", "text": "t"});
    let reader = key_with(&app, &["read"]).await;
    let (status, problem) = post(reader.clone(), body.clone()).await;
    assert_eq!(status, 403, "{problem}");
    let sender = key_with(&app, &["send"]).await;
    let (status, created) = post(sender.clone(), body.clone()).await;
    assert_eq!(status, 201, "{created}");
    let admin = key_with(&app, &["admin"]).await;
    assert_eq!(post(admin, body.clone()).await.0, 201);
    let path = format!("/v1/templates/{}", created["id"].as_str().unwrap());
    assert_eq!(call(&app, reqwest::Method::GET, &path, &sender, None).await.0, 403);
    assert_eq!(call(&app, reqwest::Method::GET, &path, &reader, None).await.0, 200);
    assert_eq!(call(&app, reqwest::Method::DELETE, &path, &reader, None).await.0, 403);
    assert_eq!(call(&app, reqwest::Method::DELETE, &path, &sender, None).await.0, 204);
}

#[tokio::test]
async fn a_templated_send_arrives_rendered_with_variables_escaped_in_html_only() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "tplsend.test", &[(10, ip(80), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let template = create(
        &app,
        json!({
            "name": "receipt",
            "subject": "Receipt for {{ name }}",
            "text": "Hi {{ name }},\n{% for item in items %}- {{ item.title }}: {{ item.price }}\n{% endfor %}",
            "html": "<p>Hi {{ name }}</p><ul>{% for item in items %}<li>{{ item.title }}</li>{% endfor %}</ul>"
        }),
    )
    .await;
    let variables = json!({"name": "<b>Ann</b> & co", "items": [{"title": "Pen", "price": 2}, {"title": "<i>Ink</i>", "price": 5}]});
    let id = app.send_ok(&templated("ann@tplsend.test", &template["id"], variables)).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "ann@tplsend.test")["status"], "delivered", "{m:#}");
    assert_eq!(
        m["subject"], "Receipt for <b>Ann</b> & co",
        "the stored message is the rendered one"
    );

    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let (subject, text, html) = parts(&got[0]);
    assert_eq!(subject, "Receipt for <b>Ann</b> & co", "the subject is not HTML-escaped");
    assert_eq!(
        text.replace("\r\n", "\n"),
        "Hi <b>Ann</b> & co,\n- Pen: 2\n- <i>Ink</i>: 5\n",
        "nor is the text"
    );
    assert!(
        html.contains("<p>Hi &lt;b&gt;Ann&lt;&#x2f;b&gt; &amp; co</p><ul><li>Pen</li><li>&lt;i&gt;Ink&lt;&#x2f;i&gt;</li></ul>"),
        "variables are escaped in the HTML, the template's own markup is not:\n{html}"
    );
    let raw = String::from_utf8_lossy(&got[0].data);
    assert!(
        !raw.contains("{{") && !raw.contains("{%"),
        "no template syntax reaches the wire:\n{raw}"
    );
}

#[tokio::test]
async fn a_templated_send_that_cannot_render_is_refused_and_nothing_is_queued() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "tplbad.test", &[(10, ip(81), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let template = create(
        &app,
        json!({"name": "code", "subject": "Code for {{ name }}", "text": "Your code is {{ code }}.", "html": "<b>{{ code }}</b>"}),
    )
    .await;
    let tid = &template["id"];
    let to = "bob@tplbad.test";

    // A missing variable is named, never rendered as an empty string.
    let (status, problem) = app.send(&templated(to, tid, json!({"name": "Bob"}))).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(error_fields(&problem), ["variables.code"]);
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("`code`"), "{problem}");
    // A subject that renders with CR/LF is refused like any other header injection.
    let (status, problem) = app
        .send(&templated(to, tid, json!({"name": "x\r\nBcc: evil@tplbad.test", "code": 1})))
        .await
        .unwrap();
    assert_eq!((status, error_fields(&problem)), (422, vec!["subject"]), "{problem}");
    // The template and the request cannot both give the content; the error says which field.
    let mut both = templated(to, tid, json!({"name": "Bob", "code": 1}));
    both["subject"] = json!("Mine");
    both["text"] = json!("mine");
    let (status, problem) = app.send(&both).await.unwrap();
    assert_eq!((status, error_fields(&problem)), (422, vec!["subject", "text"]), "{problem}");
    // Variables need a template; a template id must exist.
    let mut loose = simple_message(&[to]);
    loose["variables"] = json!({"name": "Bob"});
    let (status, problem) = app.send(&loose).await.unwrap();
    assert_eq!((status, error_fields(&problem)), (422, vec!["variables"]), "{problem}");
    let (status, problem) = app.send(&templated(to, &json!("tpl_nope"), json!({}))).await.unwrap();
    assert_eq!((status, error_fields(&problem)), (422, vec!["template_id"]), "{problem}");
    assert_eq!(accepted_total(&app).await, 0, "nothing was queued");

    // The same template with every variable goes out; it is the only message the MX sees.
    let id = app.send_ok(&templated(to, tid, json!({"name": "Bob", "code": 4711}))).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, to)["status"], "delivered", "{m:#}");
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    let (subject, text, html) = parts(&got[0]);
    assert_eq!((subject.as_str(), text.trim_end()), ("Code for Bob", "Your code is 4711."));
    assert!(html.contains("<b>4711</b>"), "{html}");
}

#[tokio::test]
async fn a_batch_renders_each_message_and_a_bad_one_fails_alone() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "tplbatch.test", &[(10, ip(82), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let template = create(
        &app,
        json!({"name": "hello", "subject": "Hello {{ name }}", "text": "Hi {{ name }}"}),
    )
    .await;
    let tid = &template["id"];
    let batch = json!({"messages": [
        templated("a@tplbatch.test", tid, json!({"name": "Ann"})),
        templated("b@tplbatch.test", tid, json!({})),
        templated("c@tplbatch.test", &json!("tpl_missing"), json!({"name": "Cid"})),
        simple_message(&["d@tplbatch.test"]),
        templated("e@tplbatch.test", tid, json!({"name": "Eve"})),
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
    let body: Value = r.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{body:#}");
    assert_eq!(error_fields(&results[1]), ["variables.name"], "{body:#}");
    assert_eq!(error_fields(&results[2]), ["template_id"], "{body:#}");
    for i in [0, 3, 4] {
        let id =
            results[i]["id"].as_str().unwrap_or_else(|| panic!("message {i} accepted: {body:#}"));
        let m = app.wait_final(id, SOON).await.unwrap();
        assert_eq!(m["recipients"][0]["status"], "delivered", "{m:#}");
    }
    let mut subjects: Vec<String> = hosts[0].received().iter().map(|r| parts(r).0).collect();
    subjects.sort();
    assert_eq!(subjects, ["Hello Ann", "Hello Eve", "Your password reset"]);
    assert_eq!(accepted_total(&app).await, 3);
}

#[tokio::test]
async fn a_replaced_template_changes_later_sends_and_a_deleted_one_is_refused() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "tplver.test", &[(10, ip(83), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let template =
        create(&app, json!({"name": "v", "subject": "Version one for {{ name }}", "text": "one"}))
            .await;
    let tid = &template["id"];
    let path = format!("/v1/templates/{}", tid.as_str().unwrap());
    let body = templated("ver@tplver.test", tid, json!({"name": "Vic"}));
    let send_keyed = || async {
        let r = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&app.key)
            .header("idempotency-key", "tpl-ver-1")
            .json(&body);
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    let (status, first) = send_keyed().await;
    assert_eq!(status, 202, "{first}");
    let first_id = first["id"].as_str().unwrap().to_string();
    app.wait_final(&first_id, SOON).await.unwrap();

    let v2 = json!({"name": "v", "subject": "Version two for {{ name }}", "text": "two"});
    assert_eq!(call(&app, reqwest::Method::PUT, &path, &app.key, Some(&v2)).await.0, 200);
    // The idempotent retry of the first request replays its answer: nothing is re-rendered or resent.
    let (status, replay) = send_keyed().await;
    assert_eq!((status, &replay), (202, &first));
    // A new send uses the new version.
    let second = app.send_ok(&body).await.unwrap();
    app.wait_final(&second, SOON).await.unwrap();
    let got = hosts[0].wait_for_messages(2, SOON).await.unwrap();
    let rendered: Vec<(String, String)> =
        got.iter().map(parts).map(|(s, t, _)| (s, t.trim_end().to_string())).collect();
    assert_eq!(
        rendered,
        [
            ("Version one for Vic".to_string(), "one".to_string()),
            ("Version two for Vic".to_string(), "two".to_string())
        ]
    );
    assert_eq!(
        app.message(&first_id).await.unwrap()["subject"],
        "Version one for Vic",
        "a stored message keeps what it rendered"
    );

    assert_eq!(call(&app, reqwest::Method::DELETE, &path, &app.key, None).await.0, 204);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!((status, error_fields(&problem)), (422, vec!["template_id"]), "{problem}");
    assert_eq!(accepted_total(&app).await, 2);
    assert_eq!(hosts[0].received().len(), 2);
}
