//! Hostile clients against the HTTP listener: slowloris sockets are closed after
//! `http.header_read_timeout`, one address cannot hold more than `http.max_connections_per_ip`,
//! and the service keeps answering everyone else meanwhile. And keys against each other's
//! messages: none reads, finds or cancels a message it may not see.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postwire_config::units::Duration as ConfigDuration;
use postwire_e2e::app::{simple_message, TestApp, World};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from `source` to `addr`.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Waits until the server closes `stream` (EOF or reset), or `deadline` passes.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or other answer before the close is fine; keep reading to the EOF.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_closed_and_other_clients_are_still_served() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.http.header_read_timeout = ConfigDuration::from_secs(1);
    settings.http.max_connections_per_ip = 20;
    let app = TestApp::start(settings).await.unwrap();
    let attacker = Ipv4Addr::new(127, 0, 0, 1);

    // Twenty sockets (the per-address cap) with half a request each, then forty more.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(attacker, app.addr).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    // Let the server accept those twenty before the ones over the cap arrive.
    let probe = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let health = probe.get(app.url("/healthz")).send().await.expect("healthz while attacked");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1), "healthz answered within 1 s");

    let mut over_cap = Vec::new();
    for _ in 0..40 {
        over_cap.push(connect_from(attacker, app.addr).await);
    }
    for s in &mut over_cap {
        assert!(
            closed_within(s, Duration::from_millis(900)).await,
            "a connection over http.max_connections_per_ip is closed at once"
        );
    }
    // Another address is unaffected while the attacker's sockets are open.
    let key = app.key.clone();
    let authed = probe
        .get(app.url("/v1/messages?limit=1"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("API answers another address");
    assert_eq!(authed.status(), 200);

    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a connection without a full request head is closed after header_read_timeout"
        );
    }
    // Its slots are free again: the attacker's address can make an honest request.
    let honest = reqwest::Client::builder()
        .local_address(IpAddr::V4(attacker))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(honest.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let world = World::new().await;
    let mut settings = world.settings();
    settings.http.header_read_timeout = ConfigDuration::from_secs(1);
    let app = TestApp::start(settings).await.unwrap();
    let mut idle = connect_from(Ipv4Addr::LOCALHOST, app.addr).await;
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "idle socket closed");
    app.stop().await;
}

/// `method path` with `key`: (status, body).
async fn call(app: &TestApp, method: reqwest::Method, path: &str, key: &str) -> (u16, Value) {
    let r = app.client.request(method, app.url(path)).bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A new key made by the app's admin key; returns the key itself.
async fn new_key(app: &TestApp, scopes: &[&str], sandbox: bool) -> String {
    let r = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&app.key)
        .json(&json!({"name": "k", "scopes": scopes, "sandbox": sandbox}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_string()
}

/// Sends a message an hour ahead (so it can still be canceled) with `key`; returns its id.
async fn scheduled_send(app: &TestApp, key: &str) -> String {
    let mut body = simple_message(&["ann@owners.test"]);
    body["send_at"] = json!((chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339());
    let r = app.client.post(app.url("/v1/messages")).bearer_auth(key).json(&body).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// The ids `GET /v1/messages` lists for `key`.
async fn searched(app: &TestApp, key: &str) -> Vec<String> {
    let (status, page) = call(app, reqwest::Method::GET, "/v1/messages?limit=100", key).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().into()).collect()
}

/// Issue 9: any `send` key could cancel, and a sandbox key read and cancel, another key's
/// message. Now a key reads, searches and cancels only its own messages unless it has `admin`
/// (live admin: all; sandbox admin: sandbox ones), and anything else is a 404 exactly like a
/// message that does not exist.
#[tokio::test]
async fn a_key_reads_searches_and_cancels_only_the_messages_it_may_see() {
    use reqwest::Method as M;
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let a = new_key(&app, &["send", "read"], false).await;
    let b = new_key(&app, &["send", "read"], false).await;
    let sandbox = new_key(&app, &["send", "read"], true).await;
    let sandbox_admin = new_key(&app, &["send", "read", "admin"], true).await;
    let (ma, mb, ms) = (
        scheduled_send(&app, &a).await,
        scheduled_send(&app, &b).await,
        scheduled_send(&app, &sandbox).await,
    );
    let missing = call(&app, M::GET, "/v1/messages/msg_0000000000000000000000000000dead", &a).await;
    assert_eq!(missing.0, 404);

    // (key, message, may see it)
    let matrix = [
        (&a, &ma, true),
        (&a, &mb, false),
        (&a, &ms, false),
        (&b, &mb, true),
        (&b, &ma, false),
        (&sandbox, &ms, true),
        (&sandbox, &ma, false),
        (&sandbox_admin, &ms, true),
        (&sandbox_admin, &ma, false),
        (&app.key, &ma, true),
        (&app.key, &mb, true),
        (&app.key, &ms, true),
    ];
    for (key, id, visible) in matrix {
        let (status, body) = call(&app, M::GET, &format!("/v1/messages/{id}"), key).await;
        if visible {
            assert_eq!((status, body["id"].as_str()), (200, Some(id.as_str())), "{body}");
        } else {
            assert_eq!((status, &body), (404, &missing.1), "{id} must look like it does not exist");
            let (status, body) = call(&app, M::DELETE, &format!("/v1/messages/{id}"), key).await;
            assert_eq!((status, &body), (404, &missing.1), "cancel of {id}");
        }
    }
    assert_eq!(searched(&app, &a).await, std::slice::from_ref(&ma));
    assert_eq!(searched(&app, &sandbox).await, std::slice::from_ref(&ms));
    assert_eq!(searched(&app, &sandbox_admin).await, std::slice::from_ref(&ms));
    let all = searched(&app, &app.key).await;
    assert!([&ma, &mb, &ms].iter().all(|id| all.contains(id)), "{all:?}");

    // Nothing was canceled by the refused attempts; the owner and an admin can.
    let still = call(&app, M::GET, &format!("/v1/messages/{mb}"), &b).await.1;
    assert_eq!(still["status"], "scheduled", "{still}");
    assert_eq!(call(&app, M::DELETE, &format!("/v1/messages/{mb}"), &b).await.0, 200);
    assert_eq!(call(&app, M::DELETE, &format!("/v1/messages/{ma}"), &app.key).await.0, 200);
    assert_eq!(call(&app, M::DELETE, &format!("/v1/messages/{ms}"), &sandbox_admin).await.0, 200);
    app.stop().await;
}
