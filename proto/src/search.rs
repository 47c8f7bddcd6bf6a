//! Bodies of `GET /v1/messages`: message search, newest first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{RecipientStatus, RecipientSummary};

/// One message as listed by a search: enough to pick it out, without its events
/// (`GET /v1/messages/{id}` has those).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageSummary {
    pub id: String,
    /// The least advanced recipient status, as in `GET /v1/messages/{id}`.
    pub status: RecipientStatus,
    pub created_at: DateTime<Utc>,
    pub from: String,
    pub subject: String,
    pub tags: Vec<String>,
    /// Every envelope recipient with its status, in request order.
    pub recipients: Vec<RecipientSummary>,
}

/// `GET /v1/messages`: one page of matching messages, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageList {
    pub data: Vec<MessageSummary>,
    /// Pass as `cursor` to continue; `null` once nothing older is left to look at. A page may
    /// be shorter than `limit` (even empty) and still carry a cursor: the search stops after a
    /// bounded amount of work per page.
    pub next_cursor: Option<String>,
}
