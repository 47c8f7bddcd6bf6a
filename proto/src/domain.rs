//! Bodies of `/v1/domains`: sending domains, their DKIM key and the DNS records to publish.
//!
//! A domain made here gets a DKIM key (generated, or imported as PEM) that the workers sign
//! with from the next message on. The private key never leaves the store: answers carry only
//! the DNS records — the DKIM public key, an SPF and a DMARC suggestion — each with the result
//! of a live check against DNS.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The selector used when `POST /v1/domains` names none: the key is published at
/// `postwire._domainkey.{domain}`.
pub const DEFAULT_SELECTOR: &str = "postwire";

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
pub enum SigningAlgorithm {
    /// RSA-2048 with SHA-256 (RFC 6376); every verifier supports it.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463); short keys, not yet verified everywhere.
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl SigningAlgorithm {
    /// The name as stored and sent on the wire (`a=` of the signature).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// Parses the name produced by [`SigningAlgorithm::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rsa-sha256" => Some(Self::RsaSha256),
            "ed25519-sha256" => Some(Self::Ed25519Sha256),
            _ => None,
        }
    }

    /// The `k=` tag of the DKIM key record.
    pub fn key_type(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa",
            Self::Ed25519Sha256 => "ed25519",
        }
    }
}

/// `POST /v1/domains`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// The domain mail will be sent from (the From address's domain), e.g. `example.com`:
    /// at least two labels, IDN allowed (UTS #46).
    #[schema(min_length = 3, max_length = 253, example = "example.com")]
    pub domain: String,
    /// DKIM selector: one or more DNS labels of letters, digits and `-` (lower-cased), so that
    /// `{selector}._domainkey.{domain}` is at most 253 characters. Defaults to `postwire`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
        example = "s2026"
    )]
    pub selector: Option<String>,
    /// Defaults to `rsa-sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SigningAlgorithm>,
    /// An existing private key to import (PEM: PKCS#8, or PKCS#1 for RSA) instead of generating
    /// one. It is stored and never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// What a DNS record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordPurpose {
    /// The DKIM public key of the domain's signing key.
    Dkim,
    /// The SPF policy that authorises Postwire's sending host.
    Spf,
    /// The DMARC policy.
    Dmarc,
}

/// The result of checking one record against live DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// Published and correct.
    Pass,
    /// Published but wrong, or DNS could not be asked; `reason` says which.
    Fail,
    /// Not published.
    Missing,
}

/// One DNS record to publish, with the result of its live check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecord {
    pub purpose: RecordPurpose,
    /// The record type: always `TXT` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// Owner name, without the trailing dot.
    pub name: String,
    /// The record data to publish (one string; DNS tools split it into 255-byte pieces).
    pub value: String,
    pub status: RecordStatus,
    /// Why the status is not `pass`; `null` when it is.
    pub reason: Option<String>,
}

/// A sending domain with its records: the answer to `POST /v1/domains` and
/// `GET /v1/domains/{domain}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DomainView {
    /// Lower-cased, without a trailing dot.
    pub domain: String,
    pub selector: String,
    pub algorithm: SigningAlgorithm,
    pub created_at: DateTime<Utc>,
    /// DKIM, SPF and DMARC, in that order.
    pub records: Vec<DnsRecord>,
}

/// A sending domain as listed: no DNS check is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DomainSummary {
    pub domain: String,
    pub selector: String,
    pub algorithm: SigningAlgorithm,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/domains`, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub data: Vec<DomainSummary>,
}
