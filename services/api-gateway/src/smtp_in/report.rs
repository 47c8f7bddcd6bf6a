//! What a message received on the bounce listener is: a delivery status notification
//! (RFC 3464), a feedback report (RFC 5965, parsed by `mail-auth`), an automatic reply
//! (RFC 3834), a bounce in one of the common non-standard text forms, or none of these.
//!
//! Classification is by structure first: a `multipart/report` says what it is in its
//! `report-type`. Only a message that is no report is judged by its headers: `Auto-Submitted`
//! or the usual vacation markers make it an auto-reply; a null-sender-style origin
//! (`MAILER-DAEMON`, `postmaster`) or a bounce subject makes it a text bounce, whose status is
//! the first RFC 3463 code found in its text. A DSN carries `Auto-Submitted` too (Postfix sets
//! it), which is why reports are recognised before auto-replies.

use std::sync::LazyLock;

use mail_auth::report::{Feedback, FeedbackType};
use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders};
use postwire_proto::BounceType;
use regex::Regex;

/// What the message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A DSN: one entry per recipient it reports on.
    Dsn(Vec<DsnRecipient>),
    /// A bounce without DSN structure.
    TextBounce(DsnRecipient),
    /// An ARF feedback report.
    Feedback(FeedbackReport),
    /// An automatic reply (out of office and the like): recorded, never a bounce.
    AutoReply,
    /// None of the above.
    Unknown,
}

impl Report {
    /// The `kind` label of `postwire_inbound_messages_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Report::Dsn(_) | Report::TextBounce(_) => "dsn",
            Report::Feedback(_) => "arf",
            Report::AutoReply => "autoreply",
            Report::Unknown => "unknown",
        }
    }
}

/// DSN `Action` (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

/// One per-recipient block of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    pub action: Action,
    /// The RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// `Diagnostic-Code` without its type (`smtp; `).
    pub diagnostic: Option<String>,
    /// `Final-Recipient` without its type.
    pub final_recipient: Option<String>,
    /// `Remote-MTA` without its type.
    pub remote_mta: Option<String>,
}

impl DsnRecipient {
    /// Hard for class 5, soft for class 4 (and anything else that failed).
    pub fn bounce_type(&self) -> BounceType {
        if self.status.starts_with('5') {
            BounceType::Hard
        } else {
            BounceType::Soft
        }
    }

    /// The text kept as the recipient's `last_response`.
    pub fn response(&self) -> String {
        match &self.diagnostic {
            Some(d) => format!("{} {}", self.status, d),
            None => self.status.clone(),
        }
    }
}

/// An ARF report, with what it says about the message it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackReport {
    /// `abuse`, `fraud`, `virus`, `other`, `not-spam`, `auth-failure`.
    pub feedback_type: &'static str,
    /// The reported message's envelope sender: `Original-Mail-From`, or the `Return-Path` of
    /// the included message or headers. Our VERP address, when it is our message.
    pub original_senders: Vec<String>,
}

impl FeedbackReport {
    /// A user saying the message is unwanted (not a `not-spam` or authentication report).
    pub fn is_complaint(&self) -> bool {
        matches!(self.feedback_type, "abuse" | "fraud" | "virus" | "other")
    }
}

/// Classifies a received message.
pub fn classify(raw: &[u8]) -> Report {
    let Some(message) = MessageParser::default().parse(raw) else { return Report::Unknown };
    let report_type = message
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    match report_type.as_deref() {
        Some("delivery-status") | Some("global-delivery-status") => {
            if let Some(recipients) = delivery_status(&message) {
                return Report::Dsn(recipients);
            }
        }
        Some("feedback-report") => {
            if let Ok(feedback) = Feedback::parse_rfc5322(raw) {
                return Report::Feedback(feedback_report(&feedback));
            }
        }
        _ => {}
    }
    if is_auto_reply(&message) {
        return Report::AutoReply;
    }
    match text_bounce(&message) {
        Some(bounce) => Report::TextBounce(bounce),
        None => Report::Unknown,
    }
}

/// The per-recipient blocks of the `message/delivery-status` part.
fn delivery_status(message: &Message<'_>) -> Option<Vec<DsnRecipient>> {
    let part = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status")
                        || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    })?;
    let text = String::from_utf8_lossy(part.contents());
    let mut groups = field_groups(&text).into_iter();
    // The first group is per-message (Reporting-MTA, Arrival-Date, …).
    groups.next()?;
    let recipients: Vec<DsnRecipient> = groups.filter_map(|g| dsn_recipient(&g)).collect();
    (!recipients.is_empty()).then_some(recipients)
}

fn dsn_recipient(fields: &[(String, String)]) -> Option<DsnRecipient> {
    let get = |name: &str| {
        fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    };
    let action = match get("Action")?.trim().to_ascii_lowercase().as_str() {
        "failed" => Action::Failed,
        "delayed" => Action::Delayed,
        "delivered" => Action::Delivered,
        "relayed" => Action::Relayed,
        "expanded" => Action::Expanded,
        _ => return None,
    };
    let status = STATUS.find(get("Status")?)?.as_str().to_string();
    Some(DsnRecipient {
        action,
        status,
        diagnostic: get("Diagnostic-Code").map(without_type),
        final_recipient: get("Final-Recipient").map(without_type),
        remote_mta: get("Remote-MTA").map(without_type),
    })
}

/// `smtp; 550 …` → `550 …`; `rfc822; a@b` → `a@b`.
fn without_type(value: &str) -> String {
    let v = value.split_once(';').map_or(value, |(_, rest)| rest);
    v.trim().to_string()
}

/// Header-style fields in groups separated by blank lines, continuation lines unfolded.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if groups.last().is_some_and(|g| !g.is_empty()) {
                groups.push(Vec::new());
            }
            continue;
        }
        let group = groups.last_mut().expect("never empty");
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn feedback_report(f: &Feedback<'_>) -> FeedbackReport {
    let feedback_type = match f.feedback_type() {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Other => "other",
        FeedbackType::Virus => "virus",
    };
    let mut original_senders: Vec<String> =
        f.original_mail_from().map(|s| angle_free(s).to_string()).into_iter().collect();
    for included in [f.message(), f.headers()].into_iter().flatten() {
        if let Some(path) = included_return_path(included) {
            original_senders.push(path);
        }
    }
    FeedbackReport { feedback_type, original_senders }
}

/// The `Return-Path` of an included message or header block.
fn included_return_path(text: &str) -> Option<String> {
    let message = MessageParser::default().parse_headers(text.as_bytes())?;
    let raw = message.header_raw(HeaderName::ReturnPath)?;
    let path = angle_free(raw.trim());
    (!path.is_empty()).then(|| path.to_string())
}

fn angle_free(s: &str) -> &str {
    s.trim().trim_start_matches('<').trim_end_matches('>').trim()
}

/// RFC 3834 `Auto-Submitted` (other than `no`), or the vacation markers in common use.
fn is_auto_reply(message: &Message<'_>) -> bool {
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    if header("Auto-Submitted").is_some_and(|v| !v.starts_with("no")) {
        return true;
    }
    if header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("Precedence").is_some_and(|v| v == "auto_reply")
    {
        return true;
    }
    message.subject().is_some_and(|s| VACATION.is_match(s))
}

/// A bounce without DSN structure: from a mailer daemon or with a bounce subject.
fn text_bounce(message: &Message<'_>) -> Option<DsnRecipient> {
    let from_daemon = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .is_some_and(|a| DAEMON.is_match(a));
    let bounce_subject = message.subject().is_some_and(|s| BOUNCE_SUBJECT.is_match(s));
    if !from_daemon && !bounce_subject {
        return None;
    }
    let text = message.body_text(0).unwrap_or_default();
    let status = STATUS.find(&text).map_or_else(|| "5.0.0".to_string(), |m| m.as_str().into());
    let diagnostic = text
        .lines()
        .map(str::trim)
        .find(|l| SMTP_REPLY.is_match(l))
        .map(|l| l.chars().take(300).collect());
    Some(DsnRecipient {
        action: Action::Failed,
        status,
        diagnostic,
        final_recipient: None,
        remote_mta: None,
    })
}

/// An RFC 3463 status code.
static STATUS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[245]\.\d{1,3}\.\d{1,3}\b").expect("valid"));

/// A line that starts with an SMTP reply code.
static SMTP_REPLY: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[45]\d\d[ -]").expect("valid"));

static DAEMON: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(mailer-daemon|postmaster|mail-daemon)@").expect("valid"));

static BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(undeliver|delivery (status notification|has failed|failure)|returned mail|mail delivery (failed|failure|system)|failure notice|delivery failed)",
    )
    .expect("valid")
});

static VACATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(out of (the )?office|auto(matic)?[- ]?(reply|response)|abwesenheit|vacation)")
        .expect("valid")
});

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
