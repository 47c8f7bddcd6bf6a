//! Idempotency records: the `Idempotency-Key` header of `POST /v1/messages` and
//! `POST /v1/messages/batch`.
//!
//! A record is scoped by the API key id and the caller's key. Its life:
//!
//! 1. [`Idempotency::idempotency_begin`] atomically either creates it *in progress* (the caller
//!    now owns it, under a short lease, and gets a token) or reports what is already there: a
//!    finished answer to replay, a request still in progress, or a different body.
//! 2. The owner runs the request, then [`Idempotency::idempotency_finish`] stores the answer
//!    (kept until `ttl` after the first request), or [`Idempotency::idempotency_abandon`]
//!    drops the record when the answer should not be replayed (a 5xx: the client may retry).
//!
//! An owner that dies without finishing holds the key until its lease lapses; after that the
//! next request with the key runs afresh. Both calls that change a record check the token, so
//! a late owner never overwrites the record of one that took over.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

/// What [`Idempotency::idempotency_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemBegin {
    /// No live record: one now exists, in progress, owned by the caller, who must finish or
    /// abandon it with this token.
    Started { token: String },
    /// A finished request with the same key and the same body: answer with this again.
    Replay { status: u16, body: String },
    /// The same key with the same body, whose first request has not finished yet.
    InProgress,
    /// The same key was used with a different body.
    Mismatch,
}

/// Storage of idempotency records; both backends implement it.
#[async_trait]
pub trait Idempotency: Send + Sync + 'static {
    /// Looks up `(key_id, idem_key)` and, when there is no live record, creates one in progress
    /// for `body_hash` (SHA-256 of the raw request body), held for `lease` and kept for `ttl`.
    /// Atomic: of concurrent callers with one key, exactly one gets [`IdemBegin::Started`].
    async fn idempotency_begin(
        &self,
        key_id: &str,
        idem_key: &str,
        body_hash: [u8; 32],
        lease: Duration,
        ttl: Duration,
    ) -> Result<IdemBegin, StoreError>;

    /// Stores the answer of a started request. False when the record is no longer the caller's
    /// (its lease lapsed and another request took the key over).
    async fn idempotency_finish(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        status: u16,
        body: String,
    ) -> Result<bool, StoreError>;

    /// Drops a started record so the next request with the key runs afresh. A no-op when the
    /// record is no longer the caller's.
    async fn idempotency_abandon(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
    ) -> Result<(), StoreError>;
}
