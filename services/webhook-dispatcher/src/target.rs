//! The SSRF guard: webhook endpoints must be public http(s) hosts.
//!
//! A webhook URL is chosen by an API user but fetched from inside our network, so without this
//! check it could reach the metadata service (169.254.169.254), the Redis next door, or
//! anything on loopback. [`check_target`] runs when an endpoint is created and again before
//! every send; [`GuardedResolver`] applies the same rule to the addresses the HTTP client
//! actually connects to, closing the gap between the check and the connect (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Why a webhook URL is not an acceptable target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{url}` is not a valid URL: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("webhook URLs must use http or https, not `{0}`")]
    UnsupportedScheme(String),
    #[error("webhook URL `{0}` has no host")]
    NoHost(String),
    /// Name resolution failed; this may be temporary, so a send is retried.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddresses { host: String },
    #[error(
        "`{host}` resolves to {addr}, {kind}; set webhooks.allow_private_targets = true to allow"
    )]
    Forbidden { host: String, addr: IpAddr, kind: String },
}

impl TargetError {
    /// True when retrying cannot help (everything but a failed lookup).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Resolve { .. })
    }
}

/// Accepts `url` only if it is http(s) with a host whose every address is public, unless
/// `allow_private` (development and tests), in which case nothing is resolved.
pub async fn check_target(url: &str, allow_private: bool) -> Result<(), TargetError> {
    let parsed = Url::parse(url)
        .map_err(|source| TargetError::InvalidUrl { url: url.to_owned(), source })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::UnsupportedScheme(parsed.scheme().to_owned()));
    }
    let host = parsed.host().ok_or_else(|| TargetError::NoHost(url.to_owned()))?;
    if allow_private {
        return Ok(());
    }
    match host {
        Host::Ipv4(ip) => check_addrs(&ip.to_string(), [IpAddr::V4(ip)]),
        Host::Ipv6(ip) => check_addrs(&ip.to_string(), [IpAddr::V6(ip)]),
        Host::Domain(name) => {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs = resolve(name, port).await?;
            check_addrs(name, addrs.iter().map(SocketAddr::ip))
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| TargetError::Resolve { host: host.to_owned(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::NoAddresses { host: host.to_owned() });
    }
    Ok(addrs)
}

/// Refuses the host if ANY of its addresses is internal: an attacker controlling DNS could
/// otherwise publish one public and one private address and win half the connects.
fn check_addrs(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), TargetError> {
    for addr in addrs {
        if let Some(kind) = forbidden_kind(addr) {
            return Err(TargetError::Forbidden { host: host.to_owned(), addr, kind });
        }
    }
    Ok(())
}

/// Why `addr` is not a public unicast address (`"a loopback address"`), or `None` when it is.
pub fn forbidden_kind(addr: IpAddr) -> Option<String> {
    match addr {
        IpAddr::V4(v4) => v4_kind(v4).map(str::to_owned),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_kind(v4).map(|kind| format!("an IPv6 form of {v4}, {kind}")),
            None => v6_kind(v6).map(str::to_owned),
        },
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "a broadcast address",
        (0, _, _) => "an unspecified (0.0.0.0/8) address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a shared (CGNAT) address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 0, 0) | (198, 18..=19, _) => "a reserved address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

/// The IPv4 address inside forms that embed one, which are judged by that address:
/// IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96, deprecated), NAT64 (64:ff9b::/96) and
/// 6to4 (2002::/16).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)),
        // Not :: and ::1, which are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if !(hi == 0 && lo <= 1) => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    Some(match seg[0] {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        s if s & 0xfe00 == 0xfc00 => "a unique-local address",
        s if s & 0xffc0 == 0xfe80 => "a link-local address",
        s if s & 0xffc0 == 0xfec0 => "a site-local address",
        s if s & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if seg[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

/// A DNS resolver for the HTTP client that refuses internal addresses, so the address a send
/// connects to is the address that was checked. (IP-literal URLs never reach a resolver;
/// [`check_target`] covers them.)
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: the client substitutes the URL's port.
            let addrs = resolve(host, 0).await?;
            if !allow_private {
                check_addrs(host, addrs.iter().map(SocketAddr::ip))?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn refusal(url: &str) -> String {
        check_target(url, false).await.expect_err(url).to_string()
    }

    #[tokio::test]
    async fn loopback_literal_is_refused_with_a_clear_reason() {
        assert_eq!(
            refusal("http://127.0.0.1:8080/hook").await,
            "`127.0.0.1` resolves to 127.0.0.1, a loopback address; set webhooks.allow_private_targets = true to allow"
        );
    }

    #[tokio::test]
    async fn internal_ipv4_ranges_are_refused() {
        for (ip, kind) in [
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.10", "documentation"),
            ("203.0.113.10", "documentation"),
            ("127.8.9.10", "loopback"),
        ] {
            let msg = refusal(&format!("https://{ip}/")).await;
            assert!(msg.contains(kind), "{ip}: {msg}");
        }
    }

    #[tokio::test]
    async fn internal_ipv6_ranges_and_mapped_ipv4_are_refused() {
        for (ip, kind) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),
            ("::ffff:10.0.0.1", "an IPv6 form of 10.0.0.1, a private address"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:1", "an IPv6 form of 10.0.0.1"),
            ("2002:c0a8:101::1", "an IPv6 form of 192.168.1.1"),
        ] {
            let msg = refusal(&format!("http://[{ip}]:8080/")).await;
            assert!(msg.contains(kind), "{ip}: {msg}");
        }
    }

    #[tokio::test]
    async fn public_literals_are_accepted_without_resolving() {
        for url in [
            "https://93.184.215.14/hook",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "https://[2606:4700::1111]/",
            "https://[::ffff:8.8.8.8]/",
        ] {
            check_target(url, false).await.expect(url);
        }
    }

    #[tokio::test]
    async fn obfuscated_loopback_forms_are_still_refused() {
        // The URL parser canonicalises these to 127.0.0.1 before we look at them.
        for url in ["http://2130706433/", "http://0x7f.1/", "http://127.1/"] {
            assert!(refusal(url).await.contains("loopback"), "{url}");
        }
    }

    #[tokio::test]
    async fn localhost_by_name_is_refused() {
        // Resolved from /etc/hosts: no network needed.
        assert!(refusal("http://localhost:9000/").await.contains("loopback"));
    }

    #[tokio::test]
    async fn allow_private_accepts_internal_targets() {
        check_target("http://127.0.0.1:9000/", true).await.unwrap();
        check_target("http://localhost/", true).await.unwrap();
    }

    #[tokio::test]
    async fn non_http_urls_are_refused_even_when_private_is_allowed() {
        for url in ["ftp://example.com/", "file:///etc/passwd", "mailto:a@b.example", "not a url"] {
            let err = check_target(url, true).await.expect_err(url);
            assert!(err.is_permanent());
        }
    }
}
