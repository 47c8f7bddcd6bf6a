//! DKIM key pair generation and the TXT record to publish. The code lives in the MTA worker's
//! library ([`postwire_mta_worker::keygen`]) so `postwire dkim generate` and `POST /v1/domains`
//! make keys with one function; this module keeps the CLI's path to it.

pub use postwire_mta_worker::keygen::{
    generate, import, txt_value, zone_record, DkimKeyPair, KeyError,
};
