//! Events recorded for every status change, and the body POSTed to webhook endpoints.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The kinds of event a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "message.delivered")]
    Delivered,
    #[serde(rename = "message.deferred")]
    Deferred,
    #[serde(rename = "message.bounced")]
    Bounced,
    #[serde(rename = "message.suppressed")]
    Suppressed,
    #[serde(rename = "message.opened")]
    Opened,
    #[serde(rename = "message.clicked")]
    Clicked,
    /// The recipient reported the message as spam (an ARF feedback report, RFC 5965).
    #[serde(rename = "message.complained")]
    Complained,
    /// The recipient was canceled (`DELETE /v1/messages/{id}`) before it was sent.
    #[serde(rename = "message.canceled")]
    Canceled,
    /// An endpoint was disabled after failing for `webhooks.disable_after`; sent to the others.
    #[serde(rename = "webhook.disabled")]
    WebhookDisabled,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        Self::Delivered,
        Self::Deferred,
        Self::Bounced,
        Self::Suppressed,
        Self::Opened,
        Self::Clicked,
        Self::Complained,
        Self::Canceled,
        Self::WebhookDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "message.delivered",
            Self::Deferred => "message.deferred",
            Self::Bounced => "message.bounced",
            Self::Suppressed => "message.suppressed",
            Self::Opened => "message.opened",
            Self::Clicked => "message.clicked",
            Self::Complained => "message.complained",
            Self::Canceled => "message.canceled",
            Self::WebhookDisabled => "webhook.disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One event, exactly as delivered in a webhook body and listed in a message's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Unique event id (`evt_…`); also the `webhook-id` of every delivery of this event.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub timestamp: DateTime<Utc>,
    pub data: EventData,
}

/// What an event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventData {
    /// The message; empty (and left out) for `webhook.disabled`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    /// The recipient; empty (and left out) for `webhook.disabled`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    /// The endpoint disabled, for `webhook.disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub webhook_id: Option<String>,
    /// Why, for `webhook.disabled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The remote MX host's reply (or our own reason, e.g. `expired`) for delivery events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub smtp_response: Option<String>,
    /// The host that answered, for delivery events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mx_host: Option<String>,
    /// Delivery attempts made so far, for delivery events.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempt: Option<u32>,
    /// When the next attempt is due, for `message.deferred`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The link followed, for `message.clicked`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
    /// The client's User-Agent, for opens and clicks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_agent: Option<String>,
    /// `true` on a `message.bounced` that came back as a report (DSN) after the SMTP
    /// transaction, possibly after the recipient was `delivered`.
    #[serde(rename = "async", skip_serializing_if = "Option::is_none", default)]
    pub async_report: Option<bool>,
    /// For an asynchronous bounce: `hard` (permanent, RFC 3463 class 5) or `soft` (class 4).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bounce_type: Option<BounceType>,
    /// For `message.complained`: the report's Feedback-Type (`abuse`, `fraud`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub feedback_type: Option<String>,
    /// `true` for events of a message sent with a sandbox key (nothing left the host).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sandbox: Option<bool>,
    /// The message's tags (empty for `webhook.disabled`).
    #[serde(default)]
    #[schema(required = true)]
    pub tags: Vec<String>,
    /// The message's `metadata`, as sent.
    #[serde(default)]
    #[schema(required = true)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// How permanent a reported bounce is, by the class of its RFC 3463 status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    /// `5.x.x`: the address will not work; it is suppressed.
    Hard,
    /// `4.x.x`: the receiver gave up for now (mailbox full, …); not suppressed.
    Soft,
}
