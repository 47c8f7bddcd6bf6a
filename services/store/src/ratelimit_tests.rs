//! The rate-limit contract, run against both backends (see the `tests` modules of
//! `embedded/ratelimit.rs` and `distributed/ratelimit.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ratelimit::{Cost, Decision, Granted, Limited, Quota, RateLimiter, Window};
use crate::time::now_ms;

const DEADLINE: Duration = Duration::from_secs(5);

fn granted(d: Decision) -> Granted {
    match d {
        Decision::Granted(g) => g,
        Decision::Limited(l) => panic!("expected a grant, got {l:?}"),
    }
}

fn limited(d: Decision) -> Limited {
    match d {
        Decision::Limited(l) => l,
        Decision::Granted(g) => panic!("expected a refusal, got {g:?}"),
    }
}

/// Waits for the start of the next unix second, so a few quick calls share one window.
async fn start_of_a_second() {
    let wait = Window::Second.reset_after(now_ms());
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
}

pub(crate) async fn requests_over_the_per_second_limit_wait_for_the_next_second(
    store: &impl RateLimiter,
) {
    let quota = Quota { per_second: 2, per_day: 0 };
    start_of_a_second().await;
    let first = granted(store.acquire("key_a", quota, Cost::REQUEST).await.unwrap());
    let second = granted(store.acquire("key_a", quota, Cost::REQUEST).await.unwrap());
    // A grant says how much of the second it has used, for the answer's RateLimit-* headers.
    assert_eq!((first.second_used, second.second_used), (1, 2));
    assert!(second.second_reset <= Duration::from_secs(1), "{second:?}");
    let refused = limited(store.acquire("key_a", quota, Cost::REQUEST).await.unwrap());
    assert_eq!(
        (refused.window, refused.limit, refused.used, refused.remaining()),
        (Window::Second, 2, 2, 0)
    );
    assert!(refused.reset_after <= Duration::from_secs(1), "{refused:?}");
    // Another key has windows of its own.
    granted(store.acquire("key_b", quota, Cost::REQUEST).await.unwrap());
    // The refusal took nothing; once the second is over the key may call again.
    let start = Instant::now();
    loop {
        match store.acquire("key_a", quota, Cost::REQUEST).await.unwrap() {
            Decision::Granted(_) => break,
            Decision::Limited(_) => {
                assert!(start.elapsed() < DEADLINE, "still refused after the window ended")
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn messages_are_taken_from_the_day_all_or_nothing_and_can_be_given_back(
    store: &impl RateLimiter,
) {
    let quota = Quota { per_second: 0, per_day: 5 };
    let first = granted(store.acquire("key_a", quota, Cost::messages(3)).await.unwrap());
    assert_eq!(first.day, Window::Day.index(now_ms()));
    let refused = limited(store.acquire("key_a", quota, Cost::messages(3)).await.unwrap());
    assert_eq!(
        (refused.window, refused.used, refused.remaining(), refused.requested),
        (Window::Day, 3, 2, 3)
    );
    assert!(refused.reset_after <= Duration::from_secs(86_400));
    // Requests cost no messages, and the refused batch took none.
    granted(store.acquire("key_a", quota, Cost::REQUEST).await.unwrap());
    granted(store.acquire("key_a", quota, Cost::messages(2)).await.unwrap());
    limited(store.acquire("key_a", quota, Cost::messages(1)).await.unwrap());
    // Giving back to another (past) day changes nothing; to this day frees the messages.
    store.release_messages("key_a", first.day - 1, 2).await.unwrap();
    limited(store.acquire("key_a", quota, Cost::messages(1)).await.unwrap());
    store.release_messages("key_a", first.day, 2).await.unwrap();
    granted(store.acquire("key_a", quota, Cost::messages(2)).await.unwrap());
    limited(store.acquire("key_a", quota, Cost::messages(1)).await.unwrap());
    granted(store.acquire("key_b", quota, Cost::messages(5)).await.unwrap());
}

pub(crate) async fn concurrent_acquires_never_overrun_the_limit<S: RateLimiter>(store: Arc<S>) {
    let quota = Quota { per_second: 0, per_day: 7 };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store.acquire("key_race", quota, Cost::messages(1)).await.unwrap()
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        if let Decision::Granted(_) = t.await.unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 7);
}
