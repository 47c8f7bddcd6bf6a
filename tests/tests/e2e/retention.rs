//! `storage.retention` (issue 11): finished messages older than it disappear with everything
//! about them; pending ones (scheduled, deferred) stay whatever their age; `/metrics` shows
//! what was pruned and how large the store is. SMTP sinks on 127.0.0.160–161.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::json;

use crate::{ip, mx_hosts, recipient, SOON};

/// The value of the sample `name` (with its labels) in a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test]
async fn finished_messages_past_the_retention_are_pruned_and_pending_ones_are_kept() {
    let world = World::new().await;
    let _kept = mx_hosts(&world, "kept.test", &[(10, ip(160), Script::default())]).await;
    let later = Script::default().rcpt_reply(|_, _| (451, "4.7.1 try later".into()));
    let _later = mx_hosts(&world, "later.test", &[(10, ip(161), later)]).await;
    let mut settings = world.settings();
    let retention = Duration::from_secs(2);
    settings.storage.retention = "2s".parse().unwrap();
    settings.retry.schedule = vec!["1h".parse().unwrap()];
    let app = TestApp::start(settings).await.unwrap();

    let done = app.send_ok(&simple_message(&["ann@kept.test"])).await.unwrap();
    app.wait_final(&done, SOON).await.unwrap();
    let deferred = app.send_ok(&simple_message(&["bob@later.test"])).await.unwrap();
    app.wait_message(&deferred, SOON, |m| recipient(m, "bob@later.test")["status"] == "deferred")
        .await
        .unwrap();
    let mut body = simple_message(&["cy@kept.test"]);
    body["send_at"] = json!((Utc::now() + TimeDelta::hours(1)).to_rfc3339());
    let scheduled = app.send_ok(&body).await.unwrap();
    let sent_all = tokio::time::Instant::now();

    // The delivered message goes (404), within a few retentions.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let r = app
            .client
            .get(app.url(&format!("/v1/messages/{done}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{done} was never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = sent_all.elapsed();
    // The pending two outlive several retentions (the pruner ticks every 0.5 s).
    while sent_all.elapsed() < retention * 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = app.message(&deferred).await.unwrap();
    assert_eq!(recipient(&m, "bob@later.test")["status"], "deferred");
    let m = app.message(&scheduled).await.unwrap();
    assert_eq!(recipient(&m, "cy@kept.test")["status"], "scheduled");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let pruned = sample(&metrics, "postwire_store_pruned_total{kind=\"message\"}").unwrap_or(0.0);
    assert!(pruned >= 1.0, "{metrics}");
    let size = sample(&metrics, "postwire_store_size_bytes").unwrap_or(0.0);
    assert!(size > 0.0, "{metrics}");
    println!("retention 2 s: the delivered message was gone {gone_after:?} after the sends; store {size} bytes");
    app.stop().await;
}
