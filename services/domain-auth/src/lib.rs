//! A sending domain's authentication: DKIM keys (made, imported, parsed and signed with), which
//! key signs a From domain, and the live DNS checks of a domain's DKIM, SPF and DMARC records.
//!
//! The API gateway (`/v1/domains`, the `dkim` status it records for every message), the MTA
//! worker (signing) and the CLI (`postwire dkim generate`) all use this crate, so each rule is
//! written once and the gateway does not depend on the worker.
//!
//! Modules:
//! - [`dkim`]: DKIM signers built once from the configured keys, and the store's.
//! - `domain_keys`: the signers of keys made through `/v1/domains`, cached per store generation.
//! - [`dkim_status`]: which key will sign a From domain, by name (what the gateway records).
//! - [`keygen`]: DKIM key generation and import, and the TXT record to publish.
//! - [`domain_check`]: live DNS checks of a sending domain's DKIM, SPF and DMARC records.
//! - [`dns`]: the resolver built from `dns.*`, shared with the worker's MX lookups.

pub mod dkim;
pub mod dkim_status;
pub mod dns;
pub mod domain_check;
mod domain_keys;
pub mod keygen;
