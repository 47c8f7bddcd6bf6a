//! The webhook delivery log, endpoint enable/disable and the event pull API in SQLite: the
//! [`WebhookLog`] implementation and [`disable`], which `state.rs` calls for auto-disable.
//!
//! Columns added for it: `webhooks.disabled_at`, `webhooks.failing_since`,
//! `webhook_deliveries.attempt_log` (JSON list of attempts) and `.created_at`, and
//! `events.type` and `.created_at` (filled in from the stored bodies for older rows).

use async_trait::async_trait;
use postwire_proto::{Event, Webhook, WebhookDeliveryState, WebhookDeliveryView};
use rusqlite::{params, Connection, OptionalExtension};

use super::schema::add_column;
use super::state::{insert_event, webhook_from_row, WEBHOOK_COLUMNS};
use super::SqliteStore;
use crate::time::{from_ms, now_ms, to_ms};
use crate::webhook_log::{delivery_id, delivery_seq, parse_attempts};
use crate::{DeliveryPage, EventPage, EventQuery, StoreError, WebhookLog};

/// Adds the columns and indexes; called from [`super::schema::migrate`].
pub fn migrate_webhook_log(conn: &Connection) -> rusqlite::Result<()> {
    add_column(conn, "webhooks", "disabled_at", "INTEGER")?;
    add_column(conn, "webhooks", "failing_since", "INTEGER")?;
    add_column(conn, "webhook_deliveries", "attempt_log", "TEXT")?;
    add_column(conn, "webhook_deliveries", "created_at", "INTEGER")?;
    let had_type: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'type'",
        [],
        |r| r.get(0),
    )?;
    add_column(conn, "events", "type", "TEXT")?;
    add_column(conn, "events", "created_at", "INTEGER")?;
    if !had_type {
        conn.execute_batch(
            "UPDATE events SET type = json_extract(body, '$.type'),
                 created_at = CAST((julianday(json_extract(body, '$.timestamp')) - 2440587.5) * 86400000 AS INTEGER)
             WHERE json_valid(body)",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_log ON webhook_deliveries (webhook_id, id);
         CREATE INDEX IF NOT EXISTS events_by_time ON events (created_at, seq);",
    )
}

/// Disables endpoint `id` unless it already is: its pending deliveries end `failed`, and
/// `event` (if any) is stored and queued for the endpoints still enabled. False when unknown
/// or already disabled.
pub(crate) fn disable(
    conn: &Connection,
    id: &str,
    event: Option<&Event>,
) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE webhooks SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
        params![id, now_ms()],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    conn.execute(
        "UPDATE webhook_deliveries SET state = 'failed', lease_until = 0 WHERE webhook_id = ?1 AND state = 'pending'",
        [id],
    )?;
    if let Some(event) = event {
        insert_event(conn, event)?;
    }
    Ok(true)
}

fn webhook(conn: &Connection, id: &str) -> Result<Option<Webhook>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"))?
        .query_row([id], webhook_from_row)
        .optional()?)
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type, COALESCE(d.created_at, 0), d.state, d.next_attempt_at, d.attempt_log";

type DeliveryRow = (i64, String, Option<String>, i64, String, i64, Option<String>);

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

fn delivery_view(row: DeliveryRow) -> Result<WebhookDeliveryView, StoreError> {
    let (id, event_id, kind, created_at, state, next, log) = row;
    let kind = kind
        .as_deref()
        .and_then(postwire_proto::EventType::parse)
        .ok_or_else(|| StoreError::Corrupt(format!("event {event_id} has no known type")))?;
    let state = WebhookDeliveryState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state {state:?}")))?;
    Ok(WebhookDeliveryView {
        id: delivery_id(id),
        event_id,
        kind,
        created_at: from_ms(created_at),
        next_attempt_at: (state == WebhookDeliveryState::Pending).then(|| from_ms(next)),
        state,
        attempts: parse_attempts(log.as_deref()),
    })
}

#[async_trait]
impl WebhookLog for SqliteStore {
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| webhook(conn, &id)).await
    }

    async fn set_webhook_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Option<Webhook>, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            if enabled {
                conn.execute(
                    "UPDATE webhooks SET disabled_at = NULL, failing_since = NULL WHERE id = ?1",
                    [&id],
                )?;
            } else {
                disable(conn, &id, None)?;
            }
            webhook(conn, &id)
        })
        .await
    }

    async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        let webhook_id = webhook_id.to_string();
        self.read(move |conn| {
            let rows: Vec<DeliveryRow> = conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id
                     WHERE d.webhook_id = ?1 AND (?2 IS NULL OR d.id < ?2)
                     ORDER BY d.id DESC LIMIT ?3"
                ))?
                .query_map(params![webhook_id, before, limit as i64 + 1], delivery_row)?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            let data = rows
                .into_iter()
                .take(limit)
                .map(delivery_view)
                .collect::<Result<Vec<_>, _>>()?;
            let next = if more { data.last().and_then(|d| delivery_seq(&d.id)) } else { None };
            Ok(DeliveryPage { data, next })
        })
        .await
    }

    async fn retry_webhook_delivery(
        &self,
        webhook_id: &str,
        delivery_id: &str,
    ) -> Result<Option<WebhookDeliveryView>, StoreError> {
        let Some(seq) = delivery_seq(delivery_id) else { return Ok(None) };
        let webhook_id = webhook_id.to_string();
        self.write(move |conn| {
            // Due now, not leased: an attempt in flight still records, and this one follows.
            let changed = conn.execute(
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ?3, lease_until = 0
                 WHERE id = ?1 AND webhook_id = ?2",
                params![seq, webhook_id, now_ms()],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id
                     WHERE d.id = ?1"
                ))?
                .query_row([seq], delivery_row)?;
            delivery_view(row).map(Some)
        })
        .await
    }

    async fn events(
        &self,
        query: &EventQuery,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError> {
        let after: Option<i64> = match after {
            Some(raw) => match raw.strip_prefix("seq_").and_then(|n| n.parse().ok()) {
                Some(n) => Some(n),
                None => return Ok(None),
            },
            None => None,
        };
        let since = query.since.map(to_ms);
        let kind = query.kind.map(|k| k.as_str());
        self.read(move |conn| {
            let rows: Vec<(i64, String)> = conn
                .prepare_cached(
                    "SELECT seq, body FROM events
                     WHERE seq > COALESCE(?1, 0) AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR type = ?3)
                     ORDER BY seq LIMIT ?4",
                )?
                .query_map(params![after, since, kind, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let next = rows.last().map(|(seq, _)| format!("seq_{seq}"));
            let data = rows
                .into_iter()
                .map(|(_, body)| serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect::<Result<Vec<Event>, _>>()?;
            Ok(Some(EventPage { data, next }))
        })
        .await
    }
}
