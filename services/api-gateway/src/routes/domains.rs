//! `GET/POST /v1/domains` and `GET/DELETE /v1/domains/{domain}`: sending domains.
//!
//! Creating a domain makes (or imports) its DKIM key and stores it; the workers sign mail from
//! the domain with it from the next message on, without a restart (see the MTA worker's `dkim`
//! module: the store's key replaces `[[dkim]]` keys of the same domain). The private key is never
//! returned. `POST` and `GET /v1/domains/{domain}` answer with the records to publish, each
//! checked against live DNS right then; the list makes no DNS queries.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use postwire_domain_auth::keygen::{self, config_algorithm, KeyError};
use postwire_proto::{
    CreateDomain, DomainList, DomainSummary, DomainView, FieldError, SigningAlgorithm,
    DEFAULT_SELECTOR,
};
use postwire_store::SendingDomain;

use super::json_body;
use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::validate::DomainName;
use crate::Gateway;

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_NAME: usize = 253;

pub fn router() -> Router<Gateway> {
    Router::new()
        .route("/v1/domains", get(list_domains).post(create_domain))
        .route("/v1/domains/{domain}", get(get_domain).delete(delete_domain))
}

fn domain_name(raw: &str) -> Result<DomainName, ApiError> {
    DomainName::parse(raw).map_err(|e| ApiError::field("domain", format!("`{}`: {e}", raw.trim())))
}

/// A DKIM selector (RFC 6376 §3.1): one or more DNS labels of letters, digits and hyphens,
/// lower-cased; `{selector}._domainkey.{domain}` must still be a valid name.
fn selector(raw: &str, domain: Option<&DomainName>) -> Result<String, String> {
    let s = raw.trim().to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !s.split('.').all(label_ok) {
        return Err(format!(
            "`{raw}` is not a DKIM selector: DNS labels of letters, digits and `-`, up to 63 each"
        ));
    }
    let full = s.len() + "._domainkey.".len() + domain.map_or(0, |d| d.ascii().len());
    if full > MAX_NAME {
        return Err(format!("`{s}._domainkey.…` would be longer than {MAX_NAME} characters"));
    }
    Ok(s)
}

fn summary(d: &SendingDomain) -> DomainSummary {
    DomainSummary {
        domain: d.domain.clone(),
        selector: d.selector.clone(),
        algorithm: d.algorithm,
        created_at: d.created_at,
    }
}

/// The domain with its records, each checked against DNS now.
async fn view(gw: &Gateway, d: SendingDomain) -> DomainView {
    let records = gw.domain_checker.check(&d.domain, &d.selector, &d.public_record).await;
    DomainView {
        domain: d.domain,
        selector: d.selector,
        algorithm: d.algorithm,
        created_at: d.created_at,
        records,
    }
}

/// Makes the key: imports `private_key` when given, else generates one (off the async threads:
/// an RSA key takes a noticeable fraction of a second).
async fn key_pair(
    algorithm: SigningAlgorithm,
    private_key: Option<String>,
) -> Result<keygen::DkimKeyPair, ApiError> {
    let algorithm = config_algorithm(algorithm);
    let made = tokio::task::spawn_blocking(move || match private_key {
        Some(pem) => keygen::import(algorithm, &pem),
        None => keygen::generate(algorithm),
    })
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    made.map_err(|e| match e {
        KeyError::Parse { .. } | KeyError::TooShort { .. } => {
            ApiError::field("private_key", e.to_string())
        }
        KeyError::Generate(_) => ApiError::Internal(Box::new(e)),
    })
}

/// Add a sending domain: makes its DKIM key (or imports `private_key`) and answers with the DNS
/// records to publish, each with the result of a live check. Mail from the domain is signed
/// with the key from the next message on.
#[utoipa::path(
    post, path = "/v1/domains", tag = "domains",
    request_body = CreateDomain,
    responses(
        (status = 201, description = "Created; the records to publish, checked now", body = DomainView),
        (status = 409, description = "The domain already exists", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad domain, selector, algorithm or private key", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_domain(
    State(gw): State<Gateway>,
    key: ApiKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DomainView>), ApiError> {
    key.require("admin")?;
    let request: CreateDomain = json_body(body)?;
    let mut errors = Vec::new();
    let domain = DomainName::parse(&request.domain)
        .map_err(|e| {
            let message = format!("`{}`: {e}", request.domain.trim());
            errors.push(FieldError { field: "domain".into(), message })
        })
        .ok();
    let selector =
        selector(request.selector.as_deref().unwrap_or(DEFAULT_SELECTOR), domain.as_ref())
            .map_err(|message| errors.push(FieldError { field: "selector".into(), message }))
            .ok();
    let (Some(domain), Some(selector)) = (domain, selector) else {
        return Err(ApiError::Invalid(errors));
    };
    let exists = || ApiError::Conflict(format!("the domain {} already exists", domain.ascii()));
    // Checked first so a duplicate costs no key generation; `create_domain` decides races.
    if gw.domains.domain(domain.ascii()).await?.is_some() {
        return Err(exists());
    }
    let algorithm = request.algorithm.unwrap_or_default();
    let pair = key_pair(algorithm, request.private_key).await?;
    let record = SendingDomain {
        domain: domain.ascii().to_string(),
        selector,
        algorithm,
        private_key: pair.private_pem,
        public_record: pair.txt_value,
        created_at: Utc::now(),
    }
    .normalized();
    if !gw.domains.create_domain(record.clone()).await? {
        return Err(exists());
    }
    tracing::info!(domain = %record.domain, selector = %record.selector, algorithm = record.algorithm.as_str(), "sending domain added");
    Ok((StatusCode::CREATED, Json(view(&gw, record).await)))
}

/// Every sending domain, sorted by name (no DNS checks; get one domain for those).
#[utoipa::path(
    get, path = "/v1/domains", tag = "domains",
    responses((status = 200, body = DomainList)),
    security(("bearer" = []))
)]
pub async fn list_domains(
    State(gw): State<Gateway>,
    key: ApiKey,
) -> Result<Json<DomainList>, ApiError> {
    key.require("read")?;
    let data = gw.domains.list_domains().await?.iter().map(summary).collect();
    Ok(Json(DomainList { data }))
}

/// One sending domain with its DNS records, each checked against live DNS now.
#[utoipa::path(
    get, path = "/v1/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "The domain name (any case)")),
    responses(
        (status = 200, body = DomainView),
        (status = 404, description = "No such sending domain", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_domain(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(domain): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    key.require("read")?;
    let domain = domain_name(&domain)?;
    let stored = gw.domains.domain(domain.ascii()).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(view(&gw, stored).await))
}

/// Remove a sending domain and its key: mail from it is no longer signed with that key (a
/// `[[dkim]]` key of the domain, if configured, signs again).
#[utoipa::path(
    delete, path = "/v1/domains/{domain}", tag = "domains",
    params(("domain" = String, Path, description = "The domain name (any case)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such sending domain", body = postwire_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a domain name", body = postwire_proto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_domain(
    State(gw): State<Gateway>,
    key: ApiKey,
    Path(domain): Path<String>,
) -> Result<StatusCode, ApiError> {
    key.require("admin")?;
    let domain = domain_name(&domain)?;
    if gw.domains.delete_domain(domain.ascii()).await? {
        tracing::info!(domain = %domain.ascii(), "sending domain removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_dns_labels_lower_cased() {
        assert_eq!(selector("PW-2025", None).unwrap(), "pw-2025");
        assert_eq!(selector("a.b", None).unwrap(), "a.b");
        for bad in ["", "-x", "x-", "a..b", "s_1", "s 1", "é"] {
            assert!(selector(bad, None).is_err(), "{bad:?} accepted");
        }
        // 248 characters: valid alone, too long under `s1._domainkey.`.
        let long = DomainName::parse(&format!("{0}.{0}.{0}.{0}.test", "d".repeat(60))).unwrap();
        assert!(selector("s1", Some(&long)).is_err());
    }
}
