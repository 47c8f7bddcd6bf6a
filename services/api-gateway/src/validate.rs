//! Turning a raw send request into a [`NewMessage`], or into a list of precise field errors.
//!
//! Parse, don't validate: addresses become [`Mailbox`] values here, at the edge, and the
//! stored request carries them in one canonical form (`Name <local@domain>` or `local@domain`)
//! so no later stage has to guess. CR, LF and NUL never reach a header (RFC 5322 §2.2).

use std::collections::HashSet;

use base64::Engine;
use chrono::Utc;
use postwire_config::Limits;
use postwire_proto::{FieldError, SendRequest};
use postwire_store::{ids, NewMessage, NewRecipient};

/// Header names the API sets itself; callers use the dedicated fields instead.
const RESERVED_HEADERS: [&str; 14] = [
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "dkim-signature", "return-path", "received",
];

/// A parsed mailbox: optional display name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: EmailAddress,
}

impl Mailbox {
    /// Parses `addr`, `Name <addr>` or `"Name" <addr>`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if has_forbidden_chars(raw) {
            return Err("must not contain CR, LF or NUL".into());
        }
        let raw = raw.trim();
        match (raw.rfind('<'), raw.ends_with('>')) {
            (Some(open), true) => {
                let name = raw[..open].trim().trim_matches('"').trim();
                let address = EmailAddress::parse(&raw[open + 1..raw.len() - 1])?;
                if name.contains(['<', '>']) {
                    return Err("display name must not contain `<` or `>`".into());
                }
                Ok(Self { name: (!name.is_empty()).then(|| name.to_string()), address })
            }
            (None, false) => Ok(Self { name: None, address: EmailAddress::parse(raw)? }),
            _ => Err("expected `address` or `Name <address>`".into()),
        }
    }

    /// Canonical form stored with the message.
    pub fn canonical(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} <{}>", self.address.as_str()),
            None => self.address.as_str().to_string(),
        }
    }
}

/// An RFC 5321 address (`local@domain`) with an ASCII dot-atom local part and a DNS domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress {
    full: String,
    at: usize,
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let at = s.rfind('@').ok_or_else(|| format!("`{s}` is not an email address (no `@`)"))?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        if local.is_empty() || local.len() > 64 {
            return Err(format!("`{s}`: the local part must be 1 to 64 characters"));
        }
        if local.split('.').any(|part| part.is_empty() || !part.chars().all(atext)) {
            return Err(format!("`{s}`: the local part has characters not allowed in an address"));
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        validate_domain(&domain).map_err(|e| format!("`{s}`: {e}"))?;
        Ok(Self { full: format!("{local}@{domain}"), at })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The lower-cased domain.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }
}

fn validate_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > 253 {
        return Err("the domain must be 1 to 253 characters".into());
    }
    if !domain.contains('.') {
        return Err("the domain must have at least two labels".into());
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!("`{label}` is not a valid domain label"));
        }
    }
    Ok(())
}

fn has_forbidden_chars(s: &str) -> bool {
    s.contains(['\r', '\n', '\0'])
}

/// Validates a send request. On success returns the message to queue, with its request
/// rewritten into canonical form; on failure every bad field is listed.
pub fn validate_send(mut req: SendRequest, limits: &Limits, key_id: &str) -> Result<NewMessage, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError { field, message });

    let from = match Mailbox::parse(&req.from) {
        Ok(m) => Some(m),
        Err(e) => {
            err("from".into(), if req.from.trim().is_empty() { "is required".into() } else { e });
            None
        }
    };

    let mut recipients = Vec::new();
    let mut seen = HashSet::new();
    for (list, values) in [("to", &mut req.to), ("cc", &mut req.cc), ("bcc", &mut req.bcc)] {
        let mut kept = Vec::with_capacity(values.len());
        for (i, raw) in values.iter().enumerate() {
            match Mailbox::parse(raw) {
                Ok(m) => {
                    // One envelope recipient per address, whichever lists repeat it.
                    if seen.insert(m.address.as_str().to_ascii_lowercase()) {
                        recipients.push(NewRecipient {
                            email: m.address.as_str().to_string(),
                            domain: m.address.domain().to_string(),
                        });
                    }
                    kept.push(m.canonical());
                }
                Err(e) => err(format!("{list}[{i}]"), e),
            }
        }
        *values = kept;
    }
    if req.to.is_empty() && req.cc.is_empty() && req.bcc.is_empty() {
        err("to".into(), "at least one recipient is required in to, cc or bcc".into());
    }
    if recipients.len() > limits.max_recipients {
        err("to".into(), format!("at most {} recipients per message (got {})", limits.max_recipients, recipients.len()));
    }

    if let Some(reply_to) = &req.reply_to {
        match Mailbox::parse(reply_to) {
            Ok(m) => req.reply_to = Some(m.canonical()),
            Err(e) => err("reply_to".into(), e),
        }
    }
    if has_forbidden_chars(&req.subject) {
        err("subject".into(), "must not contain CR, LF or NUL".into());
    }
    let text_empty = req.text.as_deref().is_none_or(str::is_empty);
    let html_empty = req.html.as_deref().is_none_or(str::is_empty);
    if text_empty && html_empty {
        err("text".into(), "a message needs a `text` or an `html` body".into());
    }

    for (name, value) in &req.headers {
        let field = format!("headers.{}", name.escape_debug());
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            err(field, "header names are printable ASCII without spaces or `:`".into());
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            err(field, format!("`{name}` is set by Postwire; use the request's own field"));
        } else if has_forbidden_chars(value) {
            err(field, "header values must not contain CR, LF or NUL".into());
        }
    }

    let mut size: u64 = req.subject.len() as u64
        + req.text.as_ref().map_or(0, |t| t.len() as u64)
        + req.html.as_ref().map_or(0, |h| h.len() as u64);
    for (i, a) in req.attachments.iter().enumerate() {
        if a.filename.trim().is_empty() || has_forbidden_chars(&a.filename) || a.filename.contains('"') {
            err(format!("attachments[{i}].filename"), "must be a non-empty name without CR, LF, NUL or `\"`".into());
        }
        let ct_ok = a.content_type.split_once('/').is_some_and(|(t, s)| {
            let token = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
            token(t) && token(s)
        });
        if !ct_ok {
            err(format!("attachments[{i}].content_type"), "must be a MIME type like `application/pdf`".into());
        }
        match base64::engine::general_purpose::STANDARD.decode(a.content.as_bytes()) {
            Ok(bytes) => size += bytes.len() as u64,
            Err(_) => err(format!("attachments[{i}].content"), "must be standard base64".into()),
        }
    }
    for (i, tag) in req.tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > 128 || tag.chars().any(char::is_control) {
            err(format!("tags[{i}]"), "tags are 1 to 128 characters without control characters".into());
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if size > limits.max_message_size.0 {
        // Reported by the caller as 413 (see `TOO_LARGE_FIELD`).
        return Err(vec![FieldError {
            field: TOO_LARGE_FIELD.into(),
            message: format!("the message is {size} bytes; the limit is {} bytes", limits.max_message_size.0),
        }]);
    }
    let from = from.expect("no errors means from parsed");
    req.from = from.canonical();
    let id = ids::new_id("msg");
    let message_id_header = format!("{}@{}", id.trim_start_matches("msg_"), from.address.domain());
    // `sandbox` is the caller's to set from the key (see `routes::messages`).
    Ok(NewMessage { id, created_at: Utc::now(), request: req, message_id_header, recipients, key_id: key_id.into(), sandbox: false })
}

/// Pseudo-field marking a size-limit violation, which the API answers with 413.
pub const TOO_LARGE_FIELD: &str = "(message size)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_forms_parse_to_canonical() {
        assert_eq!(Mailbox::parse("a@Example.COM").unwrap().canonical(), "a@example.com");
        assert_eq!(Mailbox::parse("Ann Lee <ann@example.com>").unwrap().canonical(), "Ann Lee <ann@example.com>");
        assert_eq!(Mailbox::parse("\"Lee, Ann\" <ann@example.com>").unwrap().canonical(), "Lee, Ann <ann@example.com>");
        for bad in ["", "ann", "ann@", "@example.com", "a b@example.com", "a..b@example.com", "a@localhost", "x <a@b.com", "a@-b.com"] {
            assert!(Mailbox::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(Mailbox::parse("Evil\r\nBcc: x@y.com <a@b.com>").is_err());
    }

    fn req() -> SendRequest {
        SendRequest {
            from: "app@example.com".into(),
            to: vec!["u@example.org".into()],
            subject: "hi".into(),
            text: Some("body".into()),
            ..Default::default()
        }
    }

    #[test]
    fn every_bad_field_is_listed() {
        let mut r = req();
        r.from = "nope".into();
        r.to = vec!["ok@example.org".into(), "bad".into()];
        r.subject = "x\r\nBcc: evil@example.com".into();
        r.headers.insert("X-Ok".into(), "fine".into());
        r.headers.insert("X-Evil".into(), "a\nb".into());
        let errors = validate_send(r, &Limits::default(), "k").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["from", "to[1]", "subject", "headers.X-Evil"]);
    }

    #[test]
    fn duplicate_recipients_are_delivered_once() {
        let mut r = req();
        r.to = vec!["u@example.org".into(), "U@EXAMPLE.org".into()];
        r.bcc = vec!["v@example.net".into()];
        let m = validate_send(r, &Limits::default(), "k").unwrap();
        assert_eq!(m.recipients.len(), 2);
        assert_eq!(m.recipients[1].domain, "example.net");
    }
}
