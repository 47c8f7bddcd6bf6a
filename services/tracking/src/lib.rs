//! Signed open and click tracking links for outgoing HTML mail.
//!
//! A tracking link carries everything the gateway needs to record the event in a signed token:
//! `base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`. The payload names the kind
//! (open or click), the message id, the recipient and, for clicks, the target URL, so the click
//! redirect can only ever send a reader to a URL that was signed into their message (no open
//! redirect), and no database lookup is needed to serve `GET /t/...`.
//!
//! Modules:
//! - [`token`]: [`TrackingKeys`] mints `/t/o/{token}` and `/t/c/{token}` URLs and verifies tokens
//!   into a [`Tracked`] event.
//! - [`html`]: [`instrument_html`] rewrites `<a href>` links and inserts the open pixel.

mod html;
mod token;

pub use html::instrument_html;
pub use token::{Tracked, TrackingKeys};

/// Why a tracking token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// The token is not `payload.signature` in base64url, or the payload is not a known shape.
    #[error("malformed tracking token")]
    Malformed,
    /// The signature does not match the payload: forged, tampered or signed with another secret.
    #[error("tracking token signature does not verify")]
    BadSignature,
}
