//! Bodies of `/v1/templates`: stored subject, text and HTML that a send fills in with its
//! `variables` (see [`SendRequest::template_id`](crate::SendRequest::template_id)).
//!
//! Templates use Jinja syntax (`{{ name }}`, `{% if %}`, `{% for %}`, filters). A variable
//! the template uses but the send does not define is an error, never an empty string; values
//! placed into `html` are HTML-escaped, those in `subject` and `text` are not.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/templates` and `PUT /v1/templates/{id}` (which replaces every field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Welcome",
    "subject": "Welcome, {{ name }}",
    "text": "Hello {{ name }},\n\nyour account is ready.\n",
    "html": "<p>Hello {{ name }},</p><p>your account is ready.</p>"
}))]
pub struct TemplateRequest {
    /// A label for people (1 to 200 characters, not blank, no control characters); need not be
    /// unique.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$",
        example = "Welcome"
    )]
    pub name: String,
    /// A unique handle to use in place of the id (in `/v1/templates/{id}` and a send's
    /// `template_id`), e.g. `password-reset`: 1–64 of `a-z`, `0-9`, `_`, `-`, starting with a
    /// letter or digit, not starting with `tpl_`. Left out of a `PUT`, the template has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub alias: Option<String>,
    /// The subject line, e.g. `"Welcome, {{ name }}"`: no CR, LF or NUL. Template syntax
    /// errors in any part are a 422.
    #[serde(default)]
    #[schema(pattern = r"^[^\r\n\u0000]*$", example = "Welcome, {{ name }}")]
    pub subject: String,
    /// The plain-text body. A template needs `text`, `html` or both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "Hello {{ name }},\n\nyour account is ready.\n")]
    pub text: Option<String>,
    /// The HTML body; variables are HTML-escaped when rendered into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "<p>Hello {{ name }},</p><p>your account is ready.</p>")]
    pub html: Option<String>,
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    /// `tpl_…`: pass as a send's `template_id`.
    pub id: String,
    pub name: String,
    /// Its unique alias, when it has one: usable wherever the id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it was last created or replaced.
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/templates`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub data: Vec<Template>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/templates/{id}/preview`: the values to render with, as a send's `variables`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePreviewRequest {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A template rendered with a preview's variables, exactly as a send would render it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplatePreview {
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}
