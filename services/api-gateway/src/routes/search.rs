//! `GET /v1/messages`: search stored messages, newest first.
//!
//! Filters combine with AND. `status` matches a message when *any* of its recipients shows
//! that status (so one message can match both `delivered` and `deferred`); `recipient` is one
//! envelope address (to, cc or bcc; the domain compared in any case); `since` is inclusive and
//! `until` exclusive, both on `created_at`. Pages are cut by an opaque cursor that stays
//! valid while new messages arrive. Only messages the key may see are searched (its own, or
//! with `admin` every one; a sandbox key only sandbox messages).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use postwire_proto::{FieldError, MessageList, RecipientStatus};
use postwire_store::{MessageCursor, MessageQuery};
use serde::Deserialize;

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::validate::EmailAddress;
use crate::Gateway;

/// Messages per page when `limit` is absent, and the most a page may hold.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/messages", get(search_messages))
}

/// The query string as received; every value is checked by [`parse`], which names each bad one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    status: Option<String>,
    recipient: Option<String>,
    tag: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// A checked search: the filters, where to start, and the page size.
#[derive(Debug, PartialEq)]
pub struct Search {
    pub query: MessageQuery,
    pub after: Option<MessageCursor>,
    pub limit: usize,
}

/// A value given and not empty (an empty one counts as absent, as the spec's `anyOf` says).
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn time(field: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(raw) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            errors.push(FieldError {
                field: field.into(),
                message: format!("must be an RFC 3339 time like 2025-01-31T09:00:00Z ({e})"),
            });
            None
        }
    }
}

/// Checks every parameter; all bad ones are listed. Empty values count as absent.
pub fn parse(params: &SearchParams) -> Result<Search, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut bad =
        |field: &str, message: String| errors.push(FieldError { field: field.into(), message });
    let status = present(&params.status).and_then(|s| {
        let parsed = RecipientStatus::parse(s);
        if parsed.is_none() {
            bad("status", "must be one of queued, scheduled, deferred, delivered, bounced, suppressed, canceled".into());
        }
        parsed
    });
    let recipient = present(&params.recipient).and_then(|r| match EmailAddress::parse(r) {
        Ok(a) => Some(a.as_str().to_string()),
        Err(e) => {
            bad("recipient", e);
            None
        }
    });
    let tag = present(&params.tag).map(String::from);
    let after = present(&params.cursor).and_then(|c| {
        let parsed = MessageCursor::decode(c);
        if parsed.is_none() {
            bad(
                "cursor",
                "not a cursor from this search (pass `next_cursor` back unchanged)".into(),
            );
        }
        parsed
    });
    let limit = match present(&params.limit) {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                bad("limit", format!("must be a whole number from 1 to {MAX_LIMIT}"));
                DEFAULT_LIMIT
            }
        },
    };
    let since = present(&params.since).and_then(|s| time("since", s, &mut errors));
    let until = present(&params.until).and_then(|u| time("until", u, &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    let query = MessageQuery { status, recipient, tag, since, until, ..MessageQuery::default() };
    Ok(Search { query, after, limit })
}

/// Search messages, newest first. `status` matches when any recipient has it. A key finds only
/// the messages it sent, unless it has the `admin` scope (a sandbox admin key: every sandbox
/// message).
#[utoipa::path(
    get, path = "/v1/messages", tag = "messages",
    params(
        ("status" = Option<RecipientStatus>, Query, description = "Messages with at least one recipient in this status"),
        ("recipient" = Option<String>, Query, description = "Messages to this address (to, cc or bcc); the domain is compared in any case"),
        ("tag" = Option<String>, Query, description = "Messages carrying this tag"),
        ("since" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Created at or after this RFC 3339 time"),
        ("until" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Created before this RFC 3339 time"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "Messages per page, 1–100 (default 50)"),
    ),
    responses(
        (status = 200, description = "One page, newest first; a page may be short and still have a `next_cursor`", body = MessageList),
        (status = 422, description = "Bad filter, cursor or limit, each listed", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search_messages(
    State(gw): State<Gateway>,
    key: ApiKey,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<MessageList>, ApiError> {
    key.require("read")?;
    let Query(params) = params.map_err(|e| ApiError::field("(query)", e.body_text()))?;
    let mut search = parse(&params).map_err(ApiError::Invalid)?;
    search.query.visibility = key.visibility();
    let page =
        gw.messages.search_messages(&search.query, search.after.as_ref(), search.limit).await?;
    Ok(Json(MessageList { data: page.data, next_cursor: page.next.map(|c| c.encode()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> SearchParams {
        let query = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        Query::<SearchParams>::try_from_uri(&format!("/v1/messages?{query}").parse().unwrap())
            .unwrap()
            .0
    }

    #[test]
    fn every_filter_is_parsed_and_the_recipient_domain_lower_cased() {
        let cursor = MessageCursor { created_at_ms: 5, id: "msg_x".into() };
        let p = params(&[
            ("status", "delivered"),
            ("recipient", "Ann@Example.ORG"),
            ("tag", "welcome"),
            ("since", "2025-01-01T00:00:00Z"),
            ("until", "2025-01-02T00:00:00%2B01:00"),
            ("cursor", &cursor.encode()),
            ("limit", "3"),
        ]);
        let s = parse(&p).unwrap();
        assert_eq!(s.query.status, Some(RecipientStatus::Delivered));
        assert_eq!(s.query.recipient.as_deref(), Some("Ann@example.org"));
        assert_eq!(s.query.tag.as_deref(), Some("welcome"));
        assert_eq!(s.query.since.unwrap().to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(s.query.until.unwrap().to_rfc3339(), "2025-01-01T23:00:00+00:00");
        assert_eq!(s.after, Some(cursor));
        assert_eq!(s.limit, 3);
        assert_eq!(parse(&params(&[("status", "")])).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn every_bad_value_is_named() {
        let p = params(&[
            ("status", "lost"),
            ("recipient", "nobody"),
            ("cursor", "garbage!"),
            ("limit", "101"),
            ("since", "yesterday"),
            ("until", "2025-13-01T00:00:00Z"),
        ]);
        let fields: Vec<String> = parse(&p).unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["status", "recipient", "cursor", "limit", "since", "until"]);
        assert_eq!(parse(&params(&[("limit", "0")])).unwrap_err()[0].field, "limit");
    }

    #[test]
    fn search_and_cancel_are_in_the_openapi_document() {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::openapi::spec_json()).expect("spec is JSON");
        let search = &spec["paths"]["/v1/messages"]["get"];
        assert!(search.is_object(), "GET /v1/messages missing");
        let names: Vec<&str> = search["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["status", "recipient", "tag", "since", "until", "cursor", "limit"]);
        assert!(spec["paths"]["/v1/messages"]["post"].is_object(), "sending is still there");
        assert!(spec["paths"]["/v1/messages/{id}"]["delete"]["responses"]["409"].is_object());
        for schema in ["MessageList", "MessageSummary"] {
            assert!(spec["components"]["schemas"][schema].is_object(), "schema {schema} missing");
        }
    }
}
