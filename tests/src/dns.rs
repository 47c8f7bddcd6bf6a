//! A real authoritative DNS server on loopback, scripted by the test.
//!
//! [`DnsServer`] answers A, MX and TXT queries over UDP and TCP (same port) from an in-memory
//! zone that the test may change at any moment. Messages are encoded and decoded with
//! `hickory-proto`, so what the application's resolver sees is ordinary DNS on the wire.
//!
//! Answer rules:
//! - a name with no records at all → `NXDOMAIN` (with an SOA in the authority section so
//!   resolvers can negatively cache for the zone TTL, RFC 2308);
//! - a name that has records, but none of the asked type → `NOERROR` with an empty answer
//!   (NODATA), plus the same SOA;
//! - a name marked with [`DnsServer::set_servfail`] → `SERVFAIL` for every type;
//! - otherwise every record of the asked type, with the zone TTL.
//!
//! The TTL defaults to [`DEFAULT_TTL`] (1 s) so that records a test changes mid-run are seen by
//! the next lookup; a test about MX caching raises it with [`DnsServer::set_ttl`].
//!
//! Names are matched case-insensitively and a trailing dot is optional everywhere.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// TTL, in seconds, given to every answer unless the test calls [`DnsServer::set_ttl`].
pub const DEFAULT_TTL: u32 = 1;

/// Largest UDP answer sent to a client that did not advertise an EDNS buffer size (RFC 1035
/// §4.2.1); bigger answers are sent truncated (TC=1) so the client retries over TCP.
const CLASSIC_UDP_LIMIT: usize = 512;

/// Records held for one name.
#[derive(Debug, Default, Clone)]
struct Entry {
    mx: Vec<(u16, String)>,
    a: Vec<Ipv4Addr>,
    txt: Vec<String>,
    servfail: bool,
}

impl Entry {
    fn exists(&self) -> bool {
        !self.mx.is_empty() || !self.a.is_empty() || !self.txt.is_empty()
    }
}

#[derive(Debug)]
struct Zone {
    ttl: u32,
    names: HashMap<String, Entry>,
    queries: HashMap<(String, RecordType), u32>,
}

/// A running DNS server on `127.0.0.1` (UDP and TCP on the same port). Stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `127.0.0.1` (an ephemeral port, the same for both) and starts
    /// answering from an empty zone.
    ///
    /// # Panics
    /// If no port can be bound for both protocols after several tries.
    pub async fn start() -> DnsServer {
        Self::try_start().await.expect("start the test DNS server")
    }

    /// Like [`DnsServer::start`], returning the bind error instead of panicking.
    pub async fn try_start() -> anyhow::Result<DnsServer> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone {
            ttl: DEFAULT_TTL,
            names: HashMap::new(),
            queries: HashMap::new(),
        }));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&zone))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&zone))),
        ];
        Ok(DnsServer { addr, zone, tasks })
    }

    /// The address to give the resolver under test (`[dns] nameservers = ["<addr>"]`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds an MX record `domain MX preference exchange`.
    pub fn add_mx(&self, domain: &str, preference: u16, exchange: &str) {
        self.edit(domain, |e| e.mx.push((preference, normalize(exchange))));
    }

    /// Adds an A record `name A ip`.
    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.edit(name, |e| e.a.push(ip));
    }

    /// Adds a TXT record. Values longer than 255 bytes are split into several
    /// character-strings of one record (RFC 7208 §3.3, RFC 6376 §3.6.2.2); a reader joins them.
    pub fn add_txt(&self, name: &str, text: &str) {
        self.edit(name, |e| e.txt.push(text.to_owned()));
    }

    /// Publishes a null MX for `domain` (RFC 7505: a single `MX 0 .`), replacing any MX records.
    pub fn set_null_mx(&self, domain: &str) {
        self.edit(domain, |e| {
            e.mx.clear();
            e.mx.push((0, String::new()));
        });
    }

    /// Makes every query for `name` answer `SERVFAIL` until [`DnsServer::clear`] is called.
    pub fn set_servfail(&self, name: &str) {
        self.edit(name, |e| e.servfail = true);
    }

    /// Forgets every record (and the SERVFAIL mark) for `name`, so it answers `NXDOMAIN`.
    pub fn clear(&self, name: &str) {
        self.lock().names.remove(&normalize(name));
    }

    /// Sets the TTL, in seconds, of answers sent from now on.
    pub fn set_ttl(&self, ttl: u32) {
        self.lock().ttl = ttl;
    }

    /// How many queries (of any type, over either transport) have asked about `name`.
    pub fn queries_for(&self, name: &str) -> u32 {
        let name = normalize(name);
        self.lock().queries.iter().filter(|((n, _), _)| *n == name).map(|(_, count)| *count).sum()
    }

    /// How many queries of type `rtype` have asked about `name`.
    pub fn queries_for_type(&self, name: &str, rtype: RecordType) -> u32 {
        let key = (normalize(name), rtype);
        self.lock().queries.get(&key).copied().unwrap_or(0)
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        f(self.lock().names.entry(normalize(name)).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Lowercase, without the trailing dot: the key form of a name in the zone.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Binds UDP on an ephemeral port, then TCP on the same port; retries if TCP's is taken.
async fn bind_pair() -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.map_or_else(|| anyhow::anyhow!("no port"), Into::into))
        .context("bind DNS UDP and TCP on one port")
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue; // not DNS: ignore, as a real server would
        };
        let limit = request
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_LIMIT, |e| usize::from(e.max_payload()).max(CLASSIC_UDP_LIMIT));
        let response = answer(&request, &zone);
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > limit {
            match response.truncate().to_vec() {
                Ok(b) => bytes = b,
                Err(_) => continue,
            }
        }
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    // Owned here so that aborting this task (on drop) also ends open connections.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_tcp_conn(stream, Arc::clone(&zone)));
    }
}

/// One TCP connection: two-byte length-prefixed messages (RFC 1035 §4.2.2), until EOF.
async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        let Ok(bytes) = answer(&request, &zone).to_vec() else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Builds the response to one query from the current zone, and counts the query.
fn answer(request: &Message, zone: &Mutex<Zone>) -> Message {
    let id = request.metadata.id;
    let op_code = request.metadata.op_code;
    if request.metadata.message_type != MessageType::Query || op_code != OpCode::Query {
        return Message::error_msg(id, op_code, ResponseCode::NotImp);
    }
    let Some(query) = request.queries.first() else {
        return Message::error_msg(id, op_code, ResponseCode::FormErr);
    };

    let mut response = Message::response(id, op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    if request.edns.is_some() {
        // RFC 6891 §6.1.1: a request with OPT gets an OPT back.
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        response.edns = Some(edns);
    }

    let qname = query.name().clone();
    let key = normalize(&qname.to_ascii());
    let rtype = query.query_type();
    let mut zone = zone.lock().unwrap_or_else(|poison| poison.into_inner());
    *zone.queries.entry((key.clone(), rtype)).or_insert(0) += 1;
    let ttl = zone.ttl;
    let entry = zone.names.get(&key).cloned().unwrap_or_default();
    drop(zone);

    if entry.servfail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    if !entry.exists() {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(soa(&qname, ttl));
        return response;
    }

    let answers = records(&entry, &qname, rtype, ttl);
    if answers.is_empty() {
        response.add_authority(soa(&qname, ttl)); // NODATA (RFC 2308 §2.2)
    } else {
        response.add_answers(answers);
    }
    response
}

fn records(entry: &Entry, qname: &Name, rtype: RecordType, ttl: u32) -> Vec<Record> {
    let record = |data: RData| Record::from_rdata(qname.clone(), ttl, data);
    let wants = |t: RecordType| rtype == t || rtype == RecordType::ANY;
    let mut out = Vec::new();
    if wants(RecordType::A) {
        out.extend(entry.a.iter().map(|ip| record(RData::A(A(*ip)))));
    }
    if wants(RecordType::MX) {
        for (preference, exchange) in &entry.mx {
            // The empty exchange is RFC 7505's "." (the root).
            let exchange = if exchange.is_empty() {
                Name::root()
            } else {
                match Name::from_ascii(format!("{exchange}.")) {
                    Ok(name) => name,
                    Err(_) => continue,
                }
            };
            out.push(record(RData::MX(MX::new(*preference, exchange))));
        }
    }
    if wants(RecordType::TXT) {
        for text in &entry.txt {
            out.push(record(RData::TXT(txt_record(text))));
        }
    }
    out
}

/// One TXT record whose character-strings are ≤ 255 bytes each (RFC 1035 §3.3.14).
fn txt_record(text: &str) -> TXT {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return TXT::from_bytes(vec![&[][..]]);
    }
    TXT::from_bytes(bytes.chunks(255).collect())
}

/// A synthetic SOA for negative answers; its MINIMUM is the zone TTL (RFC 2308 §5).
fn soa(owner: &Name, ttl: u32) -> Record {
    let ns = Name::from_ascii("ns.postwire.test.").unwrap_or_else(|_| Name::root());
    let rname = Name::from_ascii("hostmaster.postwire.test.").unwrap_or_else(|_| Name::root());
    let data = SOA::new(ns, rname, 1, 3600, 600, 86_400, ttl);
    Record::from_rdata(owner.clone(), ttl, RData::SOA(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::{Resolver, TokioResolver};

    /// Sends one query over UDP by hand and decodes the response.
    async fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        socket.send_to(&query.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .expect("DNS answer in time")
                .unwrap();
        let response = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(response.metadata.id, query.metadata.id);
        response
    }

    #[tokio::test]
    async fn a_large_answer_is_truncated_over_udp_and_complete_over_tcp() {
        let dns = DnsServer::start().await;
        dns.add_txt("big.example.test", &"x".repeat(700));
        let udp = ask_udp(dns.addr(), "big.example.test.", RecordType::TXT).await;
        assert!(udp.metadata.truncation, "no EDNS: over 512 bytes must set TC");

        let mut stream = TcpStream::connect(dns.addr()).await.unwrap();
        let mut query = Message::query();
        let name = Name::from_ascii("big.example.test.").unwrap();
        query.add_query(Query::query(name, RecordType::TXT));
        let bytes = query.to_vec().unwrap();
        stream.write_u16(bytes.len() as u16).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; usize::from(stream.read_u16().await.unwrap())];
        stream.read_exact(&mut buf).await.unwrap();
        let tcp = Message::from_vec(&buf).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 1);
        assert_eq!(dns.queries_for_type("big.example.test", RecordType::TXT), 2);
    }

    fn resolver_for(server: &DnsServer) -> TokioResolver {
        let mut ns = NameServerConfig::udp_and_tcp(server.addr().ip());
        for conn in &mut ns.connections {
            conn.port = server.addr().port();
        }
        let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
        Resolver::builder_with_config(config, TokioRuntimeProvider::default()).build().unwrap()
    }

    #[tokio::test]
    async fn mx_records_are_answered_over_udp_with_the_scripted_preferences() {
        let dns = DnsServer::start().await;
        dns.add_mx("Example.TEST.", 20, "mx2.example.test");
        dns.add_mx("example.test", 10, "mx1.example.test.");
        let response = ask_udp(dns.addr(), "example.test.", RecordType::MX).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        let mut mx: Vec<(u16, String)> = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        mx.sort();
        assert_eq!(mx, vec![(10, "mx1.example.test.".into()), (20, "mx2.example.test.".into())]);
        assert_eq!(dns.queries_for("EXAMPLE.test"), 1);
        assert_eq!(dns.queries_for_type("example.test", RecordType::A), 0);
    }

    #[tokio::test]
    async fn unknown_names_are_nxdomain_and_missing_types_are_nodata() {
        let dns = DnsServer::start().await;
        dns.add_a("mx.example.test", Ipv4Addr::new(127, 0, 0, 2));
        let nx = ask_udp(dns.addr(), "nowhere.test.", RecordType::MX).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        let nodata = ask_udp(dns.addr(), "mx.example.test.", RecordType::MX).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        dns.set_servfail("broken.test");
        let fail = ask_udp(dns.addr(), "broken.test.", RecordType::A).await;
        assert_eq!(fail.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn null_mx_is_preference_zero_pointing_at_the_root() {
        let dns = DnsServer::start().await;
        dns.add_mx("nomail.test", 10, "mx.nomail.test");
        dns.set_null_mx("nomail.test");
        let response = ask_udp(dns.addr(), "nomail.test.", RecordType::MX).await;
        assert_eq!(response.answers.len(), 1);
        let RData::MX(mx) = &response.answers[0].data else { panic!("expected MX") };
        assert_eq!(mx.preference, 0);
        assert!(mx.exchange.is_root());
    }

    #[tokio::test]
    async fn the_resolver_reads_long_txt_records_and_a_records_through_the_server() {
        let dns = DnsServer::start().await;
        let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
        dns.add_txt("s1._domainkey.example.test", &long);
        dns.add_a("mx.example.test", Ipv4Addr::new(127, 0, 0, 3));
        let resolver = resolver_for(&dns);

        let txt = resolver.txt_lookup("s1._domainkey.example.test.").await.unwrap();
        let records: Vec<&TXT> = txt
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(records.len(), 1);
        assert!(records[0].txt_data.iter().all(|s| s.len() <= 255));
        assert_eq!(records[0].txt_data.concat(), long.as_bytes());

        let a = resolver.ipv4_lookup("MX.example.test.").await.unwrap();
        let ips: Vec<Ipv4Addr> = a
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![Ipv4Addr::new(127, 0, 0, 3)]);
        assert!(dns.queries_for("s1._domainkey.example.test") >= 1);
    }
}
