//! Recipient delivery states.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where one recipient of a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Accepted, waiting for its first delivery attempt.
    Queued,
    /// Accepted with a future `send_at`.
    Scheduled,
    /// A temporary (4xx or network) failure; another attempt is scheduled.
    Deferred,
    /// The recipient's MX host accepted the message (2xx after DATA).
    Delivered,
    /// Permanently failed: 5xx, no such domain, null MX, or the retry window expired.
    Bounced,
    /// Not attempted because the address is on the suppression list.
    Suppressed,
    /// Canceled before delivery.
    Canceled,
}

impl RecipientStatus {
    /// Stable lower-case name, as stored and as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Deferred => "deferred",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Suppressed => "suppressed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the name produced by [`RecipientStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "scheduled" => Self::Scheduled,
            "deferred" => Self::Deferred,
            "delivered" => Self::Delivered,
            "bounced" => Self::Bounced,
            "suppressed" => Self::Suppressed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// True once no further delivery attempt will be made.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Bounced | Self::Suppressed | Self::Canceled)
    }
}
