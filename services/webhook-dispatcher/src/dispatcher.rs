//! The claim / send / record loop.
//!
//! Each delivery is claimed under a lease long enough for its send to finish (two timeouts, for
//! the pre-send DNS check and the POST, plus slack); if this process dies mid-send the lease
//! expires and another dispatcher sends it again, which is why receivers deduplicate on the
//! stable `webhook-id`. Every attempt, success or failure, is recorded in the store.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use postwire_config::Settings;
use postwire_store::sealing::Sealer;
use postwire_store::{webhook_log, State, WebhookAttempt, WebhookDelivery};
use postwire_telemetry::Metrics;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::signing::SignedHeaders;
use crate::target::{check_target, GuardedResolver, TargetError};
use crate::DispatchError;

/// Sends in flight at once (and so the most deliveries claimed at once).
const CONCURRENCY: usize = 16;
/// The longest idle sleep: new events are not announced, so the outbox is polled this often.
const MAX_IDLE: Duration = Duration::from_millis(500);
/// The shortest idle sleep, so a due-but-leased delivery cannot make the loop spin.
const MIN_IDLE: Duration = Duration::from_millis(20);
/// How much of a failing endpoint's answer is kept in the attempt log.
const MAX_ERROR_BODY: usize = 200;

/// Delivers the webhook outbox. Build one per process and share it behind an `Arc`.
pub struct Dispatcher {
    state: Arc<dyn State>,
    metrics: Metrics,
    client: reqwest::Client,
    timeout: Duration,
    lease: Duration,
    retry_schedule: Vec<Duration>,
    allow_private: bool,
    disable_after: Duration,
    /// Opens endpoint secrets stored under `storage.encryption_key`.
    sealer: Sealer,
}

/// What one attempt came to, before it is turned into a [`WebhookAttempt`].
enum Outcome {
    Delivered { status: u16, response: String },
    Failed { status: Option<u16>, error: String, permanent: bool, response: Option<String> },
}

impl Dispatcher {
    pub fn new(settings: &Settings, state: Arc<dyn State>, metrics: Metrics) -> Self {
        let cfg = &settings.webhooks;
        let timeout = cfg.timeout.std();
        let client = reqwest::Client::builder()
            // A 3xx is the endpoint's answer, not an instruction: following it would let a
            // public URL bounce us onto an internal one.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            // A proxy would connect on our behalf and defeat the address check.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private: cfg.allow_private_targets }))
            .user_agent(concat!("Postwire-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the rustls HTTP client builds with a static configuration");
        Self {
            state,
            metrics,
            client,
            timeout,
            lease: timeout * 2 + Duration::from_secs(30),
            retry_schedule: cfg.retry_schedule.iter().map(|d| d.std()).collect(),
            allow_private: cfg.allow_private_targets,
            disable_after: cfg.disable_after.std(),
            sealer: Sealer::new(settings.storage.encryption_key.bytes()),
        }
    }

    /// Delivers until `shutdown`, then waits for the sends in flight to be recorded.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            // Only this loop takes slots, so these stay free until we take them below.
            let free = 1 + slots.available_permits();
            let batch = match self.state.claim_webhook_deliveries(free, self.lease).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                drop(first);
                let idle = self.idle_wait().await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(idle) => continue,
                }
            }
            let mut first = Some(first);
            for delivery in batch {
                let slot = match first.take() {
                    Some(slot) => slot,
                    None => {
                        slots.clone().acquire_owned().await.expect("the semaphore is never closed")
                    }
                };
                let this = Arc::clone(&self);
                // Not cancelled by shutdown: a claimed send finishes and is recorded.
                tasks.spawn(async move {
                    this.deliver(delivery).await;
                    drop(slot);
                });
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// One round: claims what is due (up to the concurrency limit), sends it all, records the
    /// results. Returns how many deliveries were attempted. For tests and one-shot tools.
    pub async fn step_once(&self) -> Result<usize, DispatchError> {
        let batch = self.state.claim_webhook_deliveries(CONCURRENCY, self.lease).await?;
        let n = batch.len();
        futures::stream::iter(batch).for_each_concurrent(CONCURRENCY, |d| self.deliver(d)).await;
        Ok(n)
    }

    /// How long to sleep when nothing was claimable.
    async fn idle_wait(&self) -> Duration {
        match self.state.next_webhook_due().await {
            Ok(Some(due)) => {
                (due - Utc::now()).to_std().unwrap_or(MIN_IDLE).clamp(MIN_IDLE, MAX_IDLE)
            }
            Ok(None) => MAX_IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next webhook due time failed");
                MAX_IDLE
            }
        }
    }

    /// Attempts one delivery and records the attempt; disables the endpoint once it has failed
    /// for `webhooks.disable_after` (see [`postwire_store::webhook_log`]).
    async fn deliver(&self, delivery: WebhookDelivery) {
        let at = Utc::now();
        let started = std::time::Instant::now();
        let outcome = self.attempt(&delivery).await;
        let latency = started.elapsed();
        let (mut attempt, result) = self.judge(&delivery, outcome);
        attempt.at = at;
        attempt.latency_ms = latency.as_millis().try_into().unwrap_or(u64::MAX);
        self.metrics.webhook_deliveries.with_label_values(&[result]).inc();
        tracing::info!(
            delivery = %delivery.id,
            webhook = %delivery.webhook_id,
            event = %delivery.event_id,
            attempt = delivery.attempts + 1,
            status = ?attempt.status,
            error = attempt.error.as_deref().unwrap_or(""),
            retry_at = ?attempt.retry_at,
            result,
            "webhook attempt"
        );
        let failing_since = match self.state.finish_webhook_delivery(&delivery, attempt).await {
            Ok(since) => since,
            Err(e) => {
                // The lease will lapse and the delivery be sent again: at-least-once.
                tracing::warn!(delivery = %delivery.id, error = %e, "recording a webhook attempt failed");
                return;
            }
        };
        if !webhook_log::should_disable(failing_since, self.disable_after, Utc::now()) {
            return;
        }
        let since = failing_since.expect("should_disable needs a failure streak");
        let event = webhook_log::disabled_event(&delivery.webhook_id, &delivery.url, since);
        match self.state.disable_webhook(&delivery.webhook_id, event).await {
            Ok(true) => tracing::warn!(
                webhook = %delivery.webhook_id, url = %delivery.url, failing_since = %since,
                "webhook endpoint disabled after failing for webhooks.disable_after"
            ),
            // Another attempt disabled it first.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(webhook = %delivery.webhook_id, error = %e, "disabling a failing webhook endpoint failed")
            }
        }
    }

    /// Turns an outcome into the attempt record and its metric label, applying the retry
    /// schedule: after the n-th failed attempt wait `retry_schedule[n-1]`; the attempt after
    /// the last step is the final one.
    fn judge(
        &self,
        delivery: &WebhookDelivery,
        outcome: Outcome,
    ) -> (WebhookAttempt, &'static str) {
        match outcome {
            Outcome::Delivered { status, response } => (
                WebhookAttempt {
                    status: Some(status),
                    error: None,
                    retry_at: None,
                    succeeded: true,
                    at: Utc::now(),
                    latency_ms: 0,
                    response: (!response.is_empty()).then_some(response),
                },
                "delivered",
            ),
            Outcome::Failed { status, error, permanent, response } => {
                let delay = (!permanent)
                    .then(|| self.retry_schedule.get(delivery.attempts as usize))
                    .flatten();
                let retry_at = delay.map(|d| {
                    Utc::now() + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)
                });
                let result = if retry_at.is_some() { "failed" } else { "gave_up" };
                let attempt = WebhookAttempt {
                    status,
                    error: Some(error),
                    retry_at,
                    succeeded: false,
                    at: Utc::now(),
                    latency_ms: 0,
                    response,
                };
                (attempt, result)
            }
        }
    }

    async fn attempt(&self, d: &WebhookDelivery) -> Outcome {
        // Checked before every send, not just at creation: the name may now point elsewhere.
        let checked =
            tokio::time::timeout(self.timeout, check_target(&d.url, self.allow_private)).await;
        match checked {
            Err(_) => {
                return Outcome::Failed {
                    status: None,
                    error: format!("resolving the endpoint timed out after {:?}", self.timeout),
                    permanent: false,
                    response: None,
                }
            }
            Ok(Err(e)) => {
                return Outcome::Failed {
                    status: None,
                    permanent: e.is_permanent(),
                    error: e.to_string(),
                    response: None,
                }
            }
            Ok(Ok(())) => {}
        }
        let secret = match self.sealer.open(&Sealer::webhook_owner(&d.webhook_id), &d.secret) {
            Ok(secret) => secret,
            Err(e) => {
                tracing::error!(webhook = %d.webhook_id, error = %e, "cannot open the endpoint's secret");
                return Outcome::Failed {
                    status: None,
                    error: e.to_string(),
                    permanent: false,
                    response: None,
                };
            }
        };
        let signed = match SignedHeaders::new(
            &secret,
            &d.event_id,
            Utc::now().timestamp(),
            d.body.as_bytes(),
        ) {
            Ok(signed) => signed,
            Err(e) => {
                return Outcome::Failed {
                    status: None,
                    error: e.to_string(),
                    permanent: true,
                    response: None,
                }
            }
        };
        let sent = self
            .client
            .post(&d.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &signed.id)
            .header("webhook-timestamp", signed.timestamp.to_string())
            .header("webhook-signature", &signed.signature)
            .body(d.body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let status = resp.status().as_u16();
                Outcome::Delivered { status, response: body_snippet(resp).await }
            }
            Ok(resp) => {
                let status = resp.status();
                let mut error = format!("endpoint answered {status}");
                if status.is_redirection() {
                    error.push_str(" (redirects are not followed)");
                }
                let snippet = body_snippet(resp).await;
                if !snippet.is_empty() {
                    error.push_str(": ");
                    error.push_str(&snippet);
                }
                let response = (!snippet.is_empty()).then_some(snippet);
                Outcome::Failed { status: Some(status.as_u16()), error, permanent: false, response }
            }
            Err(e) => {
                if let Some(refused) = find_source::<TargetError>(&e) {
                    return Outcome::Failed {
                        status: None,
                        error: refused.to_string(),
                        permanent: refused.is_permanent(),
                        response: None,
                    };
                }
                let error = if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    error_chain(&e)
                };
                Outcome::Failed { status: None, error, permanent: false, response: None }
            }
        }
    }
}

/// The start of a response body, for the attempt log (reading stops early; never the whole).
async fn body_snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf[..buf.len().min(MAX_ERROR_BODY)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `error: cause: cause` (reqwest's own message alone is rarely enough to act on).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
#[path = "dispatcher_tests.rs"]
mod tests;
