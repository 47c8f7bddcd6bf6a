//! `Idempotency-Key` across `kill -9` of the real binary (issue 11): a client that retries
//! with its key after a connection error gets, within 5 s of the service answering again, the
//! first answer (same id, the message stored once) or a fresh run — never a 409 for a request
//! whose owner died.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postwire_e2e::app::{distributed_backend, simple_message, World};
use postwire_e2e::process::{create_key, serve_healthy};
use postwire_e2e::smtp::Script;
use serde_json::{json, Value};

use crate::{ip, mx_hosts};

/// How soon after the restarted service answers every retry must have its answer.
const RETRY_WINDOW: Duration = Duration::from_secs(5);

/// A single send (`POST /v1/messages`) or a batch of [`BATCH`] (`POST /v1/messages/batch`).
#[derive(Clone, Copy)]
enum Kind {
    Single,
    Batch,
}

const BATCH: usize = 5;

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Single => "/v1/messages",
            Kind::Batch => "/v1/messages/batch",
        }
    }

    /// The tags that tell this key's messages apart, one per message.
    fn tags(self, round: usize, n: usize) -> Vec<String> {
        match self {
            Kind::Single => vec![format!("t{round}x{n}")],
            Kind::Batch => (0..BATCH).map(|j| format!("t{round}x{n}x{j}")).collect(),
        }
    }

    fn body(self, round: usize, n: usize) -> Value {
        let messages: Vec<Value> = self
            .tags(round, n)
            .into_iter()
            .map(|tag| {
                let mut body = simple_message(&[&format!("u{tag}@idem-crash.test")]);
                body["subject"] = json!(format!("idem {tag}"));
                body["tags"] = json!([tag]);
                body
            })
            .collect();
        match self {
            Kind::Single => messages.into_iter().next().unwrap(),
            Kind::Batch => json!({ "messages": messages }),
        }
    }

    /// The success status and the ids it answers with, in order.
    fn accepted(self, status: u16, answer: &Value) -> Option<Vec<String>> {
        let id = |v: &Value| v["id"].as_str().map(str::to_string);
        match (self, status) {
            (Kind::Single, 202) => Some(vec![id(answer)?]),
            (Kind::Batch, 200) => answer["results"].as_array()?.iter().map(id).collect(),
            _ => None,
        }
    }
}

/// What each key's sends saw before the kill: the 202's id, or `None` (cut off mid-request).
type Seen = Arc<Mutex<HashMap<(usize, usize), Option<Vec<String>>>>>;

/// Senders that each post one key after another until the server dies under them.
async fn send_until_killed(
    kind: Kind,
    client: &reqwest::Client,
    base: &str,
    key: &str,
    round: usize,
    seen: Seen,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|sender| {
            let (client, base, key, seen) =
                (client.clone(), base.to_string(), key.to_string(), seen.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let n = sender * 10_000 + i;
                    seen.lock().unwrap().insert((round, n), None);
                    let sent = client
                        .post(format!("{base}{}", kind.path()))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("idem-{round}-{n}"))
                        .json(&kind.body(round, n))
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    let status = response.status().as_u16();
                    let Ok(answer) = response.json::<Value>().await else { return };
                    let ids = kind.accepted(status, &answer);
                    assert!(ids.is_some(), "before the kill: {status} {answer}");
                    seen.lock().unwrap().insert((round, n), ids);
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn a_retry_after_kill_9_mid_request_gets_the_first_answer_or_a_fresh_run_never_a_409() {
    kill_retry_rounds(Kind::Single).await;
}

#[tokio::test]
async fn a_batch_retried_after_kill_9_stores_each_of_its_messages_once() {
    kill_retry_rounds(Kind::Batch).await;
}

/// Three rounds of: senders posting one key after another, `kill -9` while requests are in
/// flight, restart, every key retried; then each key's messages are counted.
async fn kill_retry_rounds(kind: Kind) {
    let world = World::new().await;
    let _hosts = mx_hosts(&world, "idem-crash.test", &[(10, ip(42), Script::default())]).await;
    let port = postwire_e2e::smtp::pick_free_port();
    let distributed = distributed_backend().is_some();
    let config = world.write_config(port, distributed);
    let key = create_key(&config, "idem-crash");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let seen: Seen = Arc::default();

    let mut server = serve_healthy(&config, &[], &base).await;
    let (mut cut_off, mut answered, mut slowest) = (0, 0, Duration::ZERO);
    for round in 0..3 {
        let senders = send_until_killed(kind, &client, &base, &key, round, seen.clone()).await;
        // Let the senders get going, then kill while their requests are in flight.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen.lock().unwrap().values().filter(|v| v.is_some()).count() < 30 * (round + 1) {
            assert!(tokio::time::Instant::now() < deadline, "no 202s before the kill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 50)).await;
        server.kill9();
        for s in senders {
            s.await.unwrap();
        }
        server = serve_healthy(&config, &[], &base).await;
        let up = tokio::time::Instant::now();

        let round_seen: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((r, _), _)| *r == round)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let retries = round_seen.iter().map(|((r, n), first)| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            let (r, n, first) = (*r, *n, first.clone());
            async move {
                loop {
                    let response = client
                        .post(format!("{base}{}", kind.path()))
                        .bearer_auth(&key)
                        .header("Idempotency-Key", format!("idem-{r}-{n}"))
                        .json(&kind.body(r, n))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap();
                    if let Some(ids) = kind.accepted(status, &answer) {
                        if let Some(first) = &first {
                            assert_eq!(&ids, first, "key idem-{r}-{n}: a retry gets the first ids");
                        }
                        return (first.is_none(), up.elapsed());
                    }
                    // Only the distributed lease of the dead owner may still hold the key, and
                    // only for seconds; the embedded store knows at once that its owner died.
                    assert!(
                        status == 409 && distributed && up.elapsed() < RETRY_WINDOW,
                        "key idem-{r}-{n}: {status} {answer} after {:?}",
                        up.elapsed()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        for (was_cut_off, took) in futures::future::join_all(retries).await {
            if was_cut_off {
                cut_off += 1;
            } else {
                answered += 1;
            }
            slowest = slowest.max(took);
        }
        assert!(slowest < RETRY_WINDOW, "a retry took {slowest:?}");
    }

    // Every key's message exists exactly once, whether its first answer arrived or not.
    let keys: Vec<(usize, usize)> = seen.lock().unwrap().keys().copied().collect();
    for (r, n) in keys {
        for tag in kind.tags(r, n) {
            let page: Value = client
                .get(format!("{base}/v1/messages?tag={tag}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let found = page["data"].as_array().unwrap().len();
            assert_eq!(found, 1, "key idem-{r}-{n}, {tag}: {found} messages stored: {page}");
        }
    }
    assert!(cut_off > 0, "no request was in flight at a kill; the test proved nothing");
    let what = match kind {
        Kind::Single => "single sends",
        Kind::Batch => "batches of 5",
    };
    println!(
        "idempotency across 3 kill -9 ({what}): {answered} answered before the kill and replayed, {cut_off} cut off mid-request and retried, slowest retry {slowest:?} after restart"
    );
}
