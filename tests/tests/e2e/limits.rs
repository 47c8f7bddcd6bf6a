//! Per-message limits: recipients (`limits.max_recipients`) and attachments
//! (`limits.max_attachments`) over the limit are a 422 naming the field and the limit; a
//! message whose rendered size (base64 attachments included) is over `limits.max_message_size`
//! is a 413, and one just under it is delivered no larger than the limit. Header hygiene is a
//! 422 per field: control characters, custom header lines over 998 octets, reserved trace and
//! `X-Postwire-*` headers, and `metadata` over `limits.max_metadata_size`.

use base64::Engine;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

fn attachment(name: &str, bytes: usize) -> Value {
    let content = base64::engine::general_purpose::STANDARD.encode(vec![0xA5u8; bytes]);
    json!({"filename": name, "content_type": "application/octet-stream", "content": content})
}

#[tokio::test]
async fn more_recipients_than_the_limit_across_to_cc_and_bcc_is_a_422() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_recipients = 3;
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["a@limits.invalid", "b@limits.invalid"]);
    body["cc"] = json!(["c@limits.invalid"]);
    body["bcc"] = json!(["d@limits.invalid"]);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "to");
    assert_eq!(
        problem["errors"][0]["message"],
        "at most 3 recipients per message across to, cc and bcc (got 4; limits.max_recipients)"
    );
    // The same address twice is one recipient.
    body["bcc"] = json!(["A@limits.invalid"]);
    let (status, accepted) = app.send(&body).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["recipients"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn more_attachments_than_the_limit_is_a_422_and_the_limit_itself_is_delivered() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "attach.test", &[(10, ip(62), Script::default())]).await;
    let mut settings = world.settings();
    settings.limits.max_attachments = 2;
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["r@attach.test"]);
    body["attachments"] =
        json!([attachment("one.bin", 10), attachment("two.bin", 10), attachment("three.bin", 10)]);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "attachments");
    assert_eq!(problem["errors"][0]["message"], "at most 2 attachments per message (got 3)");

    body["attachments"] = json!([attachment("one.bin", 10), attachment("two.bin", 10)]);
    let id = app.send_ok(&body).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "r@attach.test")["status"], "delivered", "{m:#}");
    let text = String::from_utf8_lossy(&hosts[0].received()[0].data).into_owned();
    assert!(text.contains("one.bin") && text.contains("two.bin"), "{text}");
}

#[tokio::test]
async fn the_size_limit_applies_to_the_rendered_message_with_base64_attachments() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "size.test", &[(10, ip(63), Script::default())]).await;
    let mut settings = world.settings();
    settings.limits.max_message_size = "20KB".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();

    // 16 000 bytes of file: under 20 KB as raw bytes, over it once base64-encoded.
    let mut body = simple_message(&["r@size.test"]);
    body["attachments"] = json!([attachment("big.bin", 16_000)]);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["title"], "Payload Too Large");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("once rendered") && detail.contains("the limit is 20000 bytes"),
        "{detail}"
    );

    // 13 000 bytes fit, and what reaches the wire really is within the limit.
    body["attachments"] = json!([attachment("fits.bin", 13_000)]);
    let id = app.send_ok(&body).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "r@size.test")["status"], "delivered", "{m:#}");
    let size = hosts[0].received()[0].data.len();
    assert!(size > 17_000 && size <= 20_000, "rendered size {size}");
}

#[tokio::test]
async fn control_characters_long_header_lines_and_reserved_headers_are_a_422_naming_each_field() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let mut body = simple_message(&["a@limits.invalid"]);
    body["subject"] = json!("Bell\u{7}and escape\u{1b}[31m");
    body["headers"] = json!({
        "X-Vt": "a\u{b}b",
        "X-Long": "v".repeat(991),
        "X-Fits": "v".repeat(990),
        "ARC-Seal": "i=1; a=rsa-sha256; b=forged",
        "X-Postwire-Metadata": "{}",
    });
    body["attachments"] = json!([{
        "filename": "report\u{7f}.pdf", "content_type": "application/pdf", "content": "aGk="
    }]);
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "subject",
            "headers.ARC-Seal",
            "headers.X-Long",
            "headers.X-Postwire-Metadata",
            "headers.X-Vt",
            "attachments[0].filename"
        ],
        "{problem}"
    );
}

#[tokio::test]
async fn metadata_over_max_metadata_size_is_a_422_on_metadata_and_under_it_is_accepted() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.limits.max_metadata_size = "1KB".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let mut body = simple_message(&["a@limits.invalid"]);
    body["metadata"] = json!({"order": "x".repeat(1_000)});
    let (status, problem) = app.send(&body).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "metadata", "{problem}");
    assert_eq!(
        problem["errors"][0]["message"],
        "must be at most 1000 bytes as JSON (got 1012; limits.max_metadata_size)"
    );
    body["metadata"] = json!({"order": "x".repeat(900)});
    let (status, accepted) = app.send(&body).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
}
