//! Templates, as the API uses them: a syntax check when one is stored, and the render step
//! that turns a send naming a `template_id` into an ordinary send before it is validated.
//!
//! Rendering uses minijinja (Jinja syntax) with [`UndefinedBehavior::Strict`]: a variable the
//! template uses but the send does not define is a 422 naming it (`variables.<name>`), never an
//! empty string. Values rendered into `html` are HTML-escaped; `subject` and `text` are plain
//! text, so they are not (a subject that renders with CR or LF is then refused by the send's
//! own header validation). Each render runs on a fuel budget and its output is capped at the
//! message size limit, so no template can spin or grow without bound.
//!
//! The rendered subject, text and html replace the request's, which keeps `template_id` (as a
//! record of where they came from) and drops `variables`: the message stored and delivered is
//! the finished one, and the worker never reads a template.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use postwire_proto::{FieldError, ProblemCode, SendRequest, Template, TemplateRequest};
use postwire_store::{StoreError, Templates};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::renderer::{Renderer, RendererError};
use crate::validate::TOO_LARGE_FIELD;

/// Instructions one part of a template may run (loops, filters, output) before it is stopped.
const FUEL: u64 = 1_000_000;

/// Longest template name.
const MAX_NAME_CHARS: usize = 200;

/// The three parts of a template, by field name. `html` is the only one auto-escaped.
const SUBJECT: &str = "subject";
const TEXT: &str = "text";
const HTML: &str = "html";

/// The engine every template is checked and rendered with.
fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(
        |name| if name == HTML { AutoEscape::Html } else { AutoEscape::None },
    );
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    // Errors carry the failing expression's source range, to name a missing variable.
    env.set_debug(true);
    env
}

fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// The most characters an alias has.
const MAX_ALIAS_CHARS: usize = 64;

/// An alias: 1–64 of `a-z`, `0-9`, `_`, `-`, starting with a letter or digit, and not
/// `tpl_…` (that is how ids start, and a handle must name one template only).
fn check_alias(alias: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    let starts_well =
        alias.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !starts_well || alias.len() > MAX_ALIAS_CHARS || !alias.bytes().all(allowed) {
        return Err(format!(
            "1 to {MAX_ALIAS_CHARS} of a-z, 0-9, `_` and `-`, starting with a letter or digit"
        ));
    }
    if postwire_store::template::is_id(alias) {
        return Err("must not start with `tpl_`, which template ids start with".into());
    }
    Ok(())
}

/// Checks a template before it is stored: an alias of the right form, a name, a single-line subject, a `text` or `html`
/// body, and valid syntax in each part (the engine's message on the part's field).
pub fn check_template(request: &TemplateRequest) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = request.name.trim();
    if name.is_empty() {
        errors.push(field("name", "is required"));
    } else if request.name.chars().count() > MAX_NAME_CHARS
        || request.name.chars().any(char::is_control)
    {
        errors.push(field(
            "name",
            format!("at most {MAX_NAME_CHARS} characters, without control characters"),
        ));
    }
    if let Some(alias) = &request.alias {
        if let Err(why) = check_alias(alias) {
            errors.push(field("alias", why));
        }
    }
    if request.subject.contains(['\r', '\n', '\0']) {
        errors.push(field(SUBJECT, "must not contain CR, LF or NUL"));
    }
    let empty = |part: &Option<String>| part.as_deref().is_none_or(str::is_empty);
    if empty(&request.text) && empty(&request.html) {
        errors.push(field(TEXT, "a template needs a `text` or an `html` body"));
    }
    let env = environment();
    let parts = [
        (SUBJECT, Some(&request.subject)),
        (TEXT, request.text.as_ref()),
        (HTML, request.html.as_ref()),
    ];
    for (part, source) in parts {
        if let Some(source) = source {
            if let Err(e) = env.template_from_named_str(part, source) {
                errors.push(field(part, e.to_string()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Why a send's template could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The request is at fault; every problem is listed.
    #[error("invalid template use")]
    Invalid(Vec<FieldError>),
    /// The template could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The render process could not be started or talked to (not the template's fault).
    #[error(transparent)]
    Renderer(#[from] RendererError),
}

impl From<RenderError> for ApiError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Invalid(errors) => ApiError::invalid_fields(errors),
            RenderError::Store(e) => e.into(),
            RenderError::Renderer(e) => ApiError::Internal(Box::new(e)),
        }
    }
}

impl RenderError {
    /// The `code` and errors to report for one message of a batch.
    pub fn into_field_errors(self) -> (ProblemCode, Vec<FieldError>) {
        match self {
            RenderError::Invalid(errors) => {
                (ApiError::invalid_fields(errors.clone()).code(), errors)
            }
            RenderError::Store(e) => {
                tracing::warn!(error = %e, "batch: a message's template could not be read");
                let errors = vec![field(
                    "(message)",
                    "not queued: storage is unavailable; send this message again",
                )];
                (ApiError::from(e).code(), errors)
            }
            RenderError::Renderer(e) => {
                tracing::error!(error = %e, "batch: a message's template could not be rendered");
                let errors = vec![field(
                    "(message)",
                    "not queued: an internal error; send this message again",
                )];
                (ApiError::Internal(Box::new(e)).code(), errors)
            }
        }
    }
}

/// Templates already read while handling one request, so a batch naming one template many
/// times reads it once (and renders every message from the same version).
#[derive(Default)]
pub struct TemplateCache {
    seen: HashMap<String, Option<Template>>,
}

impl TemplateCache {
    async fn get(
        &mut self,
        store: &dyn Templates,
        id: &str,
    ) -> Result<Option<&Template>, StoreError> {
        if !self.seen.contains_key(id) {
            let found = store.template(id).await?;
            self.seen.insert(id.to_string(), found);
        }
        Ok(self.seen.get(id).and_then(Option::as_ref))
    }
}

/// Applies a send's `template_id` and `variables`: the request with the template's subject,
/// text and html rendered into it, ready for validation. A request without a template passes
/// unchanged (but `variables` alone is refused). `max_size` caps each rendered part; `renderer`
/// says where the rendering runs.
pub async fn render_send(
    store: &dyn Templates,
    renderer: &Renderer,
    cache: &mut TemplateCache,
    mut request: SendRequest,
    max_size: u64,
) -> Result<SendRequest, RenderError> {
    let Some(template_id) = request.template_id.clone() else {
        if request.variables.is_empty() {
            return Ok(request);
        }
        return Err(RenderError::Invalid(vec![field(
            "variables",
            "only used with a `template_id`",
        )]));
    };
    let mut errors = Vec::new();
    let given = [
        (SUBJECT, !request.subject.is_empty()),
        (TEXT, request.text.is_some()),
        (HTML, request.html.is_some()),
    ];
    for (part, _) in given.iter().filter(|(_, given)| *given) {
        errors.push(field(
            *part,
            format!("not allowed with `template_id`: the template provides the {part}"),
        ));
    }
    let Some(template) = cache.get(store, &template_id).await? else {
        errors.push(field("template_id", format!("no template with id or alias `{template_id}`")));
        return Err(RenderError::Invalid(errors));
    };
    if !errors.is_empty() {
        return Err(RenderError::Invalid(errors));
    }

    let job = RenderJob {
        template_id: template_id.clone(),
        subject: template.subject.clone(),
        text: template.text.clone(),
        html: template.html.clone(),
        variables: std::mem::take(&mut request.variables),
        max_size,
    };
    let rendered = renderer.render(job).await?;
    request.subject = rendered.subject;
    request.text = rendered.text;
    request.html = rendered.html;
    Ok(request)
}

/// What one render needs: a template's three parts, the send's variables and the size cap.
/// Serialized as one JSON line when rendered in a child process ([`crate::renderer`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderJob {
    /// Named in the errors of a render that broke its bounds.
    pub template_id: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Each rendered part's cap in bytes (`limits.max_message_size`).
    pub max_size: u64,
}

/// A template's parts as rendered for one send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

/// Renders every part of `job` in this thread: the parts, or every problem found in them (one
/// error per field). Fuel bounds the work and `max_size` each part's output, but not the
/// memory an expression builds on the way; [`crate::renderer`] runs this in a child process
/// under a memory limit for that.
pub fn render_job(job: &RenderJob) -> Result<Rendered, Vec<FieldError>> {
    let env = environment();
    let context = Value::from_serialize(&job.variables);
    let mut errors: Vec<FieldError> = Vec::new();
    let mut render = |part: &'static str, source: &str| -> Option<String> {
        match render_part(&env, part, source, &context, &job.variables, job.max_size) {
            Ok(out) => Some(out),
            Err(mut e) => {
                e.retain(|new| !errors.iter().any(|old| old.field == new.field));
                errors.extend(e);
                None
            }
        }
    };
    let subject = render(SUBJECT, &job.subject);
    let text = job.text.as_deref().map(|source| render(TEXT, source));
    let html = job.html.as_deref().map(|source| render(HTML, source));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rendered {
        subject: subject.unwrap_or_default(),
        text: text.flatten(),
        html: html.flatten(),
    })
}

/// Renders one part of a stored template, or says why it cannot be.
fn render_part(
    env: &Environment<'_>,
    part: &'static str,
    source: &str,
    context: &Value,
    variables: &BTreeMap<String, serde_json::Value>,
    max_size: u64,
) -> Result<String, Vec<FieldError>> {
    let template = env.template_from_named_str(part, source).map_err(|e| {
        // Only possible for a template stored by an older engine that parsed differently.
        vec![field("template_id", format!("the template's {part} no longer compiles: {e}"))]
    })?;
    let mut out = Capped { bytes: Vec::new(), max: max_size, exceeded: false };
    match template.render_captured_to(context, &mut out) {
        Ok(_) => String::from_utf8(out.bytes)
            .map_err(|_| vec![field("variables", "rendered invalid UTF-8")]),
        Err(_) if out.exceeded => Err(vec![field(
            TOO_LARGE_FIELD,
            format!(
                "the template's {part} renders to more than the {max_size}-byte message size limit"
            ),
        )]),
        Err(e) if e.kind() == ErrorKind::UndefinedError => {
            let missing = missing_variables(env, &template, &e, variables);
            if missing.is_empty() {
                return Err(vec![field(
                    "variables",
                    format!("the template's {part} uses an undefined value: {e}"),
                )]);
            }
            Err(missing
                .into_iter()
                .map(|path| {
                    field(format!("variables.{path}"), format!("the template's {part} uses `{path}`, which `variables` does not define"))
                })
                .collect())
        }
        Err(e) => Err(vec![field(
            "variables",
            format!("the template's {part} could not be rendered: {e}"),
        )]),
    }
}

/// The variables (dotted paths like `user.name`) that `template` uses and `variables` does not
/// define. When the failing expression is known, only the paths it mentions: a variable that
/// is missing on purpose (tested with `is defined`) is then not blamed.
fn missing_variables(
    env: &Environment<'_>,
    template: &minijinja::Template<'_, '_>,
    error: &minijinja::Error,
    variables: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let globals: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
    let mut missing: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|path| {
            let root = path.split('.').next().unwrap_or(path);
            !globals.contains(root) && !defines(variables, path)
        })
        .collect();
    missing.sort();
    let failing =
        error.template_source().zip(error.range()).and_then(|(source, range)| source.get(range));
    if let Some(failing) = failing {
        let mentioned: Vec<String> = missing
            .iter()
            .filter(|path| failing.contains(path.split('.').next().unwrap_or(path)))
            .cloned()
            .collect();
        if !mentioned.is_empty() {
            return mentioned;
        }
    }
    missing
}

/// Whether the dotted `path` leads to a value through `variables`' objects.
fn defines(variables: &BTreeMap<String, serde_json::Value>, path: &str) -> bool {
    let mut segments = path.split('.');
    let Some(mut value) = segments.next().and_then(|root| variables.get(root)) else {
        return false;
    };
    for segment in segments {
        match value.get(segment) {
            Some(inner) if value.is_object() => value = inner,
            _ => return false,
        }
    }
    true
}

/// An output buffer that refuses to grow past `max` bytes.
struct Capped {
    bytes: Vec<u8>,
    max: u64,
    exceeded: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.max {
            self.exceeded = true;
            return Err(std::io::Error::other("over the message size limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
