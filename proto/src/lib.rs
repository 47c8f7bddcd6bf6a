//! Wire contracts shared by every Postwire service and by the programs that talk to it.
//!
//! Nothing here performs I/O: these are the serde shapes of the HTTP API bodies, the
//! events and webhook payloads, and the queue job a worker claims. OpenAPI schemas are
//! derived from the same types, so the checked-in spec cannot drift from the code.
//!
//! - [`api`]: request and response bodies of `/v1/*`, and the RFC 9457 problem body.
//! - [`event`]: event types and the webhook payload.
//! - [`status`]: recipient delivery states.

pub mod api;
pub mod event;
pub mod status;

pub use api::*;
pub use event::*;
pub use status::*;
