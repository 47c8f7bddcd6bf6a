use super::*;

const RETURN_PATH: &str = "b-0123abcd@bounces.sender.test";
const RCPT: &str = "gone@rcpt.test";

/// A fixture with its placeholders filled in.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/src/smtp_in/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("%RETURN_PATH%", RETURN_PATH)
        .replace("%RCPT%", RCPT)
        .replace("%BOUNCE_DOMAIN%", "bounces.sender.test")
        .into_bytes()
}

fn only_recipient(report: Report) -> DsnRecipient {
    match report {
        Report::Dsn(mut r) if r.len() == 1 => r.remove(0),
        other => panic!("expected a DSN about one recipient, got {other:?}"),
    }
}

#[test]
fn a_postfix_dsn_is_a_hard_failure_of_its_final_recipient() {
    let r = only_recipient(classify(&fixture("postfix-dsn.eml")));
    assert_eq!(r.action, Action::Failed);
    assert_eq!(r.status, "5.1.1");
    assert_eq!(r.bounce_type(), BounceType::Hard);
    assert_eq!(r.final_recipient.as_deref(), Some(RCPT));
    assert_eq!(r.diagnostic.as_deref(), Some("unknown user: \"gone\""));
    assert_eq!(r.response(), "5.1.1 unknown user: \"gone\"");
}

#[test]
fn a_gmail_dsn_unfolds_its_diagnostic_and_names_the_remote_mta() {
    let r = only_recipient(classify(&fixture("gmail-dsn.eml")));
    assert_eq!((r.action, r.status.as_str()), (Action::Failed, "5.1.1"));
    let diagnostic = r.diagnostic.unwrap();
    assert!(diagnostic
        .starts_with("550-5.1.1 The email account that you tried to reach does not exist."));
    assert!(diagnostic.ends_with("?p=NoSuchUser"), "{diagnostic}");
    assert!(r.remote_mta.unwrap().starts_with("gmail-smtp-in.l.google.com."));
}

#[test]
fn exim_and_microsoft_dsns_are_hard_failures() {
    let exim = only_recipient(classify(&fixture("exim-dsn.eml")));
    assert_eq!((exim.status.as_str(), exim.bounce_type()), ("5.0.0", BounceType::Hard));
    assert_eq!(exim.diagnostic.as_deref(), Some("550 5.2.1 mailbox disabled"));
    assert_eq!(exim.remote_mta.as_deref(), Some("mx2.rcpt.test"));
    let ms = only_recipient(classify(&fixture("microsoft-dsn.eml")));
    assert_eq!(ms.status, "5.1.10");
    assert!(ms.diagnostic.unwrap().contains("RecipientNotFound; Recipient not found"));
}

#[test]
fn a_failed_dsn_with_a_class_4_status_is_soft_and_a_delayed_one_is_not_a_failure() {
    let soft = only_recipient(classify(&fixture("soft-dsn.eml")));
    assert_eq!((soft.action, soft.bounce_type()), (Action::Failed, BounceType::Soft));
    let delayed = only_recipient(classify(&fixture("delayed-dsn.eml")));
    assert_eq!(delayed.action, Action::Delayed);
}

#[test]
fn an_arf_report_is_a_complaint_naming_the_original_envelope_sender() {
    let Report::Feedback(f) = classify(&fixture("arf-abuse.eml")) else { panic!("not ARF") };
    assert_eq!(f.feedback_type, "abuse");
    assert!(f.is_complaint());
    assert_eq!(f.original_senders.first().map(String::as_str), Some(RETURN_PATH));
}

#[test]
fn an_arf_report_with_headers_only_finds_the_return_path_in_them() {
    let Report::Feedback(f) = classify(&fixture("arf-headers-only.eml")) else { panic!("not ARF") };
    assert_eq!(f.original_senders, [RETURN_PATH]);
}

#[test]
fn not_spam_and_auth_failure_reports_are_not_complaints() {
    for kind in ["not-spam", "auth-failure"] {
        let raw = String::from_utf8(fixture("arf-abuse.eml"))
            .unwrap()
            .replace("Feedback-Type: abuse", &format!("Feedback-Type: {kind}"));
        let Report::Feedback(f) = classify(raw.as_bytes()) else { panic!("not ARF") };
        assert_eq!(f.feedback_type, kind);
        assert!(!f.is_complaint(), "{kind}");
    }
}

#[test]
fn an_out_of_office_reply_is_an_auto_reply_not_a_bounce() {
    assert_eq!(classify(&fixture("autoreply.eml")), Report::AutoReply);
    let vacation =
        b"From: a@x.test\r\nTo: b@y.test\r\nSubject: Automatic reply: hello\r\n\r\nAway.\r\n";
    assert_eq!(classify(vacation), Report::AutoReply);
}

#[test]
fn a_text_bounce_from_a_mailer_daemon_takes_its_status_from_the_text() {
    let Report::TextBounce(r) = classify(&fixture("text-bounce.eml")) else {
        panic!("not a bounce")
    };
    assert_eq!((r.status.as_str(), r.bounce_type()), ("5.1.1", BounceType::Hard));
    assert_eq!(r.diagnostic.as_deref(), Some("550 5.1.1 Sorry, no mailbox here by that name."));
}

#[test]
fn ordinary_mail_and_garbage_are_unknown() {
    assert_eq!(classify(&fixture("not-a-report.eml")), Report::Unknown);
    assert_eq!(classify(b""), Report::Unknown);
    assert_eq!(classify(b"\xff\xfe\x00garbage"), Report::Unknown);
    let broken = b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\nno fields here\r\n--x--\r\n";
    assert_eq!(classify(broken), Report::Unknown);
}

#[test]
fn every_kind_has_its_metric_label() {
    assert_eq!(classify(&fixture("postfix-dsn.eml")).kind(), "dsn");
    assert_eq!(classify(&fixture("text-bounce.eml")).kind(), "dsn");
    assert_eq!(classify(&fixture("arf-abuse.eml")).kind(), "arf");
    assert_eq!(classify(&fixture("autoreply.eml")).kind(), "autoreply");
    assert_eq!(classify(&fixture("not-a-report.eml")).kind(), "unknown");
}
