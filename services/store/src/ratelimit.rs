//! Per-API-key rate limits (`limits.per_key_per_second`, `limits.per_key_per_day`).
//!
//! Two fixed windows per key, both on the UTC clock:
//!
//! - the **second** window (the current unix second) counts *requests*: every authenticated
//!   `/v1` call costs one;
//! - the **day** window (the current UTC day, reset at 00:00 UTC) counts *messages accepted*:
//!   a send costs one, a batch the number of its valid items.
//!
//! [`RateLimiter::acquire`] checks a [`Cost`] against both windows and, only when it fits
//! both, adds it: all or nothing, so a batch that would overrun the day is refused whole and
//! a refused call uses up nothing. A limit of 0 switches that window off.
//!
//! Fixed windows are simple to state ("100 per second, 100 000 per UTC day") and cheap to
//! share (one counter per window), at the price of allowing up to twice the per-second limit
//! across a second boundary. [`Granted::day`] names the day window the messages were taken
//! from, so a caller whose messages then fail to be stored can give them back
//! ([`RateLimiter::release_messages`]) without touching another day's count.
//!
//! The embedded backend counts in process (one process serves the API) and rebuilds the
//! day's count from the messages table on first use after a restart; the distributed backend
//! keeps both counters in Redis, changed by one Lua script, so every gateway shares them.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

/// Length of the request window, in milliseconds.
pub const SECOND_MS: i64 = 1_000;
/// Length of the message window, in milliseconds (one UTC day).
pub const DAY_MS: i64 = 86_400_000;

/// The configured limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per second (`limits.per_key_per_second`).
    pub per_second: u32,
    /// Messages accepted per UTC day (`limits.per_key_per_day`).
    pub per_day: u32,
}

/// What one call takes from the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// From the second window.
    pub requests: u32,
    /// From the day window.
    pub messages: u32,
}

impl Cost {
    /// One request (the authentication step of every `/v1` call).
    pub const REQUEST: Cost = Cost { requests: 1, messages: 0 };

    /// `n` messages about to be accepted.
    pub fn messages(n: u32) -> Cost {
        Cost { requests: 0, messages: n }
    }
}

/// Which window a figure describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Second,
    Day,
}

impl Window {
    /// Its length in seconds, as the `w=` of a `RateLimit-Policy`.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Day => 86_400,
        }
    }

    fn len_ms(self) -> i64 {
        match self {
            Window::Second => SECOND_MS,
            Window::Day => DAY_MS,
        }
    }

    /// The index of the window holding `now_ms` (unix ms): the unix second, or the day number.
    pub fn index(self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.len_ms())
    }

    /// Time from `now_ms` until the window holding it ends (never zero).
    pub fn reset_after(self, now_ms: i64) -> Duration {
        let left = self.len_ms() - now_ms.rem_euclid(self.len_ms());
        Duration::from_millis(left as u64)
    }
}

/// A cost that did not fit: which window refused it, and the figures to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub window: Window,
    /// The window's limit.
    pub limit: u64,
    /// Already used in the window.
    pub used: u64,
    /// What the refused call asked for.
    pub requested: u64,
    /// Until the window resets.
    pub reset_after: Duration,
}

impl Limited {
    /// What is left in the window (the refused call took nothing).
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// True when the request can never fit, however long the caller waits (a batch larger
    /// than the whole daily limit).
    pub fn never_fits(&self) -> bool {
        self.requested > self.limit
    }
}

/// A cost that fitted and was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The day window its messages were taken from (see [`Window::index`]).
    pub day: i64,
    /// Requests counted in the current second window, this call's included (what the
    /// `RateLimit-Remaining` of a successful answer is worked out from).
    pub second_used: u64,
    /// Until the second window resets.
    pub second_reset: Duration,
}

/// The outcome of [`RateLimiter::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Granted(Granted),
    Limited(Limited),
}

/// The check both backends (and the Lua script) apply: `None` when `cost` fits on top of
/// `used_second` requests and `used_day` messages, else the window that refuses it (the second
/// window is checked first).
pub fn check(
    quota: Quota,
    cost: Cost,
    used_second: u64,
    used_day: u64,
    now_ms: i64,
) -> Option<Limited> {
    let over = |limit: u32, used: u64, asked: u32| {
        limit > 0 && asked > 0 && used + u64::from(asked) > u64::from(limit)
    };
    let (window, limit, used, requested) = if over(quota.per_second, used_second, cost.requests) {
        (Window::Second, quota.per_second, used_second, cost.requests)
    } else if over(quota.per_day, used_day, cost.messages) {
        (Window::Day, quota.per_day, used_day, cost.messages)
    } else {
        return None;
    };
    Some(Limited {
        window,
        limit: u64::from(limit),
        used,
        requested: u64::from(requested),
        reset_after: window.reset_after(now_ms),
    })
}

/// Shared per-key rate-limit counters.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Adds `cost` to `key_id`'s current windows if it fits under `quota` in both; otherwise
    /// changes nothing and says which window refused it. Atomic across every process sharing
    /// the backend.
    async fn acquire(&self, key_id: &str, quota: Quota, cost: Cost)
        -> Result<Decision, StoreError>;

    /// Gives back `messages` taken from day window `day` (a [`Granted::day`]) that were not
    /// accepted after all. A no-op once that day is over.
    async fn release_messages(
        &self,
        key_id: &str,
        day: i64,
        messages: u32,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota { per_second: 2, per_day: 10 };
    /// 2025-01-01T23:59:59.250Z.
    const NOW: i64 = 1_735_775_999_250;

    #[test]
    fn windows_are_the_unix_second_and_the_utc_day() {
        assert_eq!(Window::Second.index(NOW), 1_735_775_999);
        assert_eq!(Window::Day.index(NOW), 20_089);
        assert_eq!(Window::Day.index(NOW + 750), 20_090, "a new day starts at 00:00 UTC");
        assert_eq!(Window::Second.reset_after(NOW), Duration::from_millis(750));
        assert_eq!(Window::Day.reset_after(NOW), Duration::from_millis(750));
        assert_eq!(
            Window::Second.reset_after(NOW + 750),
            Duration::from_secs(1),
            "a reset is never zero"
        );
        assert_eq!(Window::Day.reset_after(NOW + 750), Duration::from_secs(86_400));
    }

    #[test]
    fn a_cost_that_fits_both_windows_passes() {
        assert_eq!(check(Q, Cost::REQUEST, 1, 10, NOW), None, "a request costs no messages");
        assert_eq!(check(Q, Cost::messages(4), 2, 6, NOW), None, "messages cost no requests");
        assert_eq!(check(Q, Cost { requests: 1, messages: 10 }, 0, 0, NOW), None);
    }

    #[test]
    fn the_third_request_in_a_second_is_refused_until_the_second_ends() {
        let refused = check(Q, Cost::REQUEST, 2, 0, NOW).expect("over the per-second limit");
        assert_eq!(refused.window, Window::Second);
        assert_eq!((refused.limit, refused.used, refused.remaining()), (2, 2, 0));
        assert_eq!(refused.reset_after, Duration::from_millis(750));
        assert!(!refused.never_fits());
    }

    #[test]
    fn a_batch_over_the_days_remainder_is_refused_whole() {
        let refused = check(Q, Cost::messages(3), 0, 8, NOW).expect("8 + 3 > 10");
        assert_eq!(refused.window, Window::Day);
        assert_eq!((refused.remaining(), refused.requested), (2, 3));
        assert!(!refused.never_fits());
        assert!(check(Q, Cost::messages(11), 0, 0, NOW).unwrap().never_fits());
    }

    #[test]
    fn the_second_window_is_checked_first_and_zero_means_unlimited() {
        let both = check(Q, Cost { requests: 1, messages: 5 }, 2, 8, NOW).unwrap();
        assert_eq!(both.window, Window::Second);
        let open = Quota { per_second: 0, per_day: 0 };
        assert_eq!(
            check(open, Cost { requests: 1, messages: 5 }, 1_000_000, u64::MAX / 2, NOW),
            None
        );
    }
}
