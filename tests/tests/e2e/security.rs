//! Hostile clients against the HTTP listener: slowloris sockets are closed after
//! `http.header_read_timeout`, one address cannot hold more than `http.max_connections_per_ip`,
//! and the service keeps answering everyone else meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postwire_config::units::Duration as ConfigDuration;
use postwire_e2e::app::{TestApp, World};
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
