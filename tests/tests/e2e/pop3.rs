//! The sandbox POP3 mailbox (`sandbox.pop3_listen`) read by clients nobody here wrote:
//! Python's `poplib` (STLS, LIST, UIDL, TOP, RETR, DELE + QUIT) and Debian's `fetchmail`
//! (STLS, retrieving every message through an MDA into files); each message's bytes equal
//! `GET /v1/messages/{id}/raw`.

use std::net::SocketAddr;

use postwire_config::DkimAlgorithm;
use postwire_e2e::app::{TestApp, World};
use serde_json::{json, Value};

use crate::dkim::publish_key;
use crate::raw::{get_bytes, new_key};
use crate::SOON;

/// Runs a poplib script with HOST, PORT and KEY set; returns its stdout as JSON.
async fn poplib(script: &str, addr: SocketAddr, key: &str) -> Value {
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("HOST", addr.ip().to_string())
        .env("PORT", addr.port().to_string())
        .env("KEY", key)
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "poplib: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// STLS, login, then everything about the mailbox, printed as JSON; with DELETE=1 every
/// message is deleted before QUIT.
const READ_ALL: &str = r#"
import base64, json, os, poplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3(os.environ["HOST"], int(os.environ["PORT"]), timeout=20)
caps = p.capa()
p.stls(context=ctx)
p.user("whoever")
p.pass_(os.environ["KEY"])
count, size = p.stat()
_, listing, _ = p.list()
_, uids, _ = p.uidl()
messages = []
for entry in listing:
    n, octets = entry.decode().split()
    _, lines, got = p.retr(int(n))
    text = b"\r\n".join(lines) + b"\r\n"
    _, top, _ = p.top(int(n), 1)
    messages.append({"n": int(n), "octets": int(octets), "text": base64.b64encode(text).decode(),
                     "top": base64.b64encode(b"\r\n".join(top) + b"\r\n").decode()})
if os.environ.get("DELETE") == "1":
    for m in messages:
        p.dele(m["n"])
    try:
        p.retr(1)
        again = "retrieved"
    except poplib.error_proto as e:
        again = e.args[0].decode()
else:
    again = None
bye = p.quit().decode()
print(json.dumps({"caps": sorted(caps), "count": count, "size": size, "messages": messages,
                  "uids": [u.decode().split()[1] for u in uids], "again": again, "bye": bye}))
"#;

const LOGIN_ONLY: &str = r#"
import json, os, poplib
p = poplib.POP3(os.environ["HOST"], int(os.environ["PORT"]), timeout=20)
p.user("x")
try:
    p.pass_(os.environ["KEY"])
    print(json.dumps({"login": "ok"}))
except poplib.error_proto as e:
    print(json.dumps({"login": e.args[0].decode()}))
"#;

fn b64(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
}

async fn sandbox_app(world: &World) -> (TestApp, String, Vec<String>) {
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(world, "sender.test", "pop1", DkimAlgorithm::Ed25519Sha256)];
    let app = TestApp::start(settings).await.unwrap();
    let key = new_key(&app, json!({"name": "inbox", "sandbox": true})).await;
    let mut ids = Vec::new();
    for (i, text) in ["first\n.starts with a dot\n", "second message\n"].iter().enumerate() {
        let r = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&key)
            .json(&json!({"from": "Shop <shop@sender.test>", "to": [format!("r{i}@inbox.test")],
                "subject": format!("message {i}"), "text": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        app.wait_final(&id, SOON).await.unwrap();
        ids.push(id);
    }
    (app, key, ids)
}

#[tokio::test]
async fn poplib_reads_the_sandbox_mailbox_over_stls_byte_for_byte_and_dele_quit_removes_it() {
    let world = World::new().await;
    let (app, key, ids) = sandbox_app(&world).await;
    // A live message of the admin key is nobody's POP3 mail.
    app.send_ok(&json!({"from": "a@sender.test", "to": ["x@nowhere.test"], "text": "live"}))
        .await
        .unwrap();

    let got = poplib(READ_ALL, app.pop3_addr, &key).await;
    assert!(got["caps"].as_array().unwrap().iter().any(|c| c == "STLS"), "{got}");
    assert_eq!(got["count"], 2, "{got}");
    assert_eq!(got["uids"], json!(ids), "UIDL is the message id, oldest first");
    let mut total = 0;
    for (m, id) in got["messages"].as_array().unwrap().iter().zip(&ids) {
        let (status, _, raw) = get_bytes(&app, &format!("/v1/messages/{id}/raw"), &key).await;
        assert_eq!(status, 200);
        let text = b64(&m["text"]);
        assert_eq!(text, raw, "RETR == /raw for {id}:\n{}", String::from_utf8_lossy(&text));
        assert_eq!(m["octets"].as_u64().unwrap(), raw.len() as u64, "LIST size is the octets");
        total += raw.len() as u64;
        let top = String::from_utf8(b64(&m["top"])).unwrap();
        let head = String::from_utf8_lossy(&raw).split("\r\n\r\n").next().unwrap().to_string();
        assert!(top.starts_with(&head) && top.contains("DKIM-Signature:"), "{top}");
        assert_eq!(top.matches("\r\n").count(), head.matches("\r\n").count() + 3, "TOP n 1: {top}");
    }
    assert_eq!(got["size"].as_u64().unwrap(), total);
    assert!(String::from_utf8(b64(&got["messages"][0]["text"]))
        .unwrap()
        .contains("\r\n.starts with a dot\r\n"));

    // DELE, then QUIT: gone from the next session, still readable through the API.
    let script = format!("import os\nos.environ['DELETE'] = '1'\n{READ_ALL}");
    let deleted = poplib(&script, app.pop3_addr, &key).await;
    assert!(deleted["again"].as_str().unwrap().contains("already deleted"), "{deleted}");
    assert!(deleted["bye"].as_str().unwrap().starts_with("+OK"), "{deleted}");
    let after = poplib(READ_ALL, app.pop3_addr, &key).await;
    assert_eq!((after["count"].as_u64(), after["size"].as_u64()), (Some(0), Some(0)), "{after}");
    let (status, ..) = get_bytes(&app, &format!("/v1/messages/{}/raw", ids[0]), &key).await;
    assert_eq!(status, 200, "the message record stays");

    // Only sandbox keys get in.
    let live = poplib(LOGIN_ONLY, app.pop3_addr, &app.key).await;
    assert!(live["login"].as_str().unwrap().starts_with("-ERR [AUTH] not a sandbox"), "{live}");
    let wrong = poplib(LOGIN_ONLY, app.pop3_addr, "pw_key_nope").await;
    assert!(wrong["login"].as_str().unwrap().starts_with("-ERR [AUTH]"), "{wrong}");
    app.stop().await;
}

#[tokio::test]
async fn fetchmail_retrieves_every_sandbox_message_over_stls_as_raw_has_it() {
    let world = World::new().await;
    let (app, key, ids) = sandbox_app(&world).await;
    let dir = world.path().join("fetched");
    std::fs::create_dir_all(&dir).unwrap();
    let mda = world.path().join("save.sh");
    std::fs::write(&mda, format!("#!/bin/sh\nexec cat > {}/$$.eml\n", dir.display())).unwrap();
    let rc = world.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set invisible\nset no bouncemail\n\
             poll 127.0.0.1 port {port} protocol pop3 uidl\n  user \"inbox\" password \"{key}\"\n  \
             sslproto \"tls1.2+\" no sslcertck\n  no rewrite no stripcr\n  mda \"sh {mda}\"\n",
            port = app.pop3_addr.port(),
            mda = mda.display(),
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = tokio::process::Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--idfile")
        .arg(world.path().join("fetchids"))
        .args(["--nodetach", "--verbose"])
        .env("HOME", world.path())
        .output()
        .await
        .expect("fetchmail runs (scripts/test.sh installs it)");
    let log =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fetchmail failed:\n{log}");
    assert!(log.contains("STLS"), "fetchmail upgraded with STLS:\n{log}");
    let mut fetched: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(fetched.len(), 2, "{log}");
    for id in &ids {
        let (_, _, raw) = get_bytes(&app, &format!("/v1/messages/{id}/raw"), &key).await;
        let at = fetched.iter().position(|f| *f == raw).unwrap_or_else(|| {
            panic!(
                "no fetched file equals /raw of {id}:\n{}\n--- fetched:\n{}",
                String::from_utf8_lossy(&raw),
                fetched
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).to_string())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            )
        });
        fetched.remove(at);
    }
    // fetchmail deleted what it fetched (no `keep`): the mailbox is empty now.
    let after = poplib(READ_ALL, app.pop3_addr, &key).await;
    assert_eq!(after["count"], 0, "{after}");
    app.stop().await;
}
