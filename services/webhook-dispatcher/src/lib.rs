//! Delivers stored events to customer webhook endpoints, signed per Standard Webhooks.
//!
//! The store keeps a webhook outbox: one [`postwire_store::WebhookDelivery`] per (event,
//! endpoint), written in the same transaction as the event. The [`Dispatcher`] claims due
//! deliveries under a lease, POSTs each one with `webhook-id` / `webhook-timestamp` /
//! `webhook-signature` headers, and records every attempt; failures are retried on
//! `webhooks.retry_schedule` and given up after its last step (delivery is at-least-once).
//! Endpoints are refused when they resolve to loopback, private or otherwise internal addresses,
//! both when the API creates them and again before every send (DNS may change in between).
//!
//! Modules:
//! - [`signing`]: the Standard Webhooks signature (`v1,<base64 HMAC-SHA256>`).
//! - [`target`]: [`check_target`], the SSRF guard shared with the API gateway.
//! - [`dispatcher`]: [`Dispatcher`], the claim / send / record loop.

pub mod dispatcher;
pub mod signing;
pub mod target;

pub use dispatcher::Dispatcher;
pub use signing::{sign, SignedHeaders};
pub use target::{check_target, TargetError};

/// Why a dispatcher operation failed (as opposed to an endpoint refusing a delivery, which is
/// recorded as a failed attempt, not returned as an error).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The state store could not be read or written.
    #[error("state store: {0}")]
    Store(#[from] postwire_store::StoreError),
    /// A webhook secret is not `whsec_` followed by base64.
    #[error("webhook secret is not valid base64 after the `whsec_` prefix")]
    BadSecret(#[source] base64::DecodeError),
}
