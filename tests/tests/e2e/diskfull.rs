//! A full disk (issue 11): the embedded store, or Redis's append-only file, on a small tmpfs
//! mounted by the test. With the disk full the API answers 503 with `Retry-After`, never a
//! 202; once space is freed it accepts again (embedded: by itself; Redis: after it is started
//! again, as it exits rather than run without its file) and every message it had accepted is
//! still there.
//!
//! Mounting needs root (as in CI's container); elsewhere the test says so and passes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use postwire_e2e::app::{distributed_backend, simple_message, TestApp, World};
use serde_json::{json, Value};

use crate::SOON;

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the file system refuses with ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            return;
        }
    }
}

#[tokio::test]
async fn a_full_disk_is_a_503_with_retry_after_and_the_store_recovers_when_space_returns() {
    if distributed_backend().is_some() {
        return; // The disk under Redis is Redis's; this is the embedded store's test.
    }
    let world = World::new().await;
    let Some(disk) = Tmpfs::mount(&world.path().join("small-disk"), "6m") else {
        println!("cannot mount a tmpfs here (not root?): the disk-full test did not run");
        return;
    };
    let mut settings = world.settings();
    settings.storage.path = disk.0.join("data");
    let app = TestApp::start(settings).await.unwrap();
    let filler = disk.0.join("filler");
    let (accepted, retry_after) = refused_while_full(&app, &filler, || {}).await;
    println!(
        "disk full: {accepted} sends accepted, the next refused with 503 (Retry-After {retry_after:?}); accepting again once space was freed"
    );
    app.stop().await;
}

/// Sends scheduled messages until the disk `filler` fills makes the API refuse one; checks that
/// the refusal is a 503 with `Retry-After` and stays one, then frees the space, calls `freed` and
/// waits until sends are accepted again. Every
/// message accepted on the way is still there. Returns how many were accepted before the
/// refusal, and the `Retry-After`.
async fn refused_while_full(
    app: &TestApp,
    filler: &Path,
    freed: impl FnOnce(),
) -> (usize, Option<reqwest::header::HeaderValue>) {
    // Scheduled an hour out: no delivery writes, only the sends themselves.
    let body = |i: usize| {
        let mut b = simple_message(&["ann@full.test"]);
        b["subject"] = json!(format!("full {i}"));
        b["send_at"] = json!((Utc::now() + TimeDelta::hours(1)).to_rfc3339());
        b
    };
    let send = |i: usize| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url("/v1/messages"))
                .bearer_auth(&app.key)
                .json(&body(i))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").cloned();
            (r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut accepted = vec![app.send_ok(&body(0)).await.unwrap()];

    fill(filler);
    let mut refused = None;
    for i in 1..5000 {
        match send(i).await {
            (202, _, answer) => accepted.push(answer["id"].as_str().unwrap().to_string()),
            (503, retry_after, answer) => {
                refused = Some((i, retry_after, answer));
                break;
            }
            (status, _, answer) => panic!("with the disk full: {status} {answer}"),
        }
    }
    let (at, retry_after, answer) = refused.expect("the full disk never refused a send");
    assert!(retry_after.is_some(), "a 503 for a full disk carries Retry-After: {answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    // Still full: still refused, never a 202 that is not on disk.
    let (status, _, _) = send(at + 1).await;
    assert_eq!(status, 503);

    std::fs::remove_file(filler).unwrap();
    freed();
    let deadline = tokio::time::Instant::now() + SOON;
    let mut i = at + 2;
    loop {
        match send(i).await {
            (202, _, answer) => {
                accepted.push(answer["id"].as_str().unwrap().to_string());
                break;
            }
            (503, _, _) => {}
            (status, _, answer) => panic!("after space returned: {status} {answer}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the store never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
    }
    for id in &accepted {
        let m = app.message(id).await.unwrap();
        assert_eq!(m["status"], "scheduled", "{m}");
    }
    (accepted.len() - 1, retry_after)
}

/// A `redis-server` of its own, keeping its append-only file in `dir`; killed on drop.
struct RedisOnDisk(std::process::Child);

impl RedisOnDisk {
    fn spawn(dir: &Path, port: u16) -> RedisOnDisk {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        RedisOnDisk(child)
    }

    /// Whether it has exited.
    fn exited(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }
}

impl Drop for RedisOnDisk {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_full_disk_under_redis_is_a_503_and_sends_resume_once_redis_has_room_again() {
    if distributed_backend().is_none() {
        return; // The embedded store's disk is the test above.
    }
    let world = World::new().await;
    let Some(disk) = Tmpfs::mount(&world.path().join("redis-disk"), "8m") else {
        println!("cannot mount a tmpfs here (not root?): the disk-full test did not run");
        return;
    };
    let port = postwire_e2e::smtp::pick_free_port();
    let mut redis = RedisOnDisk::spawn(&disk.0, port);
    let deadline = tokio::time::Instant::now() + SOON;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut settings = world.settings();
    settings.redis.url = postwire_config::Secret::new(format!("redis://127.0.0.1:{port}"));
    let app = TestApp::start(settings).await.unwrap();
    let mut exited = false;
    // With `appendfsync always` (what README asks for) Redis will not go on once its
    // append-only file cannot be written: it exits, and a supervisor starts it again once
    // there is room, as this does. Nothing it acknowledged is lost: the file is replayed.
    let (accepted, retry_after) = refused_while_full(&app, &disk.0.join("filler"), || {
        exited = redis.exited();
        redis = RedisOnDisk::spawn(&disk.0, port);
    })
    .await;
    println!(
        "disk full under Redis: {accepted} sends accepted, the next refused with 503 (Retry-After {retry_after:?}); Redis exited: {exited}; accepting again after its restart"
    );
    app.stop().await;
}
