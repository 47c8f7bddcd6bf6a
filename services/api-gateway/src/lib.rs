//! The HTTP API gateway: validates JSON send requests and queues them durably, serves message
//! status, API key and webhook endpoint management, tracking links, health, metrics and the
//! OpenAPI spec.
//!
//! Built on axum. [`Gateway`] is the shared state of every handler; [`router`] assembles the
//! routes and [`serve`] runs them on a listener the caller owns until the shutdown token fires.
//!
//! - [`error`]: `ApiError`, the one place HTTP statuses are chosen (RFC 9457 problem+json).
//! - [`auth`]: bearer API keys.
//! - [`idempotency`]: the `Idempotency-Key` header of the send routes.
//! - [`validate`]: send request → `NewMessage`, or every bad field.
//! - [`routes`]: one module per resource, each exposing `router()`.
//! - [`openapi`]: the utoipa document.
//! - [`template`]: template syntax checks, and rendering a send's `template_id` + `variables`.
//! - [`renderer`]: where templates render: in process, or in memory-bounded child processes.
//! - [`ratelimit`]: per-API-key request and message limits (429 with `Retry-After`).
//! - [`capacity`]: the bound on requests handled at once, shared fairly per API key (429 over
//!   a key's share, 503 with `Retry-After` when full).
//! - [`slow_body`]: the request-body deadline (408 for a body that arrives too slowly).
//! - [`conn`]: the accept loop: request-head and body deadlines, connection caps, graceful
//!   shutdown.
//! - [`pop3`]: the sandbox as a POP3 mailbox (`sandbox.pop3_listen`).
//! - [`smtp_in`]: the SMTP listeners: submission (RFC 6409) feeding the same pipeline as the API, and the bounce intake (DSNs, ARF complaints).

pub mod auth;
pub mod capacity;
pub mod conn;
pub mod error;
pub mod idempotency;
pub mod openapi;
pub mod pop3;
pub mod ratelimit;
pub mod renderer;
pub mod routes;
mod sessions;
pub mod slow_body;
pub mod smtp_in;
pub mod template;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as AxState};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use postwire_config::Limits;
use postwire_store::{Idempotency, Queue, RateLimiter, State, Suppressions};
use postwire_telemetry::Metrics;
use postwire_tracking::TrackingKeys;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything a request handler may use.
#[derive(Clone)]
pub struct Gateway {
    pub queue: Arc<dyn Queue>,
    pub state: Arc<dyn State>,
    /// The suppression list.
    pub suppressions: Arc<dyn Suppressions>,
    /// Webhook delivery logs, replay, enable/disable and `GET /v1/events`.
    pub webhook_log: Arc<dyn postwire_store::WebhookLog>,
    /// `Idempotency-Key` records of the send routes.
    pub idempotency: Arc<dyn Idempotency>,
    /// Message search and cancel.
    pub messages: Arc<dyn postwire_store::Messages>,
    /// Stored templates, rendered into sends that name one.
    pub templates: Arc<dyn postwire_store::Templates>,
    /// Where those renders run ([`renderer::Renderer::isolated`] in the `postwire` binary).
    pub renderer: renderer::Renderer,
    /// Per-API-key rate-limit counters (`limits.per_key_per_second`, `limits.per_key_per_day`).
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Sending domains and their DKIM keys (`/v1/domains`).
    pub domains: Arc<dyn postwire_store::Domains>,
    /// The signed copies the workers kept (`GET /v1/messages/{id}/raw`, POP3).
    pub copies: Arc<dyn postwire_store::Copies>,
    /// Messages deleted from the sandbox POP3 mailbox.
    pub pop_marks: Arc<dyn postwire_store::PopMarks>,
    /// Which key signs each From domain, recorded with every accepted message.
    pub signing_keys: postwire_domain_auth::dkim_status::SigningKeys,
    /// Refuse messages no key would sign (`signing.require_dkim`).
    pub require_dkim: bool,
    /// Live DNS checks of a sending domain's records.
    pub domain_checker: postwire_domain_auth::domain_check::DomainChecker,
    pub metrics: Metrics,
    pub tracking: TrackingKeys,
    pub limits: Limits,
    /// The in-flight slots of the API's routes, one set per process (`/readyz` reports them).
    pub capacity: capacity::Capacity,
    /// Accept webhook endpoints on loopback/private addresses (`webhooks.allow_private_targets`).
    pub allow_private_targets: bool,
    /// Seals webhook secrets under `storage.encryption_key` before they are stored.
    pub sealer: Arc<postwire_store::sealing::Sealer>,
}

/// Every route, with request metrics and the body size limit applied, and the API's routes
/// (all but health, metrics and the docs) under the in-flight limit ([`capacity`]): the `/v1`
/// routes in their key's share, the tracking links in the anonymous one.
pub fn router(gw: Gateway) -> Router {
    let limit = usize::try_from(gw.limits.max_request_size.0).unwrap_or(usize::MAX);
    let per_key = middleware::from_fn_with_state(gw.clone(), capacity::limit_in_flight_per_key);
    let anonymous = middleware::from_fn_with_state(gw.clone(), capacity::limit_in_flight_anonymous);
    let v1 = Router::new()
        .merge(routes::messages::router())
        .merge(routes::raw::router())
        .merge(routes::search::router())
        .merge(routes::batch::router())
        .merge(routes::webhooks::router())
        .merge(routes::suppressions::router())
        .merge(routes::webhook_log::router())
        .merge(routes::domains::router())
        .merge(routes::templates::router())
        .merge(routes::template_preview::router())
        .merge(routes::keys::router())
        .route_layer(per_key);
    let tracking = routes::tracking::router().route_layer(anonymous);
    Router::new()
        .merge(v1)
        .merge(tracking)
        .merge(routes::ops::router())
        .route_layer(middleware::from_fn_with_state(gw.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gw)
        .merge(openapi::docs_router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Any path no route has: a problem+json 404 (`route_not_found`), not an empty body.
async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::NoRoute { method, path: shown_path(&uri) }
}

/// A known path asked with a method it lacks: problem+json 405; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::MethodNotAllowed { method, path: shown_path(&uri) }
}

/// The request path as echoed in a `detail`: its first 200 characters, so a huge URI is not
/// copied back whole.
fn shown_path(uri: &axum::http::Uri) -> String {
    const SHOWN: usize = 200;
    let path = uri.path();
    match path.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_string(),
    }
}

/// Only `/metrics`, `/healthz` and `/readyz`: for processes that run no API (`telemetry.metrics_listen`).
pub fn ops_router(gw: Gateway) -> Router {
    routes::ops::router()
        .route_layer(middleware::from_fn_with_state(gw.clone(), record_metrics))
        .with_state(gw)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains open requests,
/// under the connection bounds of [`conn`].
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    limits: conn::ConnLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    conn::serve(listener, router, limits, shutdown).await
}

/// Which API key a request was authenticated with, for its access-log line: set by the
/// [`auth::ApiKey`] extractor, read after the response.
#[derive(Clone, Default)]
pub(crate) struct KeySlot(std::sync::Arc<std::sync::OnceLock<String>>);

impl KeySlot {
    pub(crate) fn set(&self, key_id: &str) {
        let _ = self.0.set(key_id.to_owned());
    }
}

/// Request metrics, and one access-log line per request (target `postwire::access`: method,
/// route, status, latency, key id — never the key).
async fn record_metrics(AxState(gw): AxState<Gateway>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let slot = KeySlot::default();
    req.extensions_mut().insert(slot.clone());
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    gw.metrics.http_requests.with_label_values(&[route.as_str(), response.status().as_str()]).inc();
    gw.metrics
        .http_request_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "postwire::access",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        key = slot.0.get().map_or("-", String::as_str),
        "request"
    );
    response
}
