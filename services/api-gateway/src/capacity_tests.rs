//! Admission, waiting and fair shares of [`Capacity`] (the middleware's authentication is
//! exercised end to end in `tests/tests/e2e/security.rs`).

use std::time::Duration;

use super::*;

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn a_request_over_the_waiting_room_is_refused_with_503() {
    let capacity = Capacity::new(2, 1);
    let a = capacity.admit("a").await.expect("a free slot");
    let b = capacity.admit("b").await.expect("a free slot");
    let waiting = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.admit("c").await.map(drop).is_ok() }
    });
    until("c waits", || capacity.usage().waiting == 1).await;
    assert!(capacity.usage().saturated());
    assert!(matches!(capacity.admit("d").await, Err(ApiError::Overloaded)));
    drop(a);
    assert!(waiting.await.unwrap(), "the waiting request gets the freed slot");
    drop(b);
    assert!(!capacity.usage().saturated());
    assert_eq!(capacity.usage().in_flight, 0, "every slot is given back");
}

#[tokio::test]
async fn one_key_holds_at_most_half_the_slots_and_another_key_still_gets_one_at_once() {
    let capacity = Capacity::new(10, 10);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(capacity.admit("greedy").await.expect("within its half"));
    }
    // Over its share it may wait (half the waiting room), then it is refused.
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let capacity = capacity.clone();
        waiters.push(tokio::spawn(async move { capacity.admit("greedy").await.map(drop) }));
    }
    until("greedy's five wait", || capacity.usage().waiting == 5).await;
    assert!(matches!(capacity.admit("greedy").await, Err(ApiError::KeyBusy(10))));
    assert_eq!(capacity.usage().in_flight, 5, "five slots stay free while greedy waits");

    let other = tokio::time::timeout(Duration::from_millis(100), capacity.admit("other"))
        .await
        .expect("another key is admitted without waiting")
        .expect("a slot");
    drop(other);
    // A slot greedy gives back goes to greedy's oldest waiter.
    drop(held.pop());
    until("a waiter took the freed slot", || capacity.usage().waiting == 4).await;
    assert_eq!(capacity.usage().in_flight, 5);
    drop(held);
    for w in waiters {
        assert!(w.await.unwrap().is_ok());
    }
    assert_eq!(capacity.usage().keys, 0, "idle keys are forgotten");
}

#[tokio::test]
async fn a_freed_slot_goes_to_a_key_under_its_share_before_one_over_it() {
    let capacity = Capacity::new(4, 4);
    // Alone, "a" may take half: two slots; "b" takes the other two.
    let a = [capacity.admit("a").await.unwrap(), capacity.admit("a").await.unwrap()];
    let b = [capacity.admit("b").await.unwrap(), capacity.admit("b").await.unwrap()];
    let a_waits = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.admit("a").await.map(drop) }
    });
    until("a waits", || capacity.usage().waiting == 1).await;
    // Three keys now: a share is 4 / 3 = 1, and "c" holds none.
    let c_waits = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.admit("c").await.is_ok() }
    });
    until("c waits", || capacity.usage().waiting == 2).await;
    let [b1, b2] = b;
    drop(b1);
    until("c got the slot", || c_waits.is_finished()).await;
    assert!(c_waits.await.unwrap(), "c, under its share, is served before a, over it");
    assert_eq!(capacity.usage().waiting, 1, "a still waits");
    drop((a, b2));
    a_waits.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_its_place() {
    let capacity = Capacity::new(1, 1);
    let _held = capacity.admit("a").await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(10), capacity.admit("b")).await;
    assert!(gave_up.is_err(), "no slot while the first is held");
    assert_eq!(capacity.usage().waiting, 0);
    assert_eq!(capacity.usage().keys, 1, "only the holder is left");
    assert!(
        tokio::time::timeout(Duration::from_millis(10), capacity.admit("b")).await.is_err(),
        "room to wait again"
    );
}

#[tokio::test]
async fn zero_in_flight_switches_the_limit_off() {
    let capacity = Capacity::new(0, 0);
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(capacity.admit("a").await.expect("unlimited"));
    }
    assert!(!capacity.usage().saturated());
}

#[test]
fn over_share_and_over_capacity_answer_429_and_503_with_retry_after() {
    use axum::http::{header, StatusCode};
    for (error, status) in [
        (ApiError::KeyBusy(3), StatusCode::TOO_MANY_REQUESTS),
        (ApiError::Overloaded, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let response = error.into_response();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
