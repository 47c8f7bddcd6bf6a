//! `GET /t/o/{token}` (open pixel) and `GET /t/c/{token}` (click redirect). No API key: the
//! token is HMAC-signed, and a click can only redirect to the URL signed into it.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use postwire_proto::EventType;
use postwire_store::EventDetail;
use postwire_tracking::Tracked;

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

async fn open(
    State(gw): State<Gateway>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Ok(Tracked::Open { message_id, recipient }) = gw.tracking.verify(&token) else {
        return Err(ApiError::NotFound);
    };
    let detail = EventDetail { url: None, user_agent: user_agent(&headers) };
    gw.state.record_event(&message_id, &recipient, EventType::Opened, detail).await?;
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
    let Ok(Tracked::Click { message_id, recipient, url }) = gw.tracking.verify(&token) else {
        return Err(ApiError::NotFound);
    };
    let detail = EventDetail { url: Some(url.clone()), user_agent: user_agent(&headers) };
    gw.state.record_event(&message_id, &recipient, EventType::Clicked, detail).await?;
    Ok(Redirect::to(&url).into_response())
}
