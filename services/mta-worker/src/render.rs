//! Renders a claimed job into the RFC 5322 bytes sent in DATA.
//!
//! Headers come from the send request (From with its display name, To, Cc — never Bcc —,
//! Reply-To, Subject, custom headers), Message-ID from the id fixed at acceptance (so every retry
//! carries the same one) and Date from the acceptance time. Text and HTML become
//! multipart/alternative; attachments make it multipart/mixed.
//!
//! `unsubscribe_url` adds `List-Unsubscribe: <url>` (RFC 2369) and, for an `https:` URL,
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058 one-click); custom
//! `List-Unsubscribe*` headers are then dropped. The DKIM signer covers both (see
//! `postwire_domain_auth::dkim::SIGNED_HEADERS`).
//!
//! When opens or clicks are tracked, the HTML differs per recipient (signed per-recipient links),
//! so the message is rendered once per recipient; otherwise once for the whole job. A link names
//! the recipient by position, never by address, and expires `storage.retention` after the
//! message was accepted (see `postwire_tracking`).
//!
//! Every line ending is then normalised to CRLF. lettre's DATA writer dot-stuffs only after a
//! CRLF and passes a bare LF through, so a bare LF followed by "." could end DATA early on a
//! lenient receiver ("SMTP smuggling"). After [`to_crlf`] the only line ending on the wire is
//! CRLF and every line starting with "." gets stuffed.

use std::borrow::Cow;

use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use postwire_address::Mailbox;
use postwire_proto::message::{
    attachment_bytes, is_one_click, is_reserved_header, set_by_unsubscribe_url,
};
use postwire_store::ClaimedJob;
use postwire_tracking::{MailCopy, TrackingKeys};

/// Why a job could not be turned into a message. These are permanent: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A header name or value carries CR, LF or NUL (header injection).
    #[error("header {name:?} contains a line break or NUL")]
    HeaderInjection { name: String },
    /// An address could not be parsed as `Name <addr>` or `addr`.
    #[error("{field} address {value:?} is not a valid mailbox")]
    Address { field: &'static str, value: String },
    /// An attachment's content is not valid base64.
    #[error("attachment {filename:?} is not valid base64: {source}")]
    Attachment {
        filename: String,
        #[source]
        source: base64::DecodeError,
    },
    /// mail-builder failed to write the message.
    #[error("cannot write the message: {0}")]
    Build(#[from] std::io::Error),
}

/// The stored `field` (written by the gateway in [`Mailbox::canonical`] form) parsed again.
fn mailbox(field: &'static str, value: &str) -> Result<Mailbox, RenderError> {
    if has_line_break(value) {
        return Err(RenderError::HeaderInjection { name: field.to_owned() });
    }
    Mailbox::parse(value).map_err(|_| RenderError::Address { field, value: value.to_owned() })
}

/// One message to send in one SMTP transaction, and who it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMessage {
    /// Envelope recipients of this copy (all the job's recipients, or one when tracked).
    pub recipients: Vec<String>,
    /// CRLF-only message bytes (headers and body), not yet DKIM-signed.
    pub bytes: Vec<u8>,
}

/// Renders jobs; holds what tracking needs.
#[derive(Clone)]
pub struct Renderer {
    tracking: TrackingKeys,
    public_url: String,
    /// How long after acceptance a tracking link records hits (`storage.retention`).
    link_lifetime: std::time::Duration,
}

impl Renderer {
    pub fn new(
        tracking: TrackingKeys,
        public_url: impl Into<String>,
        link_lifetime: std::time::Duration,
    ) -> Self {
        Self {
            tracking,
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            link_lifetime,
        }
    }

    /// The job's From (what signs and what the envelope says) and the copies to send: one per
    /// recipient when tracking applies, else one.
    pub fn render(&self, job: &ClaimedJob) -> Result<(Mailbox, Vec<RenderedMessage>), RenderError> {
        let req = &job.request;
        let from = mailbox("from", &req.from)?;
        let everyone = || job.recipients.iter().map(|r| r.email.clone()).collect();
        let tracking = req.track_opens || req.track_clicks;
        if let Some(raw) = &job.raw {
            // Submitted over SMTP: sent as the client wrote it (its line endings were checked
            // at submission; normalised again here like every rendering), except that tracking
            // rewrites its HTML bodies, one copy per recipient.
            let raw = to_crlf(raw);
            if tracking {
                let copies: Option<Vec<RenderedMessage>> = job
                    .recipients
                    .iter()
                    .map(|rcpt| {
                        let bytes = crate::raw_html::rewrite_html_parts(&raw, |html| {
                            self.instrument(job, rcpt.position, html)
                        })?;
                        Some(RenderedMessage { recipients: vec![rcpt.email.clone()], bytes })
                    })
                    .collect();
                if let Some(copies) = copies {
                    return Ok((from, copies));
                }
            }
            return Ok((from, vec![RenderedMessage { recipients: everyone(), bytes: raw }]));
        }
        let Some(html) = req.html.as_deref().filter(|_| tracking) else {
            let bytes = render_one(job, &from, req.html.as_deref().map(Cow::Borrowed))?;
            return Ok((from, vec![RenderedMessage { recipients: everyone(), bytes }]));
        };
        let copies = job
            .recipients
            .iter()
            .map(|rcpt| {
                let instrumented = self.instrument(job, rcpt.position, html);
                let bytes = render_one(job, &from, Some(Cow::Owned(instrumented)))?;
                Ok(RenderedMessage { recipients: vec![rcpt.email.clone()], bytes })
            })
            .collect::<Result<_, RenderError>>()?;
        Ok((from, copies))
    }

    /// `html` with the open pixel and click links of the copy for recipient `position`.
    fn instrument(&self, job: &ClaimedJob, position: u32, html: &str) -> String {
        // Every copy of the message, whenever rendered (a retry included), expires alike.
        let expires_at = std::time::SystemTime::from(job.created_at) + self.link_lifetime;
        let copy = MailCopy { message_id: &job.message_id, recipient: position, expires_at };
        postwire_tracking::instrument_html(
            html,
            &self.tracking,
            &self.public_url,
            &copy,
            job.request.track_opens,
            job.request.track_clicks,
        )
    }
}

fn render_one(
    job: &ClaimedJob,
    from: &Mailbox,
    html: Option<Cow<'_, str>>,
) -> Result<Vec<u8>, RenderError> {
    let req = &job.request;
    let mut builder = MessageBuilder::new()
        .from(address(from))
        .message_id(MessageId::new(job.message_id_header.as_str()))
        // RFC 5322 §3.6.1: the moment the message was ready to go — for a scheduled send, its
        // `send_at`, so the recipient sees when it was meant to arrive, not when it was queued.
        .date(Date::new(
            req.send_at.filter(|at| *at > job.created_at).unwrap_or(job.created_at).timestamp(),
        ));
    check_value("subject", &req.subject)?;
    builder = builder.subject(Text::new(req.subject.as_str()));
    if !req.to.is_empty() {
        builder = builder.to(address_list("to", &req.to)?);
    }
    if !req.cc.is_empty() {
        builder = builder.cc(address_list("cc", &req.cc)?);
    }
    if let Some(reply_to) = &req.reply_to {
        builder = builder.reply_to(address(&mailbox("reply-to", reply_to)?));
    }
    for (name, value) in &req.headers {
        check_value(name, name)?;
        check_value(name, value)?;
        let generated_unsubscribe = req.unsubscribe_url.is_some() && set_by_unsubscribe_url(name);
        if is_reserved_header(name) || generated_unsubscribe {
            tracing::warn!(message_id = %job.message_id, header = %name, "custom header would override a generated one; dropped");
            continue;
        }
        builder = if value.is_ascii() {
            builder.header(name.as_str(), Raw::new(value.as_str()))
        } else {
            builder.header(name.as_str(), Text::new(value.as_str()))
        };
    }
    if let Some(url) = &req.unsubscribe_url {
        check_value("unsubscribe_url", url)?;
        builder = builder.header("List-Unsubscribe", Raw::new(list_unsubscribe(url)));
        if is_one_click(url) {
            builder =
                builder.header("List-Unsubscribe-Post", Raw::new("List-Unsubscribe=One-Click"));
        }
    }
    if let Some(text) = &req.text {
        builder = builder.text_body(text.as_str());
    }
    if let Some(html) = html {
        builder = builder.html_body(html);
    }
    for a in &req.attachments {
        check_value("attachment filename", &a.filename)?;
        check_value("attachment content_type", &a.content_type)?;
        // The stored job carries the request's base64 (its JSON is the durable queue's format),
        // so the worker decodes what the gateway checked.
        let content = attachment_bytes(a.content.trim())
            .map_err(|source| RenderError::Attachment { filename: a.filename.clone(), source })?;
        builder = builder.attachment(a.content_type.as_str(), a.filename.as_str(), content);
    }
    Ok(to_crlf(&builder.write_to_vec()?))
}

/// `<url>`, with a space every 900 characters of a very long URL so the header can be folded
/// there and no line exceeds RFC 5322's 998 (RFC 2369 §2: whitespace inside the angle
/// brackets is ignored). Ordinary URLs stay on one line.
fn list_unsubscribe(url: &str) -> String {
    const CHUNK: usize = 900;
    let mut out = String::with_capacity(url.len() + url.len() / CHUNK + 2);
    out.push('<');
    for (i, c) in url.chars().enumerate() {
        if i > 0 && i % CHUNK == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out.push('>');
    out
}

/// An address in a header: with its domain as the A-label, so a message whose addresses all
/// have ASCII local parts stays ASCII and needs no SMTPUTF8; one with a UTF-8 local part is
/// written as is (RFC 6532 §3.2), and only an SMTPUTF8 server is given it (see
/// [`crate::session`]).
fn address(m: &Mailbox) -> Address<'static> {
    let email = if m.address.needs_smtputf8() { m.address.as_str() } else { m.address.envelope() };
    Address::new_address(m.name.clone(), email.to_owned())
}

fn address_list(field: &'static str, values: &[String]) -> Result<Address<'static>, RenderError> {
    let list = values
        .iter()
        .map(|v| mailbox(field, v).map(|m| address(&m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Address::new_list(list))
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n', '\0'])
}

/// Defensive: the API refuses these already, but a header must never carry a line break.
fn check_value(name: &str, value: &str) -> Result<(), RenderError> {
    if has_line_break(value) {
        return Err(RenderError::HeaderInjection { name: name.to_owned() });
    }
    Ok(())
}

/// Rewrites every line ending (CRLF, bare LF, bare CR) as CRLF.
pub fn to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use chrono::TimeZone;
    use postwire_proto::{Attachment, SendRequest};
    use postwire_store::PendingRecipient;
    use postwire_tracking::{Link, Tracked, Verified};

    pub(crate) fn job(req: SendRequest, recipients: &[&str]) -> ClaimedJob {
        ClaimedJob {
            job_id: "job_1".into(),
            claim_token: "c1".into(),
            message_id: "msg_1".into(),
            created_at: chrono::Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
            request: req,
            message_id_header: "msg_1@postwire.test".into(),
            domain: "rcpt.test".into(),
            recipients: recipients
                .iter()
                .enumerate()
                .map(|(i, e)| PendingRecipient {
                    email: e.to_string(),
                    attempts: 0,
                    position: i as u32,
                })
                .collect(),
            sandbox: false,
            raw: None,
        }
    }

    const LINK_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

    fn renderer() -> Renderer {
        Renderer::new(TrackingKeys::new(b"secret"), "http://t.test/", LINK_LIFETIME)
    }

    /// True when every LF is preceded by CR and every CR is followed by LF.
    fn crlf_only(b: &[u8]) -> bool {
        b.iter().enumerate().all(|(i, &c)| match c {
            b'\n' => i > 0 && b[i - 1] == b'\r',
            b'\r' => b.get(i + 1) == Some(&b'\n'),
            _ => true,
        })
    }

    #[test]
    fn mailboxes_parse_with_and_without_display_names() {
        let m = mailbox("from", "\"Ann Smith\" <ann@Example.TEST>").unwrap();
        // The shared `Mailbox` writes the domain lower-cased (the gateway stores it so).
        assert_eq!(m.name.as_deref(), Some("Ann Smith"));
        assert_eq!(m.address.as_str(), "ann@example.test");
        assert_eq!(m.address.ascii_domain(), "example.test");
        assert_eq!(mailbox("to", "bob@x.test").unwrap().name, None);
        assert!(mailbox("to", "no-at-sign").is_err());
        assert!(mailbox("to", "Bob <bob@x.test").is_err());
        assert!(matches!(
            mailbox("to", "a@x.test\r\nBcc: z@y.test"),
            Err(RenderError::HeaderInjection { .. })
        ));
    }

    #[test]
    fn dot_lines_and_bare_line_endings_are_rendered_crlf_only() {
        let text = "line one\n.\nline three\r\n.\r\nbare cr\rend\n..\n.".to_string();
        let req = SendRequest {
            from: "Sender <s@sender.test>".into(),
            to: vec!["r@rcpt.test".into()],
            subject: "dots".into(),
            text: Some(text),
            html: Some("<p>a</p>\n.\n<p>b</p>".into()),
            ..Default::default()
        };
        let out = renderer().render(&job(req, &["r@rcpt.test"])).unwrap().1;
        assert_eq!(out.len(), 1);
        let bytes = &out[0].bytes;
        assert!(crlf_only(bytes), "{}", String::from_utf8_lossy(bytes));
        let s = String::from_utf8_lossy(bytes);
        assert!(
            s.contains("\r\n.\r\n"),
            "lone dot lines survive as CRLF-delimited lines for lettre to stuff:\n{s}"
        );
        assert!(s.contains("bare cr\r\nend"));
        assert!(s.contains("multipart/alternative"));
    }

    #[test]
    fn to_crlf_rewrites_every_line_ending_kind() {
        assert_eq!(to_crlf(b"a\nb\rc\r\nd\n\r\n.\r"), b"a\r\nb\r\nc\r\nd\r\n\r\n.\r\n".to_vec());
        assert_eq!(to_crlf(b"\r\r\n\n"), b"\r\n\r\n\r\n".to_vec());
    }

    #[test]
    fn headers_carry_display_name_cc_and_fixed_ids_but_never_bcc() {
        let req = SendRequest {
            from: "Ann <ann@sender.test>".into(),
            to: vec!["to@rcpt.test".into()],
            cc: vec!["Cee <cc@rcpt.test>".into()],
            bcc: vec!["hidden@rcpt.test".into()],
            reply_to: Some("help@sender.test".into()),
            subject: "Hello".into(),
            text: Some("hi".into()),
            headers: [("X-Campaign".to_string(), "spring".to_string())].into(),
            attachments: vec![Attachment {
                filename: "a.txt".into(),
                content_type: "text/plain".into(),
                content: "aGVsbG8gYXR0YWNobWVudA==".into(),
            }],
            ..Default::default()
        };
        let out = renderer()
            .render(&job(req, &["to@rcpt.test", "cc@rcpt.test", "hidden@rcpt.test"]))
            .unwrap()
            .1;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].recipients.len(), 3);
        let s = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert!(
            s.contains("From: \"Ann\" <ann@sender.test>")
                || s.contains("From: Ann <ann@sender.test>"),
            "{s}"
        );
        assert!(s.contains("Message-ID: <msg_1@postwire.test>\r\n"), "{s}");
        assert!(s.contains("Date: Wed, 1 May 2024 12:00:00 +0000"), "{s}");
        assert!(s.contains("cc@rcpt.test"));
        assert!(s.contains("Reply-To: <help@sender.test>"), "{s}");
        assert!(s.contains("X-Campaign: spring\r\n"));
        assert!(!s.contains("hidden@rcpt.test"), "bcc leaked into headers:\n{s}");
        assert!(!s.to_ascii_lowercase().contains("\r\nbcc:"));
        assert!(s.contains("multipart/mixed") && s.contains("a.txt"));
    }

    #[test]
    fn header_values_with_line_breaks_are_refused() {
        let req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["r@rcpt.test".into()],
            headers: [("X-Evil".to_string(), "a\r\nBcc: victim@x.test".to_string())].into(),
            text: Some("x".into()),
            ..Default::default()
        };
        let err = renderer().render(&job(req, &["r@rcpt.test"])).unwrap_err();
        assert!(matches!(err, RenderError::HeaderInjection { .. }), "{err}");
    }

    #[test]
    fn tracked_html_is_rendered_once_per_recipient() {
        let req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["a@rcpt.test".into(), "b@rcpt.test".into()],
            html: Some("<a href=\"https://example.test/x\">x</a>".into()),
            track_opens: true,
            track_clicks: true,
            ..Default::default()
        };
        let out = renderer().render(&job(req, &["a@rcpt.test", "b@rcpt.test"])).unwrap().1;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].recipients, vec!["a@rcpt.test".to_string()]);
        assert_eq!(out[1].recipients, vec!["b@rcpt.test".to_string()]);
        assert_ne!(out[0].bytes, out[1].bytes);
        for m in &out {
            assert!(crlf_only(&m.bytes));
        }
    }

    #[test]
    fn tracking_links_name_the_recipient_by_position_and_expire_with_the_retention() {
        let req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["first@rcpt.test".into(), "second@rcpt.test".into()],
            html: Some("<a href=\"https://example.test/x\">x</a>".into()),
            track_opens: true,
            track_clicks: true,
            ..Default::default()
        };
        let job = job(req, &["first@rcpt.test", "second@rcpt.test"]);
        let out = renderer().render(&job).unwrap().1;
        let text = String::from_utf8(out[1].bytes.clone()).unwrap().replace("=\r\n", "");
        let token_after = |marker: &str| -> String {
            let at =
                text.find(marker).unwrap_or_else(|| panic!("no {marker} in {text}")) + marker.len();
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
                .collect()
        };
        let keys = TrackingKeys::new(b"secret");
        let accepted = std::time::SystemTime::from(job.created_at);
        for (marker, link) in
            [("/t/o/", Link::Open), ("/t/c/", Link::Click { url: "https://example.test/x".into() })]
        {
            let token = token_after(marker);
            let live = keys.verify(&token, accepted + LINK_LIFETIME - Duration::from_secs(1));
            assert_eq!(
                live.unwrap(),
                Verified::Live(Tracked {
                    message_id: "msg_1".into(),
                    recipient: 1,
                    link: link.clone()
                })
            );
            assert_eq!(
                keys.verify(&token, accepted + LINK_LIFETIME).unwrap(),
                Verified::Stale(link)
            );
            let decoded =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &token)
                    .unwrap();
            assert!(!String::from_utf8_lossy(&decoded).contains("second"), "{token}");
        }
        assert_eq!(
            text.matches("second").count(),
            1,
            "the address is in the To header only:\n{text}"
        );
    }

    #[test]
    fn an_https_unsubscribe_url_adds_the_one_click_pair_and_replaces_custom_ones() {
        let req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["r@rcpt.test".into()],
            headers: [("List-Unsubscribe".to_string(), "<mailto:old@x.test>".to_string())].into(),
            text: Some("x".into()),
            unsubscribe_url: Some("https://app.test/unsub?u=42".into()),
            ..Default::default()
        };
        let out = renderer().render(&job(req, &["r@rcpt.test"])).unwrap().1;
        let s = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert!(s.contains("\r\nList-Unsubscribe: <https://app.test/unsub?u=42>\r\n"), "{s}");
        assert!(s.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{s}");
        assert!(!s.contains("old@x.test"), "{s}");
    }

    #[test]
    fn a_mailto_unsubscribe_url_has_no_one_click_post_and_long_urls_fold() {
        let mut req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["r@rcpt.test".into()],
            text: Some("x".into()),
            unsubscribe_url: Some("mailto:unsub@sender.test?subject=stop".into()),
            ..Default::default()
        };
        let out = renderer().render(&job(req.clone(), &["r@rcpt.test"])).unwrap().1;
        let s = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert!(s.contains("List-Unsubscribe: <mailto:unsub@sender.test?subject=stop>\r\n"), "{s}");
        assert!(!s.contains("List-Unsubscribe-Post"), "{s}");
        req.unsubscribe_url = Some(format!("https://app.test/{}", "a".repeat(2000)));
        let out = renderer().render(&job(req, &["r@rcpt.test"])).unwrap().1;
        let s = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert!(
            s.split("\r\n").all(|line| line.len() <= 998),
            "a header line is over 998 characters"
        );
        let head = s.split("\r\n\r\n").next().unwrap().replace("\r\n\t", " ").replace("\r\n ", " ");
        let value = head.lines().find_map(|l| l.strip_prefix("List-Unsubscribe: ")).unwrap();
        assert_eq!(value.replace(' ', ""), format!("<https://app.test/{}>", "a".repeat(2000)));
    }

    #[test]
    fn reserved_custom_headers_are_dropped() {
        let req = SendRequest {
            from: "s@sender.test".into(),
            to: vec!["r@rcpt.test".into()],
            headers: [("Message-ID".to_string(), "<evil@x>".to_string())].into(),
            text: Some("x".into()),
            ..Default::default()
        };
        let out = renderer().render(&job(req, &["r@rcpt.test"])).unwrap().1;
        let s = String::from_utf8(out[0].bytes.clone()).unwrap();
        assert!(!s.contains("evil@x"));
    }

    #[test]
    fn a_scheduled_message_is_dated_at_its_send_at() {
        let at = chrono::Utc.with_ymd_and_hms(2024, 5, 3, 9, 30, 0).unwrap();
        let req = SendRequest {
            from: "a@sender.test".into(),
            to: vec!["b@rcpt.test".into()],
            subject: "later".into(),
            text: Some("hi".into()),
            send_at: Some(at),
            ..SendRequest::default()
        };
        let render = |req: SendRequest| {
            let out = renderer().render(&job(req, &["b@rcpt.test"])).unwrap().1;
            String::from_utf8(out[0].bytes.clone()).unwrap()
        };
        let scheduled = render(req.clone());
        assert!(scheduled.contains("Date: Fri, 3 May 2024 09:30:00"), "{scheduled}");
        let now = render(SendRequest { send_at: None, ..req });
        assert!(now.contains("Date: Wed, 1 May 2024 12:00:00"), "{now}");
    }
}
