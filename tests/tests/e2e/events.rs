//! Events: signed webhooks verified with the reference library, retries and subscriptions
//! (opens and clicks are in `tracking`).

use std::collections::HashSet;

use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use serde_json::json;

use crate::{ip, mx_hosts, SOON};

#[tokio::test]
async fn delivery_events_reach_webhooks_signed_per_standard_webhooks() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|addr, _| {
        if addr.starts_with("gone@") {
            (550, "5.1.1 gone".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let _hosts = mx_hosts(&world, "hooks.test", &[(10, ip(20), script)]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (_, secret) = app.create_webhook(&format!("{}/events", receiver.url()), &[]).await.unwrap();
    let body = json!({
        "from": "app@sender.test", "to": ["here@hooks.test", "gone@hooks.test"], "subject": "s", "text": "t",
        "tags": ["welcome"], "metadata": {"user_id": 42},
    });
    let id = app.send_ok(&body).await.unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let requests = receiver.wait_for_requests(2, SOON).await.unwrap();
    let mut seen = HashSet::new();
    for req in &requests {
        let event = verify_standard_webhook(&secret, req)
            .expect("signature verifies with the reference library");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(event["data"]["message_id"], id.as_str());
        assert_eq!(event["data"]["tags"], json!(["welcome"]));
        assert_eq!(event["data"]["metadata"], json!({"user_id": 42}));
        assert_eq!(req.header("webhook-id"), event["id"].as_str());
        seen.insert((
            event["type"].as_str().unwrap().to_string(),
            event["data"]["recipient"].as_str().unwrap().to_string(),
        ));
        if event["type"] == "message.bounced" {
            assert!(event["data"]["smtp_response"].as_str().unwrap().contains("550"));
        }
    }
    assert!(seen.contains(&("message.delivered".into(), "here@hooks.test".into())), "{seen:?}");
    assert!(seen.contains(&("message.bounced".into(), "gone@hooks.test".into())), "{seen:?}");
    // A wrong secret must not verify: the check is real.
    assert!(
        verify_standard_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &requests[0]).is_err()
    );
}

#[tokio::test]
async fn failing_webhook_is_retried_with_the_same_webhook_id() {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "retryhook.test", &[(10, ip(21), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(|nth| if nth <= 2 { 500 } else { 204 });
    let app = TestApp::start(world.settings()).await.unwrap();
    let (_, secret) = app.create_webhook(&receiver.url(), &["message.delivered"]).await.unwrap();
    let id = app
        .send_ok(&json!({"from": "app@sender.test", "to": ["x@retryhook.test"], "text": "t"}))
        .await
        .unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let requests = receiver.wait_for_requests(3, SOON).await.unwrap();
    let ids: HashSet<_> =
        requests.iter().map(|r| r.header("webhook-id").unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "one event, one webhook-id across retries");
    for r in &requests {
        verify_standard_webhook(&secret, r).unwrap();
    }
    assert_eq!(requests[2].status, 204);
}

#[tokio::test]
async fn webhook_subscriptions_filter_event_types() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|_, _| (550, "5.1.1 nobody".into()));
    let _hosts = mx_hosts(&world, "filter.test", &[(10, ip(22), script)]).await;
    let receiver = WebhookReceiver::start().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    app.create_webhook(&receiver.url(), &["message.delivered"]).await.unwrap();
    let (_, bounce_secret) = app
        .create_webhook(&format!("{}/bounces", receiver.url()), &["message.bounced"])
        .await
        .unwrap();
    let id = app
        .send_ok(&json!({"from": "app@sender.test", "to": ["x@filter.test"], "text": "t"}))
        .await
        .unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let requests = receiver.wait_for_requests(1, SOON).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let all = receiver.requests();
    assert_eq!(all.len(), 1, "only the bounce subscriber is called: {all:?}");
    assert_eq!(requests[0].path, "/bounces");
    verify_standard_webhook(&bounce_secret, &requests[0]).unwrap();
}
