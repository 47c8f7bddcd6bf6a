//! Live DNS checks of a sending domain: is its DKIM key published, does its SPF policy let
//! Postwire's sending host send for it, does it publish a DMARC policy?
//!
//! Lookups go to the configured resolver (`dns.nameservers`, as the worker's), through a
//! resolver of its own that caches nothing: someone who has just published a record and asks
//! again must see it, not an answer cached a minute ago. Every check has a deadline; a DNS error
//! or timeout makes that one record `fail` with the reason, never the whole request.
//!
//! - DKIM: the TXT record at `{selector}._domainkey.{domain}` must carry exactly one key, and its
//!   `p=` must be this domain's public key.
//! - SPF: mail-auth evaluates the domain's policy (RFC 7208 `check_host`) for each address of
//!   `smtp.helo_name` with sender `postmaster@{domain}`; each must `pass`.
//! - DMARC: the TXT record at `_dmarc.{domain}` must be one `v=DMARC1` record that parses and
//!   names a policy (`p=`, RFC 7489 §6.3).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};
use postwire_config::{Dns, Smtp};
use postwire_proto::{DnsRecord, RecordPurpose, RecordStatus};

/// Longest one record's check may take, SPF `include:` chains and retries included.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(10);

/// The DMARC record suggested to domains that have none: monitor only, nothing rejected.
pub const DMARC_SUGGESTION: &str = "v=DMARC1; p=none;";

/// Checks sending domains' records against live DNS. Cheap to clone.
#[derive(Clone)]
pub struct DomainChecker {
    auth: Arc<MessageAuthenticator>,
    helo_name: String,
    deadline: Duration,
}

/// What a TXT lookup found.
enum Txt {
    /// The record data of every TXT record at the name (character-strings joined).
    Found(Vec<String>),
    /// NXDOMAIN, or the name has no TXT records.
    Absent,
}

/// One record's verdict.
type Verdict = (RecordStatus, Option<String>);

fn pass() -> Verdict {
    (RecordStatus::Pass, None)
}

fn fail(reason: impl Into<String>) -> Verdict {
    (RecordStatus::Fail, Some(reason.into()))
}

fn missing(reason: impl Into<String>) -> Verdict {
    (RecordStatus::Missing, Some(reason.into()))
}

impl DomainChecker {
    /// A checker asking the servers of `dns.*` (the system resolver when the list is empty), for
    /// a sending host that says `smtp.helo_name` in EHLO.
    pub fn from_settings(dns: &Dns, smtp: &Smtp) -> Result<Self, NetError> {
        let mut builder = crate::dns::resolver_builder(dns)?;
        let opts = builder.options_mut();
        // Nothing cached: a check right after publishing must see the new record.
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        let resolver = builder.build()?;
        Ok(Self {
            auth: Arc::new(MessageAuthenticator(resolver)),
            helo_name: smtp.helo_name.trim_end_matches('.').to_ascii_lowercase(),
            deadline: CHECK_DEADLINE,
        })
    }

    /// The SPF record suggested for every sending domain: the sending host by name, soft-failing
    /// everything else (`~all`, so adding it never makes other senders' mail bounce).
    pub fn spf_suggestion(&self) -> String {
        format!("v=spf1 a:{} ~all", self.helo_name)
    }

    /// The DKIM, SPF and DMARC records to publish for `domain`, each with its live status.
    /// `dkim_record` is the domain's key record (`v=DKIM1; k=…; p=…`). The checks run at once.
    pub async fn check(&self, domain: &str, selector: &str, dkim_record: &str) -> Vec<DnsRecord> {
        let dkim_name = format!("{selector}._domainkey.{domain}");
        let dmarc_name = format!("_dmarc.{domain}");
        let (dkim, spf, dmarc) = tokio::join!(
            self.bounded(&dkim_name, self.check_dkim(&dkim_name, dkim_record)),
            self.bounded(domain, self.check_spf(domain)),
            self.bounded(&dmarc_name, self.check_dmarc(&dmarc_name)),
        );
        let record = |purpose, name: String, value: String, (status, reason): Verdict| DnsRecord {
            purpose,
            kind: "TXT".into(),
            name,
            value,
            status,
            reason,
        };
        vec![
            record(RecordPurpose::Dkim, dkim_name, dkim_record.to_string(), dkim),
            record(RecordPurpose::Spf, domain.to_string(), self.spf_suggestion(), spf),
            record(RecordPurpose::Dmarc, dmarc_name, DMARC_SUGGESTION.to_string(), dmarc),
        ]
    }

    async fn bounded(
        &self,
        name: &str,
        check: impl std::future::Future<Output = Verdict>,
    ) -> Verdict {
        match tokio::time::timeout(self.deadline, check).await {
            Ok(verdict) => verdict,
            Err(_) => fail(format!("no DNS answer for {name} within {}s", self.deadline.as_secs())),
        }
    }

    async fn check_dkim(&self, name: &str, expected: &str) -> Verdict {
        let records = match self.txt(name).await {
            Ok(Txt::Found(records)) => records,
            Ok(Txt::Absent) => return missing(format!("no TXT record at {name}")),
            Err(e) => return fail(format!("DNS lookup of {name} failed: {e}")),
        };
        let keys: Vec<Vec<(String, String)>> =
            records.iter().map(|r| tags(r)).filter(|t| t.iter().any(|(k, _)| k == "p")).collect();
        let published = match keys.as_slice() {
            [] => return missing(format!("no DKIM key record (v=DKIM1; k=…; p=…) at {name}")),
            [one] => one,
            more => {
                return fail(format!(
                    "{} DKIM key records at {name}; publish exactly one",
                    more.len()
                ))
            }
        };
        let expected = tags(expected);
        let tag = |set: &[(String, String)], key: &str| {
            set.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        if let Some(v) = tag(published, "v").filter(|v| v != "DKIM1") {
            return fail(format!("the record at {name} has v={v}; it must be v=DKIM1"));
        }
        let published_p = tag(published, "p").unwrap_or_default();
        if published_p.is_empty() {
            return fail(format!("the key at {name} is revoked (empty p=)"));
        }
        if Some(published_p) != tag(&expected, "p") {
            return fail(format!("the key published at {name} is not this domain's key"));
        }
        // k= defaults to rsa (RFC 6376 §3.6.1).
        let published_k = tag(published, "k").unwrap_or_else(|| "rsa".into()).to_ascii_lowercase();
        let expected_k = tag(&expected, "k").unwrap_or_else(|| "rsa".into());
        if published_k != expected_k {
            return fail(format!(
                "the record at {name} says k={published_k}; the key is {expected_k}"
            ));
        }
        pass()
    }

    async fn check_spf(&self, domain: &str) -> Verdict {
        let records = match self.txt(domain).await {
            Ok(Txt::Found(records)) => records,
            Ok(Txt::Absent) => return missing(format!("no TXT record at {domain}")),
            Err(e) => return fail(format!("DNS lookup of {domain} failed: {e}")),
        };
        let spf = records.iter().filter(|r| is_spf(r)).count();
        match spf {
            0 => return missing(format!("no SPF record (v=spf1 …) at {domain}")),
            1 => {}
            n => return fail(format!("{n} SPF records at {domain}; RFC 7208 §4.5 allows one")),
        }
        let addresses = match self.addresses(&self.helo_name).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                return fail(format!("smtp.helo_name {} has no address to check", self.helo_name))
            }
            Err(e) => {
                return fail(format!("cannot resolve smtp.helo_name {}: {e}", self.helo_name))
            }
        };
        let sender = format!("postmaster@{domain}");
        for ip in addresses {
            let params =
                SpfParameters::verify_mail_from(ip, &self.helo_name, &self.helo_name, &sender);
            let result = self.auth.verify_spf(params).await.result();
            if result != SpfResult::Pass {
                return fail(format!("{} for {ip} ({})", spf_name(result), self.helo_name));
            }
        }
        pass()
    }

    async fn check_dmarc(&self, name: &str) -> Verdict {
        let records = match self.txt(name).await {
            Ok(Txt::Found(records)) => records,
            Ok(Txt::Absent) => return missing(format!("no TXT record at {name}")),
            Err(e) => return fail(format!("DNS lookup of {name} failed: {e}")),
        };
        let dmarc: Vec<&String> = records
            .iter()
            .filter(|r| r.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect();
        let record = match dmarc.as_slice() {
            [] => return missing(format!("no DMARC record (v=DMARC1; …) at {name}")),
            [one] => one.trim(),
            more => {
                return fail(format!(
                    "{} DMARC records at {name}; RFC 7489 §6.6.3 allows one",
                    more.len()
                ))
            }
        };
        match Dmarc::parse(record.as_bytes()) {
            Ok(parsed) if parsed.p == Policy::Unspecified => fail(format!(
                "the DMARC record at {name} names no policy (p=none, quarantine or reject)"
            )),
            Ok(_) => pass(),
            Err(e) => fail(format!("the DMARC record at {name} is malformed: {e}")),
        }
    }

    async fn txt(&self, name: &str) -> Result<Txt, NetError> {
        let Ok(mut fqdn) = Name::from_utf8(name) else {
            return Ok(Txt::Absent);
        };
        fqdn.set_fqdn(true);
        match self.auth.0.txt_lookup(fqdn).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect();
                Ok(if records.is_empty() { Txt::Absent } else { Txt::Found(records) })
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Txt::Absent),
            Err(e) => Err(e),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, NetError> {
        match self.auth.0.lookup_ip(host).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// `tag=value` pairs of a DKIM key record, values with folding whitespace removed.
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (k.trim().to_ascii_lowercase(), v.chars().filter(|c| !c.is_whitespace()).collect())
        })
        .collect()
}

/// RFC 7208 §4.5: an SPF record is `v=spf1` alone or followed by a space.
fn is_spf(record: &str) -> bool {
    let r = record.trim_start().as_bytes();
    r.len() >= 6 && r[..6].eq_ignore_ascii_case(b"v=spf1") && (r.len() == 6 || r[6] == b' ')
}

/// The RFC 7208 §2.6 name of a result.
fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_record_tags_ignore_folding_whitespace_and_tag_case() {
        let t = tags("v=DKIM1; K=ed25519;\tp=AB CD\r\n EF;");
        assert_eq!(
            t,
            vec![
                ("v".into(), "DKIM1".into()),
                ("k".into(), "ed25519".into()),
                ("p".into(), "ABCDEF".into())
            ]
        );
    }

    #[test]
    fn only_v_spf1_followed_by_a_space_or_nothing_is_an_spf_record() {
        assert!(is_spf("v=spf1 a ~all"));
        assert!(is_spf("V=SPF1"));
        assert!(!is_spf("v=spf10 a"));
        assert!(!is_spf("google-site-verification=x"));
    }
}
