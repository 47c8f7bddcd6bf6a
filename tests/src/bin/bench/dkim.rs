//! DKIM keys for the benchmark, the check that a delivered sample really verifies, and the
//! signing ceiling of one core.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use postwire_config::{DkimAlgorithm, DkimKey};
use postwire_domain_auth::dkim::DkimSigners;
use postwire_e2e::dns::DnsServer;

/// Generates a key like `postwire dkim generate`, writes its PEM and publishes its TXT record;
/// returns the key and the record's value.
pub fn publish_key(
    dns: &DnsServer,
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> anyhow::Result<(DkimKey, String)> {
    let pair = postwire::keygen::generate(algorithm).map_err(anyhow::Error::msg)?;
    let path = dir.join(format!("{selector}.pem"));
    std::fs::write(&path, pair.private_pem)?;
    dns.add_txt(&format!("{selector}._domainkey.{domain}"), &pair.txt_value);
    Ok((
        DkimKey { domain: domain.into(), selector: selector.into(), algorithm, private_key: path },
        pair.txt_value,
    ))
}

/// Verifies every DKIM-Signature of `message` against `records` (`selector._domainkey.domain`
/// → TXT value) with mail-auth, never touching the network. `Ok("pass …")` or an error naming
/// what failed.
pub async fn verify(message: &[u8], records: &[(String, String)]) -> anyhow::Result<String> {
    let zone = Zone(Mutex::new(
        records
            .iter()
            .map(|(name, value)| {
                (
                    format!("{}.", name.trim_end_matches('.')).into_boxed_str(),
                    Txt::from(DomainKey::parse(value.as_bytes())),
                )
            })
            .collect(),
    ));
    let auth = MessageAuthenticator::new(
        ResolverConfig::from_name_servers(vec![]),
        ResolverOpts::default(),
    )?;
    let parsed = AuthenticatedMessage::parse(message)
        .ok_or_else(|| anyhow::anyhow!("the sample does not parse as a message"))?;
    let outputs = auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&zone)).await;
    anyhow::ensure!(!outputs.is_empty(), "no DKIM-Signature in the sample");
    let results: Vec<DkimResult> = outputs.iter().map(|o| o.result().clone()).collect();
    anyhow::ensure!(
        results.iter().all(|r| matches!(r, DkimResult::Pass)),
        "DKIM verification failed: {results:?}"
    );
    Ok(format!("{} signature(s) pass", results.len()))
}

/// A TXT cache pre-filled with the selector records.
struct Zone(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Zone {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("zone lock").get(name).cloned()
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("zone lock").remove(name)
    }
    fn insert(&self, key: Box<str>, value: Txt, _: Instant) {
        self.0.lock().expect("zone lock").insert(key, value);
    }
}

/// Signatures per second of each key in `keys` over `message`, one thread, `duration` each.
pub fn ceiling(
    keys: &[DkimKey],
    message: &[u8],
    duration: Duration,
) -> anyhow::Result<Vec<(DkimAlgorithm, f64)>> {
    let signers = DkimSigners::from_settings(keys)?;
    keys.iter()
        .map(|key| {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < duration {
                let header = signers.signature_headers(&key.domain, message)?;
                anyhow::ensure!(!header.is_empty(), "no DKIM key for {}", key.domain);
                count += 1;
            }
            Ok((key.algorithm, count as f64 / start.elapsed().as_secs_f64()))
        })
        .collect()
}

/// The message minus the DKIM-Signature header fields a signer added.
pub fn strip_signatures(data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut out = String::new();
    let mut skipping = false;
    for line in head.split("\r\n") {
        if !line.starts_with([' ', '\t']) {
            skipping = line.to_ascii_lowercase().starts_with("dkim-signature:");
        }
        if !skipping {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}
