//! Stored templates in SQLite: the [`Templates`] implementation, one row per template. An
//! alias is a nullable column under a unique index, checked inside the writing savepoint so a
//! taken alias is an answer, not a constraint error.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postwire_proto::{Template, TemplateRequest};
use rusqlite::{params, Connection, OptionalExtension};

use super::schema::add_column;
use super::SqliteStore;
use crate::template::{is_id, replaced};
use crate::time::{from_ms, to_ms};
use crate::{StoreError, TemplateCursor, TemplatePage, TemplateWrite, Templates};

/// Creates the `templates` table; called from [`super::schema::migrate`].
pub fn migrate_template(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "
        -- Templates sends render with their variables (text and html may be absent).
        CREATE TABLE IF NOT EXISTS templates (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            subject TEXT NOT NULL,
            text TEXT,
            html TEXT,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS templates_newest ON templates (created_at, id);
        ",
    )?;
    // Added after the first release: databases made before it get the column here.
    add_column(conn, "templates", "alias", "TEXT")?;
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS templates_alias ON templates (alias) WHERE alias IS NOT NULL;",
    )
}

const COLUMNS: &str = "id, name, subject, text, html, created_at, updated_at, alias";

fn template_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Template> {
    Ok(Template {
        id: r.get(0)?,
        name: r.get(1)?,
        subject: r.get(2)?,
        text: r.get(3)?,
        html: r.get(4)?,
        created_at: from_ms(r.get(5)?),
        updated_at: from_ms(r.get(6)?),
        alias: r.get(7)?,
    })
}

fn lookup(conn: &Connection, id_or_alias: &str) -> Result<Option<Template>, StoreError> {
    let by = if is_id(id_or_alias) { "id" } else { "alias" };
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM templates WHERE {by} = ?1"))?
        .query_row([id_or_alias], template_from_row)
        .optional()?)
}

/// Whether a template other than `id` holds `alias`.
fn alias_taken(conn: &Connection, alias: Option<&str>, id: &str) -> Result<bool, StoreError> {
    let Some(alias) = alias else { return Ok(false) };
    Ok(conn
        .prepare_cached("SELECT 1 FROM templates WHERE alias = ?1 AND id <> ?2")?
        .query_row([alias, id], |_| Ok(()))
        .optional()?
        .is_some())
}

#[async_trait]
impl Templates for SqliteStore {
    async fn create_template(&self, template: Template) -> Result<TemplateWrite, StoreError> {
        self.write(move |conn| {
            if alias_taken(conn, template.alias.as_deref(), &template.id)? {
                return Ok(TemplateWrite::AliasTaken);
            }
            conn.prepare_cached(&format!(
                "INSERT INTO templates ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                template.id,
                template.name,
                template.subject,
                template.text,
                template.html,
                to_ms(template.created_at),
                to_ms(template.updated_at),
                template.alias
            ])?;
            Ok(TemplateWrite::Written(template))
        })
        .await
    }

    async fn template(&self, id_or_alias: &str) -> Result<Option<Template>, StoreError> {
        let id = id_or_alias.to_string();
        self.read(move |conn| lookup(conn, &id)).await
    }

    async fn list_templates(
        &self,
        after: Option<&TemplateCursor>,
        limit: usize,
    ) -> Result<TemplatePage, StoreError> {
        let after = after.cloned();
        let fetch = limit.saturating_add(1) as i64;
        self.read(move |conn| {
            let mut data: Vec<Template> = match &after {
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM templates ORDER BY created_at DESC, id DESC LIMIT ?1"
                    ))?
                    .query_map([fetch], template_from_row)?
                    .collect::<Result<_, _>>()?,
                Some(c) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM templates
                         WHERE created_at < ?1 OR (created_at = ?1 AND id < ?2)
                         ORDER BY created_at DESC, id DESC LIMIT ?3"
                    ))?
                    .query_map(params![c.created_at_ms, c.id, fetch], template_from_row)?
                    .collect::<Result<_, _>>()?,
            };
            let next = if data.len() > limit {
                data.truncate(limit);
                data.last().map(TemplateCursor::after)
            } else {
                None
            };
            Ok(TemplatePage { data, next })
        })
        .await
    }

    async fn replace_template(
        &self,
        id_or_alias: &str,
        content: TemplateRequest,
        at: DateTime<Utc>,
    ) -> Result<TemplateWrite, StoreError> {
        let id = id_or_alias.to_string();
        // Read and write in one savepoint of the single writer: no delete can slip between.
        self.write(move |conn| {
            let Some(current) = lookup(conn, &id)? else { return Ok(TemplateWrite::NotFound) };
            if alias_taken(conn, content.alias.as_deref(), &current.id)? {
                return Ok(TemplateWrite::AliasTaken);
            }
            let template = replaced(current, content, at);
            conn.prepare_cached(
                "UPDATE templates SET name = ?2, subject = ?3, text = ?4, html = ?5, updated_at = ?6, alias = ?7
                 WHERE id = ?1",
            )?
            .execute(params![
                template.id,
                template.name,
                template.subject,
                template.text,
                template.html,
                to_ms(template.updated_at),
                template.alias
            ])?;
            Ok(TemplateWrite::Written(template))
        })
        .await
    }

    async fn delete_template(&self, id_or_alias: &str) -> Result<bool, StoreError> {
        let key = id_or_alias.to_string();
        let by = if is_id(id_or_alias) { "id" } else { "alias" };
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(&format!("DELETE FROM templates WHERE {by} = ?1"))?
                .execute([key])?
                == 1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::embedded::temp_store as store;
    use crate::template::contract;

    #[tokio::test]
    async fn embedded_template_round_trips_and_is_replaced_in_place() {
        let (_dir, store) = store();
        contract::a_template_round_trips_and_is_replaced_in_place(&store).await;
    }

    #[tokio::test]
    async fn embedded_deleted_template_is_gone() {
        let (_dir, store) = store();
        contract::a_deleted_template_is_gone(&store).await;
    }

    #[tokio::test]
    async fn embedded_templates_page_newest_first() {
        let (_dir, store) = store();
        contract::templates_page_newest_first(&store).await;
    }

    #[tokio::test]
    async fn embedded_alias_names_one_template_until_it_is_let_go() {
        let (_dir, store) = store();
        contract::an_alias_names_one_template_until_it_is_let_go(&store).await;
    }
}
