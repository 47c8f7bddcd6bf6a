//! Per-API-key rate limits, applied by the gateway (semantics in
//! [`postwire_store::ratelimit`]).
//!
//! - Every authenticated `/v1` request costs one from `limits.per_key_per_second`, taken in
//!   [`crate::auth`] right after the key is verified (sandbox keys included).
//! - Every message about to be queued costs one from `limits.per_key_per_day`, taken after
//!   validation, so only accepted messages count: a batch takes its valid items, all or none.
//!   Messages that then fail to be stored are given back. An idempotent replay takes nothing.
//!
//! Every answer to an authenticated key (success or error) carries the
//! draft-ietf-httpapi-ratelimit-headers fields of its request window: `RateLimit-Limit`,
//! `RateLimit-Remaining` (what is left of this second, after this request), `RateLimit-Reset`
//! (seconds) and `RateLimit-Policy` (`{limit};w=1`); none when `limits.per_key_per_second` is 0.
//! Over a limit the answer is `429` with `Retry-After` (whole seconds until the refusing
//! window resets) and the same fields describing **that window** instead (`w=86400` for the
//! day's messages).

use axum::http::{HeaderName, HeaderValue};
use postwire_config::Limits;
use postwire_store::ratelimit::{Cost, Decision, Granted, Limited, Quota, Window};

use crate::error::ApiError;
use crate::Gateway;

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the window resets.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `RateLimit-Policy`: the refusing window's quota, `{limit};w={seconds}`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The configured limits.
pub fn quota(limits: &Limits) -> Quota {
    Quota { per_second: limits.per_key_per_second, per_day: limits.per_key_per_day }
}

/// Takes one request from `key_id`'s per-second window; 429 when it is used up. Says where
/// the window stands, for [`standing_headers`].
pub async fn admit_request(gw: &Gateway, key_id: &str) -> Result<Granted, ApiError> {
    match gw.rate_limiter.acquire(key_id, quota(&gw.limits), Cost::REQUEST).await? {
        Decision::Granted(g) => Ok(g),
        Decision::Limited(l) => Err(ApiError::RateLimited(l)),
    }
}

/// Messages taken from a key's day, to give back if they are not stored after all.
#[derive(Debug, Clone)]
#[must_use = "messages not stored must be given back"]
pub struct Taken {
    key_id: String,
    granted: Option<Granted>,
}

/// Takes `n` messages from `key_id`'s day, all or none; 429 when they do not all fit.
pub async fn take_messages(gw: &Gateway, key_id: &str, n: usize) -> Result<Taken, ApiError> {
    let taken = |granted| Taken { key_id: key_id.to_string(), granted };
    let Ok(n) = u32::try_from(n) else {
        return Err(ApiError::Internal("message count overflows".into()));
    };
    if n == 0 {
        return Ok(taken(None));
    }
    match gw.rate_limiter.acquire(key_id, quota(&gw.limits), Cost::messages(n)).await? {
        Decision::Granted(g) => Ok(taken(Some(g))),
        Decision::Limited(l) => Err(ApiError::RateLimited(l)),
    }
}

impl Taken {
    /// Gives back `n` of the messages (they were not stored). Best effort: a failure is
    /// logged, and costs the key only quota.
    pub async fn give_back(&self, gw: &Gateway, n: usize) {
        let (Some(granted), Ok(n)) = (self.granted, u32::try_from(n)) else { return };
        if n == 0 {
            return;
        }
        if let Err(e) = gw.rate_limiter.release_messages(&self.key_id, granted.day, n).await {
            tracing::warn!(error = %e, key_id = %self.key_id, "cannot give back unstored messages to the daily limit");
        }
    }
}

/// Whole seconds to wait: the window's reset, rounded up, at least 1.
pub fn retry_after_secs(l: &Limited) -> u64 {
    l.reset_after.as_millis().div_ceil(1000).max(1) as u64
}

/// The problem `detail` of a 429.
pub fn detail(l: &Limited) -> String {
    let wait = retry_after_secs(l);
    match l.window {
        Window::Second => format!(
            "rate limit exceeded: this API key may make {} requests per second (limits.per_key_per_second); retry after {wait} s",
            l.limit
        ),
        Window::Day if l.never_fits() => format!(
            "this request would queue {} messages, more than this API key's daily limit of {} (limits.per_key_per_day); send fewer messages per request",
            l.requested, l.limit
        ),
        Window::Day => format!(
            "daily limit exceeded: this request would queue {} messages but {} of this API key's {} per UTC day remain (limits.per_key_per_day); nothing was queued; retry after {wait} s, or send fewer",
            l.requested,
            l.remaining(),
            l.limit
        ),
    }
}

/// The four `RateLimit-*` fields of a window with `limit`, `remaining` left, resetting in
/// `reset` seconds.
fn window_headers(
    window: Window,
    limit: u64,
    remaining: u64,
    reset: u64,
) -> [(HeaderName, HeaderValue); 4] {
    let num = |n: u64| HeaderValue::from(n);
    let policy =
        HeaderValue::from_str(&format!("{limit};w={}", window.seconds())).expect("ASCII digits");
    [
        (RATELIMIT_LIMIT, num(limit)),
        (RATELIMIT_REMAINING, num(remaining)),
        (RATELIMIT_RESET, num(reset)),
        (RATELIMIT_POLICY, policy),
    ]
}

/// `Retry-After` and the `RateLimit-*` headers of a 429.
pub fn headers(l: &Limited) -> [(HeaderName, HeaderValue); 5] {
    let wait = retry_after_secs(l);
    let [a, b, c, d] = window_headers(l.window, l.limit, l.remaining(), wait);
    [(axum::http::header::RETRY_AFTER, HeaderValue::from(wait)), a, b, c, d]
}

/// The `RateLimit-*` headers of any other answer to an authenticated key: its request window
/// after `granted`; none when requests are unlimited (`per_second` 0).
pub fn standing_headers(per_second: u32, granted: &Granted) -> Vec<(HeaderName, HeaderValue)> {
    if per_second == 0 {
        return Vec::new();
    }
    let limit = u64::from(per_second);
    let reset = granted.second_reset.as_millis().div_ceil(1000).max(1) as u64;
    window_headers(Window::Second, limit, limit.saturating_sub(granted.second_used), reset)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limited(window: Window, used: u64, requested: u64, reset_ms: u64) -> Limited {
        Limited { window, limit: 10, used, requested, reset_after: Duration::from_millis(reset_ms) }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_secs(&limited(Window::Second, 10, 1, 1)), 1);
        assert_eq!(retry_after_secs(&limited(Window::Second, 10, 1, 1000)), 1);
        assert_eq!(retry_after_secs(&limited(Window::Day, 8, 3, 3_600_001)), 3601);
    }

    #[test]
    fn headers_describe_the_refusing_window() {
        let h = headers(&limited(Window::Day, 8, 3, 61_500));
        let get = |name: &HeaderName| {
            h.iter().find(|(n, _)| n == name).unwrap().1.to_str().unwrap().to_string()
        };
        assert_eq!(get(&axum::http::header::RETRY_AFTER), "62");
        assert_eq!(get(&RATELIMIT_LIMIT), "10");
        assert_eq!(get(&RATELIMIT_REMAINING), "2");
        assert_eq!(get(&RATELIMIT_RESET), "62");
        assert_eq!(get(&RATELIMIT_POLICY), "10;w=86400");
        let s = headers(&limited(Window::Second, 10, 1, 400));
        assert_eq!(s[4].1, "10;w=1");
    }

    #[test]
    fn a_granted_request_reports_what_is_left_of_its_second_and_nothing_when_unlimited() {
        let g = Granted { day: 0, second_used: 3, second_reset: Duration::from_millis(250) };
        let h = standing_headers(10, &g);
        let values: Vec<_> = h.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            values,
            [
                ("ratelimit-limit", "10"),
                ("ratelimit-remaining", "7"),
                ("ratelimit-reset", "1"),
                ("ratelimit-policy", "10;w=1")
            ]
        );
        assert!(standing_headers(0, &g).is_empty());
    }

    #[test]
    fn details_say_what_was_refused_and_what_to_do() {
        assert!(detail(&limited(Window::Second, 10, 1, 400)).contains("10 requests per second"));
        let day = detail(&limited(Window::Day, 8, 3, 400));
        assert!(day.contains("3 messages but 2 of this API key's 10"), "{day}");
        assert!(detail(&limited(Window::Day, 0, 11, 400))
            .contains("more than this API key's daily limit of 10"));
    }
}
