//! Rendering rules, against an in-memory template store (the stores themselves are tested in
//! `postwire-store`, the whole path end to end in `tests/tests/e2e/templates.rs`).

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_store::{new_template, TemplateCursor, TemplatePage, TemplateWrite};

use super::*;

const MAX: u64 = 10 * 1024 * 1024;

#[derive(Default)]
struct Memory {
    templates: Mutex<Vec<Template>>,
    reads: Mutex<usize>,
}

#[async_trait]
impl Templates for Memory {
    async fn create_template(&self, template: Template) -> Result<TemplateWrite, StoreError> {
        self.templates.lock().unwrap().push(template.clone());
        Ok(TemplateWrite::Written(template))
    }

    async fn template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        *self.reads.lock().unwrap() += 1;
        Ok(self.templates.lock().unwrap().iter().find(|t| t.id == id).cloned())
    }

    async fn list_templates(
        &self,
        _: Option<&TemplateCursor>,
        _: usize,
    ) -> Result<TemplatePage, StoreError> {
        unimplemented!("not used by rendering")
    }

    async fn replace_template(
        &self,
        _: &str,
        _: TemplateRequest,
        _: DateTime<Utc>,
    ) -> Result<TemplateWrite, StoreError> {
        unimplemented!("not used by rendering")
    }

    async fn delete_template(&self, _: &str) -> Result<bool, StoreError> {
        unimplemented!("not used by rendering")
    }
}

fn store_with(subject: &str, text: Option<&str>, html: Option<&str>) -> Memory {
    let store = Memory::default();
    let content = TemplateRequest {
        name: "t".into(),
        alias: None,
        subject: subject.into(),
        text: text.map(Into::into),
        html: html.map(Into::into),
    };
    store.templates.lock().unwrap().push(new_template("tpl_1".into(), content, Utc::now()));
    store
}

fn send(variables: serde_json::Value) -> SendRequest {
    SendRequest {
        from: "a@example.test".into(),
        to: vec!["b@example.test".into()],
        template_id: Some("tpl_1".into()),
        variables: serde_json::from_value(variables).unwrap(),
        ..SendRequest::default()
    }
}

async fn render(store: &Memory, request: SendRequest) -> Result<SendRequest, Vec<FieldError>> {
    render_send(store, &Renderer::in_process(), &mut TemplateCache::default(), request, MAX)
        .await
        .map_err(|e| match e {
            RenderError::Invalid(errors) => errors,
            RenderError::Store(e) => panic!("store error: {e}"),
            RenderError::Renderer(e) => panic!("renderer error: {e}"),
        })
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[tokio::test]
async fn html_is_escaped_and_subject_and_text_are_not() {
    let store = store_with("Hi {{ name }}", Some("Dear {{ name }},\n"), Some("<p>{{ name }}</p>"));
    let out =
        render(&store, send(serde_json::json!({"name": "<b>Tom & Jerry</b>"}))).await.unwrap();
    assert_eq!(out.subject, "Hi <b>Tom & Jerry</b>");
    assert_eq!(out.text.as_deref(), Some("Dear <b>Tom & Jerry</b>,\n"), "trailing newline kept");
    assert_eq!(out.html.as_deref(), Some("<p>&lt;b&gt;Tom &amp; Jerry&lt;&#x2f;b&gt;</p>"));
    assert_eq!(out.template_id.as_deref(), Some("tpl_1"));
    assert!(out.variables.is_empty(), "variables are not stored once rendered");
}

#[tokio::test]
async fn a_missing_variable_is_named_never_rendered_empty() {
    let store = store_with("Hi {{ name }}", Some("Code: {{ code }} for {{ user.first }}"), None);
    let errors = render(&store, send(serde_json::json!({"name": "x", "user": {"last": "y"}})))
        .await
        .unwrap_err();
    assert_eq!(fields(&errors), ["variables.code"], "{errors:?}");
    assert!(errors[0].message.contains("`code`"), "{}", errors[0].message);

    let errors = render(&store, send(serde_json::json!({"code": 1, "user": {"last": "y"}})))
        .await
        .unwrap_err();
    assert_eq!(
        fields(&errors),
        ["variables.name", "variables.user.first"],
        "every part is checked: {errors:?}"
    );

    let errors =
        render(&store, send(serde_json::json!({"name": "x", "code": 1, "user": {"last": "y"}})))
            .await
            .unwrap_err();
    assert_eq!(fields(&errors), ["variables.user.first"], "{errors:?}");
}

#[tokio::test]
async fn a_variable_tested_with_is_defined_may_be_left_out() {
    let store = store_with(
        "Hi",
        Some("{% if promo is defined %}{{ promo }} {% endif %}{{ code | upper }}"),
        None,
    );
    let out = render(&store, send(serde_json::json!({"code": "ab"}))).await.unwrap();
    assert_eq!(out.text.as_deref(), Some("AB"));
    let errors = render(&store, send(serde_json::json!({"promo": "x"}))).await.unwrap_err();
    assert_eq!(
        fields(&errors),
        ["variables.code"],
        "only the variable that failed is blamed: {errors:?}"
    );
}

#[tokio::test]
async fn loops_filters_and_nested_values_render() {
    let store = store_with(
        "{{ items | length }} items",
        Some("{% for i in items %}{{ loop.index }}. {{ i.name | title }}\n{% endfor %}Total: {{ total }}"),
        None,
    );
    let vars = serde_json::json!({"items": [{"name": "red pen"}, {"name": "ink"}], "total": 12.5});
    let out = render(&store, send(vars)).await.unwrap();
    assert_eq!(out.subject, "2 items");
    assert_eq!(out.text.as_deref(), Some("1. Red Pen\n2. Ink\nTotal: 12.5"));
    assert_eq!(out.html, None, "a template without html renders none");
}

#[tokio::test]
async fn template_fields_conflict_with_the_requests_own() {
    let store = store_with("Hi", Some("x"), None);
    let mut request = send(serde_json::json!({}));
    request.subject = "mine".into();
    request.html = Some("<p>mine</p>".into());
    let errors = render(&store, request).await.unwrap_err();
    assert_eq!(fields(&errors), ["subject", "html"]);

    let request = SendRequest { template_id: None, ..send(serde_json::json!({"a": 1})) };
    let errors = render(&store, request).await.unwrap_err();
    assert_eq!(fields(&errors), ["variables"]);

    let plain =
        SendRequest { template_id: None, subject: "s".into(), ..send(serde_json::json!({})) };
    assert_eq!(render(&store, plain.clone()).await.unwrap(), plain, "no template: unchanged");
}

#[tokio::test]
async fn an_unknown_template_is_refused_on_template_id() {
    let store = store_with("Hi", Some("x"), None);
    let request =
        SendRequest { template_id: Some("tpl_nope".into()), ..send(serde_json::json!({})) };
    let errors = render(&store, request).await.unwrap_err();
    assert_eq!(fields(&errors), ["template_id"]);
}

#[tokio::test]
async fn a_runaway_template_is_stopped() {
    let store = store_with(
        "Hi",
        Some("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
        None,
    );
    let errors = render(&store, send(serde_json::json!({}))).await.unwrap_err();
    assert_eq!(fields(&errors), ["variables"], "{errors:?}");
    assert!(errors[0].message.contains("fuel"), "{}", errors[0].message);

    let store = store_with("Hi", Some("{{ 'x' * n }}"), None);
    let errors = render_send(
        &store,
        &Renderer::in_process(),
        &mut TemplateCache::default(),
        send(serde_json::json!({"n": 2000})),
        1000,
    )
    .await
    .map_err(RenderError::into_field_errors)
    .unwrap_err();
    assert_eq!(fields(&errors.1), [TOO_LARGE_FIELD], "{errors:?}");
    assert_eq!(errors.0, ProblemCode::PayloadTooLarge, "a batch item says why, as a send would");
}

#[tokio::test]
async fn a_batch_reads_each_template_once() {
    let store = store_with("Hi {{ n }}", Some("x"), None);
    let mut cache = TemplateCache::default();
    for n in 0..5 {
        let out = render_send(
            &store,
            &Renderer::in_process(),
            &mut cache,
            send(serde_json::json!({"n": n})),
            MAX,
        )
        .await
        .unwrap();
        assert_eq!(out.subject, format!("Hi {n}"));
    }
    assert_eq!(*store.reads.lock().unwrap(), 1);
}

#[test]
fn syntax_errors_are_reported_on_their_field() {
    let ok = TemplateRequest {
        name: "n".into(),
        alias: None,
        subject: "Hi {{ a }}".into(),
        text: Some("{{ b }}".into()),
        html: None,
    };
    assert_eq!(check_template(&ok), Ok(()));

    let bad = TemplateRequest {
        name: " ".into(),
        alias: Some("tpl_looks-like-an-id".into()),
        subject: "Hi {{ a".into(),
        text: Some("{% for x in y %}".into()),
        html: Some("{% endif %}".into()),
    };
    let errors = check_template(&bad).unwrap_err();
    assert_eq!(fields(&errors), ["name", "alias", "subject", "text", "html"]);
    assert!(errors[1].message.contains("tpl_"), "{}", errors[1].message);
    assert!(errors[2].message.contains("syntax error"), "{}", errors[2].message);
    for bad_alias in ["", "Reset", "-reset", "a b", &"x".repeat(65)] {
        let request = TemplateRequest { alias: Some(bad_alias.to_string()), ..ok.clone() };
        assert_eq!(fields(&check_template(&request).unwrap_err()), ["alias"], "{bad_alias:?}");
    }
    let good = TemplateRequest { alias: Some("password-reset_2".into()), ..ok.clone() };
    assert_eq!(check_template(&good), Ok(()));

    let no_body = TemplateRequest {
        name: "n".into(),
        alias: None,
        subject: "s\r\nBcc: x".into(),
        text: None,
        html: Some(String::new()),
    };
    assert_eq!(fields(&check_template(&no_body).unwrap_err()), ["subject", "text"]);
}
