//! Parsing and validation of send requests and submitted messages, field by field.

use base64::Engine;

use super::*;

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
    let (m, _) = validate_send(r, &Limits::default(), "k").unwrap();
    assert_eq!(m.recipients.len(), 2);
    assert_eq!(m.recipients[1].domain, "example.net");
}

#[test]
fn idn_and_utf8_addresses_are_kept_as_written_and_queued_under_the_a_label_once() {
    let mut r = req();
    r.from = "Bücherei <news@Bücher.test>".into();
    r.to = vec!["ann@bücher.test".into(), "ann@xn--bcher-kva.test".into()];
    r.cc = vec!["jürgen@example.de".into()];
    r.reply_to = Some("hilfe@BÜCHER.test".into());
    let (m, _) = validate_send(r, &Limits::default(), "k").unwrap();
    let got: Vec<_> = m.recipients.iter().map(|r| (r.email.as_str(), r.domain.as_str())).collect();
    assert_eq!(
        got,
        [("ann@bücher.test", "xn--bcher-kva.test"), ("jürgen@example.de", "example.de")],
        "one recipient for both spellings"
    );
    assert_eq!(m.request.from, "Bücherei <news@bücher.test>");
    assert_eq!(m.request.to, ["ann@bücher.test", "ann@xn--bcher-kva.test"]);
    assert_eq!(m.request.reply_to.as_deref(), Some("hilfe@bücher.test"));
    assert!(m.message_id_header.ends_with("@xn--bcher-kva.test"), "{}", m.message_id_header);
    let mut r = req();
    r.to = vec!["ann@bü_cher.test".into()];
    let errors = refused_fields(r);
    assert_eq!(errors[0].0, "to[0]");
    assert!(errors[0].1.contains("UTS #46"), "{}", errors[0].1);
}

#[test]
fn unsubscribe_urls_must_be_https_or_mailto_and_fit_in_a_header() {
    for ok in ["https://example.com/u?t=abc%20d", "mailto:unsub@example.com?subject=stop"] {
        assert_eq!(check_unsubscribe_url(ok), Ok(()), "{ok}");
    }
    for (bad, why) in [
        ("http://example.com/u", "must be https:"),
        ("/relative", "absolute"),
        ("ftp://example.com/u", "not ftp:"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/a\r\nBcc: x@y.z", "control characters"),
        ("https://example.com/a>", "`>`"),
        ("https://example.com/caf\u{e9}", "ASCII"),
        ("mailto:nobody", "one address"),
    ] {
        let e = check_unsubscribe_url(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    let long = format!("https://example.com/{}", "a".repeat(MAX_UNSUBSCRIBE_URL));
    assert!(check_unsubscribe_url(&long).unwrap_err().contains("at most 2048"));
}

#[test]
fn a_list_unsubscribe_header_beside_unsubscribe_url_and_too_many_attachments_are_refused() {
    let mut r = req();
    r.unsubscribe_url = Some("https://example.com/u".into());
    r.headers.insert("List-Unsubscribe-Post".into(), "List-Unsubscribe=One-Click".into());
    let limits = Limits { max_attachments: 1, ..Limits::default() };
    let file = postwire_proto::Attachment {
        filename: "a.txt".into(),
        content_type: "text/plain".into(),
        content: "aGk=".into(),
    };
    r.attachments = vec![file.clone(), file];
    let errors = validate_send(r, &limits, "k").unwrap_err();
    let fields: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.message.as_str())).collect();
    assert_eq!(fields[0].0, "headers.List-Unsubscribe-Post");
    assert_eq!(fields[1], ("attachments", "at most 1 attachments per message (got 2)"));
}

#[test]
fn the_size_limit_applies_to_the_rendered_size_with_base64_growth() {
    assert_eq!(base64_wrapped_len(0), 0);
    assert_eq!(base64_wrapped_len(57), 78, "57 bytes are one full 76-character line");
    assert_eq!(base64_wrapped_len(58), 84);
    let mut r = req();
    // 9 000 bytes of content: under a 10 000-byte limit raw, over it as base64.
    let content = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 9_000]);
    r.attachments = vec![postwire_proto::Attachment {
        filename: "f.bin".into(),
        content_type: "application/octet-stream".into(),
        content,
    }];
    let limits =
        Limits { max_message_size: postwire_config::ByteSize(10_000), ..Limits::default() };
    let errors = validate_send(r, &limits, "k").unwrap_err();
    assert_eq!(errors[0].field, TOO_LARGE_FIELD);
    assert!(errors[0].message.contains("the limit is 10000 bytes"), "{}", errors[0].message);
}

#[test]
fn send_at_is_kept_when_ahead_dropped_when_due_and_refused_past_seven_days() {
    let now = Utc::now();
    let mut ahead = Some(now + chrono::TimeDelta::hours(3));
    assert!(check_send_at(&mut ahead, now).is_ok());
    assert_eq!(ahead, Some(now + chrono::TimeDelta::hours(3)));
    let mut edge = Some(now + chrono::TimeDelta::days(7));
    assert!(check_send_at(&mut edge, now).is_ok());
    assert!(edge.is_some());
    for due in [now, now - chrono::TimeDelta::days(1), now + chrono::TimeDelta::milliseconds(500)] {
        let mut at = Some(due);
        assert!(check_send_at(&mut at, now).is_ok());
        assert_eq!(at, None, "{due} is sent at once");
    }
    let mut far = Some(now + chrono::TimeDelta::days(8));
    assert!(check_send_at(&mut far, now).unwrap_err().contains("7 days"));
    let mut r = req();
    r.send_at = Some(now + chrono::TimeDelta::days(8));
    let errors = validate_send(r, &Limits::default(), "k").unwrap_err();
    assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["send_at"]);
}

fn refused_fields(r: SendRequest) -> Vec<(String, String)> {
    validate_send(r, &Limits::default(), "k")
        .unwrap_err()
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

#[test]
fn control_characters_other_than_tab_are_refused_in_subject_headers_names_and_filenames() {
    for c in ['\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}'] {
        let mut r = req();
        r.subject = format!("a{c}b");
        r.from = format!("Ann{c}Lee <app@example.com>");
        r.reply_to = Some(format!("R{c} <r@example.com>"));
        r.headers.insert("X-Foo".into(), format!("v{c}w"));
        r.attachments = vec![postwire_proto::Attachment {
            filename: format!("a{c}.txt"),
            content_type: "text/plain".into(),
            content: "aGk=".into(),
        }];
        let errors = refused_fields(r);
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["from", "reply_to", "subject", "headers.X-Foo", "attachments[0].filename"],
            "{c:?}"
        );
        assert!(errors.iter().all(|(_, m)| m.contains("control characters")), "{errors:?}");
    }
    let mut r = req();
    r.subject = "tab\there".into();
    r.headers.insert("X-Foo".into(), "a\tb".into());
    r.attachments = vec![postwire_proto::Attachment {
        filename: "caf\u{e9}\t1.txt".into(),
        content_type: "text/plain".into(),
        content: "aGk=".into(),
    }];
    assert!(validate_send(r, &Limits::default(), "k").is_ok(), "tab and non-ASCII pass");
}

#[test]
fn a_custom_header_line_over_998_octets_is_refused() {
    let mut r = req();
    // `X-Long: ` is 8 octets: 990 of value make exactly 998.
    r.headers.insert("X-Long".into(), "v".repeat(990));
    assert!(validate_send(r.clone(), &Limits::default(), "k").is_ok());
    r.headers.insert("X-Long".into(), "v".repeat(991));
    let errors = refused_fields(r);
    assert_eq!(errors[0].0, "headers.X-Long");
    assert!(errors[0].1.contains("got 999 octets"), "{}", errors[0].1);
    // Octets, not characters: 500 two-byte characters are 1000 octets.
    let mut r = req();
    r.headers.insert("X-Utf8".into(), "\u{e9}".repeat(500));
    assert_eq!(refused_fields(r)[0].0, "headers.X-Utf8");
}

#[test]
fn more_than_50_custom_headers_or_20_tags_are_refused() {
    let mut r = req();
    r.headers = (0..MAX_CUSTOM_HEADERS).map(|i| (format!("X-H{i}"), "v".into())).collect();
    r.tags = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
    assert!(validate_send(r.clone(), &Limits::default(), "k").is_ok(), "the limits pass");
    r.headers.insert("X-One-More".into(), "v".into());
    r.tags.push("one-more".into());
    r.tags.push("x".repeat(MAX_TAG_CHARS + 1));
    let errors = refused_fields(r);
    let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["headers", "tags", "tags[21]"]);
    assert_eq!(errors[0].1, "at most 50 custom headers per message (got 51)");
    assert_eq!(errors[1].1, "at most 20 tags per message (got 22)");
}

#[test]
fn trace_authentication_sender_resent_and_postwire_headers_are_reserved() {
    for name in [
        "Authentication-Results",
        "ARC-Seal",
        "ARC-Message-Signature",
        "arc-authentication-results",
        "ARC-Anything",
        "Received-SPF",
        "Delivered-To",
        "Resent-From",
        "Resent-Message-ID",
        "Sender",
        "X-Postwire-Metadata",
        "x-postwire-track",
    ] {
        let mut r = req();
        r.headers.insert(name.into(), "v".into());
        let errors = refused_fields(r);
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        assert_eq!(errors[0].0, format!("headers.{name}"));
        assert!(errors[0].1.contains("reserved") || errors[0].1.contains(" add"), "{errors:?}");
    }
    // Near names stay the caller's, and so does List-Unsubscribe without `unsubscribe_url`.
    let mut r = req();
    for name in ["X-Postwire", "X-Arc", "Senders", "Resentment", "List-Unsubscribe"] {
        r.headers.insert(name.into(), "<mailto:u@example.com>".into());
    }
    assert!(validate_send(r, &Limits::default(), "k").is_ok());
}

#[test]
fn metadata_over_max_metadata_size_is_refused_on_metadata() {
    let limits = Limits::default();
    assert_eq!(limits.max_metadata_size.0, 8_000);
    let mut r = req();
    r.metadata.insert("k".into(), serde_json::Value::String("x".repeat(7_000)));
    assert!(validate_send(r.clone(), &limits, "k").is_ok(), "7 KB pass");
    r.metadata.insert("k".into(), serde_json::Value::String("x".repeat(9_000)));
    let errors = validate_send(r, &limits, "k").unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "metadata");
    assert_eq!(
        errors[0].message,
        "must be at most 8000 bytes as JSON (got 9008; limits.max_metadata_size)"
    );
}
