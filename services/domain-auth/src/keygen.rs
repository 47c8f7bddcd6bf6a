//! DKIM key material: generating a key pair, importing an existing private key, and the DNS TXT
//! record that publishes the public half. `postwire dkim generate` and `POST /v1/domains` both
//! use these functions, so a key made either way is the same kind of key.
//!
//! RSA keys are 2048 bits (RFC 8301 §3.2 requires at least 1024 to verify, recommends 2048 to
//! sign); their record carries the SubjectPublicKeyInfo DER (RFC 6376 §3.6.1). Ed25519 records
//! carry the raw 32-byte public key (RFC 8463 §4). Private keys are written as PKCS#8 PEM.

use base64::Engine;
use postwire_config::DkimAlgorithm;
use postwire_proto::SigningAlgorithm;

/// Smallest RSA key accepted for import (RFC 8301 §3.2: verifiers must reject shorter keys).
pub const MIN_RSA_BITS: usize = 1024;

/// A key pair, ready to store and publish.
#[derive(Clone)]
pub struct DkimKeyPair {
    /// PEM of the private key (PKCS#8 when generated; an import keeps its own form).
    pub private_pem: String,
    /// The DKIM key record, `v=DKIM1; k=…; p=…`.
    pub txt_value: String,
}

impl std::fmt::Debug for DkimKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("DkimKeyPair").field("txt_value", &self.txt_value).finish_non_exhaustive()
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The random key could not be generated or encoded.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The PEM is not a private key of the expected algorithm.
    #[error("not a valid {algorithm} private key in PEM: {reason}")]
    Parse { algorithm: &'static str, reason: String },
    /// An RSA key shorter than [`MIN_RSA_BITS`].
    #[error("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required (RFC 8301)")]
    TooShort { bits: usize },
}

/// The configuration's name for an algorithm named on the wire.
pub fn config_algorithm(algorithm: SigningAlgorithm) -> DkimAlgorithm {
    match algorithm {
        SigningAlgorithm::RsaSha256 => DkimAlgorithm::RsaSha256,
        SigningAlgorithm::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The DKIM key record for a public key: SubjectPublicKeyInfo DER for RSA, the raw 32 bytes
/// for Ed25519.
pub fn txt_value(algorithm: DkimAlgorithm, public: &[u8]) -> String {
    let k = match algorithm {
        DkimAlgorithm::RsaSha256 => "rsa",
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
    };
    format!("v=DKIM1; k={k}; p={}", b64(public))
}

/// Generates a fresh key pair. RSA generation takes a noticeable fraction of a second: call it
/// from a blocking context (`spawn_blocking`) in async code.
pub fn generate(algorithm: DkimAlgorithm) -> Result<DkimKeyPair, KeyError> {
    let fail = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key =
                rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| fail(&e))?;
            let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| fail(&e))?.to_string();
            let public = key.to_public_key().to_public_key_der().map_err(|e| fail(&e))?;
            Ok(DkimKeyPair { private_pem, txt_value: txt_value(algorithm, public.as_bytes()) })
        }
        DkimAlgorithm::Ed25519Sha256 => {
            use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey};
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| fail(&e))?.to_string();
            Ok(DkimKeyPair {
                private_pem,
                txt_value: txt_value(algorithm, key.verifying_key().as_bytes()),
            })
        }
    }
}

/// Reads an existing private key and derives its record. RSA keys may be PKCS#8
/// (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`); Ed25519 keys are PKCS#8 (v1 or v2). The PEM
/// is kept as given, after checking that the signer accepts it too.
pub fn import(algorithm: DkimAlgorithm, pem: &str) -> Result<DkimKeyPair, KeyError> {
    let fail = |reason: String| KeyError::Parse { algorithm: algorithm.as_str(), reason };
    let pem = pem.trim();
    let public = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .or_else(|pkcs8| rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| pkcs8))
                .map_err(|e| fail(e.to_string()))?;
            let bits = key.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(KeyError::TooShort { bits });
            }
            key.validate().map_err(|e| fail(e.to_string()))?;
            key.to_public_key()
                .to_public_key_der()
                .map_err(|e| fail(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        DkimAlgorithm::Ed25519Sha256 => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            let key =
                ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| fail(e.to_string()))?;
            key.verifying_key().as_bytes().to_vec()
        }
    };
    // The signer parses keys with other code (mail-auth): what it refuses would fail every send.
    crate::dkim::Signer::from_pem("example.com", "check", algorithm, pem.as_bytes())
        .map_err(fail)?;
    Ok(DkimKeyPair { private_pem: format!("{pem}\n"), txt_value: txt_value(algorithm, &public) })
}

/// The TXT record in zone-file form, its value split into ≤255-byte strings (RFC 1035 §3.3.14).
pub fn zone_record(domain: &str, selector: &str, txt_value: &str) -> String {
    let chunks: Vec<String> = txt_value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{selector}._domainkey.{domain}. IN TXT {}", chunks.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_record_carries_the_raw_public_key() {
        let pair = generate(DkimAlgorithm::Ed25519Sha256).unwrap();
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let p = pair.txt_value.split("p=").nth(1).unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(p).unwrap().len(), 32);
    }

    #[test]
    fn long_values_are_split_into_255_byte_strings() {
        let value = "x".repeat(400);
        let rec = zone_record("example.com", "s1", &value);
        assert!(rec.starts_with("s1._domainkey.example.com. IN TXT \""));
        assert_eq!(rec.matches('"').count(), 4);
    }

    #[test]
    fn importing_a_generated_key_gives_back_the_same_record() {
        for algorithm in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
            let pair = generate(algorithm).unwrap();
            let imported = import(algorithm, &pair.private_pem).unwrap();
            assert_eq!(imported.txt_value, pair.txt_value, "{algorithm:?}");
        }
    }

    #[test]
    fn a_pkcs1_rsa_key_imports_and_its_record_carries_the_spki() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        let imported = import(DkimAlgorithm::RsaSha256, &pem).unwrap();
        let spki = key.to_public_key().to_public_key_der().unwrap();
        assert_eq!(imported.txt_value, format!("v=DKIM1; k=rsa; p={}", b64(spki.as_bytes())));
    }

    #[test]
    fn garbage_a_key_of_the_other_algorithm_and_short_rsa_keys_are_refused() {
        assert!(matches!(
            import(DkimAlgorithm::RsaSha256, "not a key"),
            Err(KeyError::Parse { .. })
        ));
        let ed = generate(DkimAlgorithm::Ed25519Sha256).unwrap();
        assert!(matches!(
            import(DkimAlgorithm::RsaSha256, &ed.private_pem),
            Err(KeyError::Parse { .. })
        ));
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let short = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 512).unwrap();
        let pem = short.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(matches!(
            import(DkimAlgorithm::RsaSha256, &pem),
            Err(KeyError::TooShort { bits: 512 })
        ));
    }
}
