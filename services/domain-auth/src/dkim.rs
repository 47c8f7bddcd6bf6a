//! DKIM signing (RFC 6376, RFC 8463) with mail-auth.
//!
//! Keys are read and parsed once at start-up ([`DkimSigners::from_settings`]). A message is
//! signed by every key whose domain equals its From domain, so a domain with both an RSA and an
//! Ed25519 key gets two DKIM-Signature headers (RFC 8463 §6 recommends exactly this during the
//! Ed25519 transition). Canonicalization is relaxed/relaxed; the signed headers are the ones in
//! [`SIGNED_HEADERS`] that the message carries.
//!
//! RSA signing costs milliseconds of CPU, so [`DkimSigners::sign`] runs it on the blocking pool
//! rather than on an async worker thread.
//!
//! Keys made through `/v1/domains` live in the store and are added with
//! [`DkimSigners::with_store`] (the `domain_keys` module caches them). A domain with a store key
//! is signed with that key alone: the API's key replaces any `[[dkim]]` keys of the same domain,
//! so rotating a configured key to an API-made one needs no config change or restart. Domains
//! without a store key keep their configured keys.

use std::path::PathBuf;
use std::sync::Arc;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::{Done, Signature};
use postwire_config::{DkimAlgorithm, DkimKey};
use postwire_store::Domains;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::domain_keys::StoreSigners;

/// Headers covered by the signature when present. RFC 8058 §4 requires the one-click pair
/// (`List-Unsubscribe`, `List-Unsubscribe-Post`) to be signed.
pub const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// mail-auth folds after a `b=` value that ends on a full line (`…==\r\n\t;`) but hashed the
/// header without that fold. The whitespace lies outside the tag value (RFC 6376 §3.2
/// `tag-spec`), so strict verifiers (dkimpy) keep it and the signature fails; which messages
/// hit it depends on the `h=` layout. Dropping the fold restores what was signed.
fn without_fold_before_final_semicolon(header: String) -> String {
    match header.strip_suffix("\r\n\t;\r\n") {
        Some(head) => format!("{head};\r\n"),
        None => header,
    }
}

/// Why a key could not be loaded or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("cannot read DKIM key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM private key of the configured algorithm.
    #[error("DKIM key {path} is not a valid {algorithm} private key: {reason}")]
    ParseKey { path: PathBuf, algorithm: &'static str, reason: String },
    /// Signing failed (no signable header, crypto failure).
    #[error("DKIM signing with {domain}/{selector} failed: {reason}")]
    Sign { domain: String, selector: String, reason: String },
    /// The signing task panicked or was cancelled.
    #[error("DKIM signing task failed: {0}")]
    Task(String),
    /// The store could not say which key signs the domain (it may be unreachable).
    #[error("cannot look up the DKIM key of {domain}: {reason}")]
    KeyLookup { domain: String, reason: String },
    /// A key from the store does not parse (it was checked when it was stored, so this is
    /// corruption or a key of an algorithm this build cannot sign with).
    #[error("the stored DKIM key of {domain} ({selector}) is unusable: {reason}")]
    StoredKey { domain: String, selector: String, reason: String },
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One parsed key, ready to sign for its domain and selector.
pub(crate) struct Signer {
    domain: String,
    selector: String,
    key: Key,
}

impl Signer {
    /// Parses a PEM private key (see [`DkimSigners::from_settings`] for the forms accepted).
    pub(crate) fn from_pem(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        pem: &[u8],
    ) -> Result<Self, String> {
        // `d=` is the A-label (RFC 8616 §4): an IDN sending domain may be configured either way.
        let domain = postwire_address::ascii_domain(domain);
        Ok(Signer {
            key: parse_key(pem, &domain, selector, algorithm)?,
            domain,
            selector: selector.to_owned(),
        })
    }

    /// The `DKIM-Signature` header line (CRLF-terminated) for `message`.
    pub(crate) fn header(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        Ok(without_fold_before_final_semicolon(self.sign(message)?.to_header()).into_bytes())
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, DkimError> {
        match &self.key {
            Key::Rsa(s) => s.sign(message),
            Key::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            reason: e.to_string(),
        })
    }
}

/// Every configured signing key, parsed once. Cheap to clone.
#[derive(Clone, Default)]
pub struct DkimSigners {
    signers: Arc<Vec<Signer>>,
    /// Keys made through `/v1/domains`, when the worker has a store to read them from.
    store: Option<Arc<StoreSigners>>,
}

impl DkimSigners {
    /// Reads and parses every `[[dkim]]` key. RSA keys may be PKCS#8 (`PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`) PEM; Ed25519 keys are PKCS#8 PEM (v1 or v2).
    pub fn from_settings(keys: &[DkimKey]) -> Result<Self, DkimError> {
        let signers = keys
            .iter()
            .map(|k| {
                let pem = std::fs::read(&k.private_key)
                    .map_err(|source| DkimError::ReadKey { path: k.private_key.clone(), source })?;
                Signer::from_pem(&k.domain, &k.selector, k.algorithm, &pem).map_err(|reason| {
                    DkimError::ParseKey {
                        path: k.private_key.clone(),
                        algorithm: k.algorithm.as_str(),
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>, DkimError>>()?;
        Ok(Self { signers: Arc::new(signers), store: None })
    }

    /// Also signs with the keys of sending domains in `domains`, which take precedence over
    /// configured keys of the same domain.
    pub fn with_store(mut self, domains: Arc<dyn Domains>) -> Self {
        self.store = Some(Arc::new(StoreSigners::new(domains)));
        self
    }

    /// True when at least one key is configured for `domain`.
    pub fn has_key_for(&self, domain: &str) -> bool {
        self.signers.iter().any(|s| s.domain.eq_ignore_ascii_case(domain))
    }

    /// The `DKIM-Signature` header lines (CRLF-terminated) for `message`, one per key of
    /// `from_domain`; empty when no key matches.
    pub fn signature_headers(
        &self,
        from_domain: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, DkimError> {
        let mut out = Vec::new();
        for signer in self.signers.iter().filter(|s| s.domain.eq_ignore_ascii_case(from_domain)) {
            let sig = signer.sign(message)?;
            out.extend_from_slice(without_fold_before_final_semicolon(sig.to_header()).as_bytes());
        }
        Ok(out)
    }

    /// Signs each message for `from_domain` off the async threads and prepends the signatures.
    pub async fn sign(
        &self,
        from_domain: &str,
        messages: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, DkimError> {
        let stored = match &self.store {
            Some(store) => store.signer(from_domain).await?,
            None => None,
        };
        if stored.is_none() && !self.has_key_for(from_domain) {
            return Ok(messages);
        }
        let this = self.clone();
        let domain = from_domain.to_owned();
        tokio::task::spawn_blocking(move || {
            messages
                .into_iter()
                .map(|m| {
                    let mut signed = match &stored {
                        Some(signer) => signer.header(&m)?,
                        None => this.signature_headers(&domain, &m)?,
                    };
                    signed.extend_from_slice(&m);
                    Ok(signed)
                })
                .collect()
        })
        .await
        .map_err(|e| DkimError::Task(e.to_string()))?
    }
}

/// Parses a PEM private key into a signer for `domain` (lower-cased) and `selector`; the error
/// is the reason, for the caller to wrap.
fn parse_key(
    pem: &[u8],
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<Key, String> {
    // Recognises both `PRIVATE KEY` (PKCS#8) and `RSA PRIVATE KEY` (PKCS#1) blocks.
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let headers = SIGNED_HEADERS;
    Ok(match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
            Key::Rsa(DkimSigner::from_key(key).domain(domain).selector(selector).headers(headers))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(der) = der else {
                return Err("Ed25519 keys must be PKCS#8 (\"PRIVATE KEY\")".into());
            };
            // "maybe unchecked" accepts PKCS#8 v1 (no embedded public key), which OpenSSL and
            // most tools write, as well as v2.
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map_err(|e| e.to_string())?;
            Key::Ed25519(
                DkimSigner::from_key(key).domain(domain).selector(selector).headers(headers),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Mutex;

    use base64::Engine;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
    use mail_auth::{
        AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    };

    use super::*;

    /// A TXT cache pre-filled with the selector records, so verification never touches DNS.
    struct Zone(Mutex<HashMap<Box<str>, Txt>>);

    impl ResolverCache<Box<str>, Txt> for Zone {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
            self.0.lock().unwrap().insert(key, value);
        }
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = b64(der);
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    fn key_file(dir: &std::path::Path, name: &str, contents: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn temp_dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("postwire-dkim-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const MESSAGE: &str = concat!(
        "From: Ann <ann@Sender.test>\r\n",
        "To: bob@rcpt.test\r\n",
        "Subject: Signed\r\n",
        "Date: Wed, 1 May 2024 12:00:00 +0000\r\n",
        "Message-ID: <m1@sender.test>\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain\r\n",
        "\r\n",
        "Hello  there\r\n",
    );

    async fn verify(signed: &[u8], zone: &Zone) -> Vec<DkimResult> {
        // No nameservers at all: anything not in the cache fails instead of reaching the internet.
        let auth = MessageAuthenticator::new(
            ResolverConfig::from_name_servers(vec![]),
            ResolverOpts::default(),
        )
        .unwrap();
        let msg = AuthenticatedMessage::parse(signed).unwrap();
        auth.verify_dkim(Parameters::new(&msg).with_txt_cache(zone))
            .await
            .iter()
            .map(|o| o.result().clone())
            .collect()
    }

    fn txt(record: &str) -> Txt {
        Txt::from(DomainKey::parse(record.as_bytes()))
    }

    #[tokio::test]
    async fn rsa_and_ed25519_keys_both_sign_and_verify_with_mail_auth() {
        use rsa::pkcs8::EncodePrivateKey;
        let dir = temp_dir();
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let rsa_pem = rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let ed_der = Ed25519Key::generate_pkcs8().unwrap();
        let keys = vec![
            DkimKey {
                domain: "sender.test".into(),
                selector: "rsa1".into(),
                algorithm: DkimAlgorithm::RsaSha256,
                private_key: key_file(&dir, "rsa.pem", &rsa_pem),
            },
            DkimKey {
                domain: "SENDER.test".into(),
                selector: "ed1".into(),
                algorithm: DkimAlgorithm::Ed25519Sha256,
                private_key: key_file(&dir, "ed.pem", &pem("PRIVATE KEY", &ed_der)),
            },
            DkimKey {
                domain: "other.test".into(),
                selector: "x".into(),
                algorithm: DkimAlgorithm::Ed25519Sha256,
                private_key: key_file(
                    &dir,
                    "ed2.pem",
                    &pem("PRIVATE KEY", &Ed25519Key::generate_pkcs8().unwrap()),
                ),
            },
        ];
        let signers = DkimSigners::from_settings(&keys).unwrap();
        let signed =
            signers.sign("sender.test", vec![MESSAGE.as_bytes().to_vec()]).await.unwrap().remove(0);
        let text = String::from_utf8(signed.clone()).unwrap();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert!(text.contains("c=relaxed/relaxed"));
        assert!(text.ends_with(MESSAGE));

        let rsa_pub = RsaKey::<Sha256>::from_key_der(
            PrivateKeyDer::from_pem_slice(rsa_pem.as_bytes()).unwrap(),
        )
        .unwrap()
        .public_key();
        let ed_pub = Ed25519Key::from_pkcs8_der(&ed_der).unwrap().public_key();
        let zone = Zone(Mutex::new(HashMap::new()));
        zone.insert(
            "rsa1._domainkey.sender.test.".into(),
            txt(&format!("v=DKIM1; k=rsa; p={}", b64(&rsa_pub))),
            std::time::Instant::now(),
        );
        zone.insert(
            "ed1._domainkey.sender.test.".into(),
            txt(&format!("v=DKIM1; k=ed25519; p={}", b64(&ed_pub))),
            std::time::Instant::now(),
        );
        let results = verify(&signed, &zone).await;
        assert_eq!(results, vec![DkimResult::Pass, DkimResult::Pass]);

        // Tampering with the body breaks both.
        let tampered = String::from_utf8(signed).unwrap().replace("Hello", "Jello");
        let results = verify(tampered.as_bytes(), &zone).await;
        assert!(results.iter().all(|r| !matches!(r, DkimResult::Pass)), "{results:?}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn pkcs1_rsa_keys_load_and_unmatched_domains_are_left_unsigned() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let dir = temp_dir();
        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pkcs1 = rsa_key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        let keys = vec![DkimKey {
            domain: "sender.test".into(),
            selector: "s1".into(),
            algorithm: DkimAlgorithm::RsaSha256,
            private_key: key_file(&dir, "rsa1.pem", &pkcs1),
        }];
        let signers = DkimSigners::from_settings(&keys).unwrap();
        let out = signers.sign("elsewhere.test", vec![MESSAGE.as_bytes().to_vec()]).await.unwrap();
        assert_eq!(out[0], MESSAGE.as_bytes());
        let out = signers.sign("sender.test", vec![MESSAGE.as_bytes().to_vec()]).await.unwrap();
        let head = String::from_utf8_lossy(&out[0]);
        assert!(
            head.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=sender.test;"),
            "{head}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_or_garbled_key_file_fails_at_start_up() {
        let dir = temp_dir();
        let missing = DkimKey {
            domain: "d.test".into(),
            selector: "s".into(),
            algorithm: DkimAlgorithm::RsaSha256,
            private_key: dir.join("nope.pem"),
        };
        assert!(matches!(DkimSigners::from_settings(&[missing]), Err(DkimError::ReadKey { .. })));
        let garbled = DkimKey {
            domain: "d.test".into(),
            selector: "s".into(),
            algorithm: DkimAlgorithm::Ed25519Sha256,
            private_key: key_file(
                &dir,
                "bad.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        };
        assert!(matches!(DkimSigners::from_settings(&[garbled]), Err(DkimError::ParseKey { .. })));
        std::fs::remove_dir_all(dir).ok();
    }
}
