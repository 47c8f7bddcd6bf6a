//! End-to-end suite: the real Postwire app (and, for crash tests, the real binary) against
//! real peers on loopback — a DNS server, scripted SMTP servers on 127.0.0.x acting as MX
//! hosts, and a webhook receiver.

mod api;
mod at_rest;
mod batch;
mod bounces;
mod cli_send;
mod contract;
mod crash_idempotency;
mod delivery;
mod diskfull;
mod dkim;
mod dkim_status;
mod domains;
mod durability;
mod events;
mod idn;
mod keys;
mod limits;
mod operations;
mod papercuts;
mod pop3;
mod ratelimit;
mod raw;
mod retention;
mod scheduled;
mod search;
mod security;
mod shutdown;
mod submission;
mod submission_clients;
mod suppressions;
mod template_preview;
mod templates;
mod tracking;
mod unsubscribe;
mod webhook_log;

use std::net::Ipv4Addr;
use std::time::Duration;

use postwire_e2e::app::World;
use postwire_e2e::smtp::{Script, SmtpServer};

/// Generous deadline for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(20);

/// Publishes `domain` with one MX host per entry (preference, address) and starts an SMTP
/// server with `script` on each address.
pub async fn mx_hosts(
    world: &World,
    domain: &str,
    hosts: &[(u16, Ipv4Addr, Script)],
) -> Vec<SmtpServer> {
    let mut servers = Vec::new();
    for (i, (pref, ip, script)) in hosts.iter().enumerate() {
        let name = format!("mx{i}.{domain}");
        world.dns.add_mx(domain, *pref, &name);
        world.dns.add_a(&name, *ip);
        servers.push(
            SmtpServer::start(*ip, world.smtp_port, script.clone())
                .await
                .expect("start SMTP server"),
        );
    }
    servers
}

pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The recipient entry of a message view.
pub fn recipient<'a>(message: &'a serde_json::Value, email: &str) -> &'a serde_json::Value {
    message["recipients"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["email"] == email))
        .unwrap_or_else(|| panic!("no recipient {email} in {message:#}"))
}
