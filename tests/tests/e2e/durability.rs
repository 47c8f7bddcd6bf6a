//! Durability and the real binary: restarts, `kill -9` right after 202s, and the CLI.

use std::time::Duration;

use postwire_e2e::app::{simple_message, TestApp, World};
use postwire_e2e::process::{postwire, Proc};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::{ip, mx_hosts, recipient, SOON};

#[tokio::test]
async fn deferred_message_is_still_pending_after_a_restart_and_then_delivered() {
    let world = World::new().await;
    let script = Script::default().rcpt_reply(|_, nth| {
        if nth == 1 {
            (451, "4.7.1 try later".into())
        } else {
            (250, "2.1.5 ok".into())
        }
    });
    let hosts = mx_hosts(&world, "restart.test", &[(10, ip(40), script)]).await;
    let mut settings = world.settings();
    settings.retry.schedule = vec!["3s".parse().unwrap()];
    let app = TestApp::start(settings.clone()).await.unwrap();
    let id = app.send_ok(&simple_message(&["pat@restart.test"])).await.unwrap();
    app.wait_message(&id, SOON, |m| recipient(m, "pat@restart.test")["status"] == "deferred")
        .await
        .unwrap();
    app.stop().await;
    assert!(hosts[0].received().is_empty());

    let app = TestApp::start(settings).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    let r = recipient(&m, "pat@restart.test");
    assert_eq!(r["status"], "delivered", "{m:#}");
    assert_eq!(r["attempts"], 2);
    assert_eq!(hosts[0].received().len(), 1);
}

fn run_cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = postwire(config).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `postwire serve` as a real process.
fn serve(config: &std::path::Path) -> Proc {
    let mut cmd = postwire(config);
    cmd.arg("serve");
    Proc::spawn(cmd)
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "server at {base} never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_202_survives_kill_9_of_the_server() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "crash.test", &[(10, ip(41), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let (ok, stdout, stderr) = run_cli(&config, &["keys", "create", "--name", "crash-test"]);
    assert!(ok, "keys create failed: {stderr}");
    let key = stdout.lines().last().unwrap().trim().to_string();
    assert!(key.starts_with("pw_"), "the key is alone on the last line: {stdout}");

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = serve(&config);
    wait_healthy(&client, &base).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut body = simple_message(&[&format!("user{i}@crash.test")]);
        body["subject"] = json!(format!("crash {i}"));
        let r = client
            .post(format!("{base}/v1/messages"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    server.kill9();
    let killed_at = chrono::Utc::now();

    let _server = serve(&config);
    wait_healthy(&client, &base).await;
    // When each message's delivery was committed: before the kill, or by the restarted server.
    let mut committed_before_kill = Vec::new();
    for id in &ids {
        let m = postwire_e2e::process::wait_delivered(&client, &base, &key, id).await;
        let delivered: Vec<&Value> = m["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "message.delivered")
            .collect();
        assert_eq!(delivered.len(), 1, "one delivered event per recipient: {m:#}");
        let at: chrono::DateTime<chrono::Utc> =
            delivered[0]["timestamp"].as_str().unwrap().parse().unwrap();
        committed_before_kill.push(at < killed_at);
    }
    let received = hosts[0].received();
    let subject_of = |data: &[u8]| {
        String::from_utf8_lossy(data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap_or_default()
    };
    let mut duplicates = 0;
    for (i, committed) in committed_before_kill.iter().enumerate() {
        let copies =
            received.iter().filter(|r| subject_of(&r.data) == format!("crash {i}")).count();
        assert!(copies >= 1, "message {i} was lost");
        assert!(copies <= 2, "message {i} was sent {copies} times");
        if *committed {
            assert_eq!(
                copies, 1,
                "message {i} was recorded delivered before the kill, yet sent again"
            );
        }
        duplicates += copies - 1;
    }
    let in_flight = committed_before_kill.iter().filter(|c| !**c).count();
    println!(
        "kill -9 right after 25 accepted: {} committed before the kill, {in_flight} in flight; {} received, {duplicates} duplicates (all within the in-flight window)",
        25 - in_flight,
        received.len()
    );
}

#[tokio::test]
async fn cli_creates_lists_and_revokes_keys_and_generates_dkim_keys() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let (ok, stdout, _) =
        run_cli(&config, &["keys", "create", "--name", "ci", "--scopes", "send,read"]);
    assert!(ok);
    let key = stdout.lines().last().unwrap().trim().to_string();
    let key_id = postwire_store::ids::split_api_key(&key).unwrap().0.to_string();
    let (ok, stdout, stderr) =
        run_cli(&config, &["keys", "create", "--name", "staging", "--sandbox"]);
    assert!(ok, "{stderr}");
    let sandbox_key = stdout.lines().last().unwrap().trim().to_string();
    assert!(
        sandbox_key.starts_with("pw_") && stdout.contains("sandbox"),
        "the key is alone on the last line: {stdout}"
    );
    let sandbox_id = postwire_store::ids::split_api_key(&sandbox_key).unwrap().0.to_string();
    let (_, list, _) = run_cli(&config, &["keys", "list"]);
    assert!(list.contains(&key_id) && list.contains("send,read") && !list.contains(&key), "{list}");
    let mode_of = |id: &str| {
        list.lines()
            .find(|l| l.starts_with(id))
            .map(|l| l.split('\t').nth(3).unwrap_or("").to_string())
    };
    assert_eq!(mode_of(&key_id).as_deref(), Some("live"), "{list}");
    assert_eq!(mode_of(&sandbox_id).as_deref(), Some("sandbox"), "{list}");
    if postwire_e2e::app::distributed_backend().is_none() {
        let db = std::fs::read(world.path().join("data/postwire.db")).unwrap();
        assert!(
            !String::from_utf8_lossy(&db).contains(key.rsplit('_').next().unwrap()),
            "the key must not be stored in clear"
        );
    }

    let (ok, _, stderr) = run_cli(&config, &["keys", "create", "--name", "x", "--scopes", "root"]);
    assert!(!ok && stderr.contains("unknown scope `root`"), "{stderr}");

    let mut server = serve(&config);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;
    let send = |k: String| {
        let client = client.clone();
        let url = format!("{base}/v1/messages");
        async move {
            client
                .post(url)
                .bearer_auth(k)
                .json(&simple_message(&["a@example.org"]))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(key.clone()).await, 202);
    let (ok, _, _) = run_cli(&config, &["keys", "revoke", &key_id]);
    assert!(ok);
    assert_eq!(send(key.clone()).await, 401, "a revoked key fails at once");
    server.kill9();

    let out = world.path().join("dkim-ed.pem");
    let (ok, stdout, stderr) = run_cli(
        &config,
        &[
            "dkim",
            "generate",
            "--domain",
            "example.com",
            "--selector",
            "s2026",
            "--algorithm",
            "ed25519-sha256",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let record = stdout.lines().last().unwrap();
    assert!(
        record.starts_with("s2026._domainkey.example.com. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{record}"
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("BEGIN PRIVATE KEY"));
    let (ok, _, stderr) =
        run_cli(&config, &["dkim", "generate", "--domain", "bad domain", "--selector", "s"]);
    assert!(!ok && stderr.contains("--domain"), "{stderr}");
}

#[tokio::test]
async fn a_bad_config_file_fails_at_start_naming_the_key() {
    let world = World::new().await;
    let config = world.path().join("bad.toml");
    std::fs::write(&config, "[smtp]\nport = \"twenty-five\"\n").unwrap();
    let (ok, _, stderr) = run_cli(&config, &["serve"]);
    assert!(!ok);
    assert!(stderr.contains("smtp.port"), "{stderr}");
}
