//! Names of every Redis key and RabbitMQ queue the distributed backend uses.
//!
//! `{ns}` is the namespace given to [`DistributedStore::connect`](super::DistributedStore::connect)
//! (`postwire` in production). Timestamps are unix milliseconds, stored as decimal strings.
//! Every key below lives on one Redis node: the Lua scripts touch keys they compute, so
//! Redis Cluster is not supported (a primary with replicas / Sentinel is).
//!
//! ## Redis
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `{ns}:msg:{message_id}` | hash | `created_at`, `request` (the send request as JSON), `message_id_header`, `key_id`, `sandbox` (`1` for a sandbox key's message; absent = `0`), `engagement_repeats` (repeat engagement events emitted so far; absent = 0), `summary` (JSON `{"from","subject","tags"}` for search; absent on messages stored before search existed), `source` (`smtp` for a message submitted over SMTP; absent = `api`) | retention after the last change |
//! | `{ns}:msg:{message_id}:raw` | string | a message submitted over SMTP: the client's RFC 5322 text, base64 (standard alphabet) | same |
//! | `{ns}:msg:{message_id}:copies` | hash | the copies the workers rendered and signed (see [`crate::copies`]): field `r:{recipient, lower-cased}` = the digest of its body, field `b:{digest}` = the body's bytes; `popped` = `1` once deleted from the sandbox POP3 mailbox | same (the complete script settles it with the message; a copy stored after the message finished takes the message's remaining TTL) |
//! | `{ns}:msg:{message_id}:rcpt` | hash | field = recipient position (`0`, `1`, …), value = JSON `{"email","domain","status","attempts","next_attempt_at"?,"last_response"?,"updated_at"}` | same |
//! | `{ns}:msg:{message_id}:events` | list | event JSON, oldest first, exactly the webhook body | same |
//! | `{ns}:msg:{message_id}:eng` | hash | engagements (opens, clicks): field `open:{position}` or `click:{position}:{url}`, value JSON `{"kind","recipient" (position),"url","first_seen","last_seen","count","events","last_event"}` (see [`crate::engagement`]) | same, set when an engagement emits an event |
//! | `{ns}:lease:{message_id}:{domain}` | string | claim token of the worker holding the job; `PX` = the lease | the lease |
//! | `{ns}:idem:{key_id}:{idempotency_key}` | hash | one `Idempotency-Key` record: `hash` (hex SHA-256 of the request body), `expires_at`, `token` while in progress, then `status` and `body` (the answer to replay) | the owner's lease while in progress (seconds, renewed by the owner while it runs); then `expires_at` (24 h after the first request); the answer of a single send is written in the accept's `MULTI` |
//! | `{ns}:swept:{message_id}:{domain}` | string | `1`: the sweeper re-queued this job (its copies were lost), and will not again while it is set | the sweeper's `overdue` |
//! | `{ns}:jobs` | set | `{message_id} {domain}` of every unfinished job (queued, deferred, in flight): the queue depth | never |
//! | `{ns}:apikey:{key_id}` | hash | `name`, `hash` (hex SHA-256 of the secret), `scopes` (comma list), `created_at`, `sandbox` (`1` or `0`; absent = `0`), `revoked_at`? | never |
//! | `{ns}:apikeys` | sorted set | key ids scored by `created_at` | never |
//! | `{ns}:webhook:{webhook_id}` | hash | `url`, `secret`, `events` (JSON list; empty = all), `created_at`, `disabled_at`? (no deliveries while set), `failing_since`? (first failed attempt since the last success) | never |
//! | `{ns}:webhooks` | sorted set | webhook ids scored by `created_at` | never |
//! | `{ns}:webhook:{webhook_id}:pending` | set | ids of that endpoint's deliveries still pending | never |
//! | `{ns}:webhook:{webhook_id}:log` | sorted set | every delivery id of that endpoint scored by its number (`whd_{n}` → n), for the delivery log; ids whose hash expired are dropped by the pruner (and when read) | deleted with the endpoint |
//! | `{ns}:whd:{delivery_id}` | hash | one outbox row: `webhook_id`, `event_id`, `body`, `state` (`pending`, `delivered`, `failed`), `attempts`, `next_attempt_at`, `created_at`, `log` (JSON list of the newest attempts, see [`crate::webhook_log`]), `last_status`?, `last_error`? | retention once final |
//! | `{ns}:events:log` + `{ns}:events:body` | sorted set + hash | every event in stored order, for `GET /v1/events`: members `{created_at:015}:{event_id}` scored 0 (`BYLEX` ranges walk time order); event id → JSON body; entries past `storage.retention` are trimmed by the pruner | never |
//! | `{ns}:outbox` | sorted set | pending delivery ids scored by when they may next be claimed (due time, or lease end while leased) | never |
//! | `{ns}:suppressions` + `{ns}:suppressions:index` | hash + sorted set | the suppression list: lower-cased address → JSON `{"email","reason","smtp_response"?,"message_id"?,"created_at"}`; the same addresses scored by `created_at` | never |
//! | `{ns}:templates` + `{ns}:templates:index` | hash + sorted set | stored templates: id → JSON `{"id","name","alias"?,"subject","text","html","created_at","updated_at"}` (times RFC 3339); the same ids scored by `created_at` (unix ms) | never |
//! | `{ns}:templates:alias` | hash | template alias → template id, changed with the template in one script | never |
//! | `{ns}:domain:{domain}` | hash | one sending domain (lower-cased name): `selector`, `algorithm` (`rsa-sha256` or `ed25519-sha256`), `private_key` (PEM), `public_record` (`v=DKIM1; k=…; p=…`), `created_at` | never |
//! | `{ns}:domains` | sorted set | every sending domain name, all scored 0 so they list in name order | never |
//! | `{ns}:domains:generation` | string | counter bumped by the script that adds or removes a domain; workers compare it to know their DKIM signers are current | never |
//! | `{ns}:rl:{key_id}:s:{unix_second}` | string | requests of one API key in one second (`limits.per_key_per_second`); changed only by the rate-limit script, which reads Redis's `TIME` | 2 s after first use |
//! | `{ns}:rl:{key_id}:d:{day}` | string | messages accepted for one API key on one UTC day (`day` = days since 1970-01-01; `limits.per_key_per_day`), same script | 01:00 UTC the next day |
//! | `{ns}:search` | sorted set | message search index: every member scored 0 and named `{created_at:015}:{message_id}` (unix ms, zero-padded), so `BYLEX` ranges walk creation order; entries older than retention are trimmed at each accept, and an entry whose message has expired is removed when a search meets it | never |
//! | `{ns}:search:tag:{tag}` | sorted set | the same, for messages carrying that tag | retention after the last message added |
//! | `{ns}:search:rcpt:{email}` | sorted set | the same, for messages to that address (domain lower-cased) | retention after the last message added |
//! | `{ns}:seq:whd` | string | counter behind delivery ids (`whd_{n}`) | never |
//!
//! ## RabbitMQ (default vhost of `amqp.url`, default exchange)
//!
//! | queue | kind | role |
//! |---|---|---|
//! | `{ns}.deliveries` | quorum, durable | delivery jobs `{"message_id","domain"}`, persistent; `x-delivery-limit` returns, then dead-lettered |
//! | `{ns}.deliveries.dead` | classic, durable | poison jobs: returned more than the delivery limit, or unreadable; inspect by hand |
//! | `{ns}.retry.{ms}` | classic, durable, `x-message-ttl = ms` | delayed jobs; dead-lettered back into `{ns}.deliveries` when the TTL ends |

/// The retry ladder: one delay queue per entry. A job waiting longer hops through the largest
/// step that fits (re-checked on arrival), so the number of queues stays fixed however many
/// distinct delays the retry schedule produces.
pub(crate) const RETRY_STEPS_MS: [u64; 7] =
    [1_000, 5_000, 15_000, 60_000, 300_000, 900_000, 3_600_000];

/// Key and queue names under one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn new(ns: &str) -> Self {
        Self { ns: ns.to_string() }
    }

    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    pub(crate) fn message(&self, id: &str) -> String {
        format!("{}:msg:{id}", self.ns)
    }

    pub(crate) fn recipients(&self, id: &str) -> String {
        format!("{}:msg:{id}:rcpt", self.ns)
    }

    pub(crate) fn raw(&self, id: &str) -> String {
        format!("{}:msg:{id}:raw", self.ns)
    }

    pub(crate) fn copies(&self, id: &str) -> String {
        format!("{}:msg:{id}:copies", self.ns)
    }

    pub(crate) fn events(&self, id: &str) -> String {
        format!("{}:msg:{id}:events", self.ns)
    }

    pub(crate) fn engagements(&self, id: &str) -> String {
        format!("{}:msg:{id}:eng", self.ns)
    }

    pub(crate) fn lease(&self, message_id: &str, domain: &str) -> String {
        format!("{}:lease:{message_id}:{domain}", self.ns)
    }

    pub(crate) fn swept(&self, message_id: &str, domain: &str) -> String {
        format!("{}:swept:{message_id}:{domain}", self.ns)
    }

    pub(crate) fn jobs(&self) -> String {
        format!("{}:jobs", self.ns)
    }

    /// The member of [`Keys::jobs`] for one job.
    pub(crate) fn job_member(message_id: &str, domain: &str) -> String {
        format!("{message_id} {domain}")
    }

    pub(crate) fn api_key(&self, id: &str) -> String {
        format!("{}:apikey:{id}", self.ns)
    }

    pub(crate) fn api_keys(&self) -> String {
        format!("{}:apikeys", self.ns)
    }

    pub(crate) fn webhook(&self, id: &str) -> String {
        format!("{}:webhook:{id}", self.ns)
    }

    pub(crate) fn webhooks(&self) -> String {
        format!("{}:webhooks", self.ns)
    }

    pub(crate) fn webhook_delivery(&self, id: &str) -> String {
        format!("{}:whd:{id}", self.ns)
    }

    pub(crate) fn domain(&self, name: &str) -> String {
        format!("{}:domain:{name}", self.ns)
    }

    pub(crate) fn domains(&self) -> String {
        format!("{}:domains", self.ns)
    }

    pub(crate) fn domains_generation(&self) -> String {
        format!("{}:domains:generation", self.ns)
    }

    pub(crate) fn webhook_log(&self, id: &str) -> String {
        format!("{}:webhook:{id}:log", self.ns)
    }

    pub(crate) fn events_log(&self) -> String {
        format!("{}:events:log", self.ns)
    }

    pub(crate) fn events_body(&self) -> String {
        format!("{}:events:body", self.ns)
    }

    pub(crate) fn outbox(&self) -> String {
        format!("{}:outbox", self.ns)
    }

    pub(crate) fn templates(&self) -> String {
        format!("{}:templates", self.ns)
    }

    pub(crate) fn templates_index(&self) -> String {
        format!("{}:templates:index", self.ns)
    }

    pub(crate) fn templates_alias(&self) -> String {
        format!("{}:templates:alias", self.ns)
    }

    /// The message search index (see the table above).
    pub(crate) fn search(&self) -> String {
        format!("{}:search", self.ns)
    }

    /// The search index of one tag.
    pub(crate) fn search_tag(&self, tag: &str) -> String {
        format!("{}:search:tag:{tag}", self.ns)
    }

    /// The search index of one recipient address (domain lower-cased).
    pub(crate) fn search_recipient(&self, email: &str) -> String {
        format!("{}:search:rcpt:{email}", self.ns)
    }

    /// A search index member: sorts by creation time, then id.
    pub(crate) fn search_member(created_at_ms: i64, message_id: &str) -> String {
        format!("{:015}:{message_id}", created_at_ms.max(0))
    }

    /// Every key of this namespace, for `SCAN MATCH`.
    pub(crate) fn pattern(&self) -> String {
        format!("{}:*", self.ns)
    }

    pub(crate) fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.ns)
    }

    pub(crate) fn dead_queue(&self) -> String {
        format!("{}.deliveries.dead", self.ns)
    }

    pub(crate) fn retry_queue(&self, step_ms: u64) -> String {
        format!("{}.retry.{step_ms}", self.ns)
    }
}

/// The retry queue step for a job due in `delay_ms`: the largest step not longer than the
/// delay, or the shortest step when the delay is shorter than every step.
pub(crate) fn retry_step(delay_ms: i64) -> u64 {
    let delay = delay_ms.max(0) as u64;
    RETRY_STEPS_MS.iter().rev().copied().find(|&s| s <= delay).unwrap_or(RETRY_STEPS_MS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_step_takes_the_largest_step_that_fits_and_at_least_one_second() {
        assert_eq!(retry_step(-5), 1_000);
        assert_eq!(retry_step(300), 1_000);
        assert_eq!(retry_step(4_999), 1_000);
        assert_eq!(retry_step(60_000), 60_000);
        assert_eq!(retry_step(299_999), 60_000);
        assert_eq!(retry_step(4 * 3_600_000), 3_600_000);
    }
}
