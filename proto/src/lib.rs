//! Wire contracts shared by every Postwire service and by the programs that talk to it.
//!
//! Nothing here performs I/O: these are the serde shapes of the HTTP API bodies, the
//! events and webhook payloads, and the queue job a worker claims. OpenAPI schemas are
//! derived from the same types, so the checked-in spec cannot drift from the code.
//!
//! - [`api`]: request and response bodies of `/v1/*`, and the RFC 9457 problem body.
//! - [`batch`]: `POST /v1/messages/batch` bodies.
//! - [`event`]: event types and the webhook payload.
//! - [`keys`]: API keys managed over `/v1/keys`.
//! - [`status`]: recipient delivery states.
//! - [`suppression`]: the suppression list's bodies.

pub mod api;
pub mod batch;
pub mod event;
pub mod keys;
pub mod status;
pub mod suppression;

pub use api::*;
pub use batch::*;
pub use event::*;
pub use keys::*;
pub use status::*;
pub use suppression::*;
