//! Signed open and click tracking links for outgoing HTML mail.
//!
//! A tracking link carries a signed, opaque token (see [`token`] for the byte layout): the kind
//! (open or click), the message id, the recipient's *position* in the message (never the
//! address: a forwarded mail must not reveal whom it was sent to), an expiry, and for clicks the
//! target URL. The click redirect can therefore only ever send a reader to a URL that was
//! signed into their message (no open redirect), and serving `GET /t/...` needs no database
//! lookup to decide where to go. The expiry is the message's creation plus
//! `storage.retention`: a token past it is [`Verified::Stale`] — it still redirects, but nothing
//! is recorded.
//!
//! Modules:
//! - [`token`]: [`TrackingKeys`] mints `/t/o/{token}` and `/t/c/{token}` URLs for one
//!   recipient's copy ([`MailCopy`]) and verifies tokens into [`Verified`].
//! - [`html`]: [`instrument_html`] rewrites `<a href>` links and inserts the open pixel.
//! - [`verp`]: the same keys sign VERP return paths (`b-{token}@{bounces.domain}`), so a
//!   bounce or complaint names the copy it is about.

pub mod html;
pub mod token;
pub mod verp;

pub use html::instrument_html;
pub use token::{Link, MailCopy, Tracked, TrackingKeys, Verified};
pub use verp::{ReturnPath, TokenFault, VerpError};

/// Why a tracking token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// Not base64url, too short, or the payload is not a known shape.
    #[error("malformed tracking token")]
    Malformed,
    /// The tag does not match the payload: forged, tampered or signed with another secret.
    #[error("tracking token signature does not verify")]
    BadSignature,
}
