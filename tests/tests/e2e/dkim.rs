//! DKIM: keys made by `postwire dkim generate`'s code, published in our DNS server, and every
//! signature checked by an independent verifier (dkimpy) with real DNS queries.

use postwire_config::{DkimAlgorithm, DkimKey};
use postwire_e2e::app::{TestApp, World};
use postwire_e2e::smtp::Script;
use serde_json::json;

use crate::{ip, mx_hosts, recipient, SOON};

/// Generates a key, writes it under the world's directory and publishes its TXT record.
pub(crate) fn publish_key(
    world: &World,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> DkimKey {
    let pair = postwire::keygen::generate(algorithm).unwrap();
    let path = world.path().join(format!("{selector}.pem"));
    std::fs::write(&path, pair.private_pem).unwrap();
    world.dns.add_txt(&format!("{selector}._domainkey.{domain}"), &pair.txt_value);
    DkimKey { domain: domain.into(), selector: selector.into(), algorithm, private_key: path }
}

/// Runs dkimpy on `message` against the world's DNS server; returns its report lines.
pub(crate) async fn dkimpy_verify(world: &World, message: &[u8]) -> (bool, String) {
    let file = world.path().join(format!("received-{}.eml", rand::random::<u32>()));
    std::fs::write(&file, message).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_dkim.py");
    let dns = world.dns.addr();
    // Async: the DNS server answering dkimpy runs on this test's runtime.
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&file)
        .arg(dns.ip().to_string())
        .arg(dns.port().to_string())
        .output()
        .await
        .expect("python3 runs (scripts/test.sh installs dkimpy and dnspython)");
    let report =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}

#[tokio::test]
async fn rsa_and_ed25519_signatures_verify_with_dkimpy_against_published_keys() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "dkim.test", &[(10, ip(30), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![
        publish_key(&world, "sender.test", "rsa1", DkimAlgorithm::RsaSha256),
        publish_key(&world, "sender.test", "ed1", DkimAlgorithm::Ed25519Sha256),
        publish_key(&world, "other.test", "x1", DkimAlgorithm::Ed25519Sha256),
    ];
    let app = TestApp::start(settings).await.unwrap();
    let body = json!({
        "from": "Sender <news@Sender.test>", "to": ["Reader <r@dkim.test>"], "cc": ["c@dkim.test"],
        "subject": "Signed ✓", "text": "plain\nbody\n", "html": "<p>html body</p>",
        "headers": {"X-Campaign": "spring"},
    });
    let id = app.send_ok(&body).await.unwrap();
    let m = app.wait_final(&id, SOON).await.unwrap();
    assert_eq!(recipient(&m, "r@dkim.test")["status"], "delivered", "{m:#}");
    let got = hosts[0].received();
    let data = &got[0].data;
    let text = String::from_utf8_lossy(data);
    let sigs: Vec<&str> =
        text.lines().filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:")).collect();
    assert_eq!(sigs.len(), 2, "one signature per matching key:\n{text}");
    let (ok, report) = dkimpy_verify(&world, data).await;
    assert!(ok, "dkimpy rejected the signatures:\n{report}\n{text}");
    assert!(report.contains("ok d=sender.test s=rsa1 a=rsa-sha256"), "{report}");
    assert!(report.contains("ok d=sender.test s=ed1 a=ed25519-sha256"), "{report}");

    // Each signature's header list covers what the brief requires.
    let head = text.split("\r\n\r\n").next().unwrap().replace("\r\n ", " ").replace("\r\n\t", " ");
    for sig in head.lines().filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:")) {
        let h = sig
            .split(';')
            .map(str::trim)
            .find_map(|tag| tag.strip_prefix("h="))
            .unwrap_or_else(|| panic!("no h= tag in {sig}"))
            .to_ascii_lowercase()
            .replace([' ', '\t'], "");
        for required in ["from", "to", "subject", "date", "message-id"] {
            assert!(h.split(':').any(|x| x == required), "{required} not signed: h={h}");
        }
    }

    // Tampering after signing must fail the independent verifier.
    let tampered = text.replacen("Subject:", "Subject: Re:", 1);
    let (ok, report) = dkimpy_verify(&world, tampered.as_bytes()).await;
    assert!(!ok, "a modified subject must not verify:\n{report}");
}

#[tokio::test]
async fn mail_from_a_domain_without_a_key_is_sent_unsigned() {
    let world = World::new().await;
    let hosts = mx_hosts(&world, "nokey.test", &[(10, ip(31), Script::default())]).await;
    let mut settings = world.settings();
    settings.dkim = vec![publish_key(&world, "elsewhere.test", "s1", DkimAlgorithm::Ed25519Sha256)];
    let app = TestApp::start(settings).await.unwrap();
    let id = app
        .send_ok(&json!({"from": "a@sender.test", "to": ["b@nokey.test"], "text": "t"}))
        .await
        .unwrap();
    app.wait_final(&id, SOON).await.unwrap();
    let text = String::from_utf8_lossy(&hosts[0].received()[0].data).to_ascii_lowercase();
    assert!(!text.contains("dkim-signature:"));
}
