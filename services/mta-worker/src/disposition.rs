//! What each failure means for a recipient: retry later or bounce now, and whether to try the
//! next MX host first.
//!
//! Everything is decided in one exhaustive `match` in [`disposition`], so a new failure kind
//! cannot be added without deciding its fate. The rules:
//!
//! - DNS: null MX (RFC 7505), NXDOMAIN and "no mail host at all" bounce at once; SERVFAIL,
//!   timeouts and MX hosts without addresses retry.
//! - Connection: refused, timed out, greeted with 4xx/5xx, or dropped before the recipient was
//!   accepted → try the next MX host (RFC 5321 §5.1). Once a recipient has been accepted, a drop
//!   or timeout leaves its fate unknown, so it is retried later rather than sent again now.
//! - Replies: 5xx bounces, 4xx retries (RFC 5321 §4.2.1), for RCPT and for DATA alike.
//! - Our own failures: a message that cannot be rendered bounces (retrying cannot fix it); a
//!   signing failure retries (it is our configuration, not the recipient's fault).
//!
//! When every host was tried and none took the message, the recipients are retried with the last
//! error as their response (see [`crate::delivery`]).

use crate::render::RenderError;
use crate::resolve::ResolveError;
use crate::session::{Reply, SessionError};
use postwire_domain_auth::dkim::DkimError;

/// What to do with the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Temporary: defer to the next slot of the retry schedule.
    Retry,
    /// Permanent: bounce now.
    Bounce,
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    pub action: Action,
    /// Try the recipient on the next MX host (or address) before settling on `action`.
    pub next_host: bool,
}

impl Disposition {
    const fn retry() -> Self {
        Self { action: Action::Retry, next_host: false }
    }
    const fn bounce() -> Self {
        Self { action: Action::Bounce, next_host: false }
    }
    const fn next_host() -> Self {
        Self { action: Action::Retry, next_host: true }
    }
}

/// Every way a delivery attempt can fail for a recipient.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Dkim(#[from] DkimError),
    /// The session with one host failed as a whole.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The RCPT TO reply for this recipient.
    #[error("{0}")]
    Rcpt(Reply),
    /// The reply to DATA or to the end of the message, for every accepted recipient.
    #[error("{0}")]
    Data(Reply),
    /// A sandbox message's copy could not be stored (its copy is all a sandbox send produces).
    #[error("storing the sandbox copy failed: {0}")]
    Store(#[source] postwire_store::StoreError),
}

/// Decides `failure` for a recipient; `accepted` says whether the failing host had already
/// accepted that recipient (RCPT 2xx) in the interrupted transaction.
pub fn disposition(failure: &Failure, accepted: bool) -> Disposition {
    match failure {
        Failure::Resolve(e) => match e {
            ResolveError::NullMx { .. }
            | ResolveError::NoSuchDomain { .. }
            | ResolveError::NoMailHost { .. }
            | ResolveError::InvalidDomain { .. } => Disposition::bounce(),
            ResolveError::MxLookup { .. }
            | ResolveError::NoAddresses { .. }
            | ResolveError::Config(_) => Disposition::retry(),
        },
        Failure::Render(e) => match e {
            RenderError::HeaderInjection { .. }
            | RenderError::Address { .. }
            | RenderError::Attachment { .. } => Disposition::bounce(),
            RenderError::Build(_) => Disposition::retry(),
        },
        Failure::Dkim(e) => match e {
            DkimError::ReadKey { .. }
            | DkimError::ParseKey { .. }
            | DkimError::Sign { .. }
            | DkimError::Task(_)
            // The store is unreachable or holds a bad key: never send unsigned, try later.
            | DkimError::KeyLookup { .. }
            | DkimError::StoredKey { .. } => Disposition::retry(),
        },
        Failure::Session(e) => match e {
            SessionError::Connect { .. }
            | SessionError::ConnectTimeout { .. }
            | SessionError::Greeting { .. }
            | SessionError::TlsUnavailable { .. }
            | SessionError::TlsHandshake { .. } => Disposition::next_host(),
            // Before acceptance nothing was handed over: another host may do better. After it,
            // the message may have arrived; sending it again now could duplicate it.
            SessionError::Timeout { .. } | SessionError::ConnectionLost { .. } if !accepted => {
                Disposition::next_host()
            }
            SessionError::Timeout { .. } | SessionError::ConnectionLost { .. } => {
                Disposition::retry()
            }
            // MAIL FROM is about our sender, which every host of the domain judges alike.
            SessionError::MailFrom { reply } => by_reply(reply),
            SessionError::BadSender { .. } => Disposition::bounce(),
        },
        Failure::Rcpt(reply) | Failure::Data(reply) => by_reply(reply),
        Failure::Store(_) => Disposition::retry(),
    }
}

/// RFC 5321 §4.2.1: 5yz is permanent, 4yz transient. Anything else at a point where a final
/// reply was due is a confused server: retry.
fn by_reply(reply: &Reply) -> Disposition {
    match reply.code / 100 {
        5 => Disposition::bounce(),
        _ => Disposition::retry(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Stage;

    fn reply(code: u16, text: &str) -> Reply {
        Reply { code, text: text.into() }
    }

    #[test]
    fn null_mx_and_nxdomain_bounce_without_trying_hosts() {
        for e in [
            ResolveError::NullMx { domain: "d".into() },
            ResolveError::NoSuchDomain { domain: "d".into() },
        ] {
            assert_eq!(disposition(&Failure::Resolve(e), false), Disposition::bounce());
        }
        let e = ResolveError::NoAddresses { domain: "d".into() };
        assert_eq!(disposition(&Failure::Resolve(e), false), Disposition::retry());
    }

    #[test]
    fn refused_connections_and_bad_greetings_move_to_the_next_host() {
        let refused = SessionError::Connect {
            addr: "127.0.0.1:25".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(disposition(&Failure::Session(refused), false), Disposition::next_host());
        let greeting = SessionError::Greeting { reply: reply(554, "go away") };
        assert_eq!(disposition(&Failure::Session(greeting), false), Disposition::next_host());
    }

    #[test]
    fn a_drop_after_acceptance_is_retried_later_not_on_another_host() {
        let lost = || SessionError::ConnectionLost { stage: Stage::DataEnd, reason: "eof".into() };
        assert_eq!(disposition(&Failure::Session(lost()), false), Disposition::next_host());
        assert_eq!(disposition(&Failure::Session(lost()), true), Disposition::retry());
    }

    #[test]
    fn recipient_replies_bounce_on_5xx_and_retry_on_4xx() {
        assert_eq!(
            disposition(&Failure::Rcpt(reply(550, "5.1.1 no such user")), false),
            Disposition::bounce()
        );
        assert_eq!(
            disposition(&Failure::Rcpt(reply(451, "4.7.1 later")), false),
            Disposition::retry()
        );
        assert_eq!(
            disposition(&Failure::Data(reply(554, "5.7.1 spam")), true),
            Disposition::bounce()
        );
        assert_eq!(
            disposition(&Failure::Data(reply(452, "4.3.1 full")), true),
            Disposition::retry()
        );
    }
}
