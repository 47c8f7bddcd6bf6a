//! `GET /t/o/{token}` (open pixel) and `GET /t/c/{token}` (click redirect). No API key: the
//! token is HMAC-signed, and a click can only redirect to the URL signed into it.
//!
//! A live token's hit is recorded as an engagement ([`postwire_store::engagement`]): counted
//! every time, an event and webhook at most once per engagement per hour. A stale token (past
//! its expiry, `storage.retention` after the message was accepted, or minted before tokens
//! expired) records nothing, but the pixel is still served and a click still redirects: the
//! signature proves the URL was in the message. Anything that does not verify is a 404.

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use postwire_proto::EngagementKind;
use postwire_store::Hit;
use postwire_tracking::{Link, Tracked, Verified};

use crate::error::ApiError;
use crate::Gateway;

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

pub fn router() -> Router<Gateway> {
    Router::new().route("/t/o/{token}", get(open)).route("/t/c/{token}", get(click))
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

/// Verifies `token`; 404 unless it is genuine and of the route's kind (`want_click`).
fn verified(gw: &Gateway, token: &str, want_click: bool) -> Result<Verified, ApiError> {
    let verified = gw.tracking.verify(token, SystemTime::now()).map_err(|_| ApiError::NotFound)?;
    match (verified.link(), want_click) {
        (Link::Open, false) | (Link::Click { .. }, true) => Ok(verified),
        _ => Err(ApiError::NotFound),
    }
}

/// Records a live token's hit (a stale one records nothing). A store that cannot take it is
/// logged, not answered: the reader still gets the pixel or the redirect.
async fn record(gw: &Gateway, verified: &Verified, headers: &HeaderMap) {
    let Verified::Live(Tracked { message_id, recipient, link }) = verified else {
        return;
    };
    let (kind, url) = match link {
        Link::Open => (EngagementKind::Open, None),
        Link::Click { url } => (EngagementKind::Click, Some(url.clone())),
    };
    let hit = Hit {
        message_id: message_id.clone(),
        recipient: *recipient,
        kind,
        url,
        user_agent: user_agent(headers),
        at: Utc::now(),
    };
    if let Err(e) = gw.state.record_hit(hit).await {
        tracing::warn!(error = %e, message_id = %message_id, "tracking hit not recorded");
    }
}

async fn open(
    State(gw): State<Gateway>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let verified = verified(&gw, &token, false)?;
    record(&gw, &verified, &headers).await;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store, max-age=0")],
        PIXEL,
    )
        .into_response())
}

async fn click(
    State(gw): State<Gateway>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let verified = verified(&gw, &token, true)?;
    record(&gw, &verified, &headers).await;
    let Link::Click { url } = verified.link() else { return Err(ApiError::NotFound) };
    Ok(Redirect::to(url).into_response())
}
