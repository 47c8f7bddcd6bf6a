//! Idempotency records: the `Idempotency-Key` header of `POST /v1/messages` and
//! `POST /v1/messages/batch`.
//!
//! A record is scoped by the API key id and the caller's key. Its life:
//!
//! 1. [`Idempotency::idempotency_begin`] atomically either creates it *in progress* (the caller
//!    now owns it, under a short lease, and gets a token) or reports what is already there: a
//!    finished answer to replay, a request still in progress, or a different body.
//! 2. The owner runs the request, renewing its lease ([`Idempotency::idempotency_renew`])
//!    while it runs. A request that queues a message hands its answer to the accept
//!    ([`crate::NewMessage::idempotency`]), which stores it in the same atomic step as the
//!    message: there is no moment at which the message exists and its answer does not.
//!    Otherwise [`Idempotency::idempotency_finish`] stores the answer (kept until `ttl` after the
//!    first request), or [`Idempotency::idempotency_abandon`] drops the record when the answer
//!    should not be replayed (a 5xx: the client may retry).
//!
//! An owner that dies without finishing holds the key only until its short lease lapses (the
//! embedded backend also treats every record left in progress by an earlier process as dead);
//! after that the next request with the key runs afresh. Every call that changes a record
//! checks the token, so a late owner never overwrites the record of one that took over.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreError;

#[cfg(test)]
#[path = "idempotency_tests.rs"]
pub(crate) mod contract;

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

/// A record in progress, as its owner holds it: what the owner's calls name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemClaim {
    pub key_id: String,
    pub idem_key: String,
    pub token: String,
}

impl IdemClaim {
    /// The answer to store for this claim, with the accept that produced it.
    pub fn answer(&self, status: u16, body: String) -> IdemAnswer {
        IdemAnswer { claim: self.clone(), status, body }
    }
}

/// The answer of a claimed request, stored atomically with the message it accepted. When the
/// claim is no longer the owner's, the accept fails with [`StoreError::IdempotencyLost`] and
/// stores nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemAnswer {
    pub claim: IdemClaim,
    pub status: u16,
    pub body: String,
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

    /// Extends a started record's lease to `lease` from now while its request still runs.
    /// False when the record is no longer the caller's (finished, abandoned or taken over).
    async fn idempotency_renew(
        &self,
        key_id: &str,
        idem_key: &str,
        token: &str,
        lease: Duration,
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
