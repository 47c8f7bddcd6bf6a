//! The outbound delivery engine: claims delivery jobs, renders and DKIM-signs each message, and
//! delivers it over SMTP straight to the recipient domain's MX hosts.
//!
//! One job is one (message, recipient domain). The worker resolves the domain's MX hosts, renders
//! the MIME message (once, or once per recipient when opens/clicks are tracked), signs it, and
//! talks SMTP to the hosts in preference order until every recipient has an answer. Each
//! recipient's answer becomes a [`postwire_store::RecipientOutcome`]: delivered, bounced, or
//! deferred to the next slot of the retry schedule (bounced as `expired` once `retry.max_age` has
//! passed).
//!
//! DKIM keys and signing live in `postwire_domain_auth`, which the gateway uses too.
//!
//! Modules:
//! - [`resolve`]: MX lookup with hickory (null MX, implicit MX, TTL cache).
//! - [`render`]: MIME building with mail-builder, tracking, CRLF normalisation.
//! - [`pool`]: SMTP connections reused per MX host, with a cap per host.
//! - [`session`]: one SMTP session to one MX address (STARTTLS, per-RCPT replies, DATA).
//! - [`delivery`]: walks the MX hosts for one job and collects each recipient's verdict.
//! - [`disposition`]: the one place every failure becomes retry or bounce, next host or not.
//! - [`worker`]: [`MtaWorker`], the claim loop and the job → outcomes mapping.

pub mod delivery;
pub mod disposition;
pub mod pool;
pub mod raw_html;
pub mod render;
pub mod resolve;
pub mod session;
pub mod worker;

#[cfg(test)]
mod testutil;

pub use worker::MtaWorker;

/// Why the worker could not start or could not process a job.
///
/// Delivery failures (a refused connection, a 5xx) are not errors here: they are outcomes
/// recorded for the recipient. These are failures of the worker itself.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The DNS resolver could not be built from `dns.*`.
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(#[source] resolve::ResolveError),
    /// A configured DKIM key could not be loaded.
    #[error(transparent)]
    DkimKey(#[from] postwire_domain_auth::dkim::DkimError),
    /// `smtp.helo_name` is not usable in EHLO.
    #[error("smtp.helo_name {0:?} is not a valid EHLO name")]
    HeloName(String),
    /// The queue failed to hand out or record a job.
    #[error("queue error: {0}")]
    Queue(#[from] postwire_store::StoreError),
}
