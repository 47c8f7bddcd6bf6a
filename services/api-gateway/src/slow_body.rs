//! The request-body deadline: a body must keep arriving at `http.min_body_rate` (bytes per
//! second) after a grace of `http.body_read_timeout` from the end of the request head. At any
//! moment a request may have received no less than `rate × (elapsed − grace)` bytes; a body
//! that falls behind fails with [`BodyReadTimeout`], which the handler answers with 408
//! ([`crate::error::ApiError::BodyTimeout`]) and `Connection: close`.
//!
//! Without it a client that announces `Content-Length: 100000` and sends one byte holds its
//! connection and its in-flight slot ([`crate::capacity`]) for as long as it likes. The
//! deadline counts from the head, so time spent waiting for a slot counts too; it is only
//! checked while the handler reads, so a route that never reads its body is unaffected.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::BoxError;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// `http.body_read_timeout` and `http.min_body_rate`.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    /// Time allowed beyond what the rate earns (the whole allowance when the rate is 0).
    pub grace: Duration,
    /// Bytes per second a body must average after the grace; 0: no rate, only the grace.
    pub min_rate: u64,
}

impl BodyDeadline {
    /// When a body that started at `start` and has `received` bytes so far must have more.
    fn due(&self, start: Instant, received: u64) -> Instant {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(received as f64 / rate as f64),
        };
        start + self.grace + earned
    }
}

/// The body of a request that arrived too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyReadTimeout;

/// Whether a body extractor failed because of [`BodyReadTimeout`] (it sits a few sources down).
pub fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if e.is::<BodyReadTimeout>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Middleware (outermost, so the clock starts with the head): puts the request's body under
/// the deadline.
pub async fn limit_body_time(
    State(deadline): State<BodyDeadline>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let start = Instant::now();
    let timed = TimedBody {
        inner: body,
        deadline,
        start,
        received: 0,
        sleep: Box::pin(tokio::time::sleep_until(deadline.due(start, 0))),
    };
    next.run(Request::from_parts(parts, Body::new(timed))).await
}

/// A body that fails with [`BodyReadTimeout`] once it falls behind its deadline.
struct TimedBody {
    inner: Body,
    deadline: BodyDeadline,
    start: Instant,
    received: u64,
    sleep: Pin<Box<Sleep>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let due = this.deadline.due(this.start, this.received);
                    this.sleep.as_mut().reset(due);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tokio::sync::mpsc;
    use tower::ServiceExt as _;

    use super::*;
    use crate::error::ApiError;

    /// A route that reads its body as the API's routes do.
    fn app(deadline: BodyDeadline) -> Router {
        Router::new()
            .route(
                "/",
                post(|body: Result<Bytes, BytesRejection>| async move {
                    match crate::routes::body_bytes(body) {
                        Ok(bytes) => Ok(bytes.len().to_string()),
                        Err(e) => Err::<String, ApiError>(e),
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(deadline, limit_body_time))
    }

    /// A request whose body is fed by the returned sender, chunk by chunk.
    fn streamed() -> (mpsc::Sender<Bytes>, Request) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Request::post("/").body(Body::new(Fed(rx))).unwrap())
    }

    /// A body of whatever chunks its sender sends, ending when the sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_gets_408_and_connection_close() {
        let deadline = BodyDeadline { grace: Duration::from_secs(2), min_rate: 1000 };
        let (tx, request) = streamed();
        tx.send(Bytes::from_static(b"{")).await.unwrap();
        let started = Instant::now();
        let response = app(deadline).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["connection"], "close");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(3), "{waited:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_up_with_the_rate_is_read_whole_however_long_it_takes() {
        let deadline = BodyDeadline { grace: Duration::from_secs(1), min_rate: 1000 };
        let (tx, request) = streamed();
        let feeder = tokio::spawn(async move {
            // 10 KB over 9 s: slower than the grace alone, faster than the rate requires.
            for _ in 0..10 {
                tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
        });
        let response = app(deadline).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = to_bytes(response.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], b"10000");
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_falls_behind_the_rate_is_cut_off_after_the_grace() {
        let deadline = BodyDeadline { grace: Duration::from_secs(1), min_rate: 100 };
        let (tx, request) = streamed();
        let feeder = tokio::spawn(async move {
            // 10 bytes a second against a required 100: behind from the first second on.
            for _ in 0..100 {
                if tx.send(Bytes::from_static(b"0123456789")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let response = app(deadline).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        feeder.abort();
    }
}
