//! `POST/GET /v1/templates` and `GET/PUT/DELETE /v1/templates/{id}`: stored subject, text and
//! HTML that sends render with their `variables` (see [`crate::template`]). Syntax is checked
//! when a template is written, so a broken one is refused here rather than at send time.
//!
//! Writing needs the `send` or `admin` scope (whoever may send may shape what is sent);
//! reading needs `read`. `{id}` is the template's id (`tpl_…`) or its `alias`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use postwire_proto::{Template, TemplateList, TemplateRequest};
use postwire_store::{ids, new_template, TemplateCursor, TemplateWrite};

use super::{json_body, page_params, PageParams};
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::template::check_template;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/templates", get(list_templates).post(create_template)).route(
        "/v1/templates/{id}",
        get(get_template).put(replace_template).delete(delete_template),
    )
}

/// Writing templates: the `send` scope, or `admin`.
fn require_write(key: &ApiKey) -> Result<(), ApiError> {
    key.require("admin").or_else(|_| key.require("send"))
}

/// A write's answer: the template as stored, or 404 / 409 (the alias is another's).
fn written(write: TemplateWrite, alias: Option<&str>) -> Result<Template, ApiError> {
    match write {
        TemplateWrite::Written(template) => Ok(template),
        TemplateWrite::NotFound => Err(ApiError::NotFound),
        TemplateWrite::AliasTaken => Err(ApiError::Conflict(format!(
            "another template already has the alias `{}`; choose another, or free it first (replace or delete that template)",
            alias.unwrap_or_default()
        ))),
    }
}

/// The body of a create or replace, checked.
fn template_body(body: Result<Bytes, BytesRejection>) -> Result<TemplateRequest, ApiError> {
    let request: TemplateRequest = json_body(body)?;
    check_template(&request).map_err(ApiError::Invalid)?;
    Ok(request)
}

/// Store a template. `subject`, `text` and `html` use Jinja syntax (`{{ name }}`,
/// `{% if %}`, `{% for %}`, filters); a syntax error is a 422 on that field.
#[utoipa::path(
    post, path = "/v1/templates", tag = "templates",
    request_body = TemplateRequest,
    responses(
        (status = 201, description = "Stored", body = Template),
        (status = 409, description = "Another template has this `alias`", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `send` (or `admin`) scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing name or body, or a syntax error (the engine's message on the field)", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_template(
    State(gw): State<Gateway>,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    require_write(&key)?;
    let request = template_body(body)?;
    let alias = request.alias.clone();
    let template = new_template(ids::new_id("tpl"), request, Utc::now());
    let template = written(gw.templates.create_template(template).await?, alias.as_deref())?;
    Ok((StatusCode::CREATED, Json(template)))
}

/// Every template, newest first.
#[utoipa::path(
    get, path = "/v1/templates", tag = "templates",
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100, description = "Templates per page, 1–100 (default 50)"),
    ),
    responses(
        (status = 200, body = TemplateList),
        (status = 422, description = "Bad cursor or limit", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_templates(
    State(gw): State<Gateway>,
    key: ApiKey,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<TemplateList>, ApiError> {
    key.require("read")?;
    let (cursor, limit) = page_params(params, TemplateCursor::decode)?;
    let page = gw.templates.list_templates(cursor.as_ref(), limit).await?;
    Ok(Json(TemplateList { data: page.data, next_cursor: page.next.map(|c| c.encode()) }))
}

/// One template.
#[utoipa::path(
    get, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id (`tpl_…`) or alias")),
    responses(
        (status = 200, body = Template),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_template(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<Json<Template>, ApiError> {
    key.require("read")?;
    gw.templates.template(&id).await?.map(Json).ok_or(ApiError::NotFound)
}

/// Replace a template's name, alias, subject, text and html (fields left out are cleared). Sends
/// accepted from now on use the new version; messages already queued keep what they rendered.
#[utoipa::path(
    put, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id (`tpl_…`) or alias")),
    request_body = TemplateRequest,
    responses(
        (status = 200, description = "Replaced", body = Template),
        (status = 409, description = "Another template has this `alias`", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The key lacks the `send` (or `admin`) scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing name or body, or a syntax error (the engine's message on the field)", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replace_template(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Template>, ApiError> {
    require_write(&key)?;
    let request = template_body(body)?;
    let alias = request.alias.clone();
    let write = gw.templates.replace_template(&id, request, Utc::now()).await?;
    written(write, alias.as_deref()).map(Json)
}

/// Delete a template: later sends naming it are refused (422 on `template_id`).
#[utoipa::path(
    delete, path = "/v1/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id (`tpl_…`) or alias")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The key lacks the `send` (or `admin`) scope", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 404, body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_template(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_write(&key)?;
    if gw.templates.delete_template(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_routes_and_bodies_are_in_the_openapi_document() {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::openapi::spec_json()).expect("spec is JSON");
        for (path, method) in [
            ("/v1/templates", "get"),
            ("/v1/templates", "post"),
            ("/v1/templates/{id}", "get"),
            ("/v1/templates/{id}", "put"),
            ("/v1/templates/{id}", "delete"),
        ] {
            assert!(spec["paths"][path][method].is_object(), "{method} {path} missing");
        }
        for schema in ["Template", "TemplateRequest", "TemplateList"] {
            assert!(spec["components"]["schemas"][schema].is_object(), "schema {schema} missing");
        }
    }
}
