//! `POST /v1/templates/{id}/preview`: a stored template rendered with `variables`, as a send
//! would render it (the same bounded renderer, the same errors), without sending anything.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use postwire_proto::{TemplatePreview, TemplatePreviewRequest};

use super::json_body;
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::template::RenderJob;
use crate::Gateway;

pub fn router() -> Router<Gateway> {
    Router::new().route("/v1/templates/{id}/preview", post(preview_template))
}

/// Render a template's subject, text and html with `variables`; nothing is sent or stored.
#[utoipa::path(
    post, path = "/v1/templates/{id}/preview", tag = "templates",
    params(("id" = String, Path, description = "Template id (`tpl_…`) or alias")),
    request_body = TemplatePreviewRequest,
    responses(
        (status = 200, description = "The rendered parts", body = TemplatePreview),
        (status = 404, description = "No such template", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A part renders to more than `limits.max_message_size`", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The template cannot be rendered with these variables (each problem listed: a missing variable, a failing expression)", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn preview_template(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TemplatePreview>, ApiError> {
    key.require("read")?;
    let request: TemplatePreviewRequest = json_body(body)?;
    let template = gw.templates.template(&id).await?.ok_or(ApiError::NotFound)?;
    let job = RenderJob {
        template_id: template.id,
        subject: template.subject,
        text: template.text,
        html: template.html,
        variables: request.variables,
        max_size: gw.limits.max_message_size.0,
    };
    let rendered = gw.renderer.render(job).await?;
    Ok(Json(TemplatePreview {
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    }))
}
