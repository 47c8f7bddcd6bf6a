//! Sending domains: a domain's DKIM key, made or imported through `/v1/domains`.
//!
//! One key per domain, stored with its private key in PEM (never returned by the API) and the
//! DKIM public key record to publish. Names are stored lower-cased without a trailing dot;
//! lookups accept any case.
//!
//! Workers sign with these keys from the next message on, in every process: each job reads
//! [`Domains::domains_generation`], a counter the backend bumps in the same transaction (or
//! script) that adds or removes a domain. A worker's cached signers stay valid exactly as long as
//! the generation it read them under, so a message accepted after `POST /v1/domains` answered
//! is never signed from a cache that predates the key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::SigningAlgorithm;

use crate::StoreError;

/// One sending domain and its DKIM key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingDomain {
    /// Lower-cased, without a trailing dot.
    pub domain: String,
    pub selector: String,
    pub algorithm: SigningAlgorithm,
    /// PEM of the private key (PKCS#8, or PKCS#1 for an imported RSA key).
    pub private_key: String,
    /// The DKIM key record value, `v=DKIM1; k=…; p=…`.
    pub public_record: String,
    pub created_at: DateTime<Utc>,
}

impl SendingDomain {
    /// The entry as it is stored: the name lower-cased and without a trailing dot, the time at
    /// millisecond precision.
    pub fn normalized(mut self) -> Self {
        self.domain = normalize(&self.domain);
        self.created_at = crate::time::from_ms(self.created_at.timestamp_millis());
        self
    }
}

/// The stored form of a domain name.
pub(crate) fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The sending domains, as the API manages them and the workers sign with them.
#[async_trait]
pub trait Domains: Send + Sync + 'static {
    /// Adds a domain with its key and bumps the generation. False, with nothing changed, when
    /// the domain already exists.
    async fn create_domain(&self, domain: SendingDomain) -> Result<bool, StoreError>;

    /// The domain `name` (any case, trailing dot allowed).
    async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError>;

    /// Every domain, sorted by name.
    async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError>;

    /// Removes the domain and its key and bumps the generation. False when unknown.
    async fn delete_domain(&self, name: &str) -> Result<bool, StoreError>;

    /// A counter that changes whenever a domain is added or removed (0 before the first).
    async fn domains_generation(&self) -> Result<u64, StoreError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! The domain contract, run against both backends (see the `tests` modules of
    //! `embedded/domain.rs` and `distributed/domain.rs`).

    use chrono::TimeZone;

    use super::*;

    pub(crate) fn domain(name: &str, selector: &str, at_ms: i64) -> SendingDomain {
        SendingDomain {
            domain: name.into(),
            selector: selector.into(),
            algorithm: SigningAlgorithm::Ed25519Sha256,
            private_key: format!(
                "-----BEGIN PRIVATE KEY-----\n{selector}\n-----END PRIVATE KEY-----\n"
            ),
            public_record: format!("v=DKIM1; k=ed25519; p={selector}"),
            created_at: Utc.timestamp_millis_opt(at_ms).unwrap(),
        }
    }

    /// Create, look up in any case, refuse a duplicate, list by name, delete.
    pub(crate) async fn domains_are_created_once_listed_and_deleted<S: Domains>(store: &S) {
        assert_eq!(store.domains_generation().await.unwrap(), 0);
        assert!(store.domain("brand.test").await.unwrap().is_none());

        assert!(store.create_domain(domain("Brand.Test.", "s1", 1_764_000_000_000)).await.unwrap());
        let stored = store.domain("BRAND.test").await.unwrap().expect("stored");
        assert_eq!(stored, domain("brand.test", "s1", 1_764_000_000_000));

        let gen = store.domains_generation().await.unwrap();
        assert!(gen > 0);
        // A duplicate changes nothing: not the key, not the generation.
        assert!(!store
            .create_domain(domain("brand.test", "other", 1_764_000_000_500))
            .await
            .unwrap());
        assert_eq!(store.domain("brand.test").await.unwrap().unwrap().selector, "s1");
        assert_eq!(store.domains_generation().await.unwrap(), gen);

        assert!(store.create_domain(domain("alpha.test", "a1", 1_764_000_001_000)).await.unwrap());
        let names: Vec<String> =
            store.list_domains().await.unwrap().into_iter().map(|d| d.domain).collect();
        assert_eq!(names, ["alpha.test", "brand.test"]);
        let after_second = store.domains_generation().await.unwrap();
        assert!(after_second > gen);

        assert!(store.delete_domain("Brand.test").await.unwrap());
        assert!(!store.delete_domain("brand.test").await.unwrap());
        assert!(store.domain("brand.test").await.unwrap().is_none());
        let after_delete = store.domains_generation().await.unwrap();
        assert!(after_delete > after_second);
        // A delete of an unknown domain is no change.
        assert!(!store.delete_domain("never.test").await.unwrap());
        assert_eq!(store.domains_generation().await.unwrap(), after_delete);

        // The name is free again, with a new key.
        assert!(store.create_domain(domain("brand.test", "s2", 1_764_000_002_000)).await.unwrap());
        assert_eq!(store.domain("brand.test").await.unwrap().unwrap().selector, "s2");
        assert_eq!(store.list_domains().await.unwrap().len(), 2);
    }

    /// Of concurrent creates of one domain exactly one wins.
    pub(crate) async fn of_concurrent_creates_exactly_one_wins<S: Domains + Clone>(store: &S) {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create_domain(domain("race.test", &format!("s{i}"), 1_764_000_000_000))
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                won += 1;
            }
        }
        assert_eq!(won, 1);
        assert_eq!(store.list_domains().await.unwrap().len(), 1);
    }
}
