//! Delivers one job's messages to the recipient domain: walks the MX hosts (and each host's
//! addresses) in order until every recipient has a verdict.
//!
//! A recipient answered by a host (delivered, or refused by reply) is settled. When a session
//! breaks off, [`disposition`] decides whether the undecided recipients move on to the next
//! host or are settled now. When every host has been tried, whoever is left is retried with
//! the last error as their response. A recipient whose copy needs SMTPUTF8 at a host that does
//! not offer it moves on to the next host too, and bounces (with that host's reply) only when
//! every host reached lacks it and none broke off.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use postwire_telemetry::Metrics;

use crate::disposition::{disposition, Action, Failure};
use crate::pool::SmtpPool;
use crate::resolve::{MxHost, MxResolver};
use crate::session::{Answer, Reply, Transaction};

/// What became of one recipient in this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Not delivered: retry later or bounce now.
    Failed(Action),
}

/// One recipient's result, with the text to show as its `last_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientVerdict {
    pub email: String,
    pub verdict: Verdict,
    pub response: String,
    pub mx_host: Option<String>,
    /// Refused with a 5xx reply to RCPT TO: the address goes on the suppression list.
    pub hard_bounce: bool,
}

/// A message ready to send: CRLF-only, signed, with its envelope.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// MAIL FROM.
    pub sender: String,
    pub recipients: Vec<String>,
    pub bytes: Vec<u8>,
}

/// Delivers to MX hosts.
#[derive(Clone)]
pub struct Deliverer {
    pub resolver: MxResolver,
    /// Sessions, reused across jobs to the same host.
    pub pool: SmtpPool,
    pub metrics: Metrics,
}

impl Deliverer {
    /// Delivers `messages` over `hosts`, tried in the given order.
    pub async fn deliver_to_hosts(
        &self,
        hosts: &[MxHost],
        messages: &[Outgoing],
    ) -> Vec<RecipientVerdict> {
        let mut verdicts = Vec::new();
        let mut pending: HashSet<String> =
            messages.iter().flat_map(|m| m.recipients.iter().cloned()).collect();
        let mut last_error: Option<(String, String)> = None;
        // Recipients a host could not take for want of SMTPUTF8 (RFC 6531 §3.2: no downgrade),
        // with that host's reply: they stay pending, since another MX host of the domain may
        // offer it, and bounce with this reply only if none does.
        let mut unsendable: HashMap<String, (Reply, String)> = HashMap::new();

        'hosts: for host in hosts {
            for &ip in &host.addresses {
                if pending.is_empty() {
                    break 'hosts;
                }
                // Only what is still pending goes to this host.
                let recipient_lists: Vec<Vec<String>> = messages
                    .iter()
                    .map(|m| {
                        m.recipients.iter().filter(|r| pending.contains(*r)).cloned().collect()
                    })
                    .collect();
                let transactions: Vec<Transaction<'_>> = messages
                    .iter()
                    .zip(&recipient_lists)
                    .filter(|(_, r)| !r.is_empty())
                    .map(|(m, r)| Transaction {
                        sender: &m.sender,
                        recipients: r,
                        message: &m.bytes,
                    })
                    .collect();

                let started = Instant::now();
                let attempt = self.pool.deliver(ip, &host.name, &transactions).await;
                self.metrics.smtp_transaction_seconds.observe(started.elapsed().as_secs_f64());

                for (email, answer) in attempt.answers {
                    let (verdict, reply, hard_bounce) = match answer {
                        Answer::Delivered(reply) => (Verdict::Delivered, reply, false),
                        Answer::RcptRejected(reply) => {
                            let action = disposition(&Failure::Rcpt(reply.clone()), false).action;
                            (Verdict::Failed(action), reply, action == Action::Bounce)
                        }
                        Answer::DataRejected(reply) => {
                            let action = disposition(&Failure::Data(reply.clone()), true).action;
                            (Verdict::Failed(action), reply, false)
                        }
                        Answer::Unsendable(reply) => {
                            unsendable.insert(email, (reply, host.name.clone()));
                            continue;
                        }
                    };
                    unsendable.remove(&email);
                    pending.remove(&email);
                    verdicts.push(RecipientVerdict {
                        email,
                        verdict,
                        response: reply.to_string(),
                        mx_host: Some(host.name.clone()),
                        hard_bounce,
                    });
                }

                let Some(error) = attempt.failure else {
                    continue;
                };
                let text = format!("{} [{}]: {}", host.name, ip, error);
                tracing::info!(host = %host.name, %ip, %error, "SMTP session failed");
                let failure = Failure::Session(error);
                // Recipients already accepted when the session broke are settled now.
                for email in attempt.in_doubt {
                    if pending.remove(&email) {
                        verdicts.push(failed(email, &failure, true, &text, Some(&host.name)));
                    }
                }
                if disposition(&failure, false).next_host {
                    last_error = Some((text, host.name.clone()));
                    continue;
                }
                let mut rest: Vec<String> = pending.drain().collect();
                rest.sort();
                for email in rest {
                    verdicts.push(failed(email, &failure, false, &text, Some(&host.name)));
                }
                break 'hosts;
            }
        }

        // Every host was tried and none took them: temporary, whatever the last error was —
        // unless every host reached lacked SMTPUTF8 and none broke off (one that could not be
        // reached might offer it): then a bounce with that host's reply, which says nothing
        // against the address (it stays off the suppression list).
        let reached_all = last_error.is_none();
        let (text, mx_host) =
            last_error.unwrap_or_else(|| ("no MX host could be reached".into(), String::new()));
        let mut rest: Vec<String> = pending.into_iter().collect();
        rest.sort();
        for email in rest {
            if let Some((reply, host)) = unsendable.remove(&email).filter(|_| reached_all) {
                verdicts.push(RecipientVerdict {
                    email,
                    verdict: Verdict::Failed(Action::Bounce),
                    response: reply.to_string(),
                    mx_host: Some(host),
                    hard_bounce: false,
                });
                continue;
            }
            verdicts.push(RecipientVerdict {
                email,
                verdict: Verdict::Failed(Action::Retry),
                response: text.clone(),
                mx_host: (!mx_host.is_empty()).then(|| mx_host.clone()),
                hard_bounce: false,
            });
        }
        verdicts
    }
}

fn failed(
    email: String,
    failure: &Failure,
    accepted: bool,
    text: &str,
    host: Option<&str>,
) -> RecipientVerdict {
    RecipientVerdict {
        email,
        verdict: Verdict::Failed(disposition(failure, accepted).action),
        response: text.to_owned(),
        mx_host: host.map(str::to_owned),
        hard_bounce: false,
    }
}

/// The same verdict for every recipient, for failures before any host was contacted.
pub fn settle_all<'a>(
    recipients: impl IntoIterator<Item = &'a String>,
    failure: &Failure,
    mx_host: Option<&str>,
) -> Vec<RecipientVerdict> {
    let text = failure.to_string();
    recipients.into_iter().map(|r| failed(r.clone(), failure, false, &text, mx_host)).collect()
}
