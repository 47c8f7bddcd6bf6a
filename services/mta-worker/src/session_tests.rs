use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::*;
use crate::testutil::{Script, SmtpPeer};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `transactions` against one MX address on a connection of its own, then QUITs: one
/// session without the pool ([`crate::pool::SmtpPool`] reuses connections). Never fails as a
/// whole: the result says what was decided and why the rest was not.
async fn deliver_to_host(
    opts: &SmtpOptions,
    ip: IpAddr,
    host: &str,
    transactions: &[Transaction<'_>],
) -> HostAttempt {
    let mut attempt = HostAttempt::default();
    let mut conn = match open(opts, SocketAddr::new(ip, opts.port), host).await {
        Ok(conn) => conn,
        Err(e) => {
            attempt.failure = Some(e);
            return attempt;
        }
    };
    attempt.encrypted = conn.is_encrypted();
    if let Err(e) = run_transactions(&mut conn, opts, transactions, &mut attempt).await {
        // Dropped without QUIT: after a timeout or a garbled reply the peer may never
        // answer, and waiting for it would stall the worker for another full timeout.
        attempt.failure = Some(e);
        return attempt;
    }
    // The outcome is settled; a slow or rude QUIT changes nothing.
    quit(conn, opts.command_timeout).await;
    attempt
}

fn opts(port: u16, tls: TlsMode) -> SmtpOptions {
    SmtpOptions {
        helo: ClientId::Domain("worker.test".into()),
        port,
        tls,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
    }
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const MESSAGE: &[u8] = b"From: s@sender.test\r\nTo: a@rcpt.test\r\nSubject: t\r\n\r\nhello\r\n.\r\n.leading dot\r\nend\r\n";

#[tokio::test]
async fn every_rcpt_reply_is_recorded_and_data_goes_only_to_accepted_recipients() {
    let script = Script {
        rcpt: HashMap::from([
            ("b@rcpt.test".to_string(), "550 5.1.1 no such user".to_string()),
            ("c@rcpt.test".to_string(), "451 4.7.1 try later".to_string()),
        ]),
        ..Default::default()
    };
    let peer = SmtpPeer::start(LOCAL, script).await;
    let r = rcpts(&["a@rcpt.test", "b@rcpt.test", "c@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Opportunistic), LOCAL, "mx.test", &tx)
            .await;
    assert!(attempt.failure.is_none(), "{:?}", attempt.failure);
    let answers: HashMap<_, _> = attempt.answers.into_iter().collect();
    assert_eq!(
        answers["a@rcpt.test"],
        Answer::Delivered(Reply { code: 250, text: "2.0.0 queued as X1".into() })
    );
    assert_eq!(
        answers["b@rcpt.test"].clone(),
        Answer::RcptRejected(Reply { code: 550, text: "5.1.1 no such user".into() })
    );
    match &answers["c@rcpt.test"] {
        Answer::RcptRejected(r) => assert_eq!(r.to_string(), "451 4.7.1 try later"),
        other => panic!("{other:?}"),
    }
    let seen = peer.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].commands.iter().any(|c| c == "MAIL FROM:<s@sender.test>"),
        "{:?}",
        seen[0].commands
    );
    assert_eq!(seen[0].commands.iter().filter(|c| c.starts_with("RCPT TO")).count(), 3);
    assert_eq!(seen[0].commands.last().unwrap(), "QUIT");
}

#[tokio::test]
async fn lines_starting_with_a_dot_are_stuffed_on_the_wire_and_nothing_ends_data_early() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert!(attempt.failure.is_none());
    let seen = peer.seen();
    let wire = String::from_utf8(seen[0].messages[0].clone()).unwrap();
    assert!(wire.contains("\r\nhello\r\n..\r\n..leading dot\r\nend\r\n"), "{wire:?}");
    assert!(!wire.ends_with("\r\n\r\n"), "no blank line is added before the terminator: {wire:?}");
}

#[tokio::test]
async fn data_is_not_sent_when_every_recipient_is_refused() {
    let script = Script {
        rcpt: HashMap::from([("a@rcpt.test".to_string(), "550 5.1.1 unknown".to_string())]),
        ..Default::default()
    };
    let peer = SmtpPeer::start(LOCAL, script).await;
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert_eq!(attempt.answers.len(), 1);
    assert!(!peer.seen()[0].commands.iter().any(|c| c == "DATA"));
}

#[tokio::test]
async fn per_recipient_transactions_share_one_connection_with_rset_after_an_aborted_one() {
    let script = Script {
        rcpt: HashMap::from([("a@rcpt.test".to_string(), "550 5.1.1 unknown".to_string())]),
        ..Default::default()
    };
    let peer = SmtpPeer::start(LOCAL, script).await;
    let (a, b, c) = (rcpts(&["a@rcpt.test"]), rcpts(&["b@rcpt.test"]), rcpts(&["c@rcpt.test"]));
    let tx = [
        Transaction { sender: "s@sender.test", recipients: &a, message: MESSAGE },
        Transaction { sender: "s@sender.test", recipients: &b, message: MESSAGE },
        Transaction { sender: "s@sender.test", recipients: &c, message: MESSAGE },
    ];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert!(attempt.failure.is_none());
    assert_eq!(
        attempt.answers.iter().filter(|(_, a)| matches!(a, Answer::Delivered(_))).count(),
        2
    );
    let seen = peer.seen();
    assert_eq!(seen.len(), 1, "one connection for all transactions");
    let cmds: Vec<&str> = seen[0].commands.iter().map(|c| c.split(':').next().unwrap()).collect();
    assert_eq!(
        cmds,
        [
            "EHLO worker.test",
            "MAIL FROM",
            "RCPT TO",
            "RSET",
            "MAIL FROM",
            "RCPT TO",
            "DATA",
            "MAIL FROM",
            "RCPT TO",
            "DATA",
            "QUIT"
        ]
    );
    assert_eq!(seen[0].messages.len(), 2);
}

#[tokio::test]
async fn a_negative_greeting_fails_the_session() {
    let peer = SmtpPeer::start(
        LOCAL,
        Script { greeting: "554 5.3.2 not now".into(), ..Default::default() },
    )
    .await;
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    match attempt.failure {
        Some(SessionError::Greeting { reply }) => {
            assert_eq!(reply.to_string(), "554 5.3.2 not now")
        }
        other => panic!("{other:?}"),
    }
    assert!(attempt.answers.is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_failure() {
    let listener = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt = deliver_to_host(&opts(port, TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert!(matches!(attempt.failure, Some(SessionError::Connect { .. })), "{:?}", attempt.failure);
}

#[tokio::test]
async fn a_failed_opportunistic_tls_handshake_falls_back_to_plain_text_on_a_new_connection() {
    let script =
        Script { extensions: vec!["STARTTLS".into()], break_tls: true, ..Default::default() };
    let peer = SmtpPeer::start(LOCAL, script).await;
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Opportunistic), LOCAL, "mx.test", &tx)
            .await;
    assert!(attempt.failure.is_none(), "{:?}", attempt.failure);
    assert!(matches!(attempt.answers[0].1, Answer::Delivered(_)));
    assert!(!attempt.encrypted);
    let seen = peer.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].commands.iter().any(|c| c == "STARTTLS"));
    assert!(
        !seen[1].commands.iter().any(|c| c == "STARTTLS"),
        "the fallback must not try TLS again"
    );
    assert_eq!(seen[1].messages.len(), 1);
}

#[tokio::test]
async fn required_tls_fails_the_session_when_starttls_is_missing_or_broken() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let r = rcpts(&["a@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Required), LOCAL, "mx.test", &tx).await;
    assert!(
        matches!(attempt.failure, Some(SessionError::TlsUnavailable { .. })),
        "{:?}",
        attempt.failure
    );
    assert!(peer.seen()[0].messages.is_empty());

    let broken =
        Script { extensions: vec!["STARTTLS".into()], break_tls: true, ..Default::default() };
    let peer = SmtpPeer::start(LOCAL, broken).await;
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Required), LOCAL, "mx.test", &tx).await;
    assert!(
        matches!(attempt.failure, Some(SessionError::TlsHandshake { .. })),
        "{:?}",
        attempt.failure
    );
    assert_eq!(peer.seen().len(), 1, "no plain-text retry in required mode");
}

#[tokio::test]
async fn a_missing_end_of_data_reply_times_out_and_leaves_accepted_recipients_in_doubt() {
    let peer = SmtpPeer::start(LOCAL, Script { end_reply: None, ..Default::default() }).await;
    let r = rcpts(&["a@rcpt.test", "b@rcpt.test"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let mut o = opts(peer.addr.port(), TlsMode::Disabled);
    o.data_timeout = Duration::from_millis(300);
    let attempt = deliver_to_host(&o, LOCAL, "mx.test", &tx).await;
    assert!(
        matches!(attempt.failure, Some(SessionError::Timeout { stage: Stage::DataEnd })),
        "{:?}",
        attempt.failure
    );
    assert_eq!(attempt.in_doubt, r);
    assert!(attempt.answers.is_empty());
}

#[tokio::test]
async fn an_idn_envelope_goes_out_as_a_labels_without_asking_for_smtputf8() {
    let peer = SmtpPeer::start(LOCAL, Script::default()).await;
    let r = rcpts(&["ann@bücher.test"]);
    let tx = [Transaction { sender: "news@bücher.test", recipients: &r, message: MESSAGE }];
    let attempt =
        deliver_to_host(&opts(peer.addr.port(), TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert!(
        matches!(attempt.answers[..], [(ref a, Answer::Delivered(_))] if a == "ann@bücher.test")
    );
    let commands = &peer.seen()[0].commands;
    assert!(commands.iter().any(|c| c == "MAIL FROM:<news@xn--bcher-kva.test>"), "{commands:?}");
    assert!(commands.iter().any(|c| c == "RCPT TO:<ann@xn--bcher-kva.test>"), "{commands:?}");
}

#[tokio::test]
async fn a_utf8_local_part_uses_smtputf8_when_offered_and_is_not_sent_when_not() {
    let offering = Script { extensions: vec!["SMTPUTF8".into()], ..Default::default() };
    let peer = SmtpPeer::start(LOCAL, offering).await;
    let r = rcpts(&["jürgen@example.de"]);
    let tx = [Transaction { sender: "s@sender.test", recipients: &r, message: MESSAGE }];
    let port = peer.addr.port();
    let attempt = deliver_to_host(&opts(port, TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert!(matches!(attempt.answers[0].1, Answer::Delivered(_)), "{:?}", attempt.answers);
    let commands = &peer.seen()[0].commands;
    assert!(commands.iter().any(|c| c == "MAIL FROM:<s@sender.test> SMTPUTF8"), "{commands:?}");
    assert!(commands.iter().any(|c| c == "RCPT TO:<jürgen@example.de>"), "{commands:?}");

    let plain = SmtpPeer::start(LOCAL, Script::default()).await;
    let port = plain.addr.port();
    let attempt = deliver_to_host(&opts(port, TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    match &attempt.answers[..] {
        [(who, Answer::Unsendable(reply))] => {
            assert_eq!(who, "jürgen@example.de");
            assert_eq!(reply.code, 553);
            assert!(reply.text.contains("does not offer SMTPUTF8"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    let commands = &plain.seen()[0].commands;
    assert!(
        !commands.iter().any(|c| c.starts_with("MAIL") || c.starts_with("RCPT")),
        "{commands:?}"
    );
}

#[tokio::test]
async fn utf8_in_the_header_needs_smtputf8_but_an_8bit_body_alone_does_not() {
    let offering = Script { extensions: vec!["SMTPUTF8".into()], ..Default::default() };
    let peer = SmtpPeer::start(LOCAL, offering).await;
    let r = rcpts(&["a@rcpt.test"]);
    let body_only = "From: s@sender.test\r\nSubject: t\r\n\r\nGrüße\r\n".as_bytes();
    let in_header = "From: jürgen@sender.test\r\nSubject: t\r\n\r\nhi\r\n".as_bytes();
    let tx = [
        Transaction { sender: "s@sender.test", recipients: &r, message: body_only },
        Transaction { sender: "s@sender.test", recipients: &r, message: in_header },
    ];
    let port = peer.addr.port();
    let attempt = deliver_to_host(&opts(port, TlsMode::Disabled), LOCAL, "mx.test", &tx).await;
    assert_eq!(attempt.answers.len(), 2, "{:?}", attempt.answers);
    let mails: Vec<_> =
        peer.seen()[0].commands.iter().filter(|c| c.starts_with("MAIL")).cloned().collect();
    assert_eq!(
        mails,
        [
            "MAIL FROM:<s@sender.test> BODY=8BITMIME",
            "MAIL FROM:<s@sender.test> BODY=8BITMIME SMTPUTF8"
        ]
    );
}
