//! Retention: what `storage.retention` removes, and how.
//!
//! A message is *finished* when none of its recipients is pending (`queued`, `scheduled`,
//! `deferred`) and no delivery job for it is left. A finished message accepted longer than the
//! retention ago is pruned with everything about it: its recipients, events, the webhook
//! outbox rows of those events, its tags and engagement records (opens, clicks). A message
//! still pending is never touched, however old. Idempotency records are pruned once their
//! 24 h are over. The global event log behind `GET /v1/events` and the webhook delivery log
//! follow the same rule: an event stored before the cutoff leaves the event log (with the
//! message's, or on its own for an event about no message such as `webhook.disabled`, once no
//! delivery of it is pending), and a finished delivery leaves its endpoint's log with it.
//!
//! [`Retention::prune`] does one small batch and says what it removed; the caller (the
//! service's pruner task) calls it again and again, pausing between batches, so pruning never
//! holds the store for long.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// What one [`Retention::prune`] batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished messages removed (with their recipients, events, outbox rows, tags, engagements).
    pub messages: u64,
    /// Idempotency records removed.
    pub idempotency: u64,
    /// Event log entries removed on their own (not counted in `messages`): events about no
    /// message, and on Redis every entry of the global event log past the cutoff, with the
    /// delivery log entries that point at gone deliveries.
    pub events: u64,
    /// Whether the batch was full: more may be waiting, so the next batch may start soon.
    pub more: bool,
}

/// Pruning and size; both backends implement it.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Removes up to about `max` finished messages accepted before `cutoff` (see the module
    /// docs), expired idempotency records, and up to about `max` event and delivery log entries
    /// older than `cutoff`.
    async fn prune(&self, cutoff: DateTime<Utc>, max: usize) -> Result<Pruned, StoreError>;

    /// How large the store is, in bytes (the database files; Redis's `used_memory`).
    async fn size_bytes(&self) -> Result<u64, StoreError>;
}

#[cfg(test)]
#[path = "retention_tests.rs"]
pub(crate) mod contract;
