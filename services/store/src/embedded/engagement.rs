//! Engagement records in SQLite: one row per (message, recipient, kind, URL), updated in the
//! writer's transaction together with the event it may emit (see [`crate::engagement`]).

use std::collections::BTreeMap;

use postwire_proto::{Engagement, EngagementKind};
use rusqlite::{params, Connection, OptionalExtension};

use super::state::insert_event;
use super::SqliteStore;
use crate::engagement::{
    counted, decide, engagement_event, engagement_views, StoredEngagement, Tally,
};
use crate::time::to_ms;
use crate::{Hit, HitRecorded, StoreError};

/// Creates the engagements table; called from [`super::schema::migrate`].
pub fn migrate_engagement(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        -- One row per engagement: a recipient's opens, or their clicks on one URL ('' for opens).
        -- `recipient` is the position in `recipients`; times are unix ms.
        CREATE TABLE IF NOT EXISTS engagements (
            message_id TEXT NOT NULL,
            recipient INTEGER NOT NULL,
            kind TEXT NOT NULL,
            url TEXT NOT NULL,
            first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            count INTEGER NOT NULL,
            events INTEGER NOT NULL,
            last_event INTEGER NOT NULL,
            PRIMARY KEY (message_id, recipient, kind, url)
        ) WITHOUT ROWID;
        ",
    )
}

fn tally_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Tally> {
    Ok(Tally {
        first_seen: r.get(at)?,
        last_seen: r.get(at + 1)?,
        count: r.get::<_, i64>(at + 2)? as u64,
        events: r.get::<_, i64>(at + 3)? as u64,
        last_event: r.get(at + 4)?,
    })
}

/// Inside the writer's transaction: counts the hit and, when the rule says so, stores its event
/// with its webhook deliveries.
fn record(conn: &Connection, hit: &Hit) -> Result<Option<HitRecorded>, StoreError> {
    let Some(email) = conn
        .prepare_cached("SELECT email FROM recipients WHERE message_id = ?1 AND position = ?2")?
        .query_row(params![hit.message_id, hit.recipient], |r| r.get::<_, String>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let (kind, url, at) = (hit.kind.as_str(), hit.stored_url(), to_ms(hit.at));
    let prev = conn
        .prepare_cached(
            "SELECT first_seen, last_seen, count, events, last_event FROM engagements
             WHERE message_id = ?1 AND recipient = ?2 AND kind = ?3 AND url = ?4",
        )?
        .query_row(params![hit.message_id, hit.recipient, kind, url], |r| tally_from_row(r, 0))
        .optional()?;
    let repeats: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(events - 1), 0) FROM engagements WHERE message_id = ?1",
        )?
        .query_row([&hit.message_id], |r| r.get(0))?;
    let emit = decide(prev.as_ref(), repeats.max(0) as u64, at);
    let tally = counted(prev, at, emit);
    conn.prepare_cached(
        "INSERT INTO engagements (message_id, recipient, kind, url, first_seen, last_seen, count, events, last_event)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (message_id, recipient, kind, url) DO UPDATE SET
             first_seen = excluded.first_seen, last_seen = excluded.last_seen, count = excluded.count,
             events = excluded.events, last_event = excluded.last_event",
    )?
    .execute(params![
        hit.message_id,
        hit.recipient,
        kind,
        url,
        tally.first_seen,
        tally.last_seen,
        tally.count as i64,
        tally.events as i64,
        tally.last_event
    ])?;
    let event = if emit {
        let (tags, metadata) = echoed_fields(conn, &hit.message_id)?;
        let event = engagement_event(hit, email, tags, metadata);
        insert_event(conn, &event)?;
        Some(event)
    } else {
        None
    };
    Ok(Some(HitRecorded { count: tally.count, event }))
}

/// The two request fields every event echoes (tags, metadata), read without the whole request
/// (its HTML may be large).
pub(crate) fn echoed_fields(
    conn: &Connection,
    message_id: &str,
) -> Result<(Vec<String>, BTreeMap<String, serde_json::Value>), StoreError> {
    let (tags, metadata): (Option<String>, Option<String>) = conn
        .prepare_cached(
            "SELECT json_extract(request, '$.tags'), json_extract(request, '$.metadata')
             FROM messages WHERE id = ?1",
        )?
        .query_row([message_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let tags = tags.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let metadata = metadata.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default();
    Ok((tags, metadata))
}

/// The message view's engagements; `emails` are its recipients by position.
pub(crate) fn engagements(
    conn: &Connection,
    message_id: &str,
    emails: &[String],
) -> Result<Vec<Engagement>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT recipient, kind, url, first_seen, last_seen, count, events, last_event
         FROM engagements WHERE message_id = ?1",
    )?;
    let stored = stmt
        .query_map([message_id], |r| {
            let kind: String = r.get(1)?;
            Ok((r.get::<_, i64>(0)?, kind, r.get::<_, String>(2)?, tally_from_row(r, 3)?))
        })?
        .filter_map(|row| match row {
            Ok((recipient, kind, url, tally)) => Some(Ok(StoredEngagement {
                recipient: u32::try_from(recipient).ok()?,
                kind: EngagementKind::parse(&kind)?,
                url,
                tally,
            })),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(engagement_views(stored, emails))
}

impl SqliteStore {
    pub(crate) async fn record_hit_sqlite(
        &self,
        hit: Hit,
    ) -> Result<Option<HitRecorded>, StoreError> {
        self.write(move |conn| record(conn, &hit)).await
    }
}

#[cfg(test)]
mod tests {
    use crate::embedded::temp_store;
    use crate::engagement::contract;

    #[tokio::test]
    async fn hits_on_one_link_are_one_engagement_with_one_event_per_window() {
        let (_dir, store) = temp_store();
        contract::hits_on_one_link_are_one_engagement_with_one_event_per_window(&store).await;
    }

    #[tokio::test]
    async fn engagements_are_kept_apart_per_recipient_kind_and_url() {
        let (_dir, store) = temp_store();
        contract::engagements_are_kept_apart_per_recipient_kind_and_url(&store).await;
    }

    #[tokio::test]
    async fn repeat_events_of_one_message_stop_at_the_cap() {
        let (_dir, store) = temp_store();
        contract::repeat_events_of_one_message_stop_at_the_cap(&store).await;
    }

    #[tokio::test]
    async fn concurrent_first_hits_emit_exactly_one_event() {
        let (_dir, store) = temp_store();
        contract::concurrent_first_hits_emit_exactly_one_event(&store).await;
    }

    #[tokio::test]
    async fn a_hit_for_an_unknown_message_or_recipient_records_nothing() {
        let (_dir, store) = temp_store();
        contract::a_hit_for_an_unknown_message_or_recipient_records_nothing(&store).await;
    }
}
