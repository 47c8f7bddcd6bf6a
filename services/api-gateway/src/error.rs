//! `ApiError`: the only place HTTP status codes are chosen. Every error leaves as RFC 9457
//! `application/problem+json`; internal causes are logged, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use postwire_proto::{FieldError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    /// Refused for a reason other than a missing scope (e.g. a key granting more than it holds).
    #[error("{0}")]
    Denied(String),
    #[error("not found")]
    NotFound,
    /// The request conflicts with the resource's current state (e.g. revoking the key in use).
    #[error("{0}")]
    Conflict(String),
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    TooLarge(String),
    /// Over the API key's per-second or per-day limit (see [`crate::ratelimit`]).
    #[error("{}", crate::ratelimit::detail(.0))]
    RateLimited(postwire_store::ratelimit::Limited),
    #[error("storage unavailable")]
    Unavailable(#[source] postwire_store::StoreError),
    /// More requests than `limits.max_in_flight` + `limits.max_waiting` (see [`crate::capacity`]).
    #[error("the server is over capacity; retry shortly")]
    Overloaded,
    /// The API key already has its share of the gateway's slots (see [`crate::capacity`]).
    #[error("this API key already has {0} requests in progress or waiting, its share of the gateway's capacity; retry shortly")]
    KeyBusy(usize),
    /// The request body did not arrive in time (see [`crate::slow_body`]).
    #[error(
        "the request body did not arrive in time (http.body_read_timeout, http.min_body_rate)"
    )]
    BodyTimeout,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 422 for a single field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError { field: field.into(), message: message.into() }])
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) | Self::KeyBusy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<postwire_store::StoreError> for ApiError {
    fn from(e: postwire_store::StoreError) -> Self {
        use postwire_store::StoreError as E;
        match e {
            E::NotFound => Self::NotFound,
            // Another request took this Idempotency-Key over; it answers for the key.
            E::IdempotencyLost => Self::Conflict(
                "a request with this Idempotency-Key is in progress; retry once it has finished"
                    .into(),
            ),
            // A backend that is down or unreachable is a 503 (retry later), never a 500.
            // A full disk too: nothing was written, and it recovers once space is freed.
            E::Closed | E::Unavailable { .. } | E::Amqp(_) | E::Redis(_) | E::DiskFull => {
                Self::Unavailable(e)
            }
            E::Database(_) | E::Open { .. } | E::Corrupt(_) | E::Sealing(_) => {
                Self::Internal(Box::new(e))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "backend unavailable"),
            _ => {}
        }
        let rate_limit_headers = match &self {
            Self::RateLimited(limited) => Some(crate::ratelimit::headers(limited)),
            _ => None,
        };
        // Every 503 is temporary: at capacity, or a backend down for a moment (it reconnects itself).
        // A key over its share (429) waits as long: its own requests ahead are about as quick.
        let retry_after =
            matches!(self, Self::Overloaded | Self::Unavailable(_) | Self::KeyBusy(_))
                .then(|| HeaderValue::from(crate::capacity::RETRY_AFTER_SECS));
        // The rest of a late body may never come: the connection is not kept for another request.
        let close = matches!(self, Self::BodyTimeout);
        let (detail, errors) = match self {
            Self::Invalid(errors) => {
                (Some("One or more fields are invalid; see `errors`.".to_string()), errors)
            }
            Self::Internal(_) => (None, Vec::new()),
            other => (Some(other.to_string()), Vec::new()),
        };
        let problem = Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        for (name, value) in rate_limit_headers.into_iter().flatten() {
            response.headers_mut().insert(name, value);
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        if close {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
