//! The idempotency contract, run against both backends by [`contract_tests!`] at the end of this
//! file. What only one backend shows (a SQLite file reopened) stays in its `tests` module.

use std::time::Duration;

use crate::suppression::contract::message;
use crate::{IdemBegin, IdemClaim, Idempotency, Queue, State, StoreError};

const TTL: Duration = Duration::from_secs(24 * 3600);
const LEASE: Duration = Duration::from_secs(60);

fn token(begin: IdemBegin) -> String {
    match begin {
        IdemBegin::Started { token } => token,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn claim(begin: IdemBegin, key_id: &str, idem_key: &str) -> IdemClaim {
    match begin {
        IdemBegin::Started { token } => {
            IdemClaim { key_id: key_id.into(), idem_key: idem_key.into(), token }
        }
        other => panic!("expected Started, got {other:?}"),
    }
}

/// The answer stored by the accept is there for the retry with no `finish` at all: a process
/// killed right after the commit leaves nothing in progress.
pub(crate) async fn an_answer_stored_with_the_accept_is_replayed_without_finish(
    store: &(impl Queue + State + Idempotency),
) {
    let lease = Duration::from_secs(60);
    let c = claim(
        store.idempotency_begin("key_a", "acc", [3; 32], lease, TTL).await.unwrap(),
        "key_a",
        "acc",
    );
    let mut m = message(&["a@example.test"]);
    let body = format!("{{\"id\":\"{}\"}}", m.id);
    m.idempotency = Some(c.answer(202, body.clone()));
    store.accept(m.clone()).await.unwrap();
    assert_eq!(
        store.idempotency_begin("key_a", "acc", [3; 32], lease, TTL).await.unwrap(),
        IdemBegin::Replay { status: 202, body }
    );
    assert!(store.message(&m.id).await.unwrap().is_some());
    // A finish after the accept changes nothing (the gateway always tries one).
    assert!(!store.idempotency_finish("key_a", "acc", &c.token, 500, "x".into()).await.unwrap());
}

/// An accept under a claim the caller no longer holds stores neither the message nor an answer:
/// the request that took the key over answers for it.
pub(crate) async fn an_accept_under_a_lost_claim_stores_nothing(
    store: &(impl Queue + State + Idempotency),
) {
    let lease = Duration::from_secs(60);
    let first = claim(
        store.idempotency_begin("key_a", "lost", [4; 32], lease, TTL).await.unwrap(),
        "key_a",
        "lost",
    );
    store.idempotency_abandon("key_a", "lost", &first.token).await.unwrap();
    let second = claim(
        store.idempotency_begin("key_a", "lost", [4; 32], lease, TTL).await.unwrap(),
        "key_a",
        "lost",
    );
    let mut m = message(&["a@example.test"]);
    m.idempotency = Some(first.answer(202, "stale".into()));
    assert!(matches!(store.accept(m.clone()).await, Err(StoreError::IdempotencyLost)));
    assert!(store.message(&m.id).await.unwrap().is_none(), "the message must not be stored");
    assert_eq!(
        store.idempotency_begin("key_a", "lost", [4; 32], lease, TTL).await.unwrap(),
        IdemBegin::InProgress
    );
    assert!(store
        .idempotency_finish("key_a", "lost", &second.token, 202, "ok".into())
        .await
        .unwrap());
}

/// A short lease renewed by its owner keeps the key; once renewals stop it lapses within the
/// lease and the key runs afresh.
pub(crate) async fn a_renewed_short_lease_holds_the_key_and_a_lapsed_one_frees_it(
    store: &(impl Queue + State + Idempotency),
) {
    let lease = Duration::from_millis(300);
    let c = claim(
        store.idempotency_begin("key_a", "renew", [5; 32], lease, TTL).await.unwrap(),
        "key_a",
        "renew",
    );
    // Renewed for three leases' worth of time: never free meanwhile.
    let until = tokio::time::Instant::now() + lease * 3;
    while tokio::time::Instant::now() < until {
        assert!(store.idempotency_renew("key_a", "renew", &c.token, lease).await.unwrap());
        assert_eq!(
            store.idempotency_begin("key_a", "renew", [5; 32], lease, TTL).await.unwrap(),
            IdemBegin::InProgress
        );
        tokio::time::sleep(lease / 4).await;
    }
    // The owner dies: no more renewals. The key is free again within a few leases.
    let deadline = tokio::time::Instant::now() + lease * 10;
    loop {
        match store.idempotency_begin("key_a", "renew", [5; 32], lease, TTL).await.unwrap() {
            IdemBegin::Started { .. } => break,
            IdemBegin::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the lapsed lease still holds the key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The dead owner's renewal is refused.
    assert!(!store.idempotency_renew("key_a", "renew", &c.token, lease).await.unwrap());
}

/// A request run again after a crash accepts messages under the ids it gave them the first
/// time: an id already stored is left as it is, with no second job.
pub(crate) async fn accepting_a_stored_id_again_changes_nothing(
    store: &(impl Queue + State + Idempotency),
) {
    let mut m = message(&["a@example.test"]);
    m.id = crate::ids::derived_id("msg", &[b"key_a", b"batch-1", &[0; 8]]);
    store.accept(m.clone()).await.unwrap();
    let mut again = m.clone();
    again.request.subject = "changed".into();
    store.accept(again).await.unwrap();
    assert_eq!(store.depth().await.unwrap(), 1, "one job, not two");
    let view = store.message(&m.id).await.unwrap().expect("stored");
    assert_eq!(view.recipients.len(), 1);
}

/// A finished request answers its retries with the same body and refuses another body; the key
/// (with a space and a colon in it) belongs to its API key only.
pub(crate) async fn a_finished_request_is_replayed_for_the_same_body_and_refused_for_another(
    store: &impl Idempotency,
) {
    let t = token(store.idempotency_begin("key_a", "k 1:x", [1; 32], LEASE, TTL).await.unwrap());
    assert_eq!(
        store.idempotency_begin("key_a", "k 1:x", [1; 32], LEASE, TTL).await.unwrap(),
        IdemBegin::InProgress
    );
    assert_eq!(
        store.idempotency_begin("key_a", "k 1:x", [2; 32], LEASE, TTL).await.unwrap(),
        IdemBegin::Mismatch
    );
    assert!(store
        .idempotency_finish("key_a", "k 1:x", &t, 202, "{\"id\":\"msg_1\"}".into())
        .await
        .unwrap());
    assert_eq!(
        store.idempotency_begin("key_a", "k 1:x", [1; 32], LEASE, TTL).await.unwrap(),
        IdemBegin::Replay { status: 202, body: "{\"id\":\"msg_1\"}".into() }
    );
    assert_eq!(
        store.idempotency_begin("key_a", "k 1:x", [2; 32], LEASE, TTL).await.unwrap(),
        IdemBegin::Mismatch
    );
    token(store.idempotency_begin("key_b", "k 1:x", [1; 32], LEASE, TTL).await.unwrap());
}

pub(crate) async fn keys_are_scoped_per_api_key(store: &impl Idempotency) {
    token(store.idempotency_begin("key_a", "same", [1; 32], LEASE, TTL).await.unwrap());
    token(store.idempotency_begin("key_b", "same", [1; 32], LEASE, TTL).await.unwrap());
}

pub(crate) async fn an_abandoned_request_frees_the_key_and_a_stale_owner_cannot_finish(
    store: &impl Idempotency,
) {
    let first = token(store.idempotency_begin("key_a", "k", [1; 32], LEASE, TTL).await.unwrap());
    store.idempotency_abandon("key_a", "k", &first).await.unwrap();
    let second = token(store.idempotency_begin("key_a", "k", [2; 32], LEASE, TTL).await.unwrap());
    assert!(!store.idempotency_finish("key_a", "k", &first, 202, "stale".into()).await.unwrap());
    store.idempotency_abandon("key_a", "k", &first).await.unwrap();
    assert_eq!(
        store.idempotency_begin("key_a", "k", [2; 32], LEASE, TTL).await.unwrap(),
        IdemBegin::InProgress
    );
    assert!(store.idempotency_finish("key_a", "k", &second, 200, "ok".into()).await.unwrap());
}

/// A lease of 20 ms and a record kept 50 ms are both gone 120 ms later (Redis expires keys in
/// whole milliseconds, so neither can be zero there).
pub(crate) async fn a_lapsed_lease_or_an_expired_record_lets_the_key_run_again(
    store: &impl Idempotency,
) {
    token(
        store
            .idempotency_begin("key_a", "lease", [1; 32], Duration::from_millis(20), TTL)
            .await
            .unwrap(),
    );
    let t = token(
        store
            .idempotency_begin("key_a", "ttl", [1; 32], LEASE, Duration::from_millis(50))
            .await
            .unwrap(),
    );
    assert!(store.idempotency_finish("key_a", "ttl", &t, 202, "old".into()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    token(store.idempotency_begin("key_a", "lease", [1; 32], LEASE, TTL).await.unwrap());
    token(store.idempotency_begin("key_a", "ttl", [9; 32], LEASE, TTL).await.unwrap());
}

pub(crate) async fn of_concurrent_begins_with_one_key_exactly_one_starts<S>(store: &S)
where
    S: Idempotency + Clone,
{
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store.idempotency_begin("key_a", "race", [7; 32], LEASE, TTL).await.unwrap()
            })
        })
        .collect();
    let mut started = 0;
    for t in tasks {
        match t.await.unwrap() {
            IdemBegin::Started { .. } => started += 1,
            IdemBegin::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1);
}

crate::contract_tests! {
    a_finished_request_is_replayed_for_the_same_body_and_refused_for_another,
    keys_are_scoped_per_api_key,
    an_abandoned_request_frees_the_key_and_a_stale_owner_cannot_finish,
    a_lapsed_lease_or_an_expired_record_lets_the_key_run_again,
    of_concurrent_begins_with_one_key_exactly_one_starts,
    an_answer_stored_with_the_accept_is_replayed_without_finish,
    an_accept_under_a_lost_claim_stores_nothing,
    a_renewed_short_lease_holds_the_key_and_a_lapsed_one_frees_it,
    accepting_a_stored_id_again_changes_nothing,
}
