//! Bounces and complaints in SQLite: read the recipient, let [`crate::feedback::decide`] rule,
//! and apply the change — status, event with its webhook deliveries, suppression entry — in
//! the writer's one transaction.

use postwire_proto::{EventType, RecipientStatus};
use rusqlite::{params, Connection, OptionalExtension};

use super::engagement::echoed_fields;
use super::state::insert_event;
use super::suppression::insert;
use super::SqliteStore;
use crate::feedback::{decide, Change};
use crate::time::to_ms;
use crate::{Feedback, FeedbackRecorded, StoreError};

fn record(conn: &Connection, fb: &Feedback) -> Result<Option<FeedbackRecorded>, StoreError> {
    let Some((email, status)) = conn
        .prepare_cached(
            "SELECT email, status FROM recipients WHERE message_id = ?1 AND position = ?2",
        )?
        .query_row(params![fb.message_id, fb.recipient], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let status = RecipientStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown recipient status {status:?}")))?;
    let complained: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM events WHERE message_id = ?1
                 AND json_extract(body, '$.type') = ?2
                 AND json_extract(body, '$.data.recipient') = ?3)",
        )?
        .query_row(params![fb.message_id, EventType::Complained.as_str(), email], |r| r.get(0))?;
    match decide(&fb.report, status, complained) {
        Change::Nothing => return Ok(Some(FeedbackRecorded { event: None })),
        Change::Bounce => {
            conn.prepare_cached(
                "UPDATE recipients SET status = ?3, last_response = ?4, next_attempt_at = NULL,
                     updated_at = ?5
                 WHERE message_id = ?1 AND position = ?2",
            )?
            .execute(params![
                fb.message_id,
                fb.recipient,
                RecipientStatus::Bounced.as_str(),
                fb.bounce_response(),
                to_ms(fb.at)
            ])?;
        }
        Change::Complain => {}
    }
    let (tags, metadata) = echoed_fields(conn, &fb.message_id)?;
    let event = fb.event(email.clone(), tags, metadata);
    insert_event(conn, &event)?;
    if let Some(entry) = fb.suppression(&email) {
        insert(conn, entry)?;
    }
    Ok(Some(FeedbackRecorded { event: Some(event) }))
}

impl SqliteStore {
    pub(crate) async fn record_feedback_sqlite(
        &self,
        feedback: Feedback,
    ) -> Result<Option<FeedbackRecorded>, StoreError> {
        self.write(move |conn| record(conn, &feedback)).await
    }
}

#[cfg(test)]
mod tests {
    use crate::embedded::temp_store;
    use crate::feedback::contract;

    #[tokio::test]
    async fn a_late_hard_bounce_bounces_and_suppresses_only_that_recipient() {
        let (_dir, store) = temp_store();
        contract::a_late_hard_bounce_bounces_and_suppresses_only_that_recipient(&store).await;
    }

    #[tokio::test]
    async fn a_late_soft_bounce_does_not_suppress() {
        let (_dir, store) = temp_store();
        contract::a_late_soft_bounce_does_not_suppress(&store).await;
    }

    #[tokio::test]
    async fn a_complaint_emits_once_and_suppresses() {
        let (_dir, store) = temp_store();
        contract::a_complaint_emits_once_and_suppresses(&store).await;
    }

    #[tokio::test]
    async fn feedback_about_an_unknown_copy_records_nothing() {
        let (_dir, store) = temp_store();
        contract::feedback_about_an_unknown_copy_records_nothing(&store).await;
    }
}
