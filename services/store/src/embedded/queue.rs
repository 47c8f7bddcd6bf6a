//! Delivery jobs in SQLite.

use std::time::Duration;

use async_trait::async_trait;
use postwire_proto::{RecipientStatus, SendRequest};
use rusqlite::{params, Connection, OptionalExtension};

use super::{state::insert_event, SqliteStore};
use crate::time::{from_ms, now_ms, to_ms};
use crate::{ids, ClaimedJob, NewMessage, PendingRecipient, Queue, RecipientOutcome, StoreError};

#[async_trait]
impl Queue for SqliteStore {
    async fn accept(&self, message: NewMessage) -> Result<(), StoreError> {
        let request = serde_json::to_string(&message.request)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let dkim =
            serde_json::to_string(&message.dkim).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let boot = self.boot().to_string();
        self.write(move |conn| {
            // The idempotent answer first: a lost claim stores nothing at all.
            if let Some(answer) = &message.idempotency {
                super::idempotency::store_answer(conn, &boot, answer)?;
            }
            let created = to_ms(message.created_at);
            let inserted = conn.prepare_cached(
                "INSERT INTO messages (id, created_at, request, message_id_header, key_id, sandbox, raw, dkim)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![message.id, created, request, message.message_id_header, message.key_id, message.sandbox, message.raw, dkim])?;
            if inserted == 0 {
                return Ok(()); // Stored by an earlier run of the same request.
            }
            let mut rcpt = conn.prepare_cached(
                "INSERT INTO recipients (message_id, position, email, domain, status, next_attempt_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut job = conn.prepare_cached(
                "INSERT OR IGNORE INTO jobs (message_id, domain, not_before) VALUES (?1, ?2, ?3)",
            )?;
            // Scheduled send: recipients wait as `scheduled` and the job is not due before `send_at`.
            let send_at = crate::messages::scheduled_for(&message.request, created);
            let status = if send_at.is_some() { RecipientStatus::Scheduled } else { RecipientStatus::Queued };
            for (i, r) in message.recipients.iter().enumerate() {
                // Suppression list: a listed recipient is stored `suppressed` (with its event), no job.
                if super::suppression::screen_recipient(conn, &message, i, created)? {
                    continue;
                }
                rcpt.execute(params![message.id, i as i64, r.email, r.domain, status.as_str(), send_at, created])?;
                job.execute(params![message.id, r.domain, send_at.unwrap_or(created)])?;
            }
            super::messages::insert_tags(conn, &message)?;
            Ok(())
        })
        .await?;
        self.notify_work();
        Ok(())
    }

    async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<ClaimedJob>, StoreError> {
        Ok(self.claim_many(worker, lease, 1).await?.pop())
    }

    async fn claim_many(
        &self,
        _worker: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let lease_ms = lease.as_millis() as i64;
        let raw = self
            .write(move |conn| {
                let mut claimed = Vec::new();
                while claimed.len() < max.max(1) {
                    match claim_due(conn, lease_ms)? {
                        Some(job) => claimed.push(job),
                        None => break,
                    }
                }
                Ok(claimed)
            })
            .await?;
        // Parsed here, not in the closure: the writer thread is the one every commit waits for.
        // A job whose stored request no longer parses must not hold back its batch-mates: it is
        // logged and left leased (it comes back when the lease expires), the others go out.
        let mut jobs = Vec::with_capacity(raw.len());
        let mut first_error = None;
        for claim in raw {
            let job_id = claim.job.job_id.clone();
            match claim.parse() {
                Ok(job) => jobs.push(job),
                Err(error) => {
                    tracing::error!(job = %job_id, %error, "a claimed job's stored request is unreadable");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if jobs.is_empty() => Err(error),
            _ => Ok(jobs),
        }
    }

    async fn complete(
        &self,
        job: &ClaimedJob,
        outcomes: Vec<RecipientOutcome>,
    ) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |conn| {
            let now = now_ms();
            for outcome in &outcomes {
                record_outcome(conn, &job, outcome, now)?;
            }
            let (remaining, next): (i64, Option<i64>) = conn
                .prepare_cached(
                    "SELECT COUNT(*), MIN(COALESCE(next_attempt_at, 0)) FROM recipients
                     WHERE message_id = ?1 AND domain = ?2 AND status IN ('queued', 'scheduled', 'deferred')",
                )?
                .query_row(params![job.message_id, job.domain], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if remaining == 0 {
                conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([&job.job_id])?;
            } else {
                // Only the current holder of the lease reschedules; a stale completion leaves
                // the job to the worker that re-claimed it.
                conn.prepare_cached(
                    "UPDATE jobs SET not_before = ?1, lease_until = 0, claim_token = NULL
                     WHERE id = ?2 AND claim_token = ?3",
                )?
                .execute(params![next.unwrap_or(now).max(0), job.job_id, job.claim_token])?;
            }
            Ok(())
        })
        .await?;
        self.notify_work();
        Ok(())
    }

    async fn renew(&self, job: &ClaimedJob, lease: Duration) -> Result<bool, StoreError> {
        let (job_id, token) = (job.job_id.clone(), job.claim_token.clone());
        let until = now_ms() + lease.as_millis() as i64;
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE jobs SET lease_until = ?1 WHERE id = ?2 AND claim_token = ?3",
                )?
                .execute(params![until, job_id, token])?;
            Ok(n == 1)
        })
        .await
    }

    async fn wait_for_work(&self, max: Duration) {
        let notified = self.work().notified();
        let due = self
            .read(|conn| {
                Ok(conn
                    .prepare_cached("SELECT MIN(MAX(not_before, lease_until)) FROM jobs")?
                    .query_row([], |r| r.get::<_, Option<i64>>(0))?)
            })
            .await
            .ok()
            .flatten();
        let wait = match due {
            Some(at) => {
                Duration::from_millis((at - now_ms()).clamp(0, max.as_millis() as i64) as u64)
            }
            None => max,
        };
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }
}

/// A claimed job as read inside the write transaction, its request still JSON.
struct RawClaim {
    job: ClaimedJob,
    request: String,
}

impl RawClaim {
    fn parse(self) -> Result<ClaimedJob, StoreError> {
        let request: SendRequest =
            serde_json::from_str(&self.request).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(ClaimedJob { request, ..self.job })
    }
}

/// Leases the next due job. A job whose every recipient is already final (e.g. completed by a
/// worker whose lease had expired) is deleted here and the next one tried.
fn claim_due(conn: &Connection, lease_ms: i64) -> Result<Option<RawClaim>, StoreError> {
    loop {
        let now = now_ms();
        let token = ids::new_id("claim");
        let row = conn
            .prepare_cached(
                "UPDATE jobs SET lease_until = ?1, claim_token = ?2
                 WHERE id = (SELECT id FROM jobs WHERE not_before <= ?3 AND lease_until <= ?3
                             ORDER BY not_before LIMIT 1)
                 RETURNING id, message_id, domain",
            )?
            .query_row(params![now + lease_ms, token, now], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .optional()?;
        let Some((job_id, message_id, domain)) = row else { return Ok(None) };
        let recipients = pending_recipients(conn, &message_id, &domain)?;
        if recipients.is_empty() {
            conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([job_id])?;
            continue;
        }
        let (created_at, request, message_id_header, sandbox, raw) = conn
            .prepare_cached("SELECT created_at, request, message_id_header, sandbox, raw FROM messages WHERE id = ?1")?
            .query_row([&message_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                ))
            })?;
        return Ok(Some(RawClaim {
            job: ClaimedJob {
                job_id: job_id.to_string(),
                claim_token: token,
                message_id,
                created_at: from_ms(created_at),
                request: SendRequest::default(),
                message_id_header,
                domain,
                recipients,
                sandbox,
                raw,
            },
            request,
        }));
    }
}

fn pending_recipients(
    conn: &Connection,
    message_id: &str,
    domain: &str,
) -> Result<Vec<PendingRecipient>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT email, attempts, position FROM recipients
         WHERE message_id = ?1 AND domain = ?2 AND status IN ('queued', 'scheduled', 'deferred') ORDER BY position",
    )?;
    let rows = stmt.query_map(params![message_id, domain], |r| {
        Ok(PendingRecipient {
            email: r.get(0)?,
            attempts: r.get::<_, i64>(1)? as u32,
            position: r.get::<_, i64>(2)? as u32,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Applies one outcome unless the recipient is already final, and writes its event.
fn record_outcome(
    conn: &Connection,
    job: &ClaimedJob,
    outcome: &RecipientOutcome,
    now: i64,
) -> Result<(), StoreError> {
    let current = conn
        .prepare_cached(
            "SELECT position, status, attempts FROM recipients
             WHERE message_id = ?1 AND domain = ?2 AND email = ?3",
        )?
        .query_row(params![job.message_id, job.domain, outcome.email], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()?;
    let Some((position, status, attempts)) = current else {
        tracing::warn!(message_id = %job.message_id, recipient = %outcome.email, "outcome for an unknown recipient ignored");
        return Ok(());
    };
    if RecipientStatus::parse(&status).is_some_and(RecipientStatus::is_final) {
        return Ok(());
    }
    let attempts = attempts + 1;
    let (status, event) = crate::model::outcome_event(job, outcome, attempts as u32);
    let next = event.data.next_attempt_at;
    conn.prepare_cached(
        "UPDATE recipients SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_response = ?4, updated_at = ?5
         WHERE message_id = ?6 AND position = ?7",
    )?
    .execute(params![status.as_str(), attempts, next.map(to_ms), outcome.response, now, job.message_id, position])?;
    // Suppression list: a hard bounce (5xx to RCPT TO) lists the address in this transaction.
    if outcome.suppress && status == RecipientStatus::Bounced {
        super::suppression::record_hard_bounce(
            conn,
            &outcome.email,
            &outcome.response,
            &job.message_id,
            now,
        )?;
    }
    insert_event(conn, &event)
}
