//! The OpenAPI document, generated from the handlers and wire types, and the docs UI.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::routes::{
    batch, domains, keys, messages, ops, search, suppressions, templates, webhook_log, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postwire",
        description = "Transactional email delivery: send JSON, get signed delivery webhooks.",
        version = "1.0.0"
    ),
    paths(
        messages::send_message,
        batch::send_batch,
        messages::get_message,
        search::search_messages,
        messages::cancel_message,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::delete_webhook,
        webhook_log::update_webhook,
        webhook_log::list_deliveries,
        webhook_log::retry_delivery,
        webhook_log::list_events,
        suppressions::list_suppressions,
        suppressions::create_suppression,
        suppressions::get_suppression,
        suppressions::delete_suppression,
        templates::create_template,
        templates::list_templates,
        templates::get_template,
        templates::replace_template,
        templates::delete_template,
        domains::create_domain,
        domains::list_domains,
        domains::get_domain,
        domains::delete_domain,
        keys::create_key,
        keys::list_keys,
        keys::revoke_key,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(postwire_proto::Event, postwire_proto::EventType)),
    modifiers(&BearerAuth),
    tags(
        (name = "messages", description = "Send mail and follow its delivery"),
        (name = "webhooks", description = "Endpoints that receive signed events"),
        (name = "suppressions", description = "Addresses never sent to again: hard bounces and manual entries"),
        (name = "templates", description = "Stored subject, text and HTML that sends render with `template_id` + `variables`"),
        (name = "domains", description = "Sending domains: DKIM keys that sign at once, and the DNS records to publish, checked live"),
        (name = "keys", description = "API keys (admin scope); sandbox keys never send"),
        (name = "ops", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("API key from `postwire keys create`"))
                    .build(),
            ),
        );
    }
}

/// The spec as pretty JSON, exactly as checked in under `openapi/`.
pub fn spec_json() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises") + "\n"
}

/// `GET /openapi.json` and the docs UI at `/docs/`.
///
/// The UI is Swagger UI with its assets compiled into the binary, so the page works on a
/// machine without internet. It reads the spec from our own `/openapi.json` route (given to
/// it as a config URL, not via `SwaggerUi::url`, which would register a second, compact copy
/// of the spec on that path). The online validator badge is off: it would call swagger.io.
pub fn docs_router() -> Router {
    // `Bytes`: each request shares the one copy instead of cloning 70 KB of JSON.
    let spec = axum::body::Bytes::from(spec_json());
    Router::new()
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], spec)
            }),
        )
        .merge(SwaggerUi::new("/docs").config(Config::from("/openapi.json").validator_url("none")))
}
