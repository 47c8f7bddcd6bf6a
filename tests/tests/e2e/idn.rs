//! Internationalised addresses: IDN domains (UTS #46) resolved and sent as A-labels but shown
//! as written, UTF-8 local parts sent with SMTPUTF8 where the MX offers it and bounced at once
//! where it does not, and one suppression entry matching both spellings of an IDN address.
//! A UTF-8 local part moves on to the next MX host when the first lacks SMTPUTF8, and bounces
//! only when none offers it. SMTP sinks on 127.0.0.170–173 and 127.0.0.200–203.

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::json;

use crate::{ip, mx_hosts, recipient, SOON};

/// `bücher.test` as DNS knows it.
const BUECHER: &str = "xn--bcher-kva.test";

#[tokio::test]
async fn an_idn_recipient_is_resolved_and_sent_as_its_a_label_and_shown_as_written() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, BUECHER, &[(10, ip(170), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut body = simple_message(&["Ann <ann@Bücher.test>"]);
    body["from"] = json!("Bücherei <news@bücher.test>");
    let id = app.send_ok(&body).await.unwrap();

    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "ann@bücher.test")["status"], "delivered", "{m:#}");
    assert_eq!(m["from"], "Bücherei <news@bücher.test>", "shown as written: {m:#}");
    assert!(world.dns.queries_for(BUECHER) > 0, "the MX was asked for by its A-label");
    let got = hosts[0].received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, [format!("ann@{BUECHER}")]);
    assert_eq!(got[0].mail_from, format!("news@{BUECHER}"));
    assert!(
        !got[0].mail_params.iter().any(|p| p.eq_ignore_ascii_case("SMTPUTF8")),
        "an ASCII-only message never asks for SMTPUTF8: {:?}",
        got[0].mail_params
    );
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(head.is_ascii(), "the header stays ASCII:\n{head}");
    assert!(head.contains(&format!("<ann@{BUECHER}>")), "{head}");
    assert!(head.contains(&format!("@{BUECHER}>\r\n")), "Message-ID on the A-label: {head}");
    app.stop().await;
}

#[tokio::test]
async fn a_utf8_local_part_is_delivered_with_smtputf8_to_an_mx_that_offers_it() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "utf8.test", &[(10, ip(171), Script::default().smtputf8())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["Jürgen <jürgen@utf8.test>"])).await.unwrap();

    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "jürgen@utf8.test")["status"], "delivered", "{m:#}");
    let got = hosts[0].received();
    assert_eq!(got[0].rcpt_to, ["jürgen@utf8.test"]);
    assert!(got[0].mail_params.iter().any(|p| p == "SMTPUTF8"), "{:?}", got[0].mail_params);
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(text.contains("<jürgen@utf8.test>"), "the UTF-8 header (RFC 6532):\n{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_utf8_local_part_bounces_at_once_at_an_mx_without_smtputf8_and_is_not_suppressed() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "ascii-only.test", &[(10, ip(172), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let to = ["jürgen@ascii-only.test", "ann@ascii-only.test"];
    let mut body = simple_message(&to[..1]);
    body["bcc"] = json!([to[1]]);
    let id = app.send_ok(&body).await.unwrap();

    let m = app.wait_final(&id, SOON).await.unwrap();
    let bounced = recipient(&m, to[0]);
    assert_eq!(bounced["status"], "bounced", "{m:#}");
    assert_eq!(bounced["attempts"], 1, "at once, no retries: {m:#}");
    let response = bounced["last_response"].as_str().unwrap();
    assert!(response.contains("does not offer SMTPUTF8"), "{response}");
    // The To header names the UTF-8 address, so Ann's copy needs SMTPUTF8 too: nothing
    // half-readable goes out, and no address is mangled.
    assert_eq!(recipient(&m, to[1])["status"], "bounced", "{m:#}");
    assert!(hosts[0].received().is_empty());
    assert!(
        !hosts[0].commands().iter().any(|c| c.starts_with("RCPT")),
        "no RCPT was sent: {:?}",
        hosts[0].commands()
    );
    let listed = app
        .client
        .get(app.url(&format!("/v1/suppressions/{}", to[0])))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 404, "the MX's shortcoming says nothing against the address");
    app.stop().await;
}

#[tokio::test]
async fn a_suppressed_idn_address_matches_both_spellings_in_the_list_sends_and_search() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, BUECHER, &[(10, ip(173), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let r = app
        .client
        .post(app.url("/v1/suppressions"))
        .bearer_auth(&app.key)
        .json(&json!({"email": "Ann@Bücher.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for spelling in ["ann@bücher.test", "ann@XN--BCHER-KVA.test"] {
        let r = app
            .client
            .get(app.url(&format!("/v1/suppressions/{spelling}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{spelling}");
    }

    let by_a_label = app.send_ok(&simple_message(&[&format!("ann@{BUECHER}")])).await.unwrap();
    let m = app.wait_final(&by_a_label, SOON).await.unwrap();
    assert_eq!(recipient(&m, &format!("ann@{BUECHER}"))["status"], "suppressed", "{m:#}");
    assert!(hosts[0].commands().is_empty(), "never attempted: {:?}", hosts[0].commands());

    // Search finds the message by the other spelling.
    let found: serde_json::Value = app
        .client
        .get(app.url("/v1/messages"))
        .query(&[("recipient", "ann@bücher.test")])
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = found["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, [json!(by_a_label)], "{found:#}");

    let r = app
        .client
        .delete(app.url(&format!("/v1/suppressions/ann@{BUECHER}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let id = app.send_ok(&simple_message(&["ann@bücher.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "ann@bücher.test")["status"], "delivered", "{m:#}");
    app.stop().await;
}

#[tokio::test]
async fn a_utf8_local_part_goes_to_the_next_mx_when_the_first_lacks_smtputf8() {
    let world = World::new().await;
    let hosts = mx_hosts(
        &world,
        "second-utf8.test",
        &[(10, ip(200), Script::default()), (20, ip(201), Script::default().smtputf8())],
    )
    .await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let to = ["jürgen@second-utf8.test", "ann@second-utf8.test"];
    let id = app.send_ok(&simple_message(&to)).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    for email in to {
        let r = recipient(&m, email);
        assert_eq!(r["status"], "delivered", "{m:#}");
        assert_eq!(r["attempts"], 1, "in the same attempt: {m:#}");
    }
    assert!(hosts[0].received().is_empty(), "nothing sent where SMTPUTF8 is missing");
    let got = hosts[1].received();
    assert_eq!(got.len(), 1, "one transaction at the second host");
    assert!(got[0].mail_params.iter().any(|p| p == "SMTPUTF8"), "{:?}", got[0].mail_params);
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["ann@second-utf8.test", "jürgen@second-utf8.test"]);
}

#[tokio::test]
async fn a_utf8_local_part_bounces_only_when_no_mx_of_the_domain_offers_smtputf8() {
    let world = World::new().await;
    let hosts = mx_hosts(
        &world,
        "no-utf8.test",
        &[(10, ip(202), Script::default()), (20, ip(203), Script::default())],
    )
    .await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let id = app.send_ok(&simple_message(&["jürgen@no-utf8.test"])).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let bounced = recipient(&m, "jürgen@no-utf8.test");
    assert_eq!(bounced["status"], "bounced", "{m:#}");
    assert_eq!(bounced["attempts"], 1, "at once, no retries: {m:#}");
    let response = bounced["last_response"].as_str().unwrap();
    assert!(response.contains("does not offer SMTPUTF8"), "{response}");
    let events = m["events"].as_array().unwrap();
    let event = events.iter().find(|e| e["type"] == "message.bounced").expect("bounced event");
    assert_eq!(event["data"]["mx_host"], "mx1.no-utf8.test", "the last host tried: {m:#}");
    for host in &hosts {
        assert!(host.received().is_empty());
        assert!(host.commands().iter().any(|c| c.starts_with("EHLO")), "both were asked");
    }
}
