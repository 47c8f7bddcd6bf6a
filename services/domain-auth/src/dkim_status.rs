//! Which key will sign a message, known before it is sent: what the API gateway records for
//! every accepted message (`"dkim": {"signed", "domain", "selector", "reason"}`) and what
//! `signing.require_dkim` checks.
//!
//! The rule is the one [`crate::dkim::DkimSigners::sign`] applies when the worker sends: a key
//! made through `/v1/domains` for the From domain signs alone; without one, every `[[dkim]]` key
//! of that domain signs; without either the message goes out unsigned. Only names are needed
//! here, so the gateway reads no key file: the configured keys are (domain, selector) pairs and
//! the store is asked for its key's selector.

use std::sync::Arc;

use postwire_config::DkimKey;
use postwire_proto::DkimStatus;
use postwire_store::{Domains, StoreError};

/// The signing keys by name: configured ones and the store's. Cheap to clone.
#[derive(Clone)]
pub struct SigningKeys {
    /// `[[dkim]]` keys as (A-label domain, selector), in config order.
    configured: Arc<Vec<(String, String)>>,
    domains: Arc<dyn Domains>,
}

impl SigningKeys {
    pub fn new(keys: &[DkimKey], domains: Arc<dyn Domains>) -> Self {
        let configured = keys
            .iter()
            .map(|k| (postwire_address::ascii_domain(&k.domain), k.selector.clone()))
            .collect();
        Self { configured: Arc::new(configured), domains }
    }

    /// Whether mail from `from_domain` (any case, U-label or A-label) is signed, and by which
    /// key. Fails only when the store cannot be read.
    pub async fn status(&self, from_domain: &str) -> Result<DkimStatus, StoreError> {
        let domain = postwire_address::ascii_domain(from_domain);
        if let Some(stored) = self.domains.domain(&domain).await? {
            return Ok(signed(domain, stored.selector));
        }
        match self.configured.iter().find(|(d, _)| *d == domain) {
            Some((_, selector)) => Ok(signed(domain, selector.clone())),
            None => Ok(DkimStatus {
                signed: false,
                domain: None,
                selector: None,
                reason: Some(format!(
                    "no DKIM key for {domain}: create one with POST /v1/domains or configure a [[dkim]] key"
                )),
            }),
        }
    }
}

fn signed(domain: String, selector: String) -> DkimStatus {
    DkimStatus { signed: true, domain: Some(domain), selector: Some(selector), reason: None }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::Utc;
    use postwire_config::DkimAlgorithm;
    use postwire_proto::SigningAlgorithm;
    use postwire_store::SendingDomain;

    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<String, SendingDomain>>);

    #[async_trait]
    impl Domains for Memory {
        async fn create_domain(&self, d: SendingDomain) -> Result<bool, StoreError> {
            Ok(self.0.lock().unwrap().insert(d.domain.clone(), d).is_none())
        }
        async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }
        async fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
            Ok(self.0.lock().unwrap().remove(name).is_some())
        }
        async fn domains_generation(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    fn configured(domain: &str, selector: &str) -> DkimKey {
        DkimKey {
            domain: domain.into(),
            selector: selector.into(),
            algorithm: DkimAlgorithm::Ed25519Sha256,
            private_key: "unused.pem".into(),
        }
    }

    #[tokio::test]
    async fn a_store_key_replaces_configured_keys_and_other_domains_are_unsigned() {
        let store = Arc::new(Memory::default());
        let keys = SigningKeys::new(
            &[configured("Sender.test", "rsa1"), configured("sender.test", "ed1")],
            store.clone(),
        );
        let status = keys.status("SENDER.TEST").await.unwrap();
        assert_eq!(
            (status.signed, status.domain.as_deref(), status.selector.as_deref()),
            (true, Some("sender.test"), Some("rsa1"))
        );
        store
            .create_domain(SendingDomain {
                domain: "sender.test".into(),
                selector: "api2".into(),
                algorithm: SigningAlgorithm::Ed25519Sha256,
                private_key: String::new(),
                public_record: String::new(),
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(keys.status("sender.test").await.unwrap().selector.as_deref(), Some("api2"));
        let other = keys.status("elsewhere.test").await.unwrap();
        assert!(!other.signed);
        assert!(other.reason.unwrap().contains("elsewhere.test"));
    }
}
