//! `ApiError`: the only place HTTP status codes are chosen. Every error leaves as RFC 9457
//! `application/problem+json`; internal causes are logged, never returned.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use postwire_proto::{FieldError, Problem, ProblemCode};

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
    /// No route has this path (the router's fallback).
    #[error("no route {method} {path}; see /openapi.json for the API's routes")]
    NoRoute { method: Method, path: String },
    /// The path exists but not with this method (the router adds the `Allow` header).
    #[error("{path} does not answer {method}; the Allow header lists the methods it does")]
    MethodNotAllowed { method: Method, path: String },
    /// The request conflicts with the resource's current state (e.g. revoking the key in use).
    #[error("{0}")]
    Conflict(String),
    /// An `Idempotency-Key` reused with another body, or whose first request still runs.
    #[error("{0}")]
    IdempotencyConflict(String),
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

    /// Every bad field of a send: a 413 when one of them is the rendered size
    /// ([`crate::validate::TOO_LARGE_FIELD`]), else a 422 listing them.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        match errors.iter().find(|e| e.field == crate::validate::TOO_LARGE_FIELD) {
            Some(e) => Self::TooLarge(e.message.clone()),
            None => Self::Invalid(errors),
        }
    }

    /// The stable machine-readable `code` of this error.
    pub fn code(&self) -> ProblemCode {
        self.status_and_code().1
    }

    /// The HTTP status and the stable `code` of this kind of error, chosen together.
    pub fn status_and_code(&self) -> (StatusCode, ProblemCode) {
        use ProblemCode as C;
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, C::Unauthorized),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, C::Forbidden),
            Self::Denied(_) => (StatusCode::FORBIDDEN, C::Denied),
            Self::NotFound => (StatusCode::NOT_FOUND, C::NotFound),
            Self::NoRoute { .. } => (StatusCode::NOT_FOUND, C::RouteNotFound),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, C::MethodNotAllowed),
            Self::Conflict(_) => (StatusCode::CONFLICT, C::Conflict),
            Self::IdempotencyConflict(_) => (StatusCode::CONFLICT, C::IdempotencyConflict),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, C::InvalidRequest),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, C::BodyTimeout),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::ValidationFailed),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, C::PayloadTooLarge),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, C::RateLimited),
            Self::KeyBusy(_) => (StatusCode::TOO_MANY_REQUESTS, C::ConcurrencyLimited),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, C::Unavailable),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, C::OverCapacity),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, C::Internal),
        }
    }
}

impl From<postwire_store::StoreError> for ApiError {
    fn from(e: postwire_store::StoreError) -> Self {
        use postwire_store::StoreError as E;
        match e {
            E::NotFound => Self::NotFound,
            // Another request took this Idempotency-Key over; it answers for the key.
            E::IdempotencyLost => Self::IdempotencyConflict(
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
        let (status, code) = self.status_and_code();
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
            code,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::to_bytes;
    use postwire_store::ratelimit::{Limited, Window};

    use super::*;

    #[tokio::test]
    async fn every_error_kind_answers_problem_json_with_its_own_code() {
        let limited = Limited {
            window: Window::Second,
            limit: 1,
            used: 1,
            requested: 1,
            reset_after: Duration::from_millis(300),
        };
        let kinds = [
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden("send"), 403, "forbidden"),
            (ApiError::Denied("no".into()), 403, "denied"),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::NoRoute { method: Method::GET, path: "/v1/x".into() },
                404,
                "route_not_found",
            ),
            (
                ApiError::MethodNotAllowed { method: Method::PATCH, path: "/v1/messages".into() },
                405,
                "method_not_allowed",
            ),
            (ApiError::Conflict("c".into()), 409, "conflict"),
            (ApiError::IdempotencyConflict("i".into()), 409, "idempotency_conflict"),
            (ApiError::BadRequest("b".into()), 400, "invalid_request"),
            (ApiError::field("to", "bad"), 422, "validation_failed"),
            (ApiError::TooLarge("t".into()), 413, "payload_too_large"),
            (ApiError::RateLimited(limited), 429, "rate_limited"),
            (ApiError::KeyBusy(3), 429, "concurrency_limited"),
            (ApiError::Overloaded, 503, "over_capacity"),
            (ApiError::Unavailable(postwire_store::StoreError::Closed), 503, "unavailable"),
            (ApiError::BodyTimeout, 408, "body_timeout"),
            (ApiError::Internal("boom".into()), 500, "internal"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (error, status, code) in kinds {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
            let body = to_bytes(response.into_body(), 10_000).await.unwrap();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["code"], code, "{problem}");
            assert_eq!(problem["status"], status);
            assert!(seen.insert(code), "{code} given to two kinds");
        }
    }

    #[test]
    fn a_send_over_the_rendered_size_is_a_413_and_other_bad_fields_a_422() {
        let too_large = FieldError {
            field: crate::validate::TOO_LARGE_FIELD.into(),
            message: "too big".into(),
        };
        assert_eq!(ApiError::invalid_fields(vec![too_large]).code(), ProblemCode::PayloadTooLarge);
        let bad = FieldError { field: "to".into(), message: "bad".into() };
        assert_eq!(ApiError::invalid_fields(vec![bad]).code(), ProblemCode::ValidationFailed);
    }
}
