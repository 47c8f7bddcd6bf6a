//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, the key is the secret's
//! base64 part (after `whsec_`) decoded, and the header value is `v1,` + base64 of the
//! HMAC-SHA256. Receivers verify with the reference `standardwebhooks` libraries.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::DispatchError;

/// The three headers that authenticate one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`: the event id, identical on every retry so receivers can deduplicate.
    pub id: String,
    /// `webhook-timestamp`: unix seconds at send time (receivers reject stale ones).
    pub timestamp: i64,
    /// `webhook-signature`: `v1,<base64>`.
    pub signature: String,
}

impl SignedHeaders {
    /// Signs `body` for event `id` at `timestamp` with a `whsec_…` secret.
    pub fn new(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<Self, DispatchError> {
        Ok(Self { id: id.to_owned(), timestamp, signature: sign(secret, id, timestamp, body)? })
    }
}

/// The `webhook-signature` value for one send: `v1,<base64(HMAC-SHA256(key, "{id}.{ts}.{body}"))>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, DispatchError> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(DispatchError::BadSecret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector from the reference implementation's own test suite (standardwebhooks 1.0.1).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        assert_eq!(
            sign(SECRET, ID, TS, BODY).unwrap(),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn signature_agrees_with_the_reference_library() {
        let reference = standardwebhooks::Webhook::new(SECRET).unwrap();
        let body = br#"{"type":"message.delivered","data":{"message_id":"msg_1"}}"#;
        assert_eq!(
            sign(SECRET, "evt_1", 1_700_000_000, body).unwrap(),
            reference.sign("evt_1", 1_700_000_000, body).unwrap()
        );
    }

    #[test]
    fn fresh_signed_headers_verify_with_the_reference_library() {
        let secret = postwire_store::ids::new_webhook_secret();
        let body = br#"{"type":"message.opened"}"#;
        let h = SignedHeaders::new(&secret, "evt_2", chrono::Utc::now().timestamp(), body).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("webhook-id", h.id.parse().unwrap());
        headers.insert("webhook-timestamp", h.timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", h.signature.parse().unwrap());
        standardwebhooks::Webhook::new(&secret).unwrap().verify(body, &headers).unwrap();
    }

    #[test]
    fn secret_without_prefix_signs_the_same() {
        assert_eq!(sign(&SECRET[6..], ID, TS, BODY).unwrap(), sign(SECRET, ID, TS, BODY).unwrap());
    }

    #[test]
    fn secret_that_is_not_base64_is_an_error() {
        assert!(matches!(
            sign("whsec_not base64!", ID, TS, BODY),
            Err(DispatchError::BadSecret(_))
        ));
    }
}
