//! Delivery on the wire: MX choice, SMTP outcomes, retries, TLS, and what the bytes look like.

use std::time::Duration;

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::{Script, SmtpServer};
use serde_json::json;

use crate::{ip, mx_hosts, recipient, SOON};

#[tokio::test]
async fn mail_goes_to_the_most_preferred_mx_host_with_our_helo_and_envelope() {
    let world = World::new().await;
    let hosts = mx_hosts(
        &world,
        "pref.test",
        &[(20, ip(3), Script::default()), (10, ip(2), Script::default())],
    )
    .await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["ann@pref.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "ann@pref.test");
    assert_eq!(r["status"], "delivered", "{m:#}");
    assert_eq!(r["attempts"], 1);
    assert!(r["last_response"].as_str().unwrap().starts_with("250"), "{m:#}");
    let got = hosts[1].received();
    assert_eq!(got.len(), 1, "the preference-10 host gets the message");
    assert!(hosts[0].received().is_empty(), "the preference-20 host is not used");
    assert_eq!(got[0].helo, "mta.postwire.test");
    assert_eq!(got[0].mail_from, "app@sender.test");
    assert_eq!(got[0].rcpt_to, vec!["ann@pref.test"]);
    let events: Vec<_> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["message.delivered"]);
}

#[tokio::test]
async fn next_mx_host_is_tried_when_the_first_refuses_the_connection() {
    let world = World::new().await;
    // 127.0.0.4 has no server: the connection is refused.
    world.dns.add_mx("fallback.test", 10, "dead.fallback.test");
    world.dns.add_a("dead.fallback.test", ip(4));
    let hosts = mx_hosts(&world, "fallback.test", &[(20, ip(5), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["bo@fallback.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "bo@fallback.test")["status"], "delivered", "{m:#}");
    assert_eq!(hosts[0].received().len(), 1);
}

#[tokio::test]
async fn next_mx_host_is_tried_when_the_first_greets_with_an_error() {
    let world = World::new().await;
    let hosts = mx_hosts(
        &world,
        "greet.test",
        &[
            (10, ip(6), Script::default().greeting(554, "5.3.2 not accepting mail")),
            (20, ip(7), Script::default()),
        ],
    )
    .await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["cy@greet.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "cy@greet.test")["status"], "delivered", "{m:#}");
    assert!(hosts[0].received().is_empty());
    assert_eq!(hosts[1].received().len(), 1);
}

#[tokio::test]
async fn domain_without_mx_is_delivered_to_its_a_record() {
    let world = World::new().await;
    world.dns.add_a("implicit.test", ip(8));
    let server = SmtpServer::start(ip(8), world.smtp_port, Script::default()).await.unwrap();
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["di@implicit.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "di@implicit.test")["status"], "delivered", "{m:#}");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn null_mx_bounces_at_once_without_connecting() {
    let world = World::new().await;
    world.dns.set_null_mx("nullmx.test");
    world.dns.add_a("nullmx.test", ip(9));
    let server = SmtpServer::start(ip(9), world.smtp_port, Script::default()).await.unwrap();
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["ed@nullmx.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "ed@nullmx.test");
    assert_eq!(r["status"], "bounced", "{m:#}");
    assert_eq!(r["attempts"], 1);
    assert_eq!(server.connections(), 0, "RFC 7505: never connect to a null MX domain");
}

#[tokio::test]
async fn nonexistent_domain_bounces() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["fi@nowhere.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "fi@nowhere.test")["status"], "bounced", "{m:#}");
}

#[tokio::test]
async fn dns_servfail_defers_instead_of_bouncing() {
    let world = World::new().await;
    world.dns.set_servfail("flaky.test");
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["gu@flaky.test"])).await.unwrap();
    let m = app
        .wait_message(&id, SOON, |m| recipient(m, "gu@flaky.test")["status"] == "deferred")
        .await
        .unwrap();
    let r = recipient(&m, "gu@flaky.test");
    assert!(r["next_attempt_at"].is_string(), "{m:#}");
    assert!(r["attempts"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn starttls_is_used_when_the_mx_offers_it() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "tls.test", &[(10, ip(10), Script::default().starttls())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["ha@tls.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "ha@tls.test")["status"], "delivered", "{m:#}");
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "the message must travel inside TLS");
}

#[tokio::test]
async fn failed_tls_handshake_is_retried_in_plain_text() {
    let world = World::new().await;
    let hosts =
        mx_hosts(&world, "badtls.test", &[(10, ip(11), Script::default().broken_tls())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["io@badtls.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "io@badtls.test")["status"], "delivered", "{m:#}");
    assert_eq!(
        recipient(&m, "io@badtls.test")["attempts"],
        1,
        "the fallback happens within one attempt"
    );
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls);
    assert!(hosts[0].connections() >= 2);
}

#[tokio::test]
async fn each_recipient_gets_its_own_result_in_one_transaction() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|addr, _| {
        if addr.starts_with("bob@") {
            (550, "5.1.1 bob: no such user".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let hosts = mx_hosts(&world, "multi.test", &[(10, ip(12), script)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app
        .send_ok(&simple_message(&["alice@multi.test", "bob@multi.test", "carol@multi.test"]))
        .await
        .unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "alice@multi.test")["status"], "delivered", "{m:#}");
    assert_eq!(recipient(&m, "carol@multi.test")["status"], "delivered");
    let bob = recipient(&m, "bob@multi.test");
    assert_eq!(bob["status"], "bounced");
    assert!(bob["last_response"].as_str().unwrap().contains("550"), "{bob}");
    let got = hosts[0].received();
    assert_eq!(got.len(), 1, "one DATA for the domain");
    assert_eq!(got[0].rcpt_to, vec!["alice@multi.test", "carol@multi.test"]);
    assert_eq!(hosts[0].connections(), 1);
    assert_eq!(m["status"], "delivered");
}

#[tokio::test]
async fn deferred_recipient_is_retried_after_451_and_then_delivered() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|_, nth| {
        if nth == 1 {
            (451, "4.7.1 greylisted, try again".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let hosts = mx_hosts(&world, "grey.test", &[(10, ip(13), script)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["jo@grey.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "jo@grey.test");
    assert_eq!(r["status"], "delivered", "{m:#}");
    assert_eq!(r["attempts"], 2);
    let events: Vec<_> =
        m["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(events, ["message.deferred", "message.delivered"]);
    assert!(m["events"][0]["data"]["smtp_response"].as_str().unwrap().contains("451"));
    assert_eq!(hosts[0].received().len(), 1);
}

#[tokio::test]
async fn rejected_data_bounces_every_accepted_recipient() {
    let world = World::new().await;
    let script = Script::default().data_reply(554, "5.6.0 message content rejected");
    let hosts = mx_hosts(&world, "reject.test", &[(10, ip(14), script)]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["ka@reject.test", "lu@reject.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    for who in ["ka@reject.test", "lu@reject.test"] {
        let r = recipient(&m, who);
        assert_eq!(r["status"], "bounced", "{m:#}");
        assert!(r["last_response"].as_str().unwrap().contains("554"));
    }
    assert!(hosts[0].received().is_empty());
}

#[tokio::test]
async fn recipient_still_deferred_after_max_age_bounces_as_expired() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|_, _| (451, "4.3.0 mailbox busy".into()));
    let _hosts = mx_hosts(&world, "busy.test", &[(10, ip(15), script)]).await;
    let mut settings = world.settings();
    settings.retry.max_age = "2s".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let id = app.send_ok(&simple_message(&["mo@busy.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "mo@busy.test");
    assert_eq!(r["status"], "bounced", "{m:#}");
    assert!(r["last_response"].as_str().unwrap().starts_with("expired"), "{r}");
    assert!(r["attempts"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn lone_dots_and_bare_line_feeds_arrive_as_one_intact_message() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "dots.test", &[(10, ip(16), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    // An SMTP smuggling attempt: a bare-LF "end of data" followed by a second transaction.
    let text = "first line\n.\nMAIL FROM:<evil@attacker.test>\nRCPT TO:<victim@dots.test>\nDATA\nsmuggled\r\n.\r\nafter crlf dot\n..two dots\nlast line\n";
    let body =
        json!({"from": "app@sender.test", "to": ["no@dots.test"], "subject": "dots", "text": text});
    let id = app.send_ok(&body).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "no@dots.test")["status"], "delivered", "{m:#}");
    let got = hosts[0].wait_for_messages(1, SOON).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = hosts[0].received();
    assert_eq!(got_after.len(), 1, "exactly one message: nothing smuggled");
    assert!(!hosts[0].saw_bare_lf(), "the wire carries CRLF line endings only");
    assert_eq!(got[0].rcpt_to, vec!["no@dots.test"]);
    let data = String::from_utf8_lossy(&got[0].data);
    for line in [
        "first line",
        "\r\n.\r\n",
        "MAIL FROM:<evil@attacker.test>",
        "after crlf dot",
        "..two dots",
        "last line",
    ] {
        assert!(data.contains(line), "missing {line:?} in the received message:\n{data}");
    }
    assert!(
        !hosts[0].commands().iter().any(|c| c.contains("evil@attacker.test")),
        "smuggled command reached the server"
    );
}

#[tokio::test]
async fn a_burst_of_messages_is_delivered_exactly_once_each() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "burst.test", &[(10, ip(17), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let mut body = simple_message(&[&format!("u{i}@burst.test")]);
        body["subject"] = json!(format!("burst {i}"));
        ids.push(app.send_ok(&body).await.unwrap());
    }
    for id in &ids {
        app.wait_final(id, SOON).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hosts[0].received();
    let mut rcpts: Vec<String> = got.iter().flat_map(|r| r.rcpt_to.clone()).collect();
    rcpts.sort();
    let total = rcpts.len();
    rcpts.dedup();
    assert_eq!((total, rcpts.len()), (40, 40), "each message exactly once");
}
