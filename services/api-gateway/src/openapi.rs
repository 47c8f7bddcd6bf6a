//! The OpenAPI document, generated from the handlers and wire types, and the docs UI.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::routes::{
    batch, domains, keys, messages, ops, raw, search, suppressions, template_preview, templates,
    webhook_log, webhooks,
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
        raw::get_raw,
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
        template_preview::preview_template,
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
    modifiers(&BearerAuth, &SharedProblems),
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

/// The problem+json answers every authenticated `/v1` route can give, written once here rather
/// than on each handler: 401 (no valid key), 403 (missing scope), 429 (rate limit, with
/// `Retry-After`), 503 (a backend down, or the route at capacity); and, on routes with a JSON
/// body, 400 (not JSON) and 413 (over `limits.max_request_size`). A handler's own entry for a
/// status wins.
struct SharedProblems;

impl Modify for SharedProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                let mut shared = vec![
                    ("401", "Missing, unknown or revoked API key"),
                    ("403", "The key lacks the route's scope"),
                    ("429", "Over the key's rate limit; see `Retry-After`"),
                    ("503", "A backend is unavailable or the API is at capacity; retry later"),
                ];
                if op.request_body.is_some() {
                    shared.push(("400", "The body is not valid JSON"));
                    shared.push(("413", "The request is over `limits.max_request_size`"));
                }
                for (status, description) in shared {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
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

#[cfg(test)]
mod shared_problem_tests {
    use super::*;

    #[test]
    fn every_v1_operation_documents_401_403_429_and_503_and_bodies_400_and_413() {
        let spec: serde_json::Value = serde_json::from_str(&spec_json()).unwrap();
        let mut checked = 0;
        for (path, item) in spec["paths"].as_object().unwrap() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let mut wanted = vec!["401", "403", "429", "503"];
                if op.get("requestBody").is_some() {
                    wanted.extend(["400", "413"]);
                }
                for status in wanted {
                    let r = &responses
                        .get(status)
                        .unwrap_or_else(|| panic!("{method} {path}: no {status}"));
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 25, "{checked} operations");
    }
}
