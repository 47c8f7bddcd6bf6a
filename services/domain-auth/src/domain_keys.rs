//! DKIM keys of sending domains made through `/v1/domains`, read from the store and cached as
//! parsed signers.
//!
//! Why a generation check per job rather than a TTL: `POST /v1/domains` promises that its key
//! signs at once, and in the distributed deployment the worker is another process, so nothing
//! can tell it about the new key. Each signing first reads the store's domain generation (one
//! small Redis `GET`, or one SQLite read): the backend bumps it in the same transaction or script
//! that adds or removes a domain. While it is unchanged, every cached answer is exact — including
//! "this From domain has no key", which is safe to cache only because of that — and nothing is
//! fetched or parsed again. When it moves, the cache is rebuilt lazily; a key whose record did
//! not change keeps its parsed signer, so a signer is built once per key. A TTL would either
//! sign with a deleted key or leave a new one unused for up to the TTL.
//!
//! When the store cannot be read the job is not sent unsigned: signing fails with
//! [`DkimError::KeyLookup`] and the delivery is retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postwire_store::{Domains, SendingDomain};

use crate::dkim::{DkimError, Signer};
use crate::keygen::config_algorithm;

/// Most From domains remembered per generation; past it the cache starts over (a bound on memory
/// when mail comes from very many domains, most of them without a key).
const MAX_CACHED_DOMAINS: usize = 10_000;

/// One stored key and its parsed signer.
struct Entry {
    selector: String,
    public_record: String,
    signer: Arc<Signer>,
}

#[derive(Default)]
struct Cache {
    /// The generation every answer in `by_domain` was read under.
    generation: Option<u64>,
    /// From domain (lower-cased) → its key, or `None` when it has none.
    by_domain: HashMap<String, Option<Arc<Entry>>>,
    /// The keys of the previous generation, reused when a domain's record is unchanged.
    previous: HashMap<String, Arc<Entry>>,
}

impl Cache {
    fn start_generation(&mut self, generation: u64) {
        self.previous = self.by_domain.drain().filter_map(|(d, e)| e.map(|e| (d, e))).collect();
        self.generation = Some(generation);
    }
}

/// The store's domain keys as signers, for [`crate::dkim::DkimSigners`].
pub(crate) struct StoreSigners {
    domains: Arc<dyn Domains>,
    cache: Mutex<Cache>,
}

impl StoreSigners {
    pub(crate) fn new(domains: Arc<dyn Domains>) -> Self {
        Self { domains, cache: Mutex::new(Cache::default()) }
    }

    /// The signer of `domain`'s store key, or `None` when the store has no key for it.
    pub(crate) async fn signer(&self, domain: &str) -> Result<Option<Arc<Signer>>, DkimError> {
        let domain = postwire_address::ascii_domain(domain);
        let lookup = |e: postwire_store::StoreError| DkimError::KeyLookup {
            domain: domain.clone(),
            reason: e.to_string(),
        };
        let generation = self.domains.domains_generation().await.map_err(lookup)?;
        {
            let mut cache = self.cache.lock().expect("domain key cache");
            if cache.generation != Some(generation) {
                cache.start_generation(generation);
            }
            if let Some(hit) = cache.by_domain.get(&domain) {
                return Ok(hit.as_ref().map(|e| e.signer.clone()));
            }
        }
        let entry = match self.domains.domain(&domain).await.map_err(lookup)? {
            None => None,
            Some(stored) => Some(self.entry(stored)?),
        };
        let mut cache = self.cache.lock().expect("domain key cache");
        // Another job may have seen a newer generation meanwhile; this answer belongs to the
        // older one and must not be cached under the newer.
        if cache.generation == Some(generation) {
            if cache.by_domain.len() >= MAX_CACHED_DOMAINS {
                cache.by_domain.clear();
            }
            cache.by_domain.insert(domain, entry.clone());
        }
        Ok(entry.map(|e| e.signer.clone()))
    }

    /// The previous generation's entry when the key is unchanged, else a newly parsed one.
    fn entry(&self, stored: SendingDomain) -> Result<Arc<Entry>, DkimError> {
        let reuse = {
            let cache = self.cache.lock().expect("domain key cache");
            cache
                .previous
                .get(&stored.domain)
                .filter(|e| {
                    e.selector == stored.selector && e.public_record == stored.public_record
                })
                .cloned()
        };
        if let Some(entry) = reuse {
            return Ok(entry);
        }
        let signer = Signer::from_pem(
            &stored.domain,
            &stored.selector,
            config_algorithm(stored.algorithm),
            stored.private_key.as_bytes(),
        )
        .map_err(|reason| DkimError::StoredKey {
            domain: stored.domain.clone(),
            selector: stored.selector.clone(),
            reason,
        })?;
        Ok(Arc::new(Entry {
            selector: stored.selector,
            public_record: stored.public_record,
            signer: Arc::new(signer),
        }))
    }

    /// How many distinct keys are parsed and cached right now (for tests).
    #[cfg(test)]
    fn parsed(&self) -> Vec<*const Signer> {
        let cache = self.cache.lock().expect("domain key cache");
        cache.by_domain.values().flatten().map(|e| Arc::as_ptr(&e.signer)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use chrono::Utc;
    use postwire_config::DkimAlgorithm;
    use postwire_proto::SigningAlgorithm;
    use postwire_store::StoreError;

    use super::*;
    use crate::keygen;

    /// An in-memory store that counts how often each call is made.
    #[derive(Default)]
    struct Memory {
        domains: Mutex<HashMap<String, SendingDomain>>,
        generation: Mutex<u64>,
        lookups: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Memory {
        fn add(&self, domain: &str, selector: &str) -> String {
            let pair = keygen::generate(DkimAlgorithm::Ed25519Sha256).unwrap();
            self.domains.lock().unwrap().insert(
                domain.into(),
                SendingDomain {
                    domain: domain.into(),
                    selector: selector.into(),
                    algorithm: SigningAlgorithm::Ed25519Sha256,
                    private_key: pair.private_pem,
                    public_record: pair.txt_value.clone(),
                    created_at: Utc::now(),
                },
            );
            *self.generation.lock().unwrap() += 1;
            pair.txt_value
        }
    }

    #[async_trait]
    impl Domains for Memory {
        async fn create_domain(&self, _: SendingDomain) -> Result<bool, StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn domain(&self, name: &str) -> Result<Option<SendingDomain>, StoreError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(self.domains.lock().unwrap().get(name).cloned())
        }
        async fn list_domains(&self) -> Result<Vec<SendingDomain>, StoreError> {
            Ok(self.domains.lock().unwrap().values().cloned().collect())
        }
        async fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
            let removed = self.domains.lock().unwrap().remove(name).is_some();
            *self.generation.lock().unwrap() += 1;
            Ok(removed)
        }
        async fn domains_generation(&self) -> Result<u64, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable { backend: "redis", reason: "down".into() });
            }
            Ok(*self.generation.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn a_key_added_after_a_negative_answer_is_used_by_the_next_lookup() {
        let store = Arc::new(Memory::default());
        let signers = StoreSigners::new(store.clone());
        assert!(signers.signer("brand.test").await.unwrap().is_none());
        assert!(signers.signer("brand.test").await.unwrap().is_none());
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            1,
            "a negative answer is cached within a generation"
        );
        store.add("brand.test", "s1");
        let signer = signers.signer("Brand.Test").await.unwrap().expect("the new key");
        let header =
            String::from_utf8(signer.header(b"From: a@brand.test\r\n\r\nhi\r\n").unwrap()).unwrap();
        assert!(header.contains("s=s1; d=brand.test"), "{header}");
    }

    #[tokio::test]
    async fn an_unchanged_key_keeps_its_parsed_signer_across_generations_and_a_deleted_one_stops() {
        let store = Arc::new(Memory::default());
        let signers = StoreSigners::new(store.clone());
        store.add("brand.test", "s1");
        let first = signers.signer("brand.test").await.unwrap().unwrap();
        store.add("other.test", "o1");
        let again = signers.signer("brand.test").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the key did not change, so it is not parsed again");
        assert_eq!(signers.parsed().len(), 1);
        store.delete_domain("brand.test").await.unwrap();
        assert!(signers.signer("brand.test").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unreachable_store_is_an_error_not_an_unsigned_message() {
        let store = Arc::new(Memory::default());
        let signers = StoreSigners::new(store.clone());
        store.add("brand.test", "s1");
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(signers.signer("brand.test").await, Err(DkimError::KeyLookup { .. })));
    }
}
