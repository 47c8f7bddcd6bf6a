//! A submitted message → the message to store, and the reply that ends its DATA.
//!
//! The text is the client's and stays as it was written: Postwire adds `Message-ID` and
//! `Date` only when they are missing (RFC 6409 §8.3, §8.2), removes `Bcc` (its recipients are
//! envelope-only) and its own `X-Postwire-*` headers, and changes nothing else. What the API
//! shows about the message (from, to, cc, subject) is read from the headers; an envelope
//! recipient in neither To nor Cc is a Bcc.
//!
//! `X-Postwire-Tags: a, b`, `X-Postwire-Metadata: {json}` and `X-Postwire-Idempotency-Key`
//! work like the JSON fields and the `Idempotency-Key` header of `POST /v1/messages`.

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use mail_parser::{Address, MessageParser};
use postwire_proto::{SendRequest, SendResponse};
use postwire_store::ids;

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::idempotency::{idempotent, IDEMPOTENCY_KEY};
use crate::validate::{message_id_for, validate_submission};
use crate::Gateway;

/// The envelope of one transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// RCPT TO addresses, in order.
    pub recipients: Vec<String>,
}

/// A submitted message read apart: the request describing it and its text to send.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub request: SendRequest,
    /// `Message-ID` without angle brackets, when the client set one.
    pub message_id: Option<String>,
    pub has_date: bool,
    pub idempotency_key: Option<String>,
    /// The header fields to keep, each with its CRLF, then the body (from the blank line).
    pub kept_head: Vec<u8>,
    pub body: Vec<u8>,
}

/// Why a submitted message is refused (the text of a 5xx reply).
type Refusal = String;

/// Reads the client's header section. `recipients` are the RCPT TO addresses.
pub(crate) fn parse(raw: &[u8], recipients: &[String]) -> Result<Parsed, Refusal> {
    let (head, body) = split_head(raw);
    let headers = MessageParser::default()
        .parse_headers(head)
        .ok_or_else(|| "554 5.6.0 the message has no readable header section".to_string())?;
    let from = headers
        .from()
        .and_then(Address::first)
        .and_then(|a| a.address().map(|addr| (a.name(), addr)))
        .ok_or_else(|| "550 5.6.0 the message needs a From header with an address".to_string())?;
    let from = match from.0.map(clean_name).filter(|n| !n.is_empty()) {
        Some(name) => format!("{name} <{}>", from.1),
        None => from.1.to_string(),
    };
    let listed = |list: Option<&Address>| -> HashSet<String> {
        list.map(|l| {
            l.iter().filter_map(|a| a.address()).map(|a| a.trim().to_ascii_lowercase()).collect()
        })
        .unwrap_or_default()
    };
    let (in_to, in_cc) = (listed(headers.to()), listed(headers.cc()));
    let mut request = SendRequest {
        from,
        subject: headers.subject().map(clean_name).unwrap_or_default(),
        ..SendRequest::default()
    };
    for rcpt in recipients {
        let lower = rcpt.to_ascii_lowercase();
        let list = if in_to.contains(&lower) {
            &mut request.to
        } else if in_cc.contains(&lower) {
            &mut request.cc
        } else {
            &mut request.bcc
        };
        list.push(rcpt.clone());
    }

    let mut kept_head = Vec::with_capacity(head.len());
    let mut idempotency_key = None;
    for field in fields(head) {
        let name = field.name.to_ascii_lowercase();
        match name.as_str() {
            "bcc" => {}
            "x-postwire-tags" => {
                request.tags = field
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect();
            }
            "x-postwire-metadata" => {
                request.metadata =
                    serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&field.value)
                        .map_err(|e| {
                            format!("550 5.6.0 X-Postwire-Metadata must be a JSON object: {e}")
                        })?;
            }
            "x-postwire-track" => {
                for what in field.value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    match what.to_ascii_lowercase().as_str() {
                        "opens" => request.track_opens = true,
                        "clicks" => request.track_clicks = true,
                        _ => {
                            return Err(format!(
                                "550 5.6.0 X-Postwire-Track takes opens and/or clicks, not {what:?}"
                            ))
                        }
                    }
                }
            }
            "x-postwire-idempotency-key" => idempotency_key = Some(field.value.trim().to_string()),
            other if other.starts_with("x-postwire-") => {
                return Err(format!(
                    "550 5.6.0 unknown header {}: Postwire reads X-Postwire-Tags, -Metadata, \
                     -Track and -Idempotency-Key",
                    field.name
                ));
            }
            _ => kept_head.extend_from_slice(field.bytes),
        }
    }
    Ok(Parsed {
        request,
        message_id: headers.message_id().map(str::to_string),
        has_date: headers.date().is_some(),
        idempotency_key,
        kept_head,
        body: body.to_vec(),
    })
}

/// Stores the message `raw` submitted by `key` to `envelope`, as durably as a 202, and answers
/// with the reply to send: `250 2.0.0 Ok: queued as msg_…` or why not.
pub(crate) async fn submit(
    gw: &Gateway,
    key: &ApiKey,
    envelope: &Envelope,
    raw: Vec<u8>,
) -> String {
    let parsed = match parse(&raw, &envelope.recipients) {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let mut headers = HeaderMap::new();
    if let Some(k) = &parsed.idempotency_key {
        match HeaderValue::from_str(k) {
            Ok(v) => {
                headers.insert(IDEMPOTENCY_KEY, v);
            }
            Err(_) => return "550 5.6.0 X-Postwire-Idempotency-Key must be printable ASCII".into(),
        }
    }
    let key_id = key.id.clone();
    let key = key.clone();
    // The stored answer of a retried submission is compared by the text's hash, like a body.
    let response =
        idempotent(gw, &key_id, &headers, Bytes::from(raw), move |gw, _, claim| async move {
            accept(gw, key, parsed, claim).await.into_response()
        })
        .await;
    match response {
        Ok(r) => reply_for(r).await,
        Err(e) => reply_for(e.into_response()).await,
    }
}

async fn accept(
    gw: Gateway,
    key: ApiKey,
    parsed: Parsed,
    claim: Option<postwire_store::IdemClaim>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    crate::ratelimit::admit_request(&gw, &key.id).await?;
    let (mut message, from) =
        validate_submission(parsed.request, &gw.limits, &key.id).map_err(ApiError::Invalid)?;
    message.id = ids::new_id("msg");
    message.sandbox = key.sandbox;
    crate::routes::messages::decide_dkim(&gw, &mut message, &from).await?;
    let mut text = Vec::with_capacity(parsed.kept_head.len() + parsed.body.len() + 160);
    match parsed.message_id {
        Some(id) => message.message_id_header = id,
        None => {
            message.message_id_header = message_id_for(&message.id, &from);
            text.extend_from_slice(
                format!("Message-ID: <{}>\r\n", message.message_id_header).as_bytes(),
            );
        }
    }
    if !parsed.has_date {
        text.extend_from_slice(format!("Date: {}\r\n", Utc::now().to_rfc2822()).as_bytes());
    }
    text.extend_from_slice(&parsed.kept_head);
    text.extend_from_slice(&parsed.body);
    if text.len() as u64 > gw.limits.max_message_size.0 {
        return Err(ApiError::TooLarge(format!(
            "the message is {} bytes with the headers Postwire adds; the limit is {} (limits.max_message_size)",
            text.len(),
            gw.limits.max_message_size.0
        )));
    }
    message.raw = Some(text);
    let response = crate::routes::messages::accepted_response(&message);
    crate::idempotency::answer_with(claim.as_ref(), &mut message, StatusCode::ACCEPTED, &response)?;
    crate::routes::messages::queue_one(&gw, &key.id, message).await?;
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// The SMTP reply for the API's answer to a submission: the same decision, in SMTP's words.
async fn reply_for(response: Response) -> String {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status == StatusCode::ACCEPTED {
        return match json.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("250 2.0.0 Ok: queued as {id}"),
            None => "451 4.3.0 the message could not be queued; try again".into(),
        };
    }
    let detail = json
        .get("errors")
        .and_then(|e| e.get(0))
        .map(|e| {
            format!(
                "{}: {}",
                e.get("field").and_then(|v| v.as_str()).unwrap_or_default(),
                e.get("message").and_then(|v| v.as_str()).unwrap_or_default()
            )
        })
        .or_else(|| json.get("detail").and_then(|v| v.as_str()).map(String::from))
        .unwrap_or_else(|| status.to_string());
    let detail: String = detail.chars().filter(|c| !c.is_control()).take(400).collect();
    match status.as_u16() {
        400 | 422 => format!("550 5.6.0 {detail}"),
        401 | 403 => format!("550 5.7.1 {detail}"),
        409 => format!("451 4.5.0 {detail}"),
        413 => format!("552 5.3.4 {detail}"),
        429 => format!("451 4.7.0 {detail}"),
        _ => format!("451 4.3.0 {detail}; try again later"),
    }
}

/// One header field: its name, unfolded value and exact bytes (continuation lines and CRLF
/// included).
struct Field<'a> {
    name: String,
    value: String,
    bytes: &'a [u8],
}

/// The header section (through the CRLF of its last field) and the rest (from the blank line
/// on, or nothing when the message has no body).
fn split_head(raw: &[u8]) -> (&[u8], &[u8]) {
    if raw.starts_with(b"\r\n") {
        return (&[], raw);
    }
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => raw.split_at(i + 2),
        None => (raw, &[]),
    }
}

/// The fields of a header section, in order.
fn fields(head: &[u8]) -> Vec<Field<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < head.len() {
        let mut end = start;
        // A field runs to the CRLF not followed by a continuation line (SP or HTAB).
        loop {
            match head[end..].windows(2).position(|w| w == b"\r\n") {
                Some(i) => {
                    end += i + 2;
                    if end < head.len() && (head[end] == b' ' || head[end] == b'\t') {
                        continue;
                    }
                }
                None => end = head.len(),
            }
            break;
        }
        let bytes = &head[start..end];
        let text = String::from_utf8_lossy(bytes);
        let (name, value) = text.split_once(':').unwrap_or((&text, ""));
        out.push(Field {
            name: name.trim().to_string(),
            value: value.replace("\r\n", "").trim().to_string(),
            bytes,
        });
        start = end;
    }
    out
}

/// A display name or subject fit for the API's view: no control characters, no `<>"`.
fn clean_name(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>' | '"'))
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const TEXT: &[u8] = b"From: \"Ann Example\" <ann@shop.test>\r\n\
        To: bob@example.test\r\n\
        Cc: Carol <carol@example.test>\r\n\
        Bcc: dave@example.test\r\n\
        Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
        X-Postwire-Tags: welcome, onboarding\r\n\
        X-Postwire-Metadata: {\"user\": 42,\r\n \"plan\": \"pro\"}\r\n\
        X-Mailer: test\r\n\
        \r\n\
        Hello.\r\n";

    #[test]
    fn headers_describe_the_message_and_envelope_recipients_not_in_to_or_cc_are_bcc() {
        let parsed =
            parse(TEXT, &rcpts(&["Bob@example.test", "carol@example.test", "dave@example.test"]))
                .unwrap();
        let r = &parsed.request;
        assert_eq!(r.from, "Ann Example <ann@shop.test>");
        assert_eq!(r.to, vec!["Bob@example.test"]);
        assert_eq!(r.cc, vec!["carol@example.test"]);
        assert_eq!(r.bcc, vec!["dave@example.test"]);
        assert_eq!(r.subject, "Grüße");
        assert_eq!(r.tags, vec!["welcome", "onboarding"]);
        assert_eq!(r.metadata["user"], 42);
        assert_eq!(r.metadata["plan"], "pro");
        assert!(parsed.message_id.is_none() && !parsed.has_date);
    }

    #[test]
    fn bcc_and_postwire_headers_are_removed_and_everything_else_is_kept_byte_for_byte() {
        let parsed = parse(TEXT, &rcpts(&["bob@example.test"])).unwrap();
        let head = String::from_utf8(parsed.kept_head).unwrap();
        assert_eq!(
            head,
            "From: \"Ann Example\" <ann@shop.test>\r\nTo: bob@example.test\r\n\
             Cc: Carol <carol@example.test>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
             X-Mailer: test\r\n"
        );
        assert_eq!(parsed.body, b"\r\nHello.\r\n".to_vec());
    }

    #[test]
    fn a_message_without_from_or_with_bad_metadata_or_tracking_values_is_refused_with_5xx() {
        let no_from = parse(b"To: a@b.test\r\n\r\nx\r\n", &rcpts(&["a@b.test"])).unwrap_err();
        assert!(no_from.starts_with("550 5.6.0") && no_from.contains("From"), "{no_from}");
        let bad = b"From: a@b.test\r\nX-Postwire-Metadata: [1]\r\n\r\nx\r\n";
        let bad = parse(bad, &rcpts(&["a@b.test"])).unwrap_err();
        assert!(bad.contains("X-Postwire-Metadata"), "{bad}");
        let track = b"From: a@b.test\r\nX-Postwire-Track: opens, replies\r\n\r\nx\r\n";
        let track = parse(track, &rcpts(&["a@b.test"])).unwrap_err();
        assert!(track.starts_with("550 5.6.0") && track.contains("replies"), "{track}");
    }

    #[test]
    fn x_postwire_track_sets_the_tracking_flags_and_is_removed() {
        let text = b"From: a@b.test\r\nX-Postwire-Track: Opens, clicks\r\n\r\nx\r\n";
        let parsed = parse(text, &rcpts(&["c@d.test"])).unwrap();
        assert!(parsed.request.track_opens && parsed.request.track_clicks);
        assert!(!String::from_utf8(parsed.kept_head).unwrap().contains("Track"));
        let opens =
            parse(b"From: a@b.test\r\nX-Postwire-Track: opens\r\n\r\nx\r\n", &rcpts(&["c@d.test"]));
        let opens = opens.unwrap().request;
        assert!(opens.track_opens && !opens.track_clicks);
    }

    #[test]
    fn an_existing_message_id_and_date_are_kept() {
        let text = b"From: a@b.test\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\
                     Message-ID: <abc@b.test>\r\n\r\nx\r\n";
        let parsed = parse(text, &rcpts(&["c@d.test"])).unwrap();
        assert_eq!(parsed.message_id.as_deref(), Some("abc@b.test"));
        assert!(parsed.has_date);
    }
}
