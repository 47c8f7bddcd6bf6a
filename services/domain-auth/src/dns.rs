//! The DNS resolver every lookup of Postwire's is built from: the worker's MX lookups (with a
//! cache) and the live checks of [`crate::domain_check`] (without one).

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use postwire_config::Dns;

/// A resolver builder for `dns.*`: the listed nameservers (UDP and TCP on the given port; they are
/// authoritative for the zones they serve, so /etc/hosts must not shadow them), or the system
/// configuration when the list is empty; `dns.timeout` per query; A and AAAA both looked up.
pub fn resolver_builder(dns: &Dns) -> Result<ResolverBuilder<TokioRuntimeProvider>, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            provider,
        );
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let opts = builder.options_mut();
    if let Some(timeout) = dns.timeout {
        opts.timeout = timeout.std();
    }
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(builder)
}
