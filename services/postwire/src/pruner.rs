//! The pruner task: applies `storage.retention` (see [`postwire_store::retention`]) in small
//! batches, off every request's path, and samples the store's size for `/metrics`.
//!
//! Each tick (a quarter of the retention, between 100 ms and a minute) prunes batch after
//! batch while the store says more may be waiting, pausing between batches so the embedded
//! writer serves the group commits in between: a backlog (the first start after an upgrade,
//! or a retention just shortened) drains at a bounded pace instead of in one long write.
//!
//! [`sweep`] is the other housekeeping task: it asks the queue, every 30 s, to re-queue jobs
//! whose copies were lost (a broker crash, or a gateway killed before it published them) (see [`postwire_store::Queue::recover_lost_jobs`]).

use std::sync::Arc;
use std::time::Duration;

use postwire_store::{Queue, Retention};
use postwire_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// Messages per batch: one short write among the group commit's others (measured: a batch of
/// 50 takes 5–8 ms in a debug build, read and write together).
const BATCH: usize = 50;

/// Pause between two batches of one tick.
const PAUSE: Duration = Duration::from_millis(10);

/// How often the pruner looks for work with `retention`.
pub fn tick(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Runs until `shutdown`.
pub async fn run(
    store: Arc<dyn Retention>,
    retention: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let Ok(keep) = chrono::TimeDelta::from_std(retention) else {
        tracing::warn!(?retention, "storage.retention is out of range; nothing is pruned");
        return;
    };
    let mut interval = tokio::time::interval(tick(retention));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        loop {
            match store.prune(chrono::Utc::now() - keep, BATCH).await {
                Ok(pruned) => {
                    metrics.store_pruned.with_label_values(&["message"]).inc_by(pruned.messages);
                    metrics
                        .store_pruned
                        .with_label_values(&["idempotency"])
                        .inc_by(pruned.idempotency);
                    metrics.store_pruned.with_label_values(&["event"]).inc_by(pruned.events);
                    if !pruned.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed; trying again at the next tick");
                    break;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PAUSE) => {}
            }
        }
        match store.size_bytes().await {
            Ok(size) => metrics.store_size_bytes.set(i64::try_from(size).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!(error = %e, "cannot read the store's size"),
        }
    }
}

/// How often [`sweep`] looks for lost jobs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How long past its due time an unheld job must be before it counts as lost: beyond any hop
/// between the broker's queues (a delayed copy arrives by its due time) and two leases
/// (`worker.lease`) of a worker that died. Short, because a gateway killed between storing a
/// message and publishing its jobs leaves a job with no copy at all, and its message waits for
/// this sweep (found by the chaos benchmark); a spare copy costs only a skipped claim.
pub fn overdue(lease: Duration) -> Duration {
    Duration::from_secs(60).max(lease * 2)
}

/// Re-queues lost delivery jobs every [`SWEEP_EVERY`] until `shutdown`.
pub async fn sweep(queue: Arc<dyn Queue>, overdue: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = queue.recover_lost_jobs(overdue).await {
            tracing::warn!(error = %e, "looking for lost delivery jobs failed; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_a_quarter_of_the_retention_within_bounds() {
        assert_eq!(tick(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(tick(Duration::from_millis(10)), Duration::from_millis(100));
        assert_eq!(tick(Duration::from_secs(30 * 24 * 3600)), Duration::from_secs(60));
    }
}
