//! Turning a raw send request into a [`NewMessage`], or into a list of precise field errors.
//!
//! Parse, don't validate: addresses become [`Mailbox`] values here, at the edge, and the
//! stored request carries them in one canonical form (`Name <local@domain>` or `local@domain`)
//! so no later stage has to guess. No control character but HTAB (C0, DEL, C1), and neither
//! U+2028 nor U+2029, reaches a header or an attachment filename (RFC 5322 §2.2: a header line
//! is printable characters, and some readers break lines at more than CR LF); custom headers
//! fit on one RFC 5322 line, and their number, the tags and `metadata` are bounded.

use std::collections::HashSet;

use chrono::Utc;
use postwire_address::mailbox::{has_forbidden_chars, FORBIDDEN_CHARS};
pub use postwire_address::{DomainName, EmailAddress, Mailbox};
use postwire_config::Limits;
use postwire_proto::message::{attachment_bytes, is_reserved_header, set_by_unsubscribe_url};
use postwire_proto::{FieldError, SendRequest};
use postwire_store::{ids, NewMessage, NewRecipient};

/// Trace and authentication headers only relays and receiving servers add (RFC 5321 §4.4,
/// RFC 8601, RFC 8617, RFC 7208): a sender setting them could forge a verdict downstream.
/// Every `ARC-*` and `Resent-*` name is refused as well (see [`reserved_header`]).
const TRACE_HEADERS: [&str; 3] = ["authentication-results", "received-spf", "delivered-to"];

// The limits the OpenAPI schema states too: custom `headers` per message (422 on `headers`
// above it); the longest custom header line, `Name: value` in octets without the CRLF (the 998
// of RFC 5322 §2.1.1; a longer one is refused with 422, not folded: Postwire writes ASCII values
// as given, and a value without whitespace could not be folded at all); tags per message and
// the longest tag in characters (422 on `tags` / `tags[i]`); the longest `unsubscribe_url`.
pub use postwire_proto::schema::{
    MAX_CUSTOM_HEADERS, MAX_HEADER_LINE, MAX_TAGS, MAX_TAG_CHARS, MAX_UNSUBSCRIBE_URL,
};

/// Why a custom header name (lower-cased) is refused, if it is.
fn reserved_header(lower: &str) -> Option<&'static str> {
    if is_reserved_header(lower) {
        Some("is set by Postwire; use the request's own field")
    } else if TRACE_HEADERS.contains(&lower)
        || lower.starts_with("arc-")
        || lower.starts_with("resent-")
    {
        Some("is a trace or authentication header that only relays and receiving servers add")
    } else if lower == "sender" {
        Some("is reserved: the message's author is `from`, and Postwire sends as it")
    } else if lower.starts_with("x-postwire-") {
        Some("is reserved: `X-Postwire-*` headers are Postwire's own")
    } else {
        None
    }
}

/// The MIME type of a file named `filename`, from its extension; `application/octet-stream`
/// (RFC 2046 §4.5.1: arbitrary data) when the extension is missing or unknown.
fn guess_content_type(filename: &str) -> String {
    mime_guess::from_path(filename).first_or_octet_stream().essence_str().to_string()
}

/// Validates a send request. On success returns the message to queue, with its request
/// rewritten into canonical form, and its parsed From; on failure every bad field is listed.
pub fn validate_send(
    mut req: SendRequest,
    limits: &Limits,
    key_id: &str,
) -> Result<(NewMessage, Mailbox), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError { field, message });

    let from = match Mailbox::parse(&req.from) {
        Ok(m) => Some(m),
        Err(e) => {
            err("from".into(), if req.from.trim().is_empty() { "is required".into() } else { e });
            None
        }
    };

    let recipients = collect_recipients(&mut req, limits, &mut err);

    if let Some(reply_to) = &req.reply_to {
        match Mailbox::parse(reply_to) {
            Ok(m) => req.reply_to = Some(m.canonical()),
            Err(e) => err("reply_to".into(), e),
        }
    }
    if has_forbidden_chars(&req.subject) {
        err("subject".into(), format!("must not contain {FORBIDDEN_CHARS}"));
    }
    let text_empty = req.text.as_deref().is_none_or(str::is_empty);
    let html_empty = req.html.as_deref().is_none_or(str::is_empty);
    if text_empty && html_empty {
        err("text".into(), "a message needs a `text` or an `html` body".into());
    }

    if req.headers.len() > MAX_CUSTOM_HEADERS {
        err(
            "headers".into(),
            format!(
                "at most {MAX_CUSTOM_HEADERS} custom headers per message (got {})",
                req.headers.len()
            ),
        );
    }
    for (name, value) in &req.headers {
        let field = format!("headers.{}", name.escape_debug());
        let line = name.len() + 2 + value.len();
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            err(field, "header names are printable ASCII without spaces or `:`".into());
        } else if let Some(why) = reserved_header(&name.to_ascii_lowercase()) {
            err(field, format!("`{name}` {why}"));
        } else if has_forbidden_chars(value) {
            err(field, format!("header values must not contain {FORBIDDEN_CHARS}"));
        } else if line > MAX_HEADER_LINE {
            err(
                field,
                format!(
                    "`{name}: value` must fit on one {MAX_HEADER_LINE}-octet header line \
                     (RFC 5322 §2.1.1; got {line} octets); longer values are refused, not folded"
                ),
            );
        } else if req.unsubscribe_url.is_some() && set_by_unsubscribe_url(name) {
            err(field, format!("`{name}` is set from `unsubscribe_url`; send one or the other"));
        }
    }
    if let Some(url) = &req.unsubscribe_url {
        if let Err(e) = check_unsubscribe_url(url) {
            err("unsubscribe_url".into(), e);
        }
    }
    if req.attachments.len() > limits.max_attachments {
        err(
            "attachments".into(),
            format!(
                "at most {} attachments per message (got {})",
                limits.max_attachments,
                req.attachments.len()
            ),
        );
    }

    for a in req.attachments.iter_mut().filter(|a| a.content_type.is_empty()) {
        a.content_type = guess_content_type(&a.filename);
    }
    let mut size = rendered_overhead(&req)
        + req.text.as_deref().map_or(0, encoded_body_len)
        + req.html.as_deref().map_or(0, encoded_body_len);
    for (i, a) in req.attachments.iter().enumerate() {
        if a.filename.trim().is_empty()
            || has_forbidden_chars(&a.filename)
            || a.filename.contains('"')
        {
            err(
                format!("attachments[{i}].filename"),
                format!("must be a non-empty name without `\"` or {FORBIDDEN_CHARS}"),
            );
        }
        let ct_ok = a.content_type.split_once('/').is_some_and(|(t, s)| {
            let token = |x: &str| {
                !x.is_empty()
                    && x.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
            };
            token(t) && token(s)
        });
        if !ct_ok {
            err(
                format!("attachments[{i}].content_type"),
                "must be a MIME type like `application/pdf`".into(),
            );
        }
        match attachment_bytes(&a.content) {
            Ok(bytes) => size += base64_wrapped_len(bytes.len() as u64),
            Err(_) => err(format!("attachments[{i}].content"), "must be standard base64".into()),
        }
    }
    check_tags_and_metadata(&req, limits, &mut err);
    if let Err(e) = check_send_at(&mut req.send_at, Utc::now()) {
        err("send_at".into(), e);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    if size > limits.max_message_size.0 {
        // Reported by the caller as 413 (see `TOO_LARGE_FIELD`).
        return Err(vec![FieldError {
            field: TOO_LARGE_FIELD.into(),
            message: format!(
                "the message would be about {size} bytes once rendered for sending (attachments grow by a third in base64); \
                 the limit is {} bytes (limits.max_message_size)",
                limits.max_message_size.0
            ),
        }]);
    }
    let from = from.expect("no errors means from parsed");
    req.from = from.canonical();
    let id = ids::new_id("msg");
    let message_id_header = message_id_for(&id, &from);
    // `sandbox` is the caller's to set from the key (see `routes::messages`).
    let message = NewMessage {
        id,
        created_at: Utc::now(),
        request: req,
        message_id_header,
        recipients,
        key_id: key_id.into(),
        sandbox: false,
        raw: None,
        idempotency: None,
        dkim: postwire_proto::DkimStatus::default(),
    };
    Ok((message, from))
}

/// The `Message-ID` (without angle brackets) Postwire gives message `id` sent from `from`.
pub fn message_id_for(id: &str, from: &Mailbox) -> String {
    message_id_at(id, from.address.ascii_domain())
}

fn message_id_at(id: &str, domain: &str) -> String {
    format!("{}@{domain}", id.trim_start_matches("msg_"))
}

/// Gives a validated API message the id `id`, its `Message-ID` following (same domain).
pub fn rename(message: &mut NewMessage, id: String) {
    let domain = message.message_id_header.rsplit_once('@').map_or("", |(_, d)| d).to_string();
    message.message_id_header = message_id_at(&id, &domain);
    message.id = id;
}

/// Validates what a message submitted over SMTP says about itself: its envelope recipients
/// (`to`, `cc`, `bcc` as sorted by its headers), the `from` of its From header, and the tags
/// and metadata of its `X-Postwire-*` headers. Its text is the client's own: only its size was
/// bounded, while it was read. The caller sets `id`, `raw` and the `Message-ID`.
pub fn validate_submission(
    mut req: SendRequest,
    limits: &Limits,
    key_id: &str,
) -> Result<(NewMessage, Mailbox), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(FieldError { field, message });
    let from = match Mailbox::parse(&req.from) {
        Ok(m) => Some(m),
        Err(e) => {
            err("from".into(), e);
            None
        }
    };
    let recipients = collect_recipients(&mut req, limits, &mut err);
    check_tags_and_metadata(&req, limits, &mut err);
    if !errors.is_empty() {
        return Err(errors);
    }
    let from = from.expect("no errors means from parsed");
    req.from = from.canonical();
    let message = NewMessage {
        id: String::new(),
        created_at: Utc::now(),
        request: req,
        message_id_header: String::new(),
        recipients,
        key_id: key_id.into(),
        sandbox: false,
        raw: None,
        idempotency: None,
        dkim: postwire_proto::DkimStatus::default(),
    };
    Ok((message, from))
}

/// The envelope recipients of `to`, `cc` and `bcc` (each address once, in order), those
/// lists rewritten in canonical form; at least one and at most `limits.max_recipients`.
fn collect_recipients(
    req: &mut SendRequest,
    limits: &Limits,
    err: &mut impl FnMut(String, String),
) -> Vec<NewRecipient> {
    let mut recipients = Vec::new();
    let mut seen = HashSet::new();
    for (list, values) in [("to", &mut req.to), ("cc", &mut req.cc), ("bcc", &mut req.bcc)] {
        let mut kept = Vec::with_capacity(values.len());
        for (i, raw) in values.iter().enumerate() {
            match Mailbox::parse(raw) {
                Ok(m) => {
                    // One envelope recipient per address, whichever lists repeat it.
                    // Compared in envelope form: `bücher.test` and its A-label are one domain.
                    if seen.insert(postwire_address::comparable(m.address.envelope())) {
                        recipients.push(NewRecipient {
                            email: m.address.as_str().to_string(),
                            domain: m.address.ascii_domain().to_string(),
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
        err(
            "to".into(),
            format!(
                "at most {} recipients per message across to, cc and bcc (got {}; limits.max_recipients)",
                limits.max_recipients,
                recipients.len()
            ),
        );
    }
    recipients
}

/// `tags` (count, length, no control characters) and `metadata` (`limits.max_metadata_size`).
fn check_tags_and_metadata(
    req: &SendRequest,
    limits: &Limits,
    err: &mut impl FnMut(String, String),
) {
    if req.tags.len() > MAX_TAGS {
        err("tags".into(), format!("at most {MAX_TAGS} tags per message (got {})", req.tags.len()));
    }
    for (i, tag) in req.tags.iter().enumerate() {
        if tag.is_empty()
            || tag.chars().count() > MAX_TAG_CHARS
            || tag.chars().any(char::is_control)
        {
            err(
                format!("tags[{i}]"),
                format!("tags are 1 to {MAX_TAG_CHARS} characters without control characters"),
            );
        }
    }
    // Metadata is not rendered into the message (so not in `size`), but it is stored with it
    // and copied into every event and webhook: bounded on its own.
    let metadata_size = serde_json::to_vec(&req.metadata).map_or(usize::MAX, |j| j.len()) as u64;
    if metadata_size > limits.max_metadata_size.0 {
        err(
            "metadata".into(),
            format!(
                "must be at most {} bytes as JSON (got {metadata_size}; limits.max_metadata_size)",
                limits.max_metadata_size.0
            ),
        );
    }
}

/// Pseudo-field marking a size-limit violation, which the API answers with 413.
pub const TOO_LARGE_FIELD: &str = "(message size)";

/// Scheduled send: `send_at` at most [`MAX_SCHEDULE_AHEAD`](postwire_store::messages::MAX_SCHEDULE_AHEAD)
/// (7 days) after `now`. One not at least a second ahead (now, or in the past) is dropped:
/// the message is sent at once.
pub fn check_send_at(
    send_at: &mut Option<chrono::DateTime<Utc>>,
    now: chrono::DateTime<Utc>,
) -> Result<(), String> {
    let Some(at) = *send_at else { return Ok(()) };
    if at > now + postwire_store::messages::MAX_SCHEDULE_AHEAD {
        return Err(format!(
            "must be at most 7 days ahead (at or before {})",
            (now + postwire_store::messages::MAX_SCHEDULE_AHEAD).to_rfc3339()
        ));
    }
    if at < now + chrono::TimeDelta::seconds(1) {
        *send_at = None;
    }
    Ok(())
}

/// Checks an `unsubscribe_url` (RFC 2369 `List-Unsubscribe`, RFC 8058 one-click): an absolute
/// `https:` URL, or a `mailto:` one (which gets `List-Unsubscribe` without the one-click
/// `List-Unsubscribe-Post`, as RFC 8058 §3.1 needs an HTTPS URI for that). `http:` is refused:
/// the one-click POST carries no authentication, and mailbox providers ignore non-HTTPS URIs.
/// Nothing that could end the `<…>` or the header line is allowed.
pub fn check_unsubscribe_url(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_UNSUBSCRIBE_URL {
        return Err(format!(
            "must be at most {MAX_UNSUBSCRIBE_URL} characters (got {})",
            raw.len()
        ));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>') {
        return Err("must not contain spaces, control characters (CR, LF, NUL), `<` or `>`".into());
    }
    if !raw.is_ascii() {
        return Err("must be ASCII; percent-encode other characters".into());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("must be an absolute https: URL ({e})"))?;
    match url.scheme() {
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "https" => Err("must name a host".into()),
        "mailto" => {
            let address = url.path().split('?').next().unwrap_or_default();
            EmailAddress::parse(address)
                .map(drop)
                .map_err(|e| format!("mailto: needs one address: {e}"))
        }
        "http" => {
            Err("must be https: (RFC 8058 one-click unsubscribe needs an HTTPS URI), not http:"
                .into())
        }
        other => Err(format!("must be an https: or mailto: URL, not {other}:")),
    }
}

/// Base64 of `n` bytes as MIME writes it: 4 characters per 3 bytes, CRLF after every 76.
fn base64_wrapped_len(n: u64) -> u64 {
    let chars = n.div_ceil(3) * 4;
    chars + 2 * chars.div_ceil(76)
}

/// A text or HTML part once encoded: as is (line ends as CRLF) when it is short-lined ASCII,
/// otherwise at most its base64 (mail-builder picks the smaller of base64 and
/// quoted-printable).
fn encoded_body_len(body: &str) -> u64 {
    let plain = body.is_ascii() && body.lines().all(|l| l.len() <= 76);
    if plain {
        body.len() as u64 + body.matches('\n').count() as u64 + 2
    } else {
        base64_wrapped_len(body.len() as u64)
    }
}

/// Headers and MIME structure: what the request's own header fields add, plus a fixed
/// allowance for the generated headers (Date, Message-ID, MIME-Version, DKIM-Signature) and
/// each part's boundary and headers.
fn rendered_overhead(req: &SendRequest) -> u64 {
    const GENERATED: u64 = 1_500;
    const PER_PART: u64 = 200;
    let addresses: usize =
        req.to.iter().chain(&req.cc).chain(&req.reply_to).map(|a| a.len() + 2).sum();
    let headers: usize = req.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let parts =
        usize::from(req.text.is_some()) + usize::from(req.html.is_some()) + req.attachments.len();
    let names: usize =
        req.attachments.iter().map(|a| 2 * a.filename.len() + a.content_type.len()).sum();
    let unsubscribe = req.unsubscribe_url.as_ref().map_or(0, |u| u.len() + 80);
    GENERATED
        + PER_PART * parts as u64
        + (req.subject.len() * 2 + addresses + headers + names + unsubscribe) as u64
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
