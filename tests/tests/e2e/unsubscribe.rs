//! One-click unsubscribe (RFC 8058): `unsubscribe_url` arrives as `List-Unsubscribe` and
//! `List-Unsubscribe-Post`, both covered by a DKIM signature that an independent verifier
//! (dkimpy) accepts; bad URLs and clashing custom headers are refused with 422.

use postwire_config::DkimAlgorithm;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::dkim::{dkimpy_verify, publish_key};
use crate::{ip, mx_hosts, recipient, SOON};

const URL: &str = "https://app.sender.test/unsubscribe?u=42&t=Zm9vYmFy";

/// The header block, unfolded.
fn head(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ").replace("\r\n\t", " ")
}

/// The `h=` tag of every DKIM-Signature, lower-cased, as lists of names.
fn signed_header_lists(head: &str) -> Vec<Vec<String>> {
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(|sig| {
            let h =
                sig.split(';').map(str::trim).find_map(|t| t.strip_prefix("h=")).expect("h= tag");
            h.to_ascii_lowercase().replace([' ', '\t'], "").split(':').map(String::from).collect()
        })
        .collect()
}

#[tokio::test]
async fn one_click_unsubscribe_headers_arrive_dkim_signed_and_verify_with_dkimpy() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "unsub.test", &[(10, ip(60), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![
        publish_key(&world, "sender.test", "rsa1", DkimAlgorithm::RsaSha256),
        publish_key(&world, "sender.test", "ed1", DkimAlgorithm::Ed25519Sha256),
    ];
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["reader@unsub.test"]);
    body["unsubscribe_url"] = json!(URL);
    let id = app.send_ok(&body).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "reader@unsub.test")["status"], "delivered", "{m:#}");

    let data = hosts[0].received()[0].data.clone();
    let head = head(&data);
    assert!(head.lines().any(|l| l == format!("List-Unsubscribe: <{URL}>")), "{head}");
    assert!(
        head.lines().any(|l| l == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{head}"
    );
    let lists = signed_header_lists(&head);
    assert_eq!(lists.len(), 2, "one signature per key:\n{head}");
    for h in &lists {
        for required in ["list-unsubscribe", "list-unsubscribe-post", "from", "subject"] {
            assert!(h.iter().any(|x| x == required), "{required} not in h={h:?}");
        }
    }
    let (ok, report) = dkimpy_verify(&world, &data).await;
    assert!(ok, "dkimpy rejected the signatures:\n{report}\n{head}");
    assert!(report.contains("ok d=sender.test s=rsa1 a=rsa-sha256"), "{report}");
    assert!(report.contains("ok d=sender.test s=ed1 a=ed25519-sha256"), "{report}");

    // Pointing the link elsewhere after signing breaks the signature.
    let text = String::from_utf8_lossy(&data).into_owned();
    let tampered = text.replacen("https://app.sender.test/", "https://evil.test/", 1);
    assert_ne!(tampered, text);
    let (ok, report) = dkimpy_verify(&world, tampered.as_bytes()).await;
    assert!(!ok, "a changed List-Unsubscribe must not verify:\n{report}");
}

#[tokio::test]
async fn a_mailto_unsubscribe_url_adds_list_unsubscribe_without_the_one_click_post() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "unsub-mailto.test", &[(10, ip(61), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut body = simple_message(&["reader@unsub-mailto.test"]);
    body["unsubscribe_url"] = json!("mailto:unsubscribe@sender.test?subject=stop");
    let id = app.send_ok(&body).await.unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let head = head(&hosts[0].received()[0].data);
    assert!(
        head.lines()
            .any(|l| l == "List-Unsubscribe: <mailto:unsubscribe@sender.test?subject=stop>"),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("list-unsubscribe-post"), "{head}");
}

#[tokio::test]
async fn bad_unsubscribe_urls_and_a_clashing_custom_header_are_422() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let cases: [(Value, &str, &str); 6] = [
        (json!("http://app.sender.test/u"), "unsubscribe_url", "must be https:"),
        (json!("app.sender.test/u"), "unsubscribe_url", "absolute"),
        (
            json!("https://app.sender.test/u\r\nBcc: victim@x.test"),
            "unsubscribe_url",
            "control characters",
        ),
        (json!("https://app.sender.test/u>, <https://evil.test/"), "unsubscribe_url", "`>`"),
        (
            json!(format!("https://app.sender.test/{}", "a".repeat(2048))),
            "unsubscribe_url",
            "at most 2048",
        ),
        (json!("javascript:alert(1)"), "unsubscribe_url", "https: or mailto:"),
    ];
    for (url, field, why) in cases {
        let mut body = simple_message(&["reader@unsub.invalid"]);
        body["unsubscribe_url"] = url.clone();
        let (status, problem) = app.send(&body).await.unwrap();
        assert_eq!(status, 422, "{url}: {problem}");
        let e = &problem["errors"][0];
        assert_eq!(e["field"], field, "{problem}");
        assert!(e["message"].as_str().unwrap().contains(why), "{url}: {problem}");
    }
    let mut body = simple_message(&["reader@unsub.invalid"]);
    body["unsubscribe_url"] = json!(URL);
    body["headers"] = json!({"List-Unsubscribe": "<mailto:other@sender.test>"});
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "headers.List-Unsubscribe", "{problem}");
    assert!(
        problem["errors"][0]["message"].as_str().unwrap().contains("send one or the other"),
        "{problem}"
    );
    // The same header without `unsubscribe_url` is the caller's own business.
    body.as_object_mut().unwrap().remove("unsubscribe_url");
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 202, "{problem}");
}
