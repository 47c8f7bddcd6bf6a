//! The OpenAPI document as a contract, checked from outside (issue 12): schemathesis reads the
//! served `/openapi.json`, generates valid and invalid requests for every operation and runs
//! every check against the real binary — no 5xx; each answer's status, content type, headers
//! and body as documented; schema-valid requests accepted (or refused with a status the
//! document gives for rules a JSON Schema cannot state); schema-invalid ones refused. The key
//! is a sandbox key, so no message ever opens an SMTP connection.
//!
//! `POST /v1/webhooks` is left out: a generated public URL (`http://1.2.3.4/`) would be
//! accepted, and the dispatcher would then post the sandbox's events to it; the webhook e2e
//! tests cover that operation. What the checks allow is in `tests/schemathesis.toml`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use postwire_e2e::app::{distributed_backend, World};
use postwire_e2e::process::{postwire, serve_healthy};

/// Longest the schemathesis run may take: its example budget keeps it near a minute.
const RUN_LIMIT: Duration = Duration::from_secs(360);

fn sandbox_admin_key(config: &std::path::Path) -> String {
    let out = postwire(config)
        .args(["keys", "create", "--name", "schemathesis", "--sandbox"])
        .args(["--scopes", "send,read,admin"])
        .output()
        .expect("run postwire keys create");
    assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().expect("the key").trim().to_string()
}

#[tokio::test]
async fn schemathesis_with_every_check_finds_nothing_in_the_served_api_document() {
    let world = World::new().await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, distributed_backend().is_some());
    let key = sandbox_admin_key(&config);
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve_healthy(&config, &[], &base).await;

    let settings = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let report = world.path().join("schemathesis-report");
    let mut cmd = Command::new("schemathesis");
    cmd.arg("--config-file")
        .arg(&settings)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--exclude-operation-id", "create_webhook"])
        .args(["--max-examples", "25", "--workers", "2", "--seed", "1"])
        .args(["--request-timeout", "20", "--generation-database", "none"])
        .arg("--report-dir")
        .arg(&report)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run schemathesis (scripts/test.sh installs it with pip)");
    let pid = child.id();
    let run = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(RUN_LIMIT, run).await {
        Ok(joined) => joined.expect("join").expect("schemathesis output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            panic!("schemathesis still running after {RUN_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    // A run that tested nothing would also exit 0.
    let summary = stdout.lines().rev().find(|l| l.contains("passed")).unwrap_or_default();
    assert!(summary.contains("passed"), "no summary line in:\n{stdout}");
    println!("schemathesis: {summary}");
}
