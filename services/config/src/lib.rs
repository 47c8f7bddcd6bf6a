//! Postwire's settings: one TOML file, every key overridable from the environment.
//!
//! Loading order: built-in defaults, then the file (if present), then `POSTWIRE__SECTION__KEY`
//! environment variables. Unknown keys and bad values fail with the key's dotted path in the
//! message, so a typo in `postwire.toml` is caught at start-up rather than ignored.
//!
//! - [`settings`]: the [`Settings`] tree and its defaults (the config reference).
//! - [`units`]: humane [`Duration`] (`"30s"`, `"5m"`) and [`ByteSize`] (`"10MB"`) values, [`Secret`].
//! - [`load`]: reading the file and applying environment overrides.

pub mod load;
pub mod settings;
pub mod units;

pub use load::{load, load_from_str, ConfigError};
pub use settings::*;
pub use units::{ByteSize, Duration, EncryptionKey, Listen, Secret};
