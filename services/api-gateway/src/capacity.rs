//! The gateway's capacity: at most `limits.max_in_flight` API requests are handled at once, at
//! most `limits.max_waiting` more wait (first come, first served) for a slot, and any beyond
//! those are refused at once with 503 and `Retry-After` ([`ApiError::Overloaded`]).
//!
//! A request being handled holds its body, its parsed, rendered and serialized copies and its
//! pending Redis and RabbitMQ calls: about 50 KB for a message with a 4 KB body, on top of its
//! connection's buffers. Without a bound, a stall of a second or two under an open-loop load
//! (slow backends, a busy host) lets thousands of them start at once, and the allocator keeps
//! most of that memory after they drain. A waiting request has not had its body parsed (the
//! slot is taken before the handler's extractors run), so it costs little more than its
//! connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use postwire_config::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// `Retry-After` of a refused request: by then the requests ahead of it are long done.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Slots for requests being handled, shared by every clone. Unlimited when
/// `limits.max_in_flight` is 0.
#[derive(Clone)]
pub struct Capacity {
    slots: Option<Arc<Slots>>,
}

struct Slots {
    free: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A request's slot, given back when dropped.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Capacity {
    /// `max_in_flight` slots (0: unlimited) and room for `max_waiting` requests to wait for one.
    pub fn new(max_in_flight: usize, max_waiting: usize) -> Self {
        let slots = (max_in_flight > 0).then(|| {
            Arc::new(Slots {
                free: Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS))),
                waiting: AtomicUsize::new(0),
                max_waiting,
            })
        });
        Self { slots }
    }

    /// From `limits.max_in_flight` and `limits.max_waiting`.
    pub fn from_limits(limits: &Limits) -> Self {
        Self::new(limits.max_in_flight, limits.max_waiting)
    }

    /// A slot: at once when one is free, after the requests already waiting otherwise, or
    /// [`ApiError::Overloaded`] when `max_waiting` requests already wait.
    pub async fn admit(&self) -> Result<Slot, ApiError> {
        let Some(slots) = &self.slots else {
            return Ok(Slot { _permit: None });
        };
        if let Ok(permit) = slots.free.clone().try_acquire_owned() {
            return Ok(Slot { _permit: Some(permit) });
        }
        if slots.waiting.fetch_add(1, Ordering::AcqRel) >= slots.max_waiting {
            slots.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Overloaded);
        }
        // Counted out again however the wait ends, the client hanging up included.
        let _waiting = Waiting(&slots.waiting);
        let permit =
            slots.free.clone().acquire_owned().await.expect("the semaphore is never closed");
        Ok(Slot { _permit: Some(permit) })
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Middleware: runs the request in a slot, or answers 503 when there is no room to wait.
pub async fn limit_in_flight(
    State(capacity): State<Capacity>,
    req: Request,
    next: Next,
) -> Response {
    match capacity.admit().await {
        Ok(_slot) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tokio::sync::{oneshot, Notify};
    use tower::ServiceExt as _;

    use super::*;

    fn waiting(capacity: &Capacity) -> usize {
        capacity.slots.as_ref().expect("limited").waiting.load(Ordering::Acquire)
    }

    #[tokio::test]
    async fn a_request_over_the_waiting_room_is_refused_at_once() {
        let capacity = Capacity::new(1, 1);
        let first = capacity.admit().await.expect("a free slot");
        let second = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.admit().await.map(drop).is_ok() }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while waiting(&capacity) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second request waits for the first one's slot");
        assert!(matches!(capacity.admit().await, Err(ApiError::Overloaded)));
        drop(first);
        assert!(second.await.unwrap(), "the waiting request gets the freed slot");
        assert!(capacity.admit().await.is_ok(), "a slot is free again once both are done");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_its_place() {
        let capacity = Capacity::new(1, 1);
        let _held = capacity.admit().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), capacity.admit()).await;
        assert!(gave_up.is_err(), "no slot while the first is held");
        assert_eq!(waiting(&capacity), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), capacity.admit()).await.is_err(),
            "room to wait again"
        );
    }

    #[tokio::test]
    async fn zero_in_flight_switches_the_limit_off() {
        let capacity = Capacity::new(0, 0);
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(capacity.admit().await.expect("unlimited"));
        }
    }

    #[tokio::test]
    async fn a_request_with_no_slot_and_no_room_to_wait_gets_503_with_retry_after() {
        let (entered, inside) = oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered)));
        let release = Arc::new(Notify::new());
        let app = Router::new()
            .route(
                "/slow",
                get({
                    let release = release.clone();
                    move || async move {
                        if let Some(tx) = entered.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                        release.notified().await;
                        "done"
                    }
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                Capacity::new(1, 0),
                limit_in_flight,
            ));
        let request = || axum::http::Request::get("/slow").body(Body::empty()).unwrap();

        let first = tokio::spawn(app.clone().oneshot(request()));
        tokio::time::timeout(Duration::from_secs(5), inside)
            .await
            .expect("the first request runs")
            .unwrap();
        let refused = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/problem+json");

        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}
