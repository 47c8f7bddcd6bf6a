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
        description = "Transactional email delivery: send JSON, get signed delivery webhooks.\n\n\
Errors are RFC 9457 `application/problem+json` with a stable `code` (see the `ProblemCode` schema).\n\n\
Every `/v1` answer to a valid API key, success or error, carries the draft-ietf-httpapi-ratelimit-headers \
fields of the key's request window: `RateLimit-Limit` (requests per second, `limits.per_key_per_second`), \
`RateLimit-Remaining` (left in this second, this request counted), `RateLimit-Reset` (seconds until it resets) \
and `RateLimit-Policy` (`{limit};w=1`); they are listed on the success responses only, to keep this document \
small. None are sent when the limit is 0 (off), nor on a 401. A 429 over a limit describes the refusing window \
(`w=86400` for the daily message limit).",
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
    modifiers(&BearerAuth, &SharedProblems, &EmptyMeansAbsent),
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
/// body, 400 (not JSON), 408 (a body too slow) and 413 (over `limits.max_request_size`). A
/// handler's own entry for a status wins. Every response but the 401 also lists the
/// `RateLimit-*` headers.
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
                    shared.push((
                        "408",
                        "The body did not arrive in time (`http.body_read_timeout`, \
                         `http.min_body_rate`); the connection is closed",
                    ));
                }
                for (status, description) in shared {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(description).into());
                }
                add_rate_limit_headers(op);
            }
        }
    }
}

/// `GET /v1/messages` takes an empty value as an absent one (`?status=&tag=welcome`): its
/// typed parameters say so, each an `anyOf` of its type and the empty string.
struct EmptyMeansAbsent;

impl Modify for EmptyMeansAbsent {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        let search = openapi.paths.paths.get_mut("/v1/messages").and_then(|i| i.get.as_mut());
        for param in search.and_then(|op| op.parameters.as_mut()).into_iter().flatten() {
            if !matches!(param.name.as_str(), "status" | "since" | "until" | "limit") {
                continue;
            }
            if let Some(schema) = param.schema.take() {
                let empty = ObjectBuilder::new().schema_type(Type::String).max_length(Some(0));
                param.schema = Some(AnyOfBuilder::new().item(schema).item(empty).into());
            }
        }
    }
}

/// The `RateLimit-*` headers every answer to an authenticated key carries (see
/// [`crate::ratelimit`]), listed on the success responses of each `/v1` operation. Their
/// meaning, and that errors carry them too, is written once in the document's description:
/// listing them on every error response as well would grow the spec by half.
fn add_rate_limit_headers(op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::header::Header;
    use utoipa::openapi::{Object, RefOr, Type};
    let headers = [
        (crate::ratelimit::RATELIMIT_LIMIT, Type::Integer),
        (crate::ratelimit::RATELIMIT_REMAINING, Type::Integer),
        (crate::ratelimit::RATELIMIT_RESET, Type::Integer),
        (crate::ratelimit::RATELIMIT_POLICY, Type::String),
    ];
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if !status.starts_with('2') {
            continue;
        }
        for (name, kind) in &headers {
            response
                .headers
                .entry(canonical_header(name.as_str()))
                .or_insert_with(|| Header::new(Object::with_type(kind.clone())));
        }
    }
}

/// `ratelimit-limit` → `RateLimit-Limit`, as the draft spells them.
fn canonical_header(name: &str) -> String {
    name.replace("ratelimit", "RateLimit")
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
        })
        .collect::<Vec<_>>()
        .join("-")
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
    fn every_v1_operation_documents_401_403_429_and_503_and_bodies_400_408_and_413() {
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
                    wanted.extend(["400", "408", "413"]);
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
                for (status, r) in responses {
                    if status.starts_with('2') {
                        let headers = &r["headers"];
                        assert!(
                            headers["RateLimit-Remaining"]["schema"]["type"] == "integer"
                                && headers["RateLimit-Policy"].is_object(),
                            "{method} {path} {status}: {headers}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 25, "{checked} operations");
    }
}

#[cfg(test)]
mod constraint_tests {
    use super::*;

    fn spec() -> serde_json::Value {
        serde_json::from_str(&spec_json()).unwrap()
    }

    #[test]
    fn every_request_body_refuses_unknown_fields_in_the_spec_too() {
        let spec = spec();
        let schemas = &spec["components"]["schemas"];
        let mut checked = 0;
        for item in spec["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let Some(schema) =
                    op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
                else {
                    continue;
                };
                let name = schema.rsplit('/').next().unwrap();
                assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
                checked += 1;
            }
        }
        assert!(checked >= 8, "{checked} bodies");
        assert_eq!(schemas["Attachment"]["additionalProperties"], false, "a send's attachments");
    }

    #[test]
    fn the_send_schema_states_the_limits_the_gateway_enforces() {
        let spec = spec();
        let send = &spec["components"]["schemas"]["SendRequest"]["properties"];
        let limits = postwire_config::Limits::default();
        for list in ["to", "cc", "bcc"] {
            // One address as a string, or a list of them.
            assert_eq!(send[list]["oneOf"][0]["type"], "string", "{list}");
            assert_eq!(send[list]["oneOf"][1]["maxItems"], limits.max_recipients, "{list}");
        }
        assert_eq!(send["attachments"]["maxItems"], limits.max_attachments);
        assert_eq!(send["headers"]["maxProperties"], crate::validate::MAX_CUSTOM_HEADERS);
        assert_eq!(send["tags"]["maxItems"], crate::validate::MAX_TAGS);
        assert_eq!(send["tags"]["items"]["maxLength"], crate::validate::MAX_TAG_CHARS);
        assert_eq!(send["unsubscribe_url"]["maxLength"], crate::validate::MAX_UNSUBSCRIBE_URL);
        assert_eq!(send["send_at"]["format"], "date-time");
        // Free-form objects say so, so generated clients can put values in them.
        assert_eq!(send["metadata"]["additionalProperties"], true);
        assert_eq!(send["variables"]["additionalProperties"], true);
        let batch = &spec["components"]["schemas"]["BatchRequest"]["properties"]["messages"];
        assert_eq!(batch["maxItems"], postwire_proto::MAX_BATCH_MESSAGES);
        assert!(spec["components"]["schemas"]["SendRequest"]["example"].is_object());
    }
}
