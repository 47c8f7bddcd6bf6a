//! Sending domains: `/v1/domains` makes a DKIM key that signs the very next message (no
//! restart, and over a configured `[[dkim]]` key of the same domain), answers with the DNS
//! records to publish, and checks them live against the test DNS server — missing, then pass
//! once published, fail with a reason when wrong or when DNS fails. Signatures are checked by
//! dkimpy. SMTP sinks on 127.0.0.90–93; the sending host `mta.postwire.test` is 127.0.0.9.

use chrono::Utc;
use postwire_config::DkimAlgorithm;
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::{Script, SmtpServer};
use postwire_store::{ids, NewApiKey};
use serde_json::{json, Value};

use crate::dkim::{dkimpy_verify, publish_key};
use crate::{ip, mx_hosts, recipient, SOON};

/// `smtp.helo_name` of the test settings, and the address the tests give it.
const HELO: &str = "mta.postwire.test";

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    call(app, reqwest::Method::POST, "/v1/domains", &app.key, Some(body)).await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    call(app, reqwest::Method::GET, path, &app.key, None).await
}

/// The record of `purpose` in a domain view.
fn record<'a>(view: &'a Value, purpose: &str) -> &'a Value {
    view["records"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["purpose"] == purpose))
        .unwrap_or_else(|| panic!("no {purpose} record in {view:#}"))
}

/// `(status, reason)` of every record, in the order dkim, spf, dmarc.
fn statuses(view: &Value) -> Vec<(String, String)> {
    ["dkim", "spf", "dmarc"]
        .iter()
        .map(|p| {
            let r = record(view, p);
            (
                r["status"].as_str().unwrap_or("?").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Replaces the TXT records at `name` with `value`.
fn publish(world: &World, name: &str, value: &str) {
    world.dns.clear(name);
    world.dns.add_txt(name, value);
}

/// Sends one message from `from` and returns what the MX host received.
async fn send_and_receive(app: &TestApp, host: &SmtpServer, from: &str, to: &str) -> String {
    let before = host.received().len();
    let id = app
        .send_ok(&json!({"from": from, "to": [to], "subject": "Hello", "text": "hi"}))
        .await
        .unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, to)["status"], "delivered", "{m:#}");
    let got = host.received();
    assert_eq!(got.len(), before + 1);
    String::from_utf8(got[before].data.clone()).unwrap()
}

/// `(d, s)` of every DKIM-Signature header of a received message.
fn signers(message: &str) -> Vec<(String, String)> {
    let head =
        message.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ").replace("\r\n\t", " ");
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(|sig| {
            let tag = |name: &str| {
                sig.split(';')
                    .map(str::trim)
                    .find_map(|t| t.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            (tag("d="), tag("s="))
        })
        .collect()
}

#[tokio::test]
async fn a_domain_made_over_the_api_signs_the_next_message_and_its_records_pass_once_published() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "inbox-dom.test", &[(10, ip(90), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(&world, "brand.test", "cfg1", DkimAlgorithm::Ed25519Sha256)];
    let app = TestApp::start(settings).await.unwrap();

    // Before the domain exists, its configured key signs.
    let first = send_and_receive(&app, &hosts[0], "news@brand.test", "r@inbox-dom.test").await;
    assert_eq!(signers(&first), [("brand.test".to_string(), "cfg1".to_string())]);

    let (status, view) = create(&app, json!({"domain": "Brand.Test.", "selector": "PW1"})).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["domain"], "brand.test");
    assert_eq!(view["selector"], "pw1");
    assert_eq!(view["algorithm"], "rsa-sha256");
    assert!(
        !view.to_string().contains("PRIVATE KEY"),
        "the private key must never be returned: {view}"
    );
    let dkim = record(&view, "dkim");
    assert_eq!(dkim["type"], "TXT");
    assert_eq!(dkim["name"], "pw1._domainkey.brand.test");
    assert!(dkim["value"].as_str().unwrap().starts_with("v=DKIM1; k=rsa; p="), "{dkim}");
    assert_eq!(record(&view, "spf")["name"], "brand.test");
    assert_eq!(record(&view, "spf")["value"], format!("v=spf1 a:{HELO} ~all"));
    assert_eq!(record(&view, "dmarc")["name"], "_dmarc.brand.test");
    assert_eq!(record(&view, "dmarc")["value"], "v=DMARC1; p=none;");
    for (status, reason) in statuses(&view) {
        assert_eq!(status, "missing", "{view:#}");
        assert!(!reason.is_empty(), "a missing record says why: {view:#}");
    }

    // The very next message is signed with the new key alone: it replaces the configured one.
    let second = send_and_receive(&app, &hosts[0], "news@brand.test", "r@inbox-dom.test").await;
    assert_eq!(signers(&second), [("brand.test".to_string(), "pw1".to_string())]);

    // Publishing the records turns every check to pass.
    world.dns.add_a(HELO, ip(9));
    for r in view["records"].as_array().unwrap() {
        publish(&world, r["name"].as_str().unwrap(), r["value"].as_str().unwrap());
    }
    let (status, view) = get(&app, "/v1/domains/BRAND.test").await;
    assert_eq!(status, 200, "{view}");
    for (status, reason) in statuses(&view) {
        assert_eq!((status.as_str(), reason.as_str()), ("pass", ""), "{view:#}");
    }
    assert!(record(&view, "dkim")["reason"].is_null());

    // An independent verifier accepts the signature against the published key.
    let (ok, report) = dkimpy_verify(&world, second.as_bytes()).await;
    assert!(ok, "dkimpy rejected the signature:\n{report}\n{second}");
    assert!(report.contains("ok d=brand.test s=pw1 a=rsa-sha256"), "{report}");

    // Removing the domain hands signing back to the configured key, still without a restart.
    let (status, _) =
        call(&app, reqwest::Method::DELETE, "/v1/domains/brand.test", &app.key, None).await;
    assert_eq!(status, 204);
    assert_eq!(get(&app, "/v1/domains/brand.test").await.0, 404);
    let third = send_and_receive(&app, &hosts[0], "news@brand.test", "r@inbox-dom.test").await;
    assert_eq!(signers(&third), [("brand.test".to_string(), "cfg1".to_string())]);
}

#[tokio::test]
async fn wrong_records_and_dns_failures_are_reported_per_record_with_a_reason() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let (status, view) =
        create(&app, json!({"domain": "wrong.test", "algorithm": "ed25519-sha256"})).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["selector"], "postwire", "the default selector");
    assert!(record(&view, "dkim")["value"].as_str().unwrap().starts_with("v=DKIM1; k=ed25519; p="));

    // Another key at the selector, an SPF policy that does not cover the sending host, and a
    // DMARC record that does not parse.
    let other = postwire::keygen::generate(DkimAlgorithm::Ed25519Sha256).unwrap();
    publish(&world, "postwire._domainkey.wrong.test", &other.txt_value);
    world.dns.add_a(HELO, ip(9));
    publish(&world, "wrong.test", "v=spf1 ip4:192.0.2.1 ~all");
    publish(&world, "_dmarc.wrong.test", "v=DMARC1; p=bogus");
    let (status, view) = get(&app, "/v1/domains/wrong.test").await;
    assert_eq!(status, 200, "{view}");
    let s = statuses(&view);
    assert_eq!(s[0].0, "fail", "{view:#}");
    assert!(s[0].1.contains("not this domain's key"), "{view:#}");
    assert_eq!(s[1].0, "fail", "{view:#}");
    assert!(s[1].1.contains("softfail for 127.0.0.9"), "{view:#}");
    assert_eq!(s[2].0, "fail", "{view:#}");
    assert!(s[2].1.contains("malformed"), "{view:#}");

    // Fixed SPF (by address) passes; a name that answers SERVFAIL fails that record alone.
    publish(&world, "wrong.test", "v=spf1 ip4:127.0.0.9 -all");
    world.dns.set_servfail("_dmarc.wrong.test");
    let (status, view) = get(&app, "/v1/domains/wrong.test").await;
    assert_eq!(status, 200, "a DNS failure is a record's status, not an error: {view}");
    let s = statuses(&view);
    assert_eq!(s[0].0, "fail", "{view:#}");
    assert_eq!(s[1], ("pass".to_string(), String::new()), "{view:#}");
    assert_eq!(s[2].0, "fail", "{view:#}");
    assert!(s[2].1.contains("DNS lookup of _dmarc.wrong.test failed"), "{view:#}");

    // A hard fail names itself too.
    publish(&world, "wrong.test", "v=spf1 ip4:192.0.2.1 -all");
    let (_, view) = get(&app, "/v1/domains/wrong.test").await;
    assert!(statuses(&view)[1].1.contains("fail for 127.0.0.9"), "{view:#}");
}

#[tokio::test]
async fn an_imported_key_is_published_as_given_and_signs() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "inbox-imp.test", &[(10, ip(91), Script::default())]).await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let pair = postwire::keygen::generate(DkimAlgorithm::Ed25519Sha256).unwrap();
    let (status, view) = create(
        &app,
        json!({"domain": "imported.test", "selector": "imp1", "algorithm": "ed25519-sha256", "private_key": pair.private_pem}),
    )
    .await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(record(&view, "dkim")["value"], pair.txt_value.as_str());
    publish(&world, "imp1._domainkey.imported.test", &pair.txt_value);
    let (_, view) = get(&app, "/v1/domains/imported.test").await;
    assert_eq!(statuses(&view)[0], ("pass".to_string(), String::new()), "{view:#}");

    let message =
        send_and_receive(&app, &hosts[0], "Team <team@imported.test>", "r@inbox-imp.test").await;
    let (ok, report) = dkimpy_verify(&world, message.as_bytes()).await;
    assert!(ok, "dkimpy rejected the signature:\n{report}\n{message}");
    assert!(report.contains("ok d=imported.test s=imp1 a=ed25519-sha256"), "{report}");
}

#[tokio::test]
async fn bad_input_duplicates_and_keys_without_admin_are_refused() {
    let world = World::new().await;
    let app = TestApp::start(world.settings()).await.unwrap();
    let field_of = |body: &Value| body["errors"][0]["field"].as_str().unwrap_or("").to_string();

    for (body, field) in [
        (json!({"domain": "not a domain"}), "domain"),
        (json!({"domain": "localhost"}), "domain"),
        (json!({"domain": "ok.test", "selector": "bad_selector"}), "selector"),
        (json!({"domain": "ok.test", "algorithm": "rsa-sha1"}), "algorithm"),
        (
            json!({"domain": "ok.test", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "private_key",
        ),
        (json!({"domain": "ok.test", "surprise": true}), "surprise"),
    ] {
        let (status, problem) = create(&app, body.clone()).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert!(field_of(&problem).contains(field), "{body} → {problem}");
    }
    assert_eq!(
        get(&app, "/v1/domains/ok.test").await.0,
        404,
        "nothing was stored by a refused request"
    );
    assert_eq!(get(&app, "/v1/domains/bad..name").await.0, 422);

    let (status, _) =
        create(&app, json!({"domain": "dup.test", "algorithm": "ed25519-sha256"})).await;
    assert_eq!(status, 201);
    let (status, problem) =
        create(&app, json!({"domain": "DUP.test.", "algorithm": "ed25519-sha256"})).await;
    assert_eq!(status, 409, "{problem}");

    // A key with `send` and `read` but not `admin` may look, not change.
    let minted = ids::mint_api_key();
    app.state
        .create_api_key(NewApiKey {
            id: minted.id.clone(),
            name: "reader".into(),
            hash: minted.hash,
            scopes: vec!["send".into(), "read".into()],
            created_at: Utc::now(),
            sandbox: false,
        })
        .await
        .unwrap();
    let reader = minted.key;
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/v1/domains",
        &reader,
        Some(json!({"domain": "mine.test"})),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        call(&app, reqwest::Method::DELETE, "/v1/domains/dup.test", &reader, None).await.0,
        403
    );
    let (status, list) = call(&app, reqwest::Method::GET, "/v1/domains", &reader, None).await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    assert_eq!(data[0]["domain"], "dup.test");
    assert_eq!(data[0]["selector"], "postwire");
    assert_eq!(data[0]["algorithm"], "ed25519-sha256");
    assert!(!list.to_string().contains("PRIVATE KEY"));
    assert_eq!(
        call(&app, reqwest::Method::GET, "/v1/domains/dup.test", &reader, None).await.0,
        200
    );

    let (status, _) =
        call(&app, reqwest::Method::DELETE, "/v1/domains/Dup.Test", &app.key, None).await;
    assert_eq!(status, 204);
    assert_eq!(
        call(&app, reqwest::Method::DELETE, "/v1/domains/dup.test", &app.key, None).await.0,
        404
    );
    assert_eq!(get(&app, "/v1/domains").await.1["data"], json!([]));
}

/// Polls `GET /v1/messages/{id}` on `base` until the message is delivered.
async fn wait_delivered(client: &reqwest::Client, base: &str, key: &str, id: &str) {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let m: Value =
            match client.get(format!("{base}/v1/messages/{id}")).bearer_auth(key).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
        if m["status"] == "delivered" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} not delivered: {m:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The distributed deployment: the gateway and the worker are separate `postwire` processes
/// that share only RabbitMQ and Redis. A worker that has already sent unsigned mail from a
/// domain (and so remembers it has no key) signs the next message with the key the gateway
/// just made. Runs with `POSTWIRE_TEST_BACKEND=distributed` (it needs a shared backend).
#[tokio::test]
async fn a_worker_in_another_process_signs_with_a_key_made_after_it_started() {
    if postwire_e2e::app::distributed_backend().is_none() {
        eprintln!(
            "skipped: separate gateway and worker processes need POSTWIRE_TEST_BACKEND=distributed"
        );
        return;
    }
    let world = World::new().await;
    let hosts = mx_hosts(&world, "inbox-proc.test", &[(10, ip(92), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let config = world.write_config(port, true);
    let out = postwire_e2e::process::postwire(&config)
        .args(["keys", "create", "--name", "procs"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let role = |name: &str| {
        let mut cmd = postwire_e2e::process::postwire(&config);
        cmd.arg(name);
        postwire_e2e::process::Proc::spawn(cmd)
    };
    let _worker = role("mta-worker");
    let _gateway = role("api-gateway");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let send = || async {
        let body = json!({"from": "news@proc.test", "to": ["r@inbox-proc.test"], "subject": "Hi", "text": "hi"});
        let deadline = tokio::time::Instant::now() + SOON;
        let r = loop {
            match client
                .post(format!("{base}/v1/messages"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => break r,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "gateway never answered: {e}")
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        wait_delivered(&client, &base, &key, &id).await;
        let got = hosts[0].received();
        String::from_utf8(got.last().unwrap().data.clone()).unwrap()
    };

    let unsigned = send().await;
    assert!(signers(&unsigned).is_empty(), "no key exists yet:\n{unsigned}");

    let r = client
        .post(format!("{base}/v1/domains"))
        .bearer_auth(&key)
        .json(&json!({"domain": "proc.test", "selector": "xproc", "algorithm": "ed25519-sha256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    publish(&world, "xproc._domainkey.proc.test", record(&view, "dkim")["value"].as_str().unwrap());

    let signed = send().await;
    assert_eq!(signers(&signed), [("proc.test".to_string(), "xproc".to_string())], "{signed}");
    let (ok, report) = dkimpy_verify(&world, signed.as_bytes()).await;
    assert!(ok, "dkimpy rejected the signature:\n{report}\n{signed}");
}
