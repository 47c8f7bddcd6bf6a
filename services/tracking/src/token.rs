//! Token minting and verification.
//!
//! A token is `base64url(payload ‖ tag)` where `tag` is the first 16 bytes of
//! HMAC-SHA256(secret, `"postwire-tracking-v2\0" ‖ payload`) and `payload` is binary:
//!
//! | bytes | holds |
//! |---|---|
//! | 1 | kind: `1` open, `2` click |
//! | 4 | expiry, unix seconds, big-endian |
//! | 4 | the recipient's position in the message (0 = first envelope recipient), big-endian |
//! | 1 + n | the message id: its length, then its bytes |
//! | rest | clicks only: the target URL (UTF-8) |
//!
//! Nothing in it names the recipient: the position only means something to the store that
//! holds the message. The message id and the target URL are not secret (the URL was in the mail).
//!
//! Tokens minted before this format (`base64url(JSON naming the recipient) "." signature`)
//! are still verified, so links in mail already delivered keep working, but they carry no
//! expiry and are reported [`Verified::Stale`]: a click still redirects, nothing is recorded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::TrackingError;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC kept in a token: 128 bits, far beyond guessing online.
const TAG_LEN: usize = 16;

/// Signed ahead of every payload, so a tag over one format can never verify another.
const DOMAIN: &[u8] = b"postwire-tracking-v2\0";

const KIND_OPEN: u8 = 1;
const KIND_CLICK: u8 = 2;

/// Kind, expiry, recipient position and the message id's length.
const HEADER_LEN: usize = 1 + 4 + 4 + 1;

/// The secret that signs tracking tokens (`[tracking] secret`). Cheap to clone.
#[derive(Clone)]
pub struct TrackingKeys {
    mac: HmacSha256,
}

impl std::fmt::Debug for TrackingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackingKeys { secret: <redacted> }")
    }
}

/// Whose copy of which message a link sits in, and until when it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailCopy<'a> {
    pub message_id: &'a str,
    /// The recipient's position among the message's envelope recipients.
    pub recipient: u32,
    /// After this the link records nothing (a click still redirects). Whole seconds.
    pub expires_at: SystemTime,
}

/// What a link does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The open pixel.
    Open,
    /// A rewritten link; `url` is the signed redirect target.
    Click { url: String },
}

/// A live token: what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub message_id: String,
    /// The recipient's position in the message (see [`MailCopy::recipient`]).
    pub recipient: u32,
    pub link: Link,
}

/// What a genuine token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Within its lifetime: record the engagement.
    Live(Tracked),
    /// Past its expiry, or minted before tokens expired: record nothing, but a click still
    /// redirects to its signed URL.
    Stale(Link),
}

impl Verified {
    /// What the link does, live or not.
    pub fn link(&self) -> &Link {
        match self {
            Verified::Live(t) => &t.link,
            Verified::Stale(link) => link,
        }
    }
}

impl TrackingKeys {
    /// Keys from the configured secret. Any length works (HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self { mac }
    }

    /// `{public_url}/t/o/{token}`: the open-pixel URL for one recipient's copy.
    pub fn open_url(&self, public_url: &str, copy: &MailCopy<'_>) -> String {
        let token = self.sign(KIND_OPEN, copy, "");
        format!("{}/t/o/{token}", public_url.trim_end_matches('/'))
    }

    /// `{public_url}/t/c/{token}`: a click URL in one recipient's copy that redirects to `target`.
    pub fn click_url(&self, public_url: &str, copy: &MailCopy<'_>, target: &str) -> String {
        let token = self.sign(KIND_CLICK, copy, target);
        format!("{}/t/c/{token}", public_url.trim_end_matches('/'))
    }

    /// Checks the tag (in constant time) and decodes the token; `now` decides whether it is
    /// still live. The caller must check that the link matches the route it came in on
    /// (`/t/o/` expects [`Link::Open`]).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Verified, TrackingError> {
        if token.contains('.') {
            return self.verify_legacy(token).map(Verified::Stale);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TrackingError::Malformed)?;
        if raw.len() < HEADER_LEN + TAG_LEN {
            return Err(TrackingError::Malformed);
        }
        let (payload, tag) = raw.split_at(raw.len() - TAG_LEN);
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(payload);
        mac.verify_truncated_left(tag).map_err(|_| TrackingError::BadSignature)?;

        let expires = u32::from_be_bytes(payload[1..5].try_into().expect("4 bytes"));
        let recipient = u32::from_be_bytes(payload[5..9].try_into().expect("4 bytes"));
        let id_len = usize::from(payload[9]);
        let rest = &payload[HEADER_LEN..];
        if rest.len() < id_len {
            return Err(TrackingError::Malformed);
        }
        let (id, target) = rest.split_at(id_len);
        let message_id = std::str::from_utf8(id).map_err(|_| TrackingError::Malformed)?;
        let target = std::str::from_utf8(target).map_err(|_| TrackingError::Malformed)?;
        let link = match payload[0] {
            KIND_OPEN if target.is_empty() => Link::Open,
            KIND_CLICK if is_http_url(target) => Link::Click { url: target.to_owned() },
            _ => return Err(TrackingError::Malformed),
        };
        if unix_seconds(now) >= u64::from(expires) {
            return Ok(Verified::Stale(link));
        }
        Ok(Verified::Live(Tracked { message_id: message_id.to_owned(), recipient, link }))
    }

    /// A fresh MAC under the installation's secret, for the other tokens it signs
    /// ([`crate::verp`]); each signs its own domain string first.
    pub(crate) fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    fn sign(&self, kind: u8, copy: &MailCopy<'_>, target: &str) -> String {
        // Ids are ours (`msg_…`, well under 255 bytes); a longer one would be a bug upstream.
        let id_len = u8::try_from(copy.message_id.len()).expect("message id under 256 bytes");
        let expires = u32::try_from(unix_seconds(copy.expires_at)).unwrap_or(u32::MAX);
        let mut payload = Vec::with_capacity(HEADER_LEN + copy.message_id.len() + target.len());
        payload.push(kind);
        payload.extend_from_slice(&expires.to_be_bytes());
        payload.extend_from_slice(&copy.recipient.to_be_bytes());
        payload.push(id_len);
        payload.extend_from_slice(copy.message_id.as_bytes());
        payload.extend_from_slice(target.as_bytes());
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&payload);
        payload.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// A token of the first format: `base64url(JSON) "." base64url(HMAC over the first part)`.
    fn verify_legacy(&self, token: &str) -> Result<Link, TrackingError> {
        #[derive(Deserialize)]
        struct Legacy {
            k: String,
            #[serde(default)]
            u: Option<String>,
        }
        let (payload_b64, sig_b64) = token.split_once('.').ok_or(TrackingError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TrackingError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(payload_b64.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TrackingError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TrackingError::Malformed)?;
        let p: Legacy = serde_json::from_slice(&json).map_err(|_| TrackingError::Malformed)?;
        match (p.k.as_str(), p.u) {
            ("o", None) => Ok(Link::Open),
            ("c", Some(url)) if is_http_url(&url) => Ok(Link::Click { url }),
            _ => Err(TrackingError::Malformed),
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// An absolute http(s) URL with a host: the only kind of link we rewrite or redirect to.
pub(crate) fn is_http_url(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn keys() -> TrackingKeys {
        TrackingKeys::new(b"test-secret")
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_000_000)
    }

    /// Shaped like a real id (`msg_` + a UUIDv7 in hex).
    const MESSAGE_ID: &str = "msg_0193d2f1c0a87b3e9f6a1b2c3d4e5f60";

    fn copy(recipient: u32) -> MailCopy<'static> {
        MailCopy { message_id: MESSAGE_ID, recipient, expires_at: now() + 30 * DAY }
    }

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap()
    }

    /// A token in the first format, as mail delivered before this one carries.
    fn legacy_token(keys: &TrackingKeys, json: serde_json::Value) -> String {
        let payload = URL_SAFE_NO_PAD.encode(json.to_string());
        let mut mac = keys.mac.clone();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn open_token_round_trips() {
        let url = keys().open_url("https://pw.example", &copy(3));
        assert!(url.starts_with("https://pw.example/t/o/"));
        let got = keys().verify(token_of(&url), now()).unwrap();
        assert_eq!(
            got,
            Verified::Live(Tracked {
                message_id: MESSAGE_ID.into(),
                recipient: 3,
                link: Link::Open
            })
        );
    }

    #[test]
    fn click_token_round_trips_with_its_target() {
        let target = "https://shop.example/p?a=1&b=2#x";
        let url = keys().click_url("https://pw.example", &copy(0), target);
        assert!(url.starts_with("https://pw.example/t/c/"));
        let got = keys().verify(token_of(&url), now()).unwrap();
        assert_eq!(
            got,
            Verified::Live(Tracked {
                message_id: MESSAGE_ID.into(),
                recipient: 0,
                link: Link::Click { url: target.into() }
            })
        );
    }

    #[test]
    fn a_token_past_its_expiry_is_stale_but_still_names_its_link() {
        let target = "https://shop.example/x";
        let url = keys().click_url("https://pw.example", &copy(1), target);
        let expiry = now() + 30 * DAY;
        assert!(matches!(
            keys().verify(token_of(&url), expiry - Duration::from_secs(1)),
            Ok(Verified::Live(_))
        ));
        assert_eq!(
            keys().verify(token_of(&url), expiry).unwrap(),
            Verified::Stale(Link::Click { url: target.into() })
        );
        let open = keys().open_url("https://pw.example", &copy(1));
        assert_eq!(
            keys().verify(token_of(&open), expiry + DAY).unwrap(),
            Verified::Stale(Link::Open)
        );
    }

    #[test]
    fn a_token_never_contains_the_recipient_in_any_form() {
        // The recipient is not an input at all: only its position is.
        let url = keys().click_url("https://pw.example", &copy(7), "https://x.example/");
        let raw = URL_SAFE_NO_PAD.decode(token_of(&url)).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains('@'));
    }

    #[test]
    fn token_is_url_safe_and_short() {
        let url = keys().click_url("https://pw.example", &copy(0), "https://x.example/?q=ü+/");
        let token = token_of(&url);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)), "{token}");
        let open = keys().open_url("https://pw.example", &copy(0));
        assert!(token_of(&open).len() < 100, "{open}");
    }

    #[test]
    fn trailing_slash_in_public_url_is_not_doubled() {
        let url = keys().open_url("https://pw.example/", &copy(0));
        assert!(url.starts_with("https://pw.example/t/o/"), "{url}");
    }

    #[test]
    fn a_retargeted_or_moved_token_is_rejected() {
        let url = keys().click_url("https://pw.example", &copy(0), "https://good.example/");
        let mut raw = URL_SAFE_NO_PAD.decode(token_of(&url)).unwrap();
        let tag = raw.split_off(raw.len() - TAG_LEN);
        let good = raw.clone();
        // Another target, another recipient, a later expiry: none verifies under the old tag.
        let mut evil = good.clone();
        evil.truncate(evil.len() - "https://good.example/".len());
        evil.extend_from_slice(b"https://evil.example/");
        let mut other_rcpt = good.clone();
        other_rcpt[8] ^= 1;
        let mut later = good.clone();
        later[1] = later[1].wrapping_add(1);
        for mut forged in [evil, other_rcpt, later] {
            forged.extend_from_slice(&tag);
            let token = URL_SAFE_NO_PAD.encode(forged);
            assert!(matches!(keys().verify(&token, now()), Err(TrackingError::BadSignature)));
        }
    }

    #[test]
    fn token_signed_with_another_secret_is_rejected() {
        let url = TrackingKeys::new(b"other").open_url("https://pw.example", &copy(0));
        assert!(matches!(keys().verify(token_of(&url), now()), Err(TrackingError::BadSignature)));
    }

    #[test]
    fn garbage_tokens_are_refused() {
        for t in ["", "abc", "abc.!!!", ".", "!!!!", &URL_SAFE_NO_PAD.encode([0u8; 40])] {
            assert!(keys().verify(t, now()).is_err(), "{t:?}");
        }
    }

    #[test]
    fn open_token_is_not_a_click() {
        let url = keys().open_url("https://pw.example", &copy(0));
        assert_eq!(keys().verify(token_of(&url), now()).unwrap().link(), &Link::Open);
    }

    #[test]
    fn a_token_of_the_first_format_still_verifies_but_records_nothing() {
        let click = legacy_token(
            &keys(),
            serde_json::json!({"k":"c","m":"m","r":"r@x.example","u":"https://good.example/"}),
        );
        assert_eq!(
            keys().verify(&click, now()).unwrap(),
            Verified::Stale(Link::Click { url: "https://good.example/".into() })
        );
        let open = legacy_token(&keys(), serde_json::json!({"k":"o","m":"m","r":"r@x.example"}));
        assert_eq!(keys().verify(&open, now()).unwrap(), Verified::Stale(Link::Open));
        // Its signature is still checked.
        let (_, sig) = click.split_once('.').unwrap();
        let evil = serde_json::json!({"k":"c","m":"m","r":"r","u":"https://evil.example/"});
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(evil.to_string()));
        assert!(matches!(keys().verify(&forged, now()), Err(TrackingError::BadSignature)));
        let other = legacy_token(&TrackingKeys::new(b"other"), serde_json::json!({"k":"o"}));
        assert!(keys().verify(&other, now()).is_err());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let printed = format!("{:?}", TrackingKeys::new(b"hunter2"));
        assert!(!printed.contains("hunter2"));
    }
}
