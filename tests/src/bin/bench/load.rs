//! The HTTP load generator: closed-loop clients (each its own keep-alive connection), an
//! open-loop pacer at a fixed offered rate, and batch senders. Every request is counted as
//! accepted only on the route's success status with its body read to the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

/// What a load run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Messages accepted (for batches: items with an id).
    pub accepted: usize,
    /// Per-request latencies of the accepted requests.
    pub latencies: Vec<Duration>,
    /// When the first request was sent.
    pub started: Instant,
    /// When the last accepted reply was read.
    pub finished: Instant,
    pub failures: usize,
    pub first_failure: Option<String>,
}

impl Outcome {
    pub fn new(started: Instant) -> Outcome {
        Outcome {
            accepted: 0,
            latencies: Vec::new(),
            started,
            finished: started,
            failures: 0,
            first_failure: None,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.accepted += other.accepted;
        self.latencies.extend(other.latencies);
        self.finished = self.finished.max(other.finished);
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn fail(&mut self, e: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(e);
    }

    /// Accepted messages per second from the first request to the last accepted reply.
    pub fn rate(&self) -> f64 {
        let secs = (self.finished - self.started).as_secs_f64();
        if secs > 0.0 {
            self.accepted as f64 / secs
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile of the latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// `"p50 1.2 ms, p99 8.0 ms"`.
    pub fn latency_summary(&self) -> String {
        format!("p50 {:.1} ms, p99 {:.1} ms", ms(self.percentile(50.0)), ms(self.percentile(99.0)))
    }

    /// An empty string, or `"; N failed (first: …)"`.
    pub fn failure_note(&self) -> String {
        match &self.first_failure {
            Some(first) => format!(
                "; **{} failed** (first: {})",
                self.failures,
                first.chars().take(120).collect::<String>()
            ),
            None => String::new(),
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The service's API and key, and what every message looks like.
#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub key: String,
    pub from: String,
    pub recipient_domain: String,
    pub text: Arc<str>,
}

impl Target {
    /// The send body of message `i` (recipient `user<i>@<domain>`).
    pub fn body(&self, i: usize) -> Value {
        json!({
            "from": self.from,
            "to": [format!("user{i}@{}", self.recipient_domain)],
            "subject": format!("Benchmark message {i}"),
            "text": &*self.text,
        })
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build()?)
}

/// One request; `Ok(accepted messages)` when the status is `expect`.
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    expect: u16,
) -> anyhow::Result<Value> {
    let response = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status();
    let reply = response.bytes().await?;
    anyhow::ensure!(status.as_u16() == expect, "{status}: {}", String::from_utf8_lossy(&reply));
    Ok(serde_json::from_slice(&reply).unwrap_or(Value::Null))
}

/// `clients` closed-loop clients post messages `first..first + total` one at a time.
pub async fn closed_loop(
    target: &Target,
    first: usize,
    total: usize,
    clients: usize,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + total;
    run_clients(clients, move |client, mut out| {
        let (target, next) = (target.clone(), Arc::clone(&next));
        async move {
            let url = format!("{}/v1/messages", target.base);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let sent = Instant::now();
                match post(&client, &url, &target.key, &target.body(i), 202).await {
                    Ok(_) => record(&mut out, sent, 1),
                    Err(e) => out.fail(format!("message {i}: {e:#}")),
                }
            }
            out
        }
    })
    .await
}

/// `clients` closed-loop clients post single messages for `duration`, numbering from `first`.
pub async fn saturate(
    target: &Target,
    first: usize,
    duration: Duration,
    clients: usize,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(first));
    let stop = Instant::now() + duration;
    run_clients(clients, move |client, mut out| {
        let (target, next) = (target.clone(), Arc::clone(&next));
        async move {
            let url = format!("{}/v1/messages", target.base);
            while Instant::now() < stop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match post(&client, &url, &target.key, &target.body(i), 202).await {
                    Ok(_) => record(&mut out, sent, 1),
                    Err(e) => out.fail(format!("message {i}: {e:#}")),
                }
            }
            out
        }
    })
    .await
}

/// `clients` closed-loop clients post `POST /v1/messages/batch` of `size` messages until
/// `total` messages are sent (numbering from `first`). Latencies are per batch.
pub async fn batches(
    target: &Target,
    first: usize,
    total: usize,
    size: usize,
    clients: usize,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + total;
    run_clients(clients, move |client, mut out| {
        let (target, next) = (target.clone(), Arc::clone(&next));
        async move {
            let url = format!("{}/v1/messages/batch", target.base);
            loop {
                let from = next.fetch_add(size, Ordering::Relaxed);
                if from >= end {
                    break;
                }
                let to = (from + size).min(end);
                let body =
                    json!({ "messages": (from..to).map(|i| target.body(i)).collect::<Vec<_>>() });
                let sent = Instant::now();
                match post(&client, &url, &target.key, &body, 200).await {
                    Ok(reply) => {
                        let results =
                            reply["results"].as_array().map(Vec::as_slice).unwrap_or_default();
                        let ok = results.iter().filter(|r| r["id"].is_string()).count();
                        if ok < to - from {
                            out.fail(format!(
                                "batch at {from}: {} of {} items refused: {}",
                                to - from - ok,
                                to - from,
                                reply
                            ));
                        }
                        record(&mut out, sent, ok);
                    }
                    Err(e) => out.fail(format!("batch at {from}: {e:#}")),
                }
            }
            out
        }
    })
    .await
}

/// Open loop: request `i` is due at `start + i / rate`, sent then whatever earlier requests
/// are doing, for `duration`. Latency runs from the due time, so a stalled server shows up in
/// the percentiles instead of slowing the offered load (no coordinated omission).
pub async fn open_loop(
    target: &Target,
    first: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let client = client()?;
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let url = format!("{}/v1/messages", target.base);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, key, body) =
            (client.clone(), url.clone(), target.key.clone(), target.body(first + n));
        tasks.spawn(async move {
            let result = post(&client, &url, &key, &body, 202).await;
            (
                due,
                Instant::now(),
                result.map(drop).map_err(|e| format!("message {}: {e:#}", first + n)),
            )
        });
    }
    let mut out = Outcome::new(start);
    while let Some(joined) = tasks.join_next().await {
        let (due, done, result) = joined.context("request task")?;
        match result {
            Ok(()) => {
                out.accepted += 1;
                out.latencies.push(done - due);
                out.finished = out.finished.max(done);
            }
            Err(e) => out.fail(e),
        }
    }
    Ok(out)
}

fn record(out: &mut Outcome, sent: Instant, messages: usize) {
    let now = Instant::now();
    out.accepted += messages;
    out.latencies.push(now - sent);
    out.finished = now;
}

/// Runs `clients` tasks, each with its own HTTP client (so its own keep-alive connection),
/// and merges what they measured.
async fn run_clients<F, Fut>(clients: usize, make: F) -> anyhow::Result<Outcome>
where
    F: Fn(reqwest::Client, Outcome) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(make(client()?, Outcome::new(start)));
    }
    let mut total = Outcome::new(start);
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("client task")?);
    }
    Ok(total)
}
