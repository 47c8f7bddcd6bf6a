//! Bodies of `POST /v1/messages/batch`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{FieldError, ProblemCode, SendRequest, SendResponse};

/// Most messages one batch may hold.
pub const MAX_BATCH_MESSAGES: usize = 500;

/// `POST /v1/messages/batch`: 1 to 500 send bodies, each validated on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 500)]
    pub messages: Vec<SendRequest>,
}

/// `200` answer to a batch: one result per message, in the request's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// One message's outcome: durably queued, or refused with the `code` its own request would
/// have had (`validation_failed`, `payload_too_large`, `unavailable`, …) and every bad field
/// (paths relative to the message, e.g. `to[1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(SendResponse),
    Rejected { code: ProblemCode, errors: Vec<FieldError> },
}
