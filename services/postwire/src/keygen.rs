//! DKIM key pair generation and the TXT record to publish. The code lives in the domain
//! authentication library ([`postwire_domain_auth::keygen`]) so `postwire dkim generate` and
//! `POST /v1/domains` make keys with one function; this module keeps the CLI's path to it.

pub use postwire_domain_auth::keygen::{generate, zone_record};
