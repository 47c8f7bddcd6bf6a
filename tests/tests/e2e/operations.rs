//! Running it: logs ops can ship (JSON lines, an access line per request, no colour codes in
//! files, each error cause once) and `postwire backup` of a live embedded store — all against
//! the real binary.

use std::time::Duration;

use postwire_e2e::app::{simple_message, World};
use postwire_e2e::process::{create_key, postwire, Proc};
use postwire_e2e::smtp::Script;
use postwire_store::State as _;
use serde_json::Value;

use crate::{ip, mx_hosts};

/// The world's binary config with `extra` appended (new sections only).
fn config_with(world: &World, port: u16, extra: &str) -> std::path::PathBuf {
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let text = std::fs::read_to_string(&config).unwrap() + extra;
    std::fs::write(&config, text).unwrap();
    config
}

/// `postwire serve` logging to `log` at `RUST_LOG=info`, once `/healthz` answers.
async fn serve(config: &std::path::Path, log: &std::path::Path, base: &str) -> Proc {
    let mut cmd = postwire(config);
    cmd.arg("serve").env("RUST_LOG", "info");
    let proc = Proc::spawn_logging_to(cmd, log);
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc
}

async fn send(base: &str, key: &str, to: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .bearer_auth(key)
        .json(&simple_message(&[to]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// Waits until `log` holds a line for which `found` holds.
async fn wait_for_line(log: &std::path::Path, found: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| found(l)) {
            return line.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no such line in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_an_access_line_per_request_and_never_the_key() {
    let world = World::new().await;
    let _mx = mx_hosts(&world, "logs.test", &[(10, ip(91), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = config_with(&world, port, "[log]\nformat = \"json\"\n");
    let key = create_key(&config, "logs");
    let key_id = key.split('_').nth(2).map(|id| format!("key_{id}")).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let log = world.path().join("serve.log");
    let _server = serve(&config, &log, &base).await;
    send(&base, &key, "ann@logs.test").await;

    let line = wait_for_line(&log, |l| l.contains("\"route\":\"/v1/messages\"")).await;
    let access: Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(access["target"], "postwire::access", "{access}");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["status"], 202);
    assert_eq!(access["key"], key_id.as_str());
    assert!(access["latency_ms"].as_f64().is_some(), "{access}");
    wait_for_line(&log, |l| l.contains("delivery attempt")).await;
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    let secret = key.rsplit('_').next().unwrap();
    assert!(!text.contains(secret), "the key's secret is never logged");
    assert!(!text.contains("Some("), "fields are values, not Debug: {text}");
}

#[tokio::test]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = config_with(&world, port, "");
    let key = create_key(&config, "plain");
    let base = format!("http://127.0.0.1:{port}");
    let log = world.path().join("serve.log");
    let _server = serve(&config, &log, &base).await;
    let r = reqwest::Client::new().get(format!("{base}/v1/messages")).bearer_auth(&key);
    assert_eq!(r.send().await.unwrap().status(), 200);
    let line = wait_for_line(&log, |l| l.contains("route=/v1/messages")).await;
    assert!(line.contains("status=200") && line.contains("INFO"), "{line}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "no escape codes in a file:\n{text}");
}

#[tokio::test]
async fn a_failing_command_says_each_cause_once() {
    let world = World::new().await;
    let config = world.path().join("bad.toml");
    std::fs::write(&config, "[storage]\npath = \"/dev/null/postwire\"\n").unwrap();
    let out = postwire(&config).args(["keys", "list"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("postwire: "), "{stderr}");
    assert_eq!(stderr.matches("os error 20").count(), 1, "the cause once: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, no log noise: {stderr}");
}

#[tokio::test]
async fn postwire_backup_copies_a_live_embedded_store_that_opens_with_everything_in_it() {
    if postwire_e2e::app::distributed_backend().is_some() {
        // The distributed backend has no file to copy; the command says so instead.
        let world = World::new().await;
        let config = config_with(&world, postwire_e2e::smtp::pick_free_port(), "");
        let out = postwire(&config).args(["backup", "x.db"]).output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("back up Redis"));
        return;
    }
    let world = World::new().await;
    let _mx = mx_hosts(&world, "backup.test", &[(10, ip(92), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = config_with(&world, port, "");
    let key = create_key(&config, "backup");
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve(&config, &world.path().join("serve.log"), &base).await;
    let id = send(&base, &key, "ann@backup.test").await;

    let copy_dir = world.path().join("restored");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy = copy_dir.join("postwire.db");
    let out = postwire(&config).arg("backup").arg(&copy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    let again = postwire(&config).arg("backup").arg(&copy).output().unwrap();
    assert!(!again.status.success(), "an existing file is never overwritten");

    let restored = postwire_store::embedded::SqliteStore::open(&copy_dir).unwrap();
    let m = restored.message(&id).await.unwrap().expect("the message is in the copy");
    assert_eq!(m.id, id);
    let keys = restored.list_api_keys().await.unwrap();
    assert!(keys.iter().any(|k| k.name == "backup"));
}

#[tokio::test]
async fn config_check_prints_the_effective_config_with_secrets_redacted_and_its_warnings() {
    let world = World::new().await;
    let config = world.path().join("check.toml");
    std::fs::write(
        &config,
        "[smtp]\nhelo_name = \"box\"\n[tracking]\nsecret = \"hunter2-tracking\"\n\
         [bounces]\ndomain = \"bounces.acme.test\"\n",
    )
    .unwrap();
    let out = postwire(&config)
        .args(["config", "check"])
        .env("POSTWIRE__LIMITS__MAX_RECIPIENTS", "7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2"), "secrets are redacted:\n{text}");
    let printed: toml::Table = text.parse().expect("the output is TOML");
    assert_eq!(printed["tracking"]["secret"].as_str(), Some("<redacted>"));
    assert_eq!(printed["limits"]["max_recipients"].as_integer(), Some(7), "env overrides shown");
    assert_eq!(printed["bounces"]["domain"].as_str(), Some("bounces.acme.test"));
    assert_eq!(printed["retry"]["max_age"].as_str(), Some("2days"), "defaults shown");
    assert!(text.contains("\n# warning: smtp.helo_name (\"box\")"), "{text}");
    postwire_config::load_from_str(&text).expect("what it prints loads back");
}

#[tokio::test]
async fn relative_paths_follow_the_config_file_not_the_working_directory() {
    let world = World::new().await;
    let config = world.path().join("postwire.toml");
    std::fs::write(&config, "[storage]\npath = \"store\"\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = postwire(&config)
        .current_dir(elsewhere.path())
        .args(["keys", "create", "--name", "cwd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(world.path().join("store/postwire.db").exists(), "the store is beside the config");
    assert!(!elsewhere.path().join("store").exists(), "nothing in the working directory");
    let listed = postwire(&config).current_dir("/").args(["keys", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("cwd"), "the same store from /");
}
