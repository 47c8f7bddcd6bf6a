//! Reports that come back about a message already sent: bounces (RFC 3464 DSNs) and spam
//! complaints (RFC 5965 ARF), each tied to one recipient by its VERP return path. Both
//! backends apply [`decide`]'s verdict and build the same event and suppression entry here.
//!
//! - A bounce makes the recipient `bounced` — also after it was `delivered` (a late bounce) —
//!   with the report's status as `last_response`, and emits `message.bounced` with
//!   `"async": true` and its `bounce_type`. A hard one (RFC 3463 class 5) lists the address.
//!   A recipient already `bounced`, `suppressed` or `canceled` is left alone: a repeated
//!   report changes nothing and emits nothing.
//! - A complaint emits `message.complained` and lists the address with reason `complaint`.
//!   The recipient's status is what it was (the mail was delivered). One complaint per
//!   recipient of a message counts; repeats are ignored.

use chrono::{DateTime, Utc};
use postwire_proto::{
    BounceType, Event, EventData, EventType, RecipientStatus, Suppression, SuppressionReason,
};

use crate::ids;

/// One report about one recipient's copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    pub message_id: String,
    /// The recipient's position in the message (from the return path).
    pub recipient: u32,
    pub report: Report,
    pub at: DateTime<Utc>,
}

/// What the report says.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A delivery that failed after our SMTP transaction ended.
    Bounce {
        bounce_type: BounceType,
        /// Status and diagnostic, shown as the recipient's `last_response`.
        response: String,
        /// The host that gave up, when the report names it.
        remote_mta: Option<String>,
    },
    /// The recipient marked the message as spam.
    Complaint {
        /// The report's Feedback-Type (`abuse`, `fraud`, …).
        feedback_type: String,
    },
}

/// What recording a report did.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRecorded {
    /// The event stored and queued for webhooks; `None` when the report changed nothing.
    pub event: Option<Event>,
}

/// The change a report makes, given what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Nothing,
    /// Mark the recipient `bounced`.
    Bounce,
    /// Record the complaint (the status stays).
    Complain,
}

/// The rule: `status` is the recipient's stored status, `complained` whether a complaint
/// about this recipient was already recorded.
pub(crate) fn decide(report: &Report, status: RecipientStatus, complained: bool) -> Change {
    match report {
        Report::Bounce { .. } => match status {
            RecipientStatus::Bounced | RecipientStatus::Suppressed | RecipientStatus::Canceled => {
                Change::Nothing
            }
            RecipientStatus::Queued
            | RecipientStatus::Scheduled
            | RecipientStatus::Deferred
            | RecipientStatus::Delivered => Change::Bounce,
        },
        Report::Complaint { .. } if complained => Change::Nothing,
        Report::Complaint { .. } => Change::Complain,
    }
}

impl Feedback {
    /// The `last_response` a bounce leaves on the recipient.
    pub(crate) fn bounce_response(&self) -> Option<&str> {
        match &self.report {
            Report::Bounce { response, .. } => Some(response),
            Report::Complaint { .. } => None,
        }
    }

    /// The event the report emits; both backends build it here so their payloads match.
    pub(crate) fn event(
        &self,
        recipient: String,
        tags: Vec<String>,
        metadata: std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Event {
        let base = EventData {
            message_id: self.message_id.clone(),
            recipient,
            tags,
            metadata,
            ..EventData::default()
        };
        let (kind, data) = match &self.report {
            Report::Bounce { bounce_type, response, remote_mta } => (
                EventType::Bounced,
                EventData {
                    smtp_response: Some(response.clone()),
                    mx_host: remote_mta.clone(),
                    async_report: Some(true),
                    bounce_type: Some(*bounce_type),
                    ..base
                },
            ),
            Report::Complaint { feedback_type } => (
                EventType::Complained,
                EventData { feedback_type: Some(feedback_type.clone()), ..base },
            ),
        };
        Event { id: ids::new_id("evt"), kind, timestamp: self.at, data }
    }

    /// The suppression entry the report adds, if any: hard bounces and complaints.
    pub(crate) fn suppression(&self, email: &str) -> Option<Suppression> {
        let (reason, smtp_response) = match &self.report {
            Report::Bounce { bounce_type: BounceType::Hard, response, .. } => {
                (SuppressionReason::HardBounce, Some(response.clone()))
            }
            Report::Bounce { bounce_type: BounceType::Soft, .. } => return None,
            Report::Complaint { feedback_type } => {
                (SuppressionReason::Complaint, Some(format!("feedback report: {feedback_type}")))
            }
        };
        Some(Suppression {
            email: crate::suppression::key(email),
            reason,
            smtp_response,
            message_id: Some(self.message_id.clone()),
            created_at: crate::time::from_ms(self.at.timestamp_millis()),
        })
    }
}

#[cfg(test)]
#[path = "feedback_tests.rs"]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    fn bounce(bounce_type: BounceType) -> Report {
        Report::Bounce { bounce_type, response: "5.1.1 gone".into(), remote_mta: None }
    }

    #[test]
    fn a_bounce_changes_a_delivered_or_pending_recipient_and_nothing_final() {
        let b = bounce(BounceType::Hard);
        for status in
            [RecipientStatus::Delivered, RecipientStatus::Deferred, RecipientStatus::Queued]
        {
            assert_eq!(decide(&b, status, false), Change::Bounce, "{status:?}");
        }
        for status in
            [RecipientStatus::Bounced, RecipientStatus::Suppressed, RecipientStatus::Canceled]
        {
            assert_eq!(decide(&b, status, false), Change::Nothing, "{status:?}");
        }
    }

    #[test]
    fn only_the_first_complaint_about_a_recipient_counts() {
        let c = Report::Complaint { feedback_type: "abuse".into() };
        assert_eq!(decide(&c, RecipientStatus::Delivered, false), Change::Complain);
        assert_eq!(decide(&c, RecipientStatus::Delivered, true), Change::Nothing);
    }

    #[test]
    fn hard_bounces_and_complaints_suppress_and_soft_bounces_do_not() {
        let fb =
            |report| Feedback { message_id: "msg_1".into(), recipient: 0, report, at: Utc::now() };
        let hard = fb(bounce(BounceType::Hard)).suppression("Ann@X.test").unwrap();
        assert_eq!(
            (hard.email.as_str(), hard.reason),
            ("ann@x.test", SuppressionReason::HardBounce)
        );
        assert!(fb(bounce(BounceType::Soft)).suppression("ann@x.test").is_none());
        let complaint = fb(Report::Complaint { feedback_type: "abuse".into() });
        assert_eq!(complaint.suppression("a@x.test").unwrap().reason, SuppressionReason::Complaint);
        let event = complaint.event("a@x.test".into(), vec![], Default::default());
        assert_eq!(event.kind, EventType::Complained);
        assert_eq!(event.data.feedback_type.as_deref(), Some("abuse"));
    }
}
