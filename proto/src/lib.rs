//! Wire contracts shared by every Postwire service and by the programs that talk to it.
//!
//! Nothing here performs I/O: these are the serde shapes of the HTTP API bodies, the
//! events and webhook payloads, and the queue job a worker claims. OpenAPI schemas are
//! derived from the same types, so the checked-in spec cannot drift from the code.
//!
//! - [`api`]: request and response bodies of `/v1/*`, and the RFC 9457 problem body.
//! - [`batch`]: `POST /v1/messages/batch` bodies.
//! - [`domain`]: sending domains, their DKIM key and DNS records (`/v1/domains`).
//! - [`engagement`]: opens and clicks folded per recipient and link.
//! - [`event`]: event types and the webhook payload.
//! - [`keys`]: API keys managed over `/v1/keys`.
//! - [`message`]: rules of the rendered message (reserved headers, `List-Unsubscribe`,
//!   attachment content) that the gateway checks and the worker applies.
//! - [`schema`]: OpenAPI schemas for list items and map entries, and the limits they state.
//! - [`search`]: `GET /v1/messages` (message search) bodies.
//! - [`status`]: recipient delivery states.
//! - [`suppression`]: the suppression list's bodies.
//! - [`template`]: stored templates a send renders with its `variables`.
//! - [`webhook_log`]: the webhook delivery log, replay, enable/disable, and `GET /v1/events`.

pub mod api;
pub mod batch;
pub mod domain;
pub mod engagement;
pub mod event;
pub mod keys;
pub mod message;
pub mod schema;
pub mod search;
pub mod status;
pub mod suppression;
pub mod template;
pub mod webhook_log;

pub use api::*;
pub use batch::*;
pub use domain::*;
pub use engagement::*;
pub use event::*;
pub use keys::*;
pub use search::*;
pub use status::*;
pub use suppression::*;
pub use template::*;
pub use webhook_log::*;
