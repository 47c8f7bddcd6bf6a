//! `POST /v1/templates/{id}/preview`: a stored template rendered with `variables` in the real
//! binary's bounded render children, exactly as a send renders it, and nothing sent.

use postwire_e2e::app::{TestApp, World};
use serde_json::{json, Value};

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).bearer_auth(&app.key).json(body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn accepted_total(app: &TestApp) -> String {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with("postwire_messages_accepted_total ")).unwrap_or("").into()
}

#[tokio::test]
async fn a_preview_renders_subject_text_and_html_without_sending_and_names_what_is_missing() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (status, template) = post(
        &app,
        "/v1/templates",
        &json!({"name": "welcome", "subject": "Welcome, {{ name }}",
            "text": "Hi {{ name }}, you have {{ items | length }} items.",
            "html": "<p>Hi {{ name }}</p>"}),
    )
    .await;
    assert_eq!(status, 201, "{template}");
    let id = template["id"].as_str().unwrap();
    let before = accepted_total(&app).await;

    let (status, preview) = post(
        &app,
        &format!("/v1/templates/{id}/preview"),
        &json!({"variables": {"name": "Ann <&>", "items": [1, 2, 3]}}),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview,
        json!({"subject": "Welcome, Ann <&>", "text": "Hi Ann <&>, you have 3 items.",
            "html": "<p>Hi Ann &lt;&amp;&gt;</p>"}),
        "HTML-escaped in html only, as a send renders it"
    );
    assert_eq!(accepted_total(&app).await, before, "nothing was queued");

    let (status, problem) =
        post(&app, &format!("/v1/templates/{id}/preview"), &json!({"variables": {}})).await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("name"), "the missing variable is named: {problem:#}");

    let (status, _) =
        post(&app, "/v1/templates/tpl_missing/preview", &json!({"variables": {}})).await;
    assert_eq!(status, 404);
    let (status, problem) =
        post(&app, &format!("/v1/templates/{id}/preview"), &json!({"vars": {}})).await;
    assert_eq!(status, 422, "an unknown field is refused: {problem}");
    app.stop().await;
}
