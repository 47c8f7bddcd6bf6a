//! Crash tests for the distributed deployment: real `postwire` processes on real RabbitMQ and
//! Redis. Every accepted message must end delivered, none lost; duplicates at the SMTP sink
//! are counted and reported (only transactions in flight at a crash may repeat).
//!
//! These tests stop and start shared servers, so they run one at a time (`SERIAL`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use postwire_config::Backend;
use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::process::{postwire, Proc};
use postwire_e2e::smtp::{pick_free_port, Script, SmtpServer};
use serde_json::{json, Value};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SOON: Duration = Duration::from_secs(30);

fn role(config: &Path, role: &str, metrics_port: Option<u16>) -> Proc {
    let mut cmd = postwire(config);
    cmd.arg(role);
    if let Some(p) = metrics_port {
        cmd.env("POSTWIRE__TELEMETRY__METRICS_LISTEN", format!("127.0.0.1:{p}"));
    }
    Proc::spawn(cmd)
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str, key: &str) -> Option<Value> {
    client.get(url).bearer_auth(key).send().await.ok()?.json().await.ok()
}

/// Each subject received at least once and at most twice; returns the duplicate count.
fn check_sink(server: &SmtpServer, subjects: &[String]) -> usize {
    let received = server.received();
    let subject_of = |data: &[u8]| {
        String::from_utf8_lossy(data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap_or_default()
    };
    let mut duplicates = 0;
    for s in subjects {
        let copies = received.iter().filter(|r| &subject_of(&r.data) == s).count();
        assert!(copies >= 1, "`{s}` was lost");
        assert!(copies <= 2, "`{s}` was sent {copies} times");
        duplicates += copies - 1;
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing_and_the_other_worker_finishes_its_jobs() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    world.dns.add_mx("scale.test", 10, "mx.scale.test");
    world.dns.add_a("mx.scale.test", Ipv4Addr::new(127, 0, 0, 50));
    let sink = SmtpServer::start(Ipv4Addr::new(127, 0, 0, 50), world.smtp_port, Script::default())
        .await
        .unwrap();
    let http_port = pick_free_port();
    let config = world.write_config(http_port, true);
    let out = postwire(&config).args(["keys", "create", "--name", "crash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();

    let _gateway = role(&config, "api-gateway", None);
    let _dispatcher = role(&config, "webhook-dispatcher", None);
    let (port_a, port_b) = (pick_free_port(), pick_free_port());
    let mut worker_a = role(&config, "mta-worker", Some(port_a));
    let _worker_b = role(&config, "mta-worker", Some(port_b));
    let base = format!("http://127.0.0.1:{http_port}");
    let client = reqwest::Client::new();
    wait_until("the gateway", || async {
        client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    wait_until("worker B's metrics", || async {
        client.get(format!("http://127.0.0.1:{port_b}/metrics")).send().await.is_ok()
    })
    .await;

    let mut ids = Vec::new();
    let mut subjects = Vec::new();
    for i in 0..60 {
        let subject = format!("scale {i}");
        let mut body = simple_message(&[&format!("u{i}@scale.test")]);
        body["subject"] = json!(subject);
        let r = client
            .post(format!("{base}/v1/messages"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
        subjects.push(subject);
        if i == 20 {
            worker_a.kill9();
        }
    }
    for id in &ids {
        let url = format!("{base}/v1/messages/{id}");
        wait_until(&format!("{id} delivered"), || async {
            get_json(&client, &url, &key).await.is_some_and(|m| m["status"] == "delivered")
        })
        .await;
    }
    let duplicates = check_sink(&sink, &subjects);
    let metrics = client
        .get(format!("http://127.0.0.1:{port_b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delivered_by_b: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("postwire_deliveries_total{result=\"delivered\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(delivered_by_b > 0.0, "the surviving worker must have taken over jobs");
    assert!(
        metrics.contains("postwire_queue_depth"),
        "workers export queue depth read from the broker"
    );
    println!("worker killed mid-batch: 60 accepted, 60 delivered, {duplicates} duplicates at the sink; worker B delivered {delivered_by_b}");
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_loses_nothing_and_the_api_answers_503_while_it_is_down() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    world.dns.add_mx("amqp.test", 10, "mx.amqp.test");
    world.dns.add_a("mx.amqp.test", Ipv4Addr::new(127, 0, 0, 51));
    let sink = SmtpServer::start(Ipv4Addr::new(127, 0, 0, 51), world.smtp_port, Script::default())
        .await
        .unwrap();
    let mut settings = world.settings();
    settings.storage.backend = Backend::Distributed;
    settings.storage.namespace = format!("pwcrash-{:016x}", rand::random::<u64>());
    settings.worker.lease = "3s".parse().unwrap();
    let app = TestApp::start(settings).await.unwrap();
    let mut ids = Vec::new();
    let mut subjects = Vec::new();
    for i in 0..10 {
        let mut body = simple_message(&[&format!("a{i}@amqp.test")]);
        body["subject"] = json!(format!("amqp {i}"));
        subjects.push(format!("amqp {i}"));
        ids.push(app.send_ok(&body).await.unwrap());
    }

    rabbitmqctl(&["stop_app"]);
    let down = async {
        wait_until("503 while RabbitMQ is down", || async {
            app.send(&simple_message(&["x@amqp.test"])).await.is_ok_and(|(s, _)| s == 503)
        })
        .await;
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap().to_lowercase();
        assert!(
            body.contains("rabbitmq") || body.contains("amqp"),
            "readyz names the missing backend: {body}"
        );
    };
    let outcome = tokio::time::timeout(SOON, down).await;
    rabbitmqctl(&["start_app"]);
    outcome.expect("the API noticed RabbitMQ was down");

    wait_until("readiness after the restart", || async {
        app.client.get(app.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    for i in 10..20 {
        let mut body = simple_message(&[&format!("a{i}@amqp.test")]);
        body["subject"] = json!(format!("amqp {i}"));
        subjects.push(format!("amqp {i}"));
        ids.push(app.send_ok(&body).await.unwrap());
    }
    // Liveness after a broker restart, not a timing target: allow a loaded machine its time
    // (quorum queue leader election, reconnect back-off).
    for id in &ids {
        app.wait_final(id, 3 * SOON).await.unwrap();
    }
    let duplicates = check_sink(&sink, &subjects);
    println!("RabbitMQ restart: 20 accepted, 20 delivered, {duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_with_append_only_persistence() {
    let _serial = SERIAL.lock().await;
    let world = World::new().await;
    // A Redis of this test's own, persisting every write (appendfsync always), so it can be
    // killed without disturbing the shared one.
    let redis_port = pick_free_port();
    let redis_dir = world.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let start_redis = || {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &redis_port.to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&redis_dir);
        Proc::spawn(cmd)
    };
    let mut redis = start_redis();
    let script = Script::default().rcpt_reply(|_, nth| {
        if nth == 1 {
            (451, "4.7.1 later".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    world.dns.add_mx("redis.test", 10, "mx.redis.test");
    world.dns.add_a("mx.redis.test", Ipv4Addr::new(127, 0, 0, 52));
    let sink =
        SmtpServer::start(Ipv4Addr::new(127, 0, 0, 52), world.smtp_port, script).await.unwrap();
    let mut settings = world.settings();
    settings.storage.backend = Backend::Distributed;
    settings.storage.namespace = format!("pwcrash-{:016x}", rand::random::<u64>());
    settings.redis.url = postwire_config::Secret::new(format!("redis://127.0.0.1:{redis_port}"));
    settings.retry.schedule = vec!["2s".parse().unwrap()];
    // Claims cut short by the crash are retaken once their lease lapses.
    settings.worker.lease = "3s".parse().unwrap();
    let mut app = None;
    for _ in 0..50 {
        match TestApp::start(settings.clone()).await {
            Ok(a) => {
                app = Some(a);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let app = app.expect("app starts once its Redis is up");
    let mut ids = Vec::new();
    let mut subjects = Vec::new();
    for i in 0..10 {
        let mut body = simple_message(&[&format!("r{i}@redis.test")]);
        body["subject"] = json!(format!("redis {i}"));
        subjects.push(format!("redis {i}"));
        ids.push(app.send_ok(&body).await.unwrap());
    }
    // Every message is deferred once (451), so all are pending when Redis dies.
    redis.kill9();
    wait_until("503 while Redis is down", || async {
        app.send(&simple_message(&["x@redis.test"])).await.is_ok_and(|(s, _)| s == 503)
    })
    .await;
    let _redis = start_redis();
    for id in &ids {
        app.wait_final(id, SOON).await.unwrap();
    }
    let duplicates = check_sink(&sink, &subjects);
    println!("Redis kill -9 and restart: 10 accepted, 10 delivered, {duplicates} duplicates");
}
