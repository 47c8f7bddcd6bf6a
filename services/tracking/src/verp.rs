//! VERP return paths: the envelope sender of each outgoing copy names the copy, so a bounce
//! or report sent back to it can be tied to one recipient of one message.
//!
//! With `[bounces] domain` set, the worker sends each recipient's copy with
//! `MAIL FROM:<b-{token}@{domain}>`. The token is lower-case hex (mail systems may change the
//! case of a local part) of `payload ‖ tag`, where `tag` is the first 8 bytes of
//! HMAC-SHA256(secret, `"postwire-verp-v1\0" ‖ payload`) and `payload` is:
//!
//! | bytes | holds |
//! |---|---|
//! | 16 | the message id's UUID (ids are `msg_` + 32 hex digits) |
//! | 2 | the recipient's position in the message, big-endian |
//! | 2 | expiry: days since 1970-01-01, big-endian |
//!
//! 28 bytes make 56 hex digits; with `b-` the local part is 58 octets, inside RFC 5321's 64.
//! 64 bits of tag cannot be guessed over SMTP. Nothing in it names the recipient.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::Mac;

use crate::{MailCopy, TrackingKeys};

/// Signed ahead of every payload, so a tag over another token format never verifies here.
const DOMAIN: &[u8] = b"postwire-verp-v1\0";

/// What every VERP local part starts with.
pub const PREFIX: &str = "b-";

const ID_LEN: usize = 16;
const PAYLOAD_LEN: usize = ID_LEN + 2 + 2;
const TAG_LEN: usize = 8;

const DAY: u64 = 86_400;

/// A verified return path: which copy a report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPath {
    pub message_id: String,
    /// The recipient's position in the message.
    pub recipient: u32,
}

/// Why a return path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerpError {
    #[error(transparent)]
    Token(#[from] TokenFault),
    /// Genuine, but past its expiry (the message's records are gone or going).
    #[error("the return path has expired")]
    Expired,
}

/// A token that is not ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFault {
    #[error("not a Postwire return path")]
    Malformed,
    #[error("the return path's signature does not verify")]
    BadSignature,
}

impl TrackingKeys {
    /// The local part (`b-…`) for one recipient's copy; `None` when the copy cannot be named
    /// in one (an id not of the form `msg_` + 32 hex digits, or a position past 65535): that
    /// copy is sent from the plain sender.
    pub fn return_path(&self, copy: &MailCopy<'_>) -> Option<String> {
        let id = copy.message_id.strip_prefix("msg_")?;
        let mut payload = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        payload.extend_from_slice(&decode_hex::<ID_LEN>(id)?);
        payload.extend_from_slice(&u16::try_from(copy.recipient).ok()?.to_be_bytes());
        // Rounded up to whole days, so a token never expires before the copy does.
        let days = unix_seconds(copy.expires_at).div_ceil(DAY);
        payload.extend_from_slice(&u16::try_from(days).unwrap_or(u16::MAX).to_be_bytes());
        let mut mac = self.mac();
        mac.update(DOMAIN);
        mac.update(&payload);
        payload.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        Some(format!("{PREFIX}{}", hex::encode(payload)))
    }

    /// Verifies a local part made by [`TrackingKeys::return_path`] (any case); `now` decides
    /// whether it has expired.
    pub fn verify_return_path(
        &self,
        local_part: &str,
        now: SystemTime,
    ) -> Result<ReturnPath, VerpError> {
        let lower = local_part.to_ascii_lowercase();
        let token = lower.strip_prefix(PREFIX).ok_or(TokenFault::Malformed)?;
        let raw = decode_hex::<{ PAYLOAD_LEN + TAG_LEN }>(token).ok_or(TokenFault::Malformed)?;
        let (payload, tag) = raw.split_at(PAYLOAD_LEN);
        let mut mac = self.mac();
        mac.update(DOMAIN);
        mac.update(payload);
        mac.verify_truncated_left(tag).map_err(|_| TokenFault::BadSignature)?;
        let recipient = u16::from_be_bytes([payload[ID_LEN], payload[ID_LEN + 1]]);
        let days = u16::from_be_bytes([payload[ID_LEN + 2], payload[ID_LEN + 3]]);
        if unix_seconds(now) >= u64::from(days) * DAY {
            return Err(VerpError::Expired);
        }
        Ok(ReturnPath {
            message_id: format!("msg_{}", hex::encode(&payload[..ID_LEN])),
            recipient: u32::from(recipient),
        })
    }
}

/// Exactly `N` bytes from `2N` hex digits.
fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "msg_0193a5b2c3d47e8f9a0b1c2d3e4f5a6b";

    fn keys() -> TrackingKeys {
        TrackingKeys::new(b"verp test secret")
    }

    fn copy(recipient: u32, expires_at: SystemTime) -> MailCopy<'static> {
        MailCopy { message_id: ID, recipient, expires_at }
    }

    fn later(days: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(days * DAY)
    }

    #[test]
    fn a_return_path_fits_a_local_part_and_names_the_copy_in_any_case() {
        let local = keys().return_path(&copy(7, later(30))).unwrap();
        assert!(local.len() <= 64, "{} octets", local.len());
        assert!(local.starts_with("b-"));
        let expected = ReturnPath { message_id: ID.into(), recipient: 7 };
        assert_eq!(keys().verify_return_path(&local, SystemTime::now()), Ok(expected.clone()));
        let upper = local.to_ascii_uppercase();
        assert_eq!(keys().verify_return_path(&upper, SystemTime::now()), Ok(expected));
    }

    #[test]
    fn a_changed_digit_another_secret_or_junk_is_refused() {
        let local = keys().return_path(&copy(0, later(30))).unwrap();
        let mut tampered = local.clone().into_bytes();
        let at = 2 + 33; // inside the position bytes
        tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        let now = SystemTime::now();
        let bad = Err(VerpError::Token(TokenFault::BadSignature));
        assert_eq!(keys().verify_return_path(&tampered, now), bad);
        assert_eq!(TrackingKeys::new(b"other").verify_return_path(&local, now), bad);
        for junk in ["", "b-", "postmaster", "b-zz", &local[..local.len() - 2], "c-00"] {
            assert_eq!(
                keys().verify_return_path(junk, now),
                Err(VerpError::Token(TokenFault::Malformed)),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn a_return_path_past_its_expiry_day_is_expired() {
        let local = keys().return_path(&copy(1, later(2))).unwrap();
        assert!(keys().verify_return_path(&local, later(1)).is_ok());
        assert_eq!(keys().verify_return_path(&local, later(4)), Err(VerpError::Expired));
    }

    #[test]
    fn ids_and_positions_a_token_cannot_hold_get_no_return_path() {
        let k = keys();
        let odd = MailCopy { message_id: "msg_short", recipient: 0, expires_at: later(1) };
        assert_eq!(k.return_path(&odd), None);
        assert_eq!(k.return_path(&copy(70_000, later(1))), None);
    }
}
