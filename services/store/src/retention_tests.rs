//! The retention contract, run against both backends (see the `tests` modules of
//! `embedded/retention.rs` and `distributed/retention.rs`).

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};

use crate::suppression::contract::message;
use crate::{ClaimedJob, DeliveryResult, Queue, RecipientOutcome, Retention, State};

const LEASE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(15);

async fn claim_within(store: &impl Queue) -> ClaimedJob {
    let give_up = Instant::now() + DEADLINE;
    loop {
        if let Some(job) = store.claim("w", LEASE).await.expect("claim") {
            return job;
        }
        assert!(Instant::now() < give_up, "nothing to claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn outcome(email: &str, result: DeliveryResult) -> RecipientOutcome {
    RecipientOutcome {
        email: email.into(),
        result,
        response: "250 ok".into(),
        mx_host: Some("mx.test".into()),
        suppress: false,
    }
}

/// A delivered message older than `retention` (the backend's own, for Redis) is pruned; a
/// deferred and a scheduled one of the same age are kept, however long pruning runs.
pub(crate) async fn finished_messages_past_the_retention_are_pruned_and_pending_ones_kept<S>(
    store: &S,
    retention: Duration,
) where
    S: Queue + State + Retention,
{
    let done = message(&["ann@done.test"]);
    store.accept(done.clone()).await.unwrap();
    let job = claim_within(store).await;
    assert_eq!(job.message_id, done.id);
    store.complete(&job, vec![outcome("ann@done.test", DeliveryResult::Delivered)]).await.unwrap();

    let deferred = message(&["bob@later.test"]);
    store.accept(deferred.clone()).await.unwrap();
    let job = claim_within(store).await;
    assert_eq!(job.message_id, deferred.id);
    let retry_at = Utc::now() + TimeDelta::hours(1);
    let later = DeliveryResult::Deferred { next_attempt_at: retry_at };
    store.complete(&job, vec![outcome("bob@later.test", later)]).await.unwrap();

    let mut scheduled = message(&["cy@soon.test"]);
    scheduled.request.send_at = Some(Utc::now() + TimeDelta::hours(1));
    store.accept(scheduled.clone()).await.unwrap();
    let accepted_all = Instant::now();

    let give_up = Instant::now() + DEADLINE;
    let mut pruned = 0;
    loop {
        let cutoff = Utc::now() - TimeDelta::from_std(retention).unwrap();
        pruned += store.prune(cutoff, 10).await.unwrap().messages;
        if store.message(&done.id).await.unwrap().is_none() {
            break;
        }
        assert!(Instant::now() < give_up, "the delivered message was never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Pruning goes on past the retention of the pending ones too: they stay.
    while accepted_all.elapsed() < retention * 2 {
        let cutoff = Utc::now() - TimeDelta::from_std(retention).unwrap();
        pruned += store.prune(cutoff, 10).await.unwrap().messages;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned >= 1, "the pruned message was not counted");
    for kept in [&deferred, &scheduled] {
        let view = store.message(&kept.id).await.unwrap();
        assert!(view.is_some(), "{} was pending and must be kept", kept.id);
    }
    assert_eq!(store.depth().await.unwrap(), 2, "the pending jobs are untouched");
    assert!(store.size_bytes().await.unwrap() > 0);
}
