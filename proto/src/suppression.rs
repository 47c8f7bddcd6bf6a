//! Bodies of `/v1/suppressions`: addresses Postwire will not send to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why an address is on the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// The recipient's MX host answered RCPT TO with a 5xx reply.
    HardBounce,
    /// Added through `POST /v1/suppressions`.
    Manual,
    /// The recipient reported a message as spam (an ARF feedback report).
    Complaint,
}

impl SuppressionReason {
    /// Stable lower-case name, as stored and as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::Manual => "manual",
            Self::Complaint => "complaint",
        }
    }

    /// Parses the name produced by [`SuppressionReason::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hard_bounce" => Some(Self::HardBounce),
            "manual" => Some(Self::Manual),
            "complaint" => Some(Self::Complaint),
            _ => None,
        }
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Suppression {
    /// Lower-cased address.
    pub email: String,
    pub reason: SuppressionReason,
    /// The SMTP reply that caused a `hard_bounce`.
    pub smtp_response: Option<String>,
    /// The message whose delivery bounced, for a `hard_bounce`.
    pub message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/suppressions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSuppression {
    /// The address (UTF-8 local parts and IDN domains allowed; a bad address is a 422).
    #[schema(min_length = 3, example = "ann@example.org")]
    pub email: String,
    /// Defaults to `manual`.
    #[serde(default)]
    pub reason: Option<SuppressionReason>,
}

/// `GET /v1/suppressions`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SuppressionList {
    pub data: Vec<Suppression>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
