//! Hostile clients against the HTTP listener: slowloris sockets are closed after
//! `http.header_read_timeout`, one address cannot hold more than `http.max_connections_per_ip`,
//! and the service keeps answering everyone else meanwhile; slow bodies from one key get 408
//! and leave the other keys their share of `limits.max_in_flight`; a template that builds a
//! huge value gets 422 while the service stays small, and a burst of large requests leaves no
//! lasting growth behind (both against the real binary). And keys
//! against each other's messages: none reads, finds or cancels a message it may not see.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postwire_config::units::Duration as ConfigDuration;
use postwire_e2e::app::{distributed_backend, simple_message, TestApp, World};
use postwire_e2e::process::{create_key, serve_healthy};
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

/// A POST that announces a 100,000-byte body and sends one byte of it.
async fn slow_post(source: Ipv4Addr, addr: SocketAddr, key: &str) -> TcpStream {
    let mut s = connect_from(source, addr).await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// The status code of the response on `stream`, read within `deadline`.
async fn status_within(stream: &mut TcpStream, deadline: Duration) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    let until = Instant::now() + deadline;
    while !head.windows(2).any(|w| w == b"\r\n") {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1)?.parse().ok()
}

/// `GET /readyz`: status code and body.
async fn readyz(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = client.get(format!("{base}/readyz")).send().await.expect("readyz answers");
    (r.status().as_u16(), r.json().await.expect("readyz JSON"))
}

/// Polls `/readyz` until its `capacity` satisfies `done`.
async fn wait_capacity(client: &reqwest::Client, base: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = readyz(client, base).await;
        if done(&body["capacity"]) {
            return;
        }
        assert!(Instant::now() < deadline, "capacity never got there: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client_from(source: Ipv4Addr, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(source)).timeout(timeout).build().unwrap()
}

#[tokio::test]
async fn slow_bodies_from_one_key_get_408_while_another_key_still_gets_202() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, distributed_backend().is_some());
    let attacker = create_key(&config, "attacker");
    let second = create_key(&config, "second-attacker");
    let victim = create_key(&config, "victim");
    let base = format!("http://127.0.0.1:{port}");
    let env = [
        ("POSTWIRE__HTTP__BODY_READ_TIMEOUT", "4s"),
        ("POSTWIRE__LIMITS__MAX_IN_FLIGHT", "32"),
        ("POSTWIRE__LIMITS__MAX_WAITING", "32"),
    ];
    let _server = serve_healthy(&config, &env, &base).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ops = client_from(Ipv4Addr::new(127, 0, 0, 3), Duration::from_secs(2));

    // 100 slow bodies from one key: more than all 32 slots and all 32 places to wait.
    let mut slow = Vec::new();
    for _ in 0..100 {
        slow.push(slow_post(Ipv4Addr::new(127, 0, 0, 1), addr, &attacker).await);
    }
    // It gets half of each, no more.
    wait_capacity(&ops, &base, |c| c["in_flight"] == 16 && c["waiting"] == 16).await;
    let (status, body) = readyz(&ops, &base).await;
    assert_eq!(status, 200, "half the slots are free: ready ({body})");
    assert_eq!(body["status"], "ready");

    let started = Instant::now();
    let health = ops.get(format!("{base}/healthz")).send().await.expect("healthz under attack");
    assert_eq!(health.status(), 200);
    let healthz = started.elapsed();
    assert!(healthz < Duration::from_secs(1), "healthz within 1 s: {healthz:?}");

    let honest = client_from(Ipv4Addr::new(127, 0, 0, 2), Duration::from_secs(2));
    let started = Instant::now();
    let sent = honest
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&victim)
        .json(&simple_message(&["someone@victim.test"]))
        .send()
        .await
        .expect("the other key is answered");
    assert_eq!(sent.status(), 202, "another key still gets 202");
    let accepted = started.elapsed();

    // A second slow key takes the other half: now nothing is free and /readyz says so.
    for _ in 0..100 {
        slow.push(slow_post(Ipv4Addr::new(127, 0, 0, 4), addr, &second).await);
    }
    wait_capacity(&ops, &base, |c| c["in_flight"] == 32 && c["waiting"] == 32).await;
    let (status, body) = readyz(&ops, &base).await;
    assert_eq!(status, 503, "saturated: {body}");
    assert_eq!(body["status"], "unavailable");
    assert!(body["reason"].as_str().unwrap().starts_with("saturated"), "{body}");
    assert_eq!(body["backends"]["store"], "ok", "{body}");

    // Every slow request ends: 408 at its deadline (the waiters too, their time already
    // spent), 429 for those over their key's share; the 408s close their connection.
    let (mut timed_out, mut refused) = (0, 0);
    for s in &mut slow {
        match status_within(s, Duration::from_secs(15)).await {
            Some(408) => {
                timed_out += 1;
                assert!(
                    closed_within(s, Duration::from_secs(2)).await,
                    "408 closes the connection"
                );
            }
            Some(429) => refused += 1,
            other => panic!("a slow request ended with {other:?}"),
        }
    }
    assert_eq!(timed_out, 64, "every slow request given a slot or a place timed out");
    assert_eq!(refused, 136, "the others were refused over their key's share");
    wait_capacity(&ops, &base, |c| c["in_flight"] == 0 && c["waiting"] == 0).await;
    assert_eq!(readyz(&ops, &base).await.0, 200, "ready again");
    eprintln!("slow bodies: /healthz took {healthz:?}, another key's 202 {accepted:?}");
}

/// Peak and current resident memory of process `pid`, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test]
async fn a_template_that_doubles_a_string_gets_422_and_the_service_stays_small() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, distributed_backend().is_some());
    let key = create_key(&config, "templates");
    let base = format!("http://127.0.0.1:{port}");
    let server = serve_healthy(&config, &[], &base).await;
    let client = reqwest::Client::new();
    let create = |text: &str| {
        client
            .post(format!("{base}/v1/templates"))
            .bearer_auth(&key)
            .json(&json!({"name": "t", "subject": "Hi", "text": text}))
            .send()
    };
    // 2^28 bytes at the end, and twice that while the last copy is made.
    let hostile = create(
        "{% set ns = namespace(x=\"a\") %}{% for i in range(28) %}\
         {% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
    )
    .await
    .unwrap();
    assert_eq!(hostile.status(), 201);
    let hostile: Value = hostile.json().await.unwrap();
    let hostile_id = hostile["id"].as_str().unwrap().to_string();
    let fine: Value = create("Hello {{ name }}").await.unwrap().json().await.unwrap();

    let send = |template_id: &str| {
        let mut body = simple_message(&["someone@templates.test"]);
        body.as_object_mut().unwrap().remove("subject");
        body.as_object_mut().unwrap().remove("text");
        body["template_id"] = json!(template_id);
        body["variables"] = json!({"name": "Ann"});
        client.post(format!("{base}/v1/messages")).bearer_auth(&key).json(&body).send()
    };
    let (peak_before, _) = memory_kb(server.id());
    let started = Instant::now();
    let refused = send(&hostile_id).await.unwrap();
    let took = started.elapsed();
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "template_id", "{problem}");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains(&hostile_id), "{problem}");
    let (peak, rss) = memory_kb(server.id());
    assert!(peak < 200 * 1024, "the service's peak RSS stayed below 200 MB: {peak} kB");

    // The renderer recovers: the next templated send is rendered and queued.
    assert_eq!(send(fine["id"].as_str().unwrap()).await.unwrap().status(), 202);
    eprintln!(
        "doubling template: 422 after {took:?}; service peak RSS {peak_before} -> {peak} kB, now {rss} kB"
    );
}

#[tokio::test]
async fn after_a_burst_of_large_requests_the_service_gives_its_memory_back() {
    let world = World::new().await;
    let _hosts = crate::mx_hosts(
        &world,
        "burst.test",
        &[(10, crate::ip(241), postwire_e2e::smtp::Script::default())],
    )
    .await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, distributed_backend().is_some());
    let key = create_key(&config, "burst");
    let base = format!("http://127.0.0.1:{port}");
    let server = serve_healthy(&config, &[], &base).await;
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client.post(format!("{base}/v1/messages")).bearer_auth(&key).json(&body).send()
    };
    // Warm up (first connections, statements, a render) before the baseline.
    let warm = post(simple_message(&["warm@burst.test"])).await.unwrap();
    let warm = (warm.status(), warm.text().await.unwrap());
    assert_eq!(warm.0, 202, "{}", warm.1);
    let (_, baseline) = memory_kb(server.id());

    use base64::Engine as _;
    let attachment = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 6_000_000]);
    let big = |i: usize| {
        let mut body = simple_message(&[&format!("r{i}@burst.test")]);
        body["attachments"] = json!([{"filename": "a.bin", "content_type": "application/octet-stream", "content": attachment}]);
        body
    };
    let mut too_big = simple_message(&["r@burst.test"]);
    too_big["text"] = json!("x".repeat(24_000_000));
    // Eight at a time, so that on a busy machine no upload falls below `http.min_body_rate`.
    use futures::StreamExt as _;
    let sends = (0..22).map(|i| {
        let body = if i < 16 { big(i) } else { too_big.clone() };
        let post = &post;
        async move { (i, post(body).await) }
    });
    let answers: Vec<_> = futures::stream::iter(sends).buffer_unordered(8).collect().await;
    let mut ids = Vec::new();
    for (i, r) in answers {
        if i >= 16 {
            // Over the limit: a 413, or the connection closed after it while the body was
            // still being written (the client then sees the broken pipe, not the answer).
            if let Ok(r) = r {
                assert_eq!(r.status(), 413);
            }
            continue;
        }
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 16, "every message under the limit is accepted");
    let (peak, _) = memory_kb(server.id());
    // Every one delivered: nothing left to retry (and render again) later. Generous: on a
    // machine busy with the rest of the suite a DNS answer can time out and cost a retry.
    for id in &ids {
        let within = Duration::from_secs(90);
        postwire_e2e::process::wait_delivered_within(&client, &base, &key, id, within).await;
    }
    // Most of what the burst took goes back to the OS within seconds (glibc's malloc kept
    // nine tenths of it, for good): at most half of the growth stays.
    assert!(peak > baseline + 128 * 1024, "the burst did not grow the process: {peak} kB");
    let bound = baseline + (peak - baseline) / 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rss = memory_kb(server.id()).1;
    while rss > bound && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss = memory_kb(server.id()).1;
    }
    eprintln!("burst: RSS {baseline} kB before, peak {peak} kB, {rss} kB after");
    assert!(
        rss <= bound,
        "RSS stayed at {rss} kB after the burst: baseline {baseline} kB, peak {peak} kB"
    );
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
