//! Opens and clicks as `GET /v1/messages/{id}` summarises them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::EventType;

/// What a recipient did with a tracked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngagementKind {
    /// The open pixel was fetched.
    Open,
    /// A rewritten link was followed.
    Click,
}

impl EngagementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Click => "click",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Click].into_iter().find(|k| k.as_str() == s)
    }

    /// The event a new engagement of this kind emits.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Open => EventType::Opened,
            Self::Click => EventType::Clicked,
        }
    }
}

/// Every hit on one recipient's open pixel, or on one of their links, folded into one record:
/// a message shows at most one per recipient for opens and one per recipient and URL for clicks,
/// however often the link is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Engagement {
    pub recipient: String,
    #[serde(rename = "type")]
    pub kind: EngagementKind,
    /// The link followed, for clicks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
    /// Hits counted, including those that emitted no event.
    pub count: u64,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}
