//! The bounce listener's intake: mail to the bounce domain (`[bounces] domain`) is a report
//! about a copy Postwire sent, named by the VERP return path it was sent from.
//!
//! The copy is found from the envelope recipient (`b-{token}@domain`, what DSNs and
//! auto-replies are sent to) or, for a feedback report sent to a fixed address, from the
//! reported message's original envelope sender. A return path that does not verify (forged,
//! expired, or signed with another secret) names no copy: the message is counted as
//! `unknown` and dropped, and changes nothing. What a report changes is the store's rule
//! ([`postwire_store::feedback`]); the reply is `250` once it is recorded, or `451` when the
//! store cannot record it now, so the sender tries again.

use std::time::SystemTime;

use chrono::Utc;
use postwire_store::{Feedback, StoreError};
use postwire_tracking::{ReturnPath, VerpError};

use super::report::{classify, Action, DsnRecipient, Report};
use super::SmtpServer;

/// Replies to the end of DATA on the bounce listener.
pub const RECORDED: &str = "250 2.0.0 Ok: report received";
const TRY_LATER: &str = "451 4.3.0 Cannot record the report now; try again later";

/// Records a message received for `recipients` (all on the bounce domain) and says what to
/// reply.
pub(crate) async fn receive(server: &SmtpServer, recipients: &[String], raw: &[u8]) -> String {
    let report = classify(raw);
    let copies = copies(server, recipients, &report);
    let change = change(&report);
    let mut recorded = 0;
    for copy in &copies {
        let Some(change) = change.clone() else {
            recorded += 1;
            continue;
        };
        let feedback = Feedback {
            message_id: copy.message_id.clone(),
            recipient: copy.recipient,
            report: change,
            at: Utc::now(),
        };
        match server.gw.state.record_feedback(feedback).await {
            Ok(Some(done)) => {
                recorded += 1;
                tracing::info!(
                    message_id = %copy.message_id, recipient = copy.recipient, kind = report.kind(),
                    event = done.event.as_ref().map_or("none", |e| e.kind.as_str()),
                    "report received"
                );
            }
            Ok(None) => tracing::info!(
                message_id = %copy.message_id, kind = report.kind(),
                "report about a message no longer stored; dropped"
            ),
            Err(error) => return unavailable(&error),
        }
    }
    let kind = if recorded == 0 {
        tracing::info!(kind = report.kind(), "report naming no copy of ours; dropped");
        "unknown"
    } else {
        report.kind()
    };
    server.gw.metrics.inbound_messages.with_label_values(&[kind]).inc();
    RECORDED.into()
}

fn unavailable(error: &StoreError) -> String {
    tracing::warn!(%error, "recording a report failed; the sender is told to retry");
    TRY_LATER.into()
}

/// The verified copies the message is about: one per envelope recipient that is a return
/// path, else (feedback reports) the reported message's original envelope sender.
fn copies(server: &SmtpServer, recipients: &[String], report: &Report) -> Vec<ReturnPath> {
    let mut candidates: Vec<&str> = recipients.iter().map(String::as_str).collect();
    if let Report::Feedback(f) = report {
        candidates.extend(f.original_senders.iter().map(String::as_str));
    }
    let now = SystemTime::now();
    let mut copies: Vec<ReturnPath> = Vec::new();
    for address in candidates {
        let Some(local) = server.bounce_local_part(address) else { continue };
        match server.gw.tracking.verify_return_path(local, now) {
            Ok(copy) if !copies.contains(&copy) => copies.push(copy),
            Ok(_) => {}
            Err(VerpError::Expired) => tracing::info!(%address, "expired return path"),
            Err(VerpError::Token(fault)) => tracing::debug!(%address, %fault, "not a return path"),
        }
    }
    copies
}

/// The store change a report asks for; `None` for reports that only count (auto-replies,
/// delay notices, non-complaint feedback, unknown mail).
fn change(report: &Report) -> Option<postwire_store::Report> {
    let bounce = |r: &DsnRecipient| postwire_store::Report::Bounce {
        bounce_type: r.bounce_type(),
        response: r.response(),
        remote_mta: r.remote_mta.clone(),
    };
    match report {
        Report::Dsn(recipients) => {
            recipients.iter().find(|r| r.action == Action::Failed).map(bounce)
        }
        Report::TextBounce(r) => Some(bounce(r)),
        Report::Feedback(f) if f.is_complaint() => {
            Some(postwire_store::Report::Complaint { feedback_type: f.feedback_type.into() })
        }
        Report::Feedback(_) | Report::AutoReply | Report::Unknown => None,
    }
}
