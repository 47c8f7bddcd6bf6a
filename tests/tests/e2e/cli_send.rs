//! `postwire send` against a running `postwire serve`, both the real binary: the id and DKIM
//! status printed, the message at the MX; a refusal said readably, field by field.

use postwire_e2e::app::World;
use postwire_e2e::process::{create_key, postwire, serve_healthy};
use postwire_e2e::smtp::Script;
use serde_json::json;

use crate::{ip, mx_hosts, SOON};

#[tokio::test]
async fn postwire_send_queues_a_message_prints_its_id_and_dkim_status_and_explains_refusals() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "cli.test", &[(10, ip(214), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, postwire_e2e::app::distributed_backend().is_some());
    let key = create_key(&config, "cli");
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve_healthy(&config, &[], &base).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/domains"))
        .bearer_auth(&key)
        .json(&json!({"domain": "brand.test", "selector": "cli1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let out = postwire(&config)
        .args(["send", "--to", "ann@cli.test", "--subject", "Hello from the CLI"])
        .args(["--text", "It works.", "--from", "Brand <hi@brand.test>"])
        .env("POSTWIRE_API_KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("queued "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {stdout}"))
        .to_string();
    assert!(id.starts_with("msg_"), "{stdout}");
    assert!(stdout.contains("DKIM: signed by brand.test (selector cli1)"), "{stdout}");
    postwire_e2e::process::wait_delivered(&client, &base, &key, &id).await;
    hosts[0].wait_for_messages(1, SOON).await.unwrap();
    let got = String::from_utf8_lossy(&hosts[0].received()[0].data).to_string();
    assert!(got.contains("Subject: Hello from the CLI") && got.contains("It works."), "{got}");
    assert!(got.contains("s=cli1; d=brand.test"), "{got}");

    // `serve` also runs the sandbox POP3 listener of `[sandbox] pop3_listen`.
    let pop3 = tokio::net::TcpStream::connect(("127.0.0.1", world.pop3_port)).await.unwrap();
    let mut greeting = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(pop3), &mut greeting)
        .await
        .unwrap();
    assert!(greeting.starts_with("+OK "), "{greeting}");

    // The key from --key; a refusal lists the field at fault, without a stack of causes.
    let out = postwire(&config)
        .args(["send", "--to", "not-an-address", "--subject", "x", "--text", "x", "--key", &key])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("422") && stderr.contains("to[0]:"), "{stderr}");
    // A wrong key and a service that is not there are said plainly.
    let out = postwire(&config)
        .args([
            "send",
            "--to",
            "a@cli.test",
            "--subject",
            "x",
            "--text",
            "x",
            "--key",
            "pw_key_nope",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("401"), "{stderr}");
    let out = postwire(&config)
        .args(["send", "--to", "a@cli.test", "--subject", "x", "--text", "x", "--key", &key])
        .args(["--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot reach Postwire"), "{stderr}");
}
