//! Stored templates: a subject, a text and an HTML body that sends render with their
//! `variables`.
//!
//! The store only keeps them; the API gateway checks their syntax when they are written and
//! renders them when a send names one, so what is queued is the finished message and the
//! worker never reads a template. One set per installation (there are no accounts yet).
//!
//! Listing is newest first, paged by [`TemplateCursor`] (created time, then id, both
//! descending). Timestamps are kept at millisecond precision, like every other stored time.
//!
//! **Aliases.** A template may have an `alias`, unique among templates; reading, replacing
//! and deleting take either the id or the alias ([`is_id`] tells them apart: the gateway
//! refuses aliases that look like ids). Writing an alias another template holds changes
//! nothing and says so ([`TemplateWrite::AliasTaken`]).

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use postwire_proto::{Template, TemplateRequest};

use crate::StoreError;

/// Where a page of the list starts: just after the template with this time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCursor {
    /// Unix milliseconds of the last template on the previous page.
    pub created_at_ms: i64,
    /// Its id.
    pub id: String,
}

impl TemplateCursor {
    /// The cursor after `template`.
    pub fn after(template: &Template) -> Self {
        Self { created_at_ms: template.created_at.timestamp_millis(), id: template.id.clone() }
    }

    /// The opaque form handed to API clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at_ms, self.id))
    }

    /// Reads [`TemplateCursor::encode`]'s output; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (ms, id) = text.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        Some(Self { created_at_ms: ms.parse().ok()?, id: id.to_string() })
    }
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplatePage {
    pub data: Vec<Template>,
    /// Present when more templates follow.
    pub next: Option<TemplateCursor>,
}

/// A template as it is stored: `created_at` and `updated_at` at millisecond precision.
pub fn new_template(id: String, content: TemplateRequest, at: DateTime<Utc>) -> Template {
    let at = crate::time::from_ms(at.timestamp_millis());
    Template {
        id,
        name: content.name,
        alias: content.alias,
        subject: content.subject,
        text: content.text,
        html: content.html,
        created_at: at,
        updated_at: at,
    }
}

/// `current` with its content replaced by `content`, updated at `at` (millisecond precision).
pub(crate) fn replaced(current: Template, content: TemplateRequest, at: DateTime<Utc>) -> Template {
    Template { created_at: current.created_at, ..new_template(current.id, content, at) }
}

/// Whether `id_or_alias` names a template by id (`tpl_…`) rather than by alias.
pub fn is_id(id_or_alias: &str) -> bool {
    id_or_alias.starts_with("tpl_")
}

/// The outcome of writing a template.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateWrite {
    /// Stored; the template as it now is.
    Written(Template),
    /// No template has that id or alias (replace only).
    NotFound,
    /// Another template holds the alias; nothing was written.
    AliasTaken,
}

/// The stored templates, as the API manages them.
#[async_trait]
pub trait Templates: Send + Sync + 'static {
    /// Stores a new template (made with [`new_template`]; its id is fresh), unless another
    /// holds its alias.
    async fn create_template(&self, template: Template) -> Result<TemplateWrite, StoreError>;

    /// The template with this id or alias.
    async fn template(&self, id_or_alias: &str) -> Result<Option<Template>, StoreError>;

    /// Up to `limit` templates, newest first, starting after `after`.
    async fn list_templates(
        &self,
        after: Option<&TemplateCursor>,
        limit: usize,
    ) -> Result<TemplatePage, StoreError>;

    /// Replaces the name, alias, subject, text and html of the template with this id or alias
    /// and sets its `updated_at` to `at`; `created_at` is kept.
    async fn replace_template(
        &self,
        id_or_alias: &str,
        content: TemplateRequest,
        at: DateTime<Utc>,
    ) -> Result<TemplateWrite, StoreError>;

    /// Removes the template with this id or alias (freeing the alias); later sends naming it
    /// are refused. False when unknown.
    async fn delete_template(&self, id_or_alias: &str) -> Result<bool, StoreError>;
}

#[cfg(test)]
#[path = "template_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_encoding_and_garbage_is_refused() {
        let c = TemplateCursor { created_at_ms: 1_764_000_000_123, id: "tpl_0193abc".into() };
        assert_eq!(TemplateCursor::decode(&c.encode()), Some(c));
        assert_eq!(TemplateCursor::decode("not a cursor!"), None);
        assert_eq!(TemplateCursor::decode(&URL_SAFE_NO_PAD.encode("12:")), None);
        assert_eq!(TemplateCursor::decode(&URL_SAFE_NO_PAD.encode("x:tpl_1")), None);
    }
}
