//! DKIM key generation: a private key in PKCS#8 PEM and the DNS TXT record to publish.

use base64::Engine;
use postwire_config::DkimAlgorithm;

/// A generated key pair, ready to write and publish.
pub struct DkimKeyPair {
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// `v=DKIM1; k=…; p=…`.
    pub txt_value: String,
}

pub fn generate(algorithm: DkimAlgorithm) -> Result<DkimKeyPair, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| e.to_string())?;
            let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
            let public = key.to_public_key().to_public_key_der().map_err(|e| e.to_string())?;
            Ok(DkimKeyPair { private_pem, txt_value: format!("v=DKIM1; k=rsa; p={}", b64(public.as_bytes())) })
        }
        DkimAlgorithm::Ed25519Sha256 => {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?.to_string();
            // RFC 8463 §4: the raw 32-byte public key, not SubjectPublicKeyInfo.
            Ok(DkimKeyPair { private_pem, txt_value: format!("v=DKIM1; k=ed25519; p={}", b64(key.verifying_key().as_bytes())) })
        }
    }
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
}
