//! Token minting and verification.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::TrackingError;

type HmacSha256 = Hmac<Sha256>;

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

/// What a verified token says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// The open pixel was fetched.
    Open { message_id: String, recipient: String },
    /// A rewritten link was followed; `url` is the signed redirect target.
    Click { message_id: String, recipient: String, url: String },
}

/// The signed payload. Short field names keep the links short.
#[derive(Serialize, Deserialize)]
struct Payload {
    /// `"o"` for open, `"c"` for click.
    k: String,
    m: String,
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
}

impl TrackingKeys {
    /// Keys from the configured secret. Any length works (HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self { mac }
    }

    /// `{public_url}/t/o/{token}`: the open-pixel URL for one recipient of one message.
    pub fn open_url(&self, public_url: &str, message_id: &str, recipient: &str) -> String {
        let token = self.sign(&Payload {
            k: "o".into(),
            m: message_id.into(),
            r: recipient.into(),
            u: None,
        });
        format!("{}/t/o/{token}", public_url.trim_end_matches('/'))
    }

    /// `{public_url}/t/c/{token}`: a click URL that redirects to `target`.
    pub fn click_url(
        &self,
        public_url: &str,
        message_id: &str,
        recipient: &str,
        target: &str,
    ) -> String {
        let token = self.sign(&Payload {
            k: "c".into(),
            m: message_id.into(),
            r: recipient.into(),
            u: Some(target.into()),
        });
        format!("{}/t/c/{token}", public_url.trim_end_matches('/'))
    }

    /// Checks the signature (in constant time) and decodes the event. The caller must check that
    /// the variant matches the route it came in on (`/t/o/` expects [`Tracked::Open`]).
    pub fn verify(&self, token: &str) -> Result<Tracked, TrackingError> {
        let (payload_b64, sig_b64) = token.split_once('.').ok_or(TrackingError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TrackingError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(payload_b64.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TrackingError::BadSignature)?;

        let json = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TrackingError::Malformed)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| TrackingError::Malformed)?;
        match (p.k.as_str(), p.u) {
            ("o", None) => Ok(Tracked::Open { message_id: p.m, recipient: p.r }),
            ("c", Some(url)) if is_http_url(&url) => {
                Ok(Tracked::Click { message_id: p.m, recipient: p.r, url })
            }
            _ => Err(TrackingError::Malformed),
        }
    }

    fn sign(&self, payload: &Payload) -> String {
        let json = serde_json::to_vec(payload).expect("payload of strings serializes");
        let payload_b64 = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac.clone();
        mac.update(payload_b64.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload_b64}.{sig}")
    }
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

    fn keys() -> TrackingKeys {
        TrackingKeys::new(b"test-secret")
    }

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap()
    }

    #[test]
    fn open_token_round_trips() {
        let url = keys().open_url("https://pw.example", "msg_1", "a@b.example");
        assert!(url.starts_with("https://pw.example/t/o/"));
        let got = keys().verify(token_of(&url)).unwrap();
        assert_eq!(
            got,
            Tracked::Open { message_id: "msg_1".into(), recipient: "a@b.example".into() }
        );
    }

    #[test]
    fn click_token_round_trips_with_its_target() {
        let target = "https://shop.example/p?a=1&b=2#x";
        let url = keys().click_url("https://pw.example", "msg_1", "a@b.example", target);
        assert!(url.starts_with("https://pw.example/t/c/"));
        let got = keys().verify(token_of(&url)).unwrap();
        assert_eq!(
            got,
            Tracked::Click {
                message_id: "msg_1".into(),
                recipient: "a@b.example".into(),
                url: target.into()
            }
        );
    }

    #[test]
    fn token_is_url_safe() {
        let url =
            keys().click_url("https://pw.example", "m", "r@x.example", "https://x.example/?q=ü+/");
        let token = token_of(&url);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{token}");
    }

    #[test]
    fn trailing_slash_in_public_url_is_not_doubled() {
        let url = keys().open_url("https://pw.example/", "m", "r@x.example");
        assert!(url.starts_with("https://pw.example/t/o/"), "{url}");
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let url =
            keys().click_url("https://pw.example", "m", "r@x.example", "https://good.example/");
        let token = token_of(&url);
        let (_, sig) = token.split_once('.').unwrap();
        let evil =
            serde_json::json!({"k":"c","m":"m","r":"r@x.example","u":"https://evil.example/"});
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(evil.to_string()));
        assert!(matches!(keys().verify(&forged), Err(TrackingError::BadSignature)));
    }

    #[test]
    fn token_signed_with_another_secret_is_rejected() {
        let url = TrackingKeys::new(b"other").open_url("https://pw.example", "m", "r@x.example");
        assert!(matches!(keys().verify(token_of(&url)), Err(TrackingError::BadSignature)));
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        for t in ["", "abc", "abc.!!!", "."] {
            assert!(keys().verify(t).is_err(), "{t:?}");
        }
        assert!(matches!(keys().verify("nodot"), Err(TrackingError::Malformed)));
    }

    #[test]
    fn open_token_is_not_a_click() {
        let url = keys().open_url("https://pw.example", "m", "r@x.example");
        assert!(!matches!(keys().verify(token_of(&url)).unwrap(), Tracked::Click { .. }));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let printed = format!("{:?}", TrackingKeys::new(b"hunter2"));
        assert!(!printed.contains("hunter2"));
    }
}
