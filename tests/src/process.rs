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

    /// SIGKILL: no shutdown hook runs, as in a crash.
    pub fn kill9(&mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
