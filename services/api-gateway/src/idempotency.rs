//! The `Idempotency-Key` request header: a retried send returns the first answer instead of
//! sending again.
//!
//! Records are scoped by API key id and kept for [`IDEMPOTENCY_TTL`]. The request body is
//! compared by the SHA-256 of its raw bytes: the same key with other bytes is a 409, never a
//! silent replay of a different request. Of concurrent requests with one key exactly one runs;
//! the others get a 409 saying it is in progress (see [`postwire_store::Idempotency`]).
//!
//! Answers below 500 are stored and replayed (a 422 stays a 422), except 408, 409 and 429,
//! which say "try again" and so must not stick to the key. A 5xx drops the record so a retry
//! runs afresh.
//!
//! Crashes: a request that queues a message hands the answer to the accept
//! ([`IdemClaim::answer`] into [`postwire_store::NewMessage::idempotency`]), so the message and
//! its answer are stored together or not at all. The record in progress is held under a lease
//! of [`IDEMPOTENCY_LEASE`], renewed while the request runs, so a process that dies holds the
//! key for seconds, never minutes: a retry then gets the stored answer or runs afresh.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use postwire_store::{IdemBegin, IdemClaim};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::Gateway;

/// How long a key's answer is replayed.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a request in progress holds its key if the process running it dies before
/// storing the answer; afterwards the key may run again. Renewed every third of it while the
/// request runs, so a slow request keeps its key however long it takes.
pub const IDEMPOTENCY_LEASE: Duration = Duration::from_secs(3);

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Set (to `true`) on an answer replayed from a stored record.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A valid `Idempotency-Key` value: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 255 {
            return Err(format!(
                "the Idempotency-Key header must be 1 to 255 characters, not {}",
                raw.len()
            ));
        }
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err("the Idempotency-Key header must be printable ASCII".into());
        }
        // Checked above: printable ASCII is UTF-8.
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The header's value, `None` when absent; 400 when malformed or repeated.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "send one Idempotency-Key header, not several".into(),
            ));
        }
        Self::parse(value.as_bytes()).map(Some).map_err(ApiError::BadRequest)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Runs `run` for the request once per (API key, `Idempotency-Key`): without the header it just
/// runs; with it, a finished earlier request is replayed, a different body or one still running
/// is a 409, and otherwise `run` goes ahead and its answer is stored.
///
/// `run` is driven to completion in a task of its own, so a client that hangs up mid-request
/// does not leave the key in progress until the lease lapses. It gets the claim (`None`
/// without the header) to attach its answer to the message it accepts.
pub async fn idempotent<F, Fut>(
    gw: &Gateway,
    key_id: &str,
    headers: &HeaderMap,
    body: Bytes,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(Gateway, Bytes, Option<IdemClaim>) -> Fut + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let Some(idem) = IdempotencyKey::from_headers(headers)? else {
        return Ok(run(gw.clone(), body, None).await);
    };
    let hash: [u8; 32] = Sha256::digest(&body).into();
    let store = gw.idempotency.clone();
    let token = match store.idempotency_begin(key_id, idem.as_str(), hash, IDEMPOTENCY_LEASE, IDEMPOTENCY_TTL).await? {
        IdemBegin::Started { token } => token,
        IdemBegin::Replay { status, body } => return Ok(replayed(status, body)),
        IdemBegin::InProgress => {
            return Err(ApiError::IdempotencyConflict(
                "a request with this Idempotency-Key is in progress; retry once it has finished".into(),
            ))
        }
        IdemBegin::Mismatch => {
            return Err(ApiError::IdempotencyConflict(
                "this Idempotency-Key was already used with a different request body; use a new key for a new request"
                    .into(),
            ))
        }
    };
    let (gw, key_id) = (gw.clone(), key_id.to_string());
    let claim =
        IdemClaim { key_id: key_id.clone(), idem_key: idem.as_str().into(), token: token.clone() };
    let task = tokio::spawn(async move {
        let renewing = renew_while_running(store.clone(), claim.clone());
        let running = run(gw, body, Some(claim));
        let response = tokio::select! {
            response = running => response,
            never = renewing => match never {},
        };
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                let _ = store.idempotency_abandon(&key_id, idem.as_str(), &token).await;
                return Err(ApiError::Internal(Box::new(e)));
            }
        };
        let outcome = if replayable(parts.status) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            store
                .idempotency_finish(&key_id, idem.as_str(), &token, parts.status.as_u16(), text)
                .await
                .map(drop)
        } else {
            store.idempotency_abandon(&key_id, idem.as_str(), &token).await
        };
        if let Err(e) = outcome {
            // The request itself went through; only its record is missing. A retry after the
            // lease lapses would run again, which is why this is worth a warning.
            tracing::warn!(error = %e, "cannot store the idempotency record");
        }
        Ok(Response::from_parts(parts, Body::from(bytes)))
    });
    task.await.map_err(|e| ApiError::Internal(Box::new(e)))?
}

/// Attaches the answer `status` + `body` (serialised as the response will be) to `message`,
/// so the accept stores it with the message. Nothing to do without a claim.
pub(crate) fn answer_with(
    claim: Option<&IdemClaim>,
    message: &mut postwire_store::NewMessage,
    status: StatusCode,
    body: &impl serde::Serialize,
) -> Result<(), ApiError> {
    if let Some(claim) = claim {
        let text = serde_json::to_string(body).map_err(|e| ApiError::Internal(Box::new(e)))?;
        message.idempotency = Some(claim.answer(status.as_u16(), text));
    }
    Ok(())
}

/// Renews `claim`'s lease every third of [`IDEMPOTENCY_LEASE`] until dropped (when the request
/// it guards has its answer). A failed renewal is retried at the next tick; a record that is
/// no longer the claim's stops nothing: the accept then refuses to store under it.
async fn renew_while_running(
    store: std::sync::Arc<dyn postwire_store::Idempotency>,
    claim: IdemClaim,
) -> std::convert::Infallible {
    let mut tick = tokio::time::interval(IDEMPOTENCY_LEASE / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // The first tick is immediate; the record was just begun.
    loop {
        tick.tick().await;
        let renewed = store
            .idempotency_renew(&claim.key_id, &claim.idem_key, &claim.token, IDEMPOTENCY_LEASE)
            .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %e, "cannot renew an Idempotency-Key lease");
        }
    }
}

/// Whether an answer sticks to its key (see the module docs).
fn replayable(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && ![StatusCode::REQUEST_TIMEOUT, StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS]
                .contains(&status))
}

/// A stored answer, sent again.
fn replayed(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type =
        if status.is_success() { "application/json" } else { "application/problem+json" };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_1_to_255_printable_ascii_characters_are_accepted() {
        assert_eq!(IdempotencyKey::parse(b"a").unwrap().as_str(), "a");
        assert!(IdempotencyKey::parse(b"order 42: reset/\"x\"~").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
    }

    #[test]
    fn empty_overlong_and_non_printable_keys_are_refused() {
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(&[b'k'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"tab\there").is_err());
        assert!(IdempotencyKey::parse("caf\u{e9}".as_bytes()).is_err());
    }

    #[test]
    fn only_answers_that_do_not_ask_for_a_retry_are_stored() {
        for ok in [200, 202, 400, 401, 413, 422] {
            assert!(replayable(StatusCode::from_u16(ok).unwrap()), "{ok}");
        }
        for retry in [408, 409, 429, 500, 503] {
            assert!(!replayable(StatusCode::from_u16(retry).unwrap()), "{retry}");
        }
    }
}
