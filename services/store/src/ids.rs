//! Identifiers and API key material.
//!
//! Ids are a type prefix plus a UUIDv7, so they sort by creation time and say what they name.
//! An API key is `pw_<key id>_<secret>`: the id finds the record, and only SHA-256 of the
//! 32-byte random secret is stored, compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new id such as `msg_0193…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// An id fixed by `parts` instead of drawn at random, same shape as [`new_id`] (`prefix_` and
/// 32 hex digits): a request run again after a crash names the messages it makes as the first
/// run did, so the store can tell it already holds them.
pub fn derived_id(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{prefix}_{}", hex::encode(&hash.finalize()[..16]))
}

/// A freshly minted API key: the full key (shown once) and what is stored.
pub struct MintedKey {
    pub id: String,
    pub key: String,
    pub hash: [u8; 32],
}

/// Mints a new API key.
pub fn mint_api_key() -> MintedKey {
    let id = format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    let hash = hash_secret(&secret);
    MintedKey { key: format!("pw_{id}_{secret}"), id, hash }
}

/// Splits a presented key into (key id, secret); `None` when it is not shaped like ours.
pub fn split_api_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("pw_")?;
    // The id itself contains one underscore (`key_…`): split after it.
    let sep = rest.match_indices('_').nth(1)?.0;
    let (id, secret) = (&rest[..sep], &rest[sep + 1..]);
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time check of a presented secret against a stored hash.
pub fn secret_matches(secret: &str, stored: &[u8; 32]) -> bool {
    hash_secret(secret).ct_eq(stored).into()
}

/// A webhook signing secret: `whsec_` + base64 of 32 random bytes (Standard Webhooks).
pub fn new_webhook_secret() -> String {
    use base64::Engine;
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_key_round_trips_and_wrong_secret_fails() {
        let k = mint_api_key();
        let (id, secret) = split_api_key(&k.key).unwrap();
        assert_eq!(id, k.id);
        assert!(secret_matches(secret, &k.hash));
        assert!(!secret_matches("nope", &k.hash));
        assert!(split_api_key("Bearer xyz").is_none());
    }
}
