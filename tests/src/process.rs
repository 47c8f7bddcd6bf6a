//! Real `postwire` processes for crash and CLI tests: the binary next to the test executable
//! (`cargo build --workspace` builds it) and a child handle that is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `postwire` binary built next to this test.
///
/// # Panics
/// If it has not been built (`cargo build --workspace` before the tests).
pub fn postwire_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory")
        .join("postwire");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// A `postwire` command with `--config` and the log level from `POSTWIRE_TEST_LOG` (default warn).
pub fn postwire(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(postwire_bin());
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", std::env::var("POSTWIRE_TEST_LOG").unwrap_or_else(|_| "warn".into()));
    cmd
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Proc(Child);

impl Proc {
    /// Spawns `cmd` with stdout discarded and stderr (the logs) passed through.
    pub fn spawn(mut cmd: Command) -> Proc {
        Proc(cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn the process"))
    }

    /// Spawns `cmd` with stdout discarded and stderr (the logs) written to `log`.
    pub fn spawn_logging_to(mut cmd: Command, log: &std::path::Path) -> Proc {
        let file = std::fs::File::create(log).expect("create the log file");
        Proc(cmd.stdout(Stdio::null()).stderr(file).spawn().expect("spawn the process"))
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL: no shutdown hook runs, as in a crash.
    pub fn kill9(&mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

impl Proc {
    /// SIGTERM, then waits (polling, at most `within`) for the process to exit; its status, or
    /// `None` if it was still running at the deadline (it is then killed on drop).
    pub async fn terminate(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {}", self.0.id());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `postwire keys create --name NAME` against `config`: the new key (all scopes).
///
/// # Panics
/// If the command fails.
pub fn create_key(config: &std::path::Path, name: &str) -> String {
    let out = postwire(config).args(["keys", "create", "--name", name]).output().unwrap();
    assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().expect("the key on the last line").trim().to_string()
}

/// `postwire serve` with `config` and the `POSTWIRE__…` overrides in `env`, once `/healthz`
/// answers at `base` (within 20 s).
///
/// # Panics
/// If it does not come up in time.
pub async fn serve_healthy(config: &std::path::Path, env: &[(&str, &str)], base: &str) -> Proc {
    let mut cmd = postwire(config);
    cmd.arg("serve").envs(env.iter().copied());
    let proc = Proc::spawn(cmd);
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "server at {base} never became healthy");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    proc
}

/// Polls `GET {base}/v1/messages/{id}` with `key` until its status is `delivered` (within 20 s);
/// returns that view.
///
/// # Panics
/// If it is not delivered in time.
pub async fn wait_delivered(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
) -> serde_json::Value {
    wait_delivered_within(client, base, key, id, std::time::Duration::from_secs(20)).await
}

/// [`wait_delivered`] with a deadline of `within`.
///
/// # Panics
/// If it is not delivered in time.
pub async fn wait_delivered_within(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m: serde_json::Value = client
            .get(format!("{base}/v1/messages/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["status"] == "delivered" {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} not delivered: {m:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
