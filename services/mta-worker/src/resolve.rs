//! MX resolution (RFC 5321 §5.1) with hickory-resolver.
//!
//! A domain's MX records are sorted by preference, with equal preferences shuffled so load
//! spreads across equal hosts. A domain without MX records (NODATA) is its own mail host (the
//! "implicit MX"). A null MX (RFC 7505: a single MX whose exchange is ".") and a domain that does
//! not exist (NXDOMAIN) are permanent; SERVFAIL, timeouts and other transport trouble are
//! temporary. What each [`ResolveError`] means for the recipients is decided in
//! [`crate::disposition`], not here.
//!
//! Answers are cached for their TTL by hickory's own cache; negative answers are cached for at
//! most [`NEGATIVE_TTL_CAP`] so a domain fixed after a bounce does not stay dead for hours.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use postwire_config::Dns;
use rand::seq::SliceRandom;

/// Longest time a "no such domain" or "no such record" answer is remembered.
pub const NEGATIVE_TTL_CAP: Duration = Duration::from_secs(60);

/// Why a domain's mail hosts could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver could not be built (bad system configuration).
    #[error("resolver configuration: {0}")]
    Config(#[source] NetError),
    /// The domain is not a valid DNS name.
    #[error("{domain} is not a valid domain name")]
    InvalidDomain { domain: String },
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("{domain} does not accept mail (null MX, RFC 7505)")]
    NullMx { domain: String },
    /// NXDOMAIN: the domain does not exist.
    #[error("{domain} does not exist (NXDOMAIN)")]
    NoSuchDomain { domain: String },
    /// No MX records and the domain itself has no address: nowhere to deliver.
    #[error("{domain} has no MX and no A/AAAA records")]
    NoMailHost { domain: String },
    /// MX hosts exist but none of their names resolved to an address.
    #[error("no address found for any MX host of {domain}")]
    NoAddresses { domain: String },
    /// SERVFAIL, a timeout or another failure that may pass.
    #[error("DNS lookup for {name} failed: {source}")]
    MxLookup {
        name: String,
        #[source]
        source: NetError,
    },
}

/// One mail host of a domain, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name without the trailing dot (used for TLS SNI and in responses).
    pub name: String,
    pub preference: u16,
    pub addresses: Vec<IpAddr>,
}

/// Finds the mail hosts of a domain.
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// Builds a resolver from `dns.*`: the listed nameservers (UDP and TCP on the given port), or
    /// the system configuration when the list is empty.
    pub fn from_settings(dns: &Dns) -> Result<Self, ResolveError> {
        let mut builder =
            postwire_domain_auth::dns::resolver_builder(dns).map_err(ResolveError::Config)?;
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.negative_max_ttl = Some(NEGATIVE_TTL_CAP);
        let resolver = builder.build().map_err(ResolveError::Config)?;
        Ok(Self { resolver })
    }

    /// The mail hosts of `domain` in the order to try them, each with at least one address.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<MxHost>, ResolveError> {
        let name = fqdn(domain)?;
        let exchanges = match self.resolver.mx_lookup(name.clone()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) if e.is_nx_domain() => {
                return Err(ResolveError::NoSuchDomain { domain: domain.into() })
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(source) => return Err(ResolveError::MxLookup { name: domain.into(), source }),
        };

        if exchanges.is_empty() {
            // RFC 5321 §5.1: no MX records → the domain itself is the mail host.
            let addresses = match self.addresses(&name).await {
                Ok(a) => a,
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(source) => return Err(ResolveError::MxLookup { name: domain.into(), source }),
            };
            if addresses.is_empty() {
                return Err(ResolveError::NoMailHost { domain: domain.into() });
            }
            return Ok(vec![MxHost { name: trim_dot(&name), preference: 0, addresses }]);
        }

        let ordered = order_exchanges(domain, exchanges, &mut rand::thread_rng())?;
        let mut hosts = Vec::with_capacity(ordered.len());
        let mut last_temporary = None;
        for (preference, exchange) in ordered {
            match self.addresses(&exchange).await {
                Ok(addresses) if !addresses.is_empty() => {
                    hosts.push(MxHost { name: trim_dot(&exchange), preference, addresses })
                }
                Ok(_) => {}
                Err(e) if e.is_no_records_found() => {}
                Err(source) => last_temporary = Some((trim_dot(&exchange), source)),
            }
        }
        match (hosts.is_empty(), last_temporary) {
            (false, _) => Ok(hosts),
            (true, Some((name, source))) => Err(ResolveError::MxLookup { name, source }),
            (true, None) => Err(ResolveError::NoAddresses { domain: domain.into() }),
        }
    }

    async fn addresses(&self, host: &Name) -> Result<Vec<IpAddr>, NetError> {
        let lookup = self.resolver.lookup_ip(host.clone()).await?;
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

/// Orders MX answers by preference, shuffling equal preferences, and applies RFC 7505.
pub fn order_exchanges(
    domain: &str,
    mut exchanges: Vec<(u16, Name)>,
    rng: &mut impl rand::Rng,
) -> Result<Vec<(u16, Name)>, ResolveError> {
    // RFC 7505 §3: a null MX is the only MX of its domain. If one is mixed with real hosts the
    // domain is misconfigured; the real hosts are still worth trying.
    if exchanges.len() == 1 && exchanges[0].1.is_root() {
        return Err(ResolveError::NullMx { domain: domain.into() });
    }
    exchanges.retain(|(_, name)| !name.is_root());
    exchanges.shuffle(rng);
    // Stable sort keeps the shuffled order within one preference.
    exchanges.sort_by_key(|(preference, _)| *preference);
    Ok(exchanges)
}

fn fqdn(domain: &str) -> Result<Name, ResolveError> {
    let mut name = Name::from_utf8(domain.trim_end_matches('.'))
        .map_err(|_| ResolveError::InvalidDomain { domain: domain.into() })?;
    name.set_fqdn(true);
    Ok(name)
}

fn trim_dot(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn single_null_mx_is_refused_without_any_host() {
        let err = order_exchanges("nomail.test", vec![(0, Name::root())], &mut rand::thread_rng())
            .unwrap_err();
        assert!(matches!(err, ResolveError::NullMx { .. }), "{err}");
    }

    #[test]
    fn null_mx_mixed_with_real_hosts_is_ignored() {
        let hosts = order_exchanges(
            "d.test",
            vec![(0, Name::root()), (10, name("mx.d.test."))],
            &mut rand::thread_rng(),
        )
        .unwrap();
        assert_eq!(hosts, vec![(10, name("mx.d.test."))]);
    }

    #[test]
    fn hosts_come_in_preference_order_and_equal_preferences_are_shuffled() {
        let input = vec![
            (20, name("c.test.")),
            (10, name("a.test.")),
            (10, name("b.test.")),
            (5, name("first.test.")),
        ];
        let mut seen_b_first = false;
        let mut seen_a_first = false;
        for _ in 0..200 {
            let out = order_exchanges("d.test", input.clone(), &mut rand::thread_rng()).unwrap();
            let prefs: Vec<u16> = out.iter().map(|(p, _)| *p).collect();
            assert_eq!(prefs, vec![5, 10, 10, 20]);
            assert_eq!(out[0].1, name("first.test."));
            assert_eq!(out[3].1, name("c.test."));
            seen_a_first |= out[1].1 == name("a.test.");
            seen_b_first |= out[1].1 == name("b.test.");
        }
        assert!(seen_a_first && seen_b_first, "equal preferences were never shuffled");
    }

    #[test]
    fn domains_are_looked_up_as_fully_qualified_names() {
        assert!(fqdn("example.test").unwrap().is_fqdn());
        assert_eq!(trim_dot(&fqdn("example.test.").unwrap()), "example.test");
        assert!(fqdn("bad..name").is_err());
    }
}
