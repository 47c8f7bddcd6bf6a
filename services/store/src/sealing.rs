//! Secrets at rest: `storage.encryption_key` seals DKIM private keys made through
//! `/v1/domains` and webhook signing secrets before either backend stores them.
//!
//! A sealed value is `pwsealed:v1:` followed by base64 of a random 96-bit nonce and the
//! AES-256-GCM ciphertext with its tag. The associated data names the value's owner
//! (`dkim:{domain}:{selector}`, `webhook:{id}`), so a sealed value copied onto another row does
//! not open there. A value without the prefix was stored in clear (before a key was set) and is
//! read as it is; a sealed value with no key configured, or the wrong one, is an error, never
//! handed on as if it were the secret.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::domain::{normalize, Domains, SendingDomain};
use crate::StoreError;

const PREFIX: &str = "pwsealed:v1:";

/// Seals and opens stored secrets; with no key, seals nothing.
pub struct Sealer {
    key: Option<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("keyed", &self.key.is_some()).finish()
    }
}

impl Sealer {
    /// `storage.encryption_key`, or none.
    pub fn new(key: Option<&[u8; 32]>) -> Self {
        let key = key.map(|k| {
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32 bytes is an AES-256 key"))
        });
        Self { key, rng: SystemRandom::new() }
    }

    /// The form to store `secret` in for `owner`: sealed when a key is set, else as it is.
    pub fn seal(&self, owner: &str, secret: &str) -> Result<String, StoreError> {
        let Some(key) = &self.key else { return Ok(secret.to_string()) };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Sealing("no randomness".into()))?;
        let mut data = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(owner.as_bytes()),
            &mut data,
        )
        .map_err(|_| StoreError::Sealing("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// The secret `stored` holds for `owner`.
    pub fn open(&self, owner: &str, stored: &str) -> Result<String, StoreError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
        let Some(key) = &self.key else {
            return Err(StoreError::Sealing(format!(
                "the {owner} secret is stored encrypted, but storage.encryption_key is not set"
            )));
        };
        let wrong = || {
            StoreError::Sealing(format!(
                "the {owner} secret does not open with storage.encryption_key (a different key, \
                 or the stored value was altered)"
            ))
        };
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = data.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut data)
            .map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }

    /// The owner name a webhook's secret is sealed under.
    pub fn webhook_owner(webhook_id: &str) -> String {
        format!("webhook:{webhook_id}")
    }

    fn dkim_owner(domain: &str, selector: &str) -> String {
        format!("dkim:{}:{selector}", normalize(domain))
    }
}

/// [`Domains`] with every private key sealed on the way in and opened on the way out.
pub struct SealedDomains {
    inner: Arc<dyn Domains>,
    sealer: Arc<Sealer>,
}

impl SealedDomains {
    pub fn new(inner: Arc<dyn Domains>, sealer: Arc<Sealer>) -> Self {
        Self { inner, sealer }
    }

    fn open(&self, mut d: SendingDomain) -> Result<SendingDomain, StoreError> {
        let owner = Sealer::dkim_owner(&d.domain, &d.selector);
        d.private_key = self.sealer.open(&owner, &d.private_key)?;
        Ok(d)
    }
}

#[async_trait]
impl Domains for SealedDomains {
    async fn create_domain(&self, mut domain: SendingDomain) -> Result<bool, StoreError> {
        let owner = Sealer::dkim_owner(&domain.domain, &domain.selector);
        domain.private_key = self.sealer.seal(&owner, &domain.private_key)?;
        self.inner.create_domain(domain).await
    }

    async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError> {
        self.inner.domain(name).await?.map(|d| self.open(d)).transpose()
    }

    async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError> {
        self.inner.list_domains().await?.into_iter().map(|d| self.open(d)).collect()
    }

    async fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_domain(name).await
    }

    async fn domains_generation(&self) -> Result<u64, StoreError> {
        self.inner.domains_generation().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn a_sealed_secret_opens_only_for_its_owner_and_key() {
        let sealer = Sealer::new(Some(&KEY));
        let sealed = sealer.seal("webhook:wh_1", "whsec_abc").unwrap();
        assert!(sealed.starts_with(PREFIX), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(sealer.open("webhook:wh_1", &sealed).unwrap(), "whsec_abc");
        // Moved onto another row, it does not open.
        assert!(matches!(sealer.open("webhook:wh_2", &sealed), Err(StoreError::Sealing(_))));
        // Another key, or none, does not open it either.
        let other = Sealer::new(Some(&[8; 32]));
        assert!(matches!(other.open("webhook:wh_1", &sealed), Err(StoreError::Sealing(_))));
        let none = Sealer::new(None);
        let err = none.open("webhook:wh_1", &sealed).unwrap_err().to_string();
        assert!(err.contains("storage.encryption_key is not set"), "{err}");
        // A flipped byte is caught by the tag.
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed.strip_prefix(PREFIX).unwrap())
            .unwrap();
        bytes[NONCE_LEN] ^= 1;
        let tampered =
            format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes));
        assert!(sealer.open("webhook:wh_1", &tampered).is_err());
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let sealer = Sealer::new(Some(&KEY));
        let a = sealer.seal("o", "same").unwrap();
        let b = sealer.seal("o", "same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn without_a_key_values_are_stored_and_read_in_clear() {
        let none = Sealer::new(None);
        assert_eq!(none.seal("o", "whsec_x").unwrap(), "whsec_x");
        assert_eq!(none.open("o", "whsec_x").unwrap(), "whsec_x");
        // A key set later still reads what was stored before it.
        assert_eq!(Sealer::new(Some(&KEY)).open("o", "whsec_x").unwrap(), "whsec_x");
    }
}
