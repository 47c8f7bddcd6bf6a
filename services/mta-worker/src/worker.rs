//! [`MtaWorker`]: claims delivery jobs and turns each into per-recipient outcomes.
//!
//! Processing one job: resolve the domain's MX hosts, render the message (per recipient when
//! tracked) and DKIM-sign it, deliver, then map each recipient's verdict to a
//! [`RecipientOutcome`]: delivered; bounced; or deferred to `now + retry.delay_after(n)` for the
//! n-th failed attempt — unless the message is older than `retry.max_age`, in which case it
//! bounces as `expired: …` (RFC 5321 §4.5.4.1: give up after a few days).
//!
//! A job whose message was sent with a sandbox API key is rendered and signed exactly as it
//! would be sent, its copies stored, and every recipient delivered with [`SANDBOX_RESPONSE`],
//! without resolving or connecting. A live job's signed copies are stored too, just before
//! they are handed to SMTP (see [`postwire_store::copies`]); a failure to store them is logged
//! and does not hold the delivery back.
//!
//! The run loop fills every free slot with one claim ([`postwire_store::Queue::claim_many`]):
//! under load the store hands out a batch per round trip rather than one job per commit. DKIM
//! signing runs on the blocking pool, at most one message per CPU at a time.
//!
//! The claim's lease is renewed every third of `worker.lease` while a job is being delivered.
//! A failed `complete` loses nothing: the job stays leased, the lease expires, another claim
//! re-runs it, and the store ignores outcomes for recipients that became final meanwhile.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use postwire_config::{Retry, Settings};
use postwire_store::{
    ClaimedJob, Copies, DeliveryResult, Queue, RecipientOutcome, SentCopy, StoreError,
};
use postwire_telemetry::Metrics;
use postwire_tracking::TrackingKeys;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::{settle_all, Deliverer, Outgoing, RecipientVerdict, Verdict};
use crate::disposition::{Action, Failure};
use crate::pool::{PoolLimits, SmtpPool};
use crate::render::Renderer;
use crate::resolve::MxResolver;
use crate::session::SmtpOptions;
use crate::WorkerError;
use postwire_domain_auth::dkim::DkimSigners;

/// How long an idle worker waits for new work before polling the queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// `last_response` (and the event's `smtp_response`) of every recipient of a message sent with a
/// sandbox API key: a 2xx so clients treat it as delivered, and unmistakably not a real reply.
pub const SANDBOX_RESPONSE: &str = "250 sandbox: not sent (sandbox API key)";

/// The outbound delivery worker. Build it once; run it with [`MtaWorker::run`].
pub struct MtaWorker {
    queue: Arc<dyn Queue>,
    metrics: Metrics,
    renderer: Renderer,
    signers: DkimSigners,
    deliverer: Deliverer,
    /// RSA signing is the costliest step of a delivery: at most one signing job per CPU at a
    /// time, so the others queue here instead of crowding out the async threads that carry
    /// the SMTP sessions and the API.
    signing: Arc<Semaphore>,
    retry: Retry,
    concurrency: usize,
    lease: Duration,
    /// `worker.drain_timeout`: the bound on waiting for deliveries in flight at shutdown.
    drain_timeout: Duration,
    worker_id: String,
    /// With `[bounces] domain` set: each copy's VERP envelope sender.
    return_paths: Option<ReturnPaths>,
    /// Where each attempt's signed copies are kept (`GET /v1/messages/{id}/raw`, POP3).
    copies: Option<Arc<dyn Copies>>,
}

/// VERP envelope senders: `b-{token}@{bounces.domain}`, one per recipient's copy, so a bounce
/// or complaint sent back names the copy (see [`postwire_tracking::verp`]).
struct ReturnPaths {
    keys: TrackingKeys,
    domain: String,
    /// How long a return path stays valid after acceptance (`storage.retention`).
    lifetime: Duration,
}

impl ReturnPaths {
    /// The return path of `email`'s copy of `job`'s message; `None` when it cannot be named.
    fn sender(&self, job: &ClaimedJob, email: &str) -> Option<String> {
        let position = job.recipients.iter().find(|r| r.email == email)?.position;
        let copy = postwire_tracking::MailCopy {
            message_id: &job.message_id,
            recipient: position,
            expires_at: std::time::SystemTime::from(job.created_at) + self.lifetime,
        };
        Some(format!("{}@{}", self.keys.return_path(&copy)?, self.domain))
    }
}

impl MtaWorker {
    /// Builds the worker: the DNS resolver from `dns.*`, the DKIM signers from `[[dkim]]` (keys
    /// are read now, so a bad key fails start-up), SMTP options from `smtp.*`. Must be called
    /// inside a tokio runtime.
    pub fn new(
        settings: &Settings,
        queue: Arc<dyn Queue>,
        metrics: Metrics,
        tracking: TrackingKeys,
    ) -> Result<Self, WorkerError> {
        let resolver = MxResolver::from_settings(&settings.dns).map_err(WorkerError::Resolver)?;
        let smtp = SmtpOptions::from_settings(&settings.smtp)
            .ok_or_else(|| WorkerError::HeloName(settings.smtp.helo_name.clone()))?;
        let bounce_domain = settings.bounces.domain.trim().to_ascii_lowercase();
        let return_paths = (!bounce_domain.is_empty()).then(|| ReturnPaths {
            keys: tracking.clone(),
            domain: bounce_domain,
            lifetime: settings.storage.retention.std(),
        });
        Ok(Self {
            queue,
            return_paths,
            renderer: Renderer::new(
                tracking,
                settings.http.public_url.clone(),
                settings.storage.retention.std(),
            ),
            signers: DkimSigners::from_settings(&settings.dkim)?,
            deliverer: Deliverer {
                resolver,
                pool: SmtpPool::new(smtp, PoolLimits::from_settings(&settings.smtp)),
                metrics: metrics.clone(),
            },
            signing: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            metrics,
            retry: settings.retry.clone(),
            concurrency: settings.worker.concurrency.max(1),
            lease: settings.worker.lease.std(),
            drain_timeout: settings.worker.drain_timeout.std(),
            worker_id: format!("mta-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            copies: None,
        })
    }

    /// Stores the signed copy of every message it sends or, for sandbox messages, would send.
    pub fn with_copies(mut self, copies: Arc<dyn Copies>) -> Self {
        self.copies = Some(copies);
        self
    }

    /// Also signs with the DKIM keys of sending domains made through `/v1/domains`, read from
    /// `domains` for each job (see [`crate::dkim`] for precedence over `[[dkim]]` keys).
    pub fn with_domain_keys(mut self, domains: Arc<dyn postwire_store::Domains>) -> Self {
        self.signers = self.signers.with_store(domains);
        self
    }

    /// Claims and processes jobs, up to `worker.concurrency` at once, until `shutdown` is
    /// cancelled; then stops claiming, waits (at most `worker.drain_timeout`) for the jobs in
    /// flight to finish and closes the pooled SMTP connections.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        tracing::info!(worker = %self.worker_id, concurrency = self.concurrency, "MTA worker started");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            // Every slot free right now is filled by the same claim: one round trip to the
            // store (one commit, in SQLite) instead of one per slot, one after another.
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            // Not raced against shutdown: a claim dropped half-way would strand the jobs until
            // their leases expired.
            match self.queue.claim_many(&self.worker_id, self.lease, permits.len()).await {
                Ok(jobs) if !jobs.is_empty() => {
                    let mut permits = permits.into_iter();
                    for job in jobs {
                        // A store that handed out more than asked still gets every job run.
                        let permit = permits.next();
                        let this = Arc::clone(&self);
                        tracker.spawn(async move {
                            // Already logged; the lease expiry brings the job back.
                            let _ = this.process(job).await;
                            drop(permit);
                        });
                    }
                }
                Ok(_) => {
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.queue.wait_for_work(IDLE_WAIT) => {}
                    }
                }
                Err(error) => {
                    drop(permits);
                    tracing::warn!(%error, "claiming a delivery job failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                    }
                }
            }
        }
        tracker.close();
        tracing::info!(
            in_flight = tracker.len(),
            "MTA worker stopping; waiting for deliveries in flight"
        );
        if tokio::time::timeout(self.drain_timeout, tracker.wait()).await.is_err() {
            // Their leases hand the jobs back: a restarted worker (or another) retries them.
            tracing::warn!(
                in_flight = tracker.len(),
                "worker.drain_timeout passed; stopping with deliveries still in flight"
            );
            return;
        }
        self.deliverer.pool.close().await;
    }

    /// Claims and fully processes at most one job. `Ok(true)` when there was one. For tests and
    /// tools that need deterministic steps.
    pub async fn step_once(&self) -> Result<bool, WorkerError> {
        match self.queue.claim(&self.worker_id, self.lease).await? {
            Some(job) => {
                self.process(job).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn process(&self, job: ClaimedJob) -> Result<(), StoreError> {
        let verdicts = if job.sandbox {
            // A sandbox key's message never leaves the host: no DNS lookup, no connection.
            self.sandbox_attempt(&job).await
        } else {
            // Heartbeat: keep the (short) lease alive while the transaction runs, so other
            // workers never take over a live delivery, yet a crashed worker's job returns fast.
            let attempt = self.attempt(&job);
            tokio::pin!(attempt);
            let mut beat = tokio::time::interval(self.lease / 3);
            beat.tick().await;
            loop {
                tokio::select! {
                    verdicts = &mut attempt => break verdicts,
                    _ = beat.tick() => match self.queue.renew(&job, self.lease).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(job = %job.job_id, "lease lost during delivery; outcomes will still be recorded"),
                        Err(error) => tracing::warn!(job = %job.job_id, %error, "lease renewal failed"),
                    },
                }
            }
        };
        let outcomes = outcomes(&job, verdicts, &self.retry, Utc::now());
        for o in &outcomes {
            let label = match o.result {
                DeliveryResult::Delivered => "delivered",
                DeliveryResult::Deferred { .. } => "deferred",
                DeliveryResult::Bounced => "bounced",
            };
            // Sandbox outcomes are not deliveries: they stay out of `postwire_deliveries_total`.
            if !job.sandbox {
                self.metrics.deliveries.with_label_values(&[label]).inc();
            }
            tracing::info!(
                message_id = %job.message_id, recipient = %o.email, result = label, sandbox = job.sandbox,
                response = %o.response, mx = o.mx_host.as_deref().unwrap_or("-"), "delivery attempt"
            );
        }
        self.queue.complete(&job, outcomes).await.inspect_err(|error| {
            tracing::error!(
                job = %job.job_id, message_id = %job.message_id, %error,
                "recording delivery outcomes failed; the job will be retried when its lease expires"
            )
        })
    }

    /// Render and sign as for sending, store the copies, and settle every recipient delivered
    /// with [`SANDBOX_RESPONSE`] — or retried, when the copies could not be made or kept.
    async fn sandbox_attempt(&self, job: &ClaimedJob) -> Vec<RecipientVerdict> {
        let everyone = || job.recipients.iter().map(|r| &r.email);
        let signed = match self.render_and_sign(job).await {
            Ok((_, signed)) => signed,
            Err(failure) => return settle_all(everyone(), &failure, None),
        };
        if let Some(store) = &self.copies {
            if let Err(e) = store.store_copies(&job.message_id, signed).await {
                return settle_all(everyone(), &Failure::Store(e), None);
            }
        }
        sandbox_verdicts(job)
    }

    /// The message rendered for each group of recipients sharing a body, each body signed.
    async fn render_and_sign(
        &self,
        job: &ClaimedJob,
    ) -> Result<(postwire_address::Mailbox, Vec<SentCopy>), Failure> {
        let (from, rendered) = self.renderer.render(job)?;
        let (recipients, bodies): (Vec<_>, Vec<_>) =
            rendered.into_iter().map(|m| (m.recipients, m.bytes)).unzip();
        let signed = {
            let _cpu = self.signing.acquire().await.expect("the semaphore is never closed");
            self.signers.sign(from.address.ascii_domain(), bodies).await?
        };
        let copies = recipients
            .into_iter()
            .zip(signed)
            .map(|(recipients, mut bytes)| {
                // What the wire carries: DATA always ends the text with CRLF (the session adds
                // it when missing). The relaxed body hash is the same either way.
                if !bytes.ends_with(b"\r\n") {
                    bytes.extend_from_slice(b"\r\n");
                }
                SentCopy { recipients, bytes }
            })
            .collect();
        Ok((from, copies))
    }

    /// Resolve, render, sign, deliver: one verdict per recipient.
    async fn attempt(&self, job: &ClaimedJob) -> Vec<RecipientVerdict> {
        let everyone = || job.recipients.iter().map(|r| &r.email);
        let hosts = match self.deliverer.resolver.resolve(&job.domain).await {
            Ok(hosts) => hosts,
            Err(e) => return settle_all(everyone(), &Failure::Resolve(e), None),
        };
        let (from, copies) = match self.render_and_sign(job).await {
            Ok(signed) => signed,
            Err(failure) => return settle_all(everyone(), &failure, None),
        };
        if let Some(store) = &self.copies {
            // The copy is a record, not the delivery: a store hiccup must not hold mail back.
            if let Err(error) = store.store_copies(&job.message_id, copies.clone()).await {
                tracing::warn!(message_id = %job.message_id, %error, "storing the sent copy failed");
            }
        }
        let (recipients, signed): (Vec<_>, Vec<_>) =
            copies.into_iter().map(|c| (c.recipients, c.bytes)).unzip();
        let outgoing: Vec<Outgoing> = match &self.return_paths {
            None => recipients
                .into_iter()
                .zip(signed)
                .map(|(recipients, bytes)| Outgoing {
                    sender: from.address.as_str().to_owned(),
                    recipients,
                    bytes,
                })
                .collect(),
            // One transaction per recipient: each copy has its own envelope sender.
            Some(paths) => {
                let plain = from.address.as_str();
                recipients
                    .into_iter()
                    .zip(signed)
                    .flat_map(|(recipients, bytes)| {
                        recipients.into_iter().map(move |r| Outgoing {
                            sender: paths.sender(job, &r).unwrap_or_else(|| plain.to_owned()),
                            recipients: vec![r],
                            bytes: bytes.clone(),
                        })
                    })
                    .collect()
            }
        };
        self.deliverer.deliver_to_hosts(&hosts, &outgoing).await
    }
}

/// Every pending recipient of a sandbox job, delivered with [`SANDBOX_RESPONSE`].
fn sandbox_verdicts(job: &ClaimedJob) -> Vec<RecipientVerdict> {
    job.recipients
        .iter()
        .map(|r| RecipientVerdict {
            email: r.email.clone(),
            verdict: Verdict::Delivered,
            response: SANDBOX_RESPONSE.to_owned(),
            mx_host: None,
            hard_bounce: false,
        })
        .collect()
}

/// Maps verdicts to outcomes for every pending recipient of `job`, applying the retry
/// schedule and `max_age`.
pub fn outcomes(
    job: &ClaimedJob,
    verdicts: Vec<RecipientVerdict>,
    retry: &Retry,
    now: DateTime<Utc>,
) -> Vec<RecipientOutcome> {
    // A scheduled message's retry window (RFC 5321 §4.5.4.1) opens at its `send_at`.
    let first_due = job.request.send_at.map_or(job.created_at, |at| at.max(job.created_at));
    let expired =
        now.signed_duration_since(first_due).to_std().is_ok_and(|age| age >= retry.max_age.std());
    job.recipients
        .iter()
        .map(|r| {
            let v = verdicts.iter().find(|v| v.email == r.email);
            let (verdict, response, mx_host, hard_bounce) = match v {
                Some(v) => {
                    (v.verdict.clone(), v.response.clone(), v.mx_host.clone(), v.hard_bounce)
                }
                // Cannot happen; if it did, trying again is the safe choice.
                None => (
                    Verdict::Failed(Action::Retry),
                    "no delivery attempt was made".to_owned(),
                    None,
                    false,
                ),
            };
            let (result, response) = match verdict {
                Verdict::Delivered => (DeliveryResult::Delivered, response),
                Verdict::Failed(Action::Bounce) => (DeliveryResult::Bounced, response),
                Verdict::Failed(Action::Retry) if expired => {
                    (DeliveryResult::Bounced, format!("expired: last reply was {response}"))
                }
                Verdict::Failed(Action::Retry) => {
                    let delay = retry.delay_after(r.attempts.saturating_add(1));
                    let next_attempt_at = chrono::Duration::from_std(delay)
                        .ok()
                        .and_then(|d| now.checked_add_signed(d))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    (DeliveryResult::Deferred { next_attempt_at }, response)
                }
            };
            RecipientOutcome {
                email: r.email.clone(),
                // Only a bounce now, never one by expiry (that comes from a 4xx or a network failure).
                suppress: hard_bounce && result == DeliveryResult::Bounced,
                result,
                response,
                mx_host,
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
