//! Timestamps as both backends store them: unix milliseconds.

use chrono::{DateTime, TimeZone, Utc};

/// Unix milliseconds, the storage form of every timestamp.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The time `ms` unix milliseconds name (the epoch for one out of range).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    to_ms(Utc::now())
}
