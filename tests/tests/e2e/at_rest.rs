//! Secrets at rest (`storage.encryption_key`): DKIM private keys made through `/v1/domains` and
//! webhook signing secrets are stored sealed — neither appears in the SQLite files or in any Redis
//! value — and still sign: the next message verifies with dkimpy, the next webhook with the
//! Standard Webhooks reference library. SMTP sink on 127.0.0.240.

use postwire_config::{Backend, EncryptionKey};
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use postwire_e2e::webhook::{verify_standard_webhook, WebhookReceiver};
use serde_json::{json, Value};

use crate::dkim::dkimpy_verify;
use crate::{ip, mx_hosts, SOON};

/// Every byte the store holds, as text: the SQLite database with its WAL, or every string and
/// hash value under the namespace in Redis.
fn stored_bytes(app: &TestApp) -> String {
    let settings = &app.settings;
    match settings.storage.backend {
        Backend::Embedded => {
            let mut all = String::new();
            for name in ["postwire.db", "postwire.db-wal"] {
                if let Ok(bytes) = std::fs::read(settings.storage.path.join(name)) {
                    all.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            all
        }
        Backend::Distributed => {
            let client = redis::Client::open(settings.redis.url.expose()).unwrap();
            let mut conn = client.get_connection().unwrap();
            let pattern = format!("{}*", settings.storage.namespace);
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap();
            assert!(!keys.is_empty(), "no keys under {pattern}");
            let mut all = String::new();
            for key in keys {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
                let values: Vec<String> = match kind.as_str() {
                    "string" => vec![redis::cmd("GET").arg(&key).query(&mut conn).unwrap()],
                    "hash" => redis::cmd("HVALS").arg(&key).query(&mut conn).unwrap(),
                    "list" => {
                        redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(&mut conn).unwrap()
                    }
                    _ => continue,
                };
                for v in values {
                    all.push_str(&v);
                    all.push('\n');
                }
            }
            all
        }
    }
}

#[tokio::test]
async fn with_an_encryption_key_domain_keys_and_webhook_secrets_are_stored_sealed_and_still_sign() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "inbox-rest.test", &[(10, ip(240), Script::default())]).await;
    let receiver = WebhookReceiver::start().await;
    let mut settings = world.settings();
    settings.storage.encryption_key = EncryptionKey::new(rand::random());
    let app = TestApp::start(settings).await.unwrap();

    let (_, secret) = app
        .create_webhook(&format!("{}/hook", receiver.url()), &["message.delivered"])
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/v1/domains"))
        .bearer_auth(&app.key)
        .json(&json!({"domain": "sealed.test", "selector": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    let dkim = view["records"].as_array().unwrap().iter().find(|r| r["purpose"] == "dkim").unwrap();
    world.dns.add_txt(dkim["name"].as_str().unwrap(), dkim["value"].as_str().unwrap());

    let id = app
        .send_ok(&json!({"from": "app@sealed.test", "to": ["r@inbox-rest.test"], "subject": "s", "text": "t"}))
        .await
        .unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(m["recipients"][0]["status"], "delivered", "{m:#}");
    let received = hosts[0].received();
    let (ok, report) = dkimpy_verify(&world, &received[0].data).await;
    assert!(ok, "dkimpy rejected the signature made with the sealed key:\n{report}");
    assert!(report.contains("d=sealed.test s=s1"), "{report}");
    let hooks = receiver.wait_for_requests(1, SOON).await.unwrap();
    let event = verify_standard_webhook(&secret, &hooks[0]).expect("signed with the sealed secret");
    assert_eq!(event["data"]["message_id"], id.as_str());

    let stored = stored_bytes(&app);
    assert!(stored.contains("pwsealed:v1:"), "nothing sealed was found in the store");
    assert!(!stored.contains(&secret), "the webhook secret is stored in clear");
    let secret_body = secret.trim_start_matches("whsec_");
    assert!(!stored.contains(secret_body), "the webhook secret's base64 is stored in clear");
    assert!(!stored.contains("PRIVATE KEY"), "a DKIM private key is stored in clear");
}
