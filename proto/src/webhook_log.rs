//! The per-endpoint webhook delivery log (`GET /v1/webhooks/{id}/deliveries`), replay, enabling
//! and disabling an endpoint (`PATCH /v1/webhooks/{id}`), and the event pull API
//! (`GET /v1/events`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Event, EventType};

/// Where one delivery of one event to one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDeliveryState {
    /// Waiting for its first or next attempt (`next_attempt_at`).
    Pending,
    /// A 2xx answered.
    Delivered,
    /// Given up: the retry schedule ran out, the target was refused, or the endpoint was
    /// disabled. A replay (`…/retry`) sends it again.
    Failed,
}

impl WebhookDeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The stored name; `dropped` (endpoint deleted) reads as `failed`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" | "dropped" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One attempt to POST an event to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookAttemptView {
    /// When the attempt was made.
    pub at: DateTime<Utc>,
    /// The HTTP status, when the endpoint answered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// From sending the request to the end of the answer's head (or the failure).
    pub latency_ms: u64,
    /// The start of the answer's body (at most 200 bytes, whitespace folded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response: Option<String>,
    /// Why the attempt failed: a non-2xx status, a timeout, a refused target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// One event's delivery to one endpoint, with every attempt, newest deliveries first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeliveryView {
    /// `whd_…`: replay it with `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`.
    pub id: String,
    /// The event id, sent as `webhook-id` on every attempt and replay.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub created_at: DateTime<Utc>,
    pub state: WebhookDeliveryState,
    /// When the next attempt is due, while `pending`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub attempts: Vec<WebhookAttemptView>,
}

/// `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDeliveryList {
    pub data: Vec<WebhookDeliveryView>,
    /// Pass back as `?cursor=` for the next (older) page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// `PATCH /v1/webhooks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    /// `false` stops deliveries (pending ones end `failed`); `true` resumes them for new events.
    pub enabled: bool,
}

/// `GET /v1/events`: events in the order they were stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
    /// Pass back as `?cursor=` for the next page. Present even on the last page when events
    /// were returned, so a consumer can poll from where it stopped; absent when `data` is empty
    /// (poll again with the same cursor).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}
