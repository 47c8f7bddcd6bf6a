//! The settings tree. Field docs here are the config reference; README repeats them.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration, EncryptionKey, Listen, Secret};

/// Everything Postwire reads at start-up.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: Http,
    pub storage: Storage,
    pub amqp: Amqp,
    pub redis: Redis,
    pub dns: Dns,
    pub smtp: Smtp,
    pub retry: Retry,
    pub worker: Worker,
    pub dkim: Vec<DkimKey>,
    pub signing: Signing,
    pub tracking: Tracking,
    pub webhooks: Webhooks,
    pub limits: Limits,
    pub telemetry: Telemetry,
    pub submission: Submission,
    pub bounces: Bounces,
    pub sandbox: Sandbox,
    pub log: Log,
}

/// The sandbox as a test inbox (`[sandbox]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// POP3 listener (RFC 1939, STLS with the submission certificate): USER is ignored, PASS
    /// is a sandbox API key with `read`, and that key's sandbox messages are the mailbox.
    /// `""` disables it.
    pub pop3_listen: Listen,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self { pop3_listen: Listen::at(SocketAddr::from(([127, 0, 0, 1], 2110))) }
    }
}

/// How the processes log (to stderr).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

/// `text` (colour only on a terminal) or `json` (one object per line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The way back: bounces (DSNs, RFC 3464) and complaints (ARF, RFC 5965) sent to VERP return
/// paths on `domain` arrive at `listen`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounces {
    /// The bounce domain. Set, every outgoing copy is sent with the envelope sender
    /// `b-<token>@domain` (publish an MX for it pointing at `listen`, and an SPF record).
    /// Empty: the envelope sender is the From address and nothing is listened for.
    #[serde(deserialize_with = "bounce_domain")]
    pub domain: String,
    /// SMTP listener for mail to the bounce domain (only that domain); 25 in production.
    /// Used only when `domain` is set; `""` disables it.
    pub listen: Listen,
}

/// A host name (ASCII labels of letters, digits and hyphens, at least two), lower-cased; or "".
fn bounce_domain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty()
        || (domain.len() <= 253 && domain.contains('.') && domain.split('.').all(label_ok))
    {
        Ok(domain)
    } else {
        Err(serde::de::Error::custom(format!(
            "{raw:?} is not a domain name (e.g. \"bounces.example.com\"; IDNs in their xn-- form)"
        )))
    }
}

impl Default for Bounces {
    fn default() -> Self {
        Self { domain: String::new(), listen: Listen::at(SocketAddr::from(([127, 0, 0, 1], 2525))) }
    }
}

/// This machine's name (the kernel's host name, as `hostname` prints it), the default
/// `smtp.helo_name`; `localhost` when it cannot be read. A name without a dot draws a warning
/// ([`Settings::warnings`]).
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_ascii_lowercase())
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Settings {
    /// Makes every relative path (`storage.path`, `[[dkim]] private_key`, the submission
    /// certificate and key) relative to `base`, the config file's directory, so a command
    /// behaves the same from any working directory. Empty paths (unset) stay empty.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if base.as_os_str().is_empty() {
            return;
        }
        let resolve = |p: &mut PathBuf| {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(p.strip_prefix(".").unwrap_or(p));
            }
        };
        resolve(&mut self.storage.path);
        resolve(&mut self.submission.tls_cert);
        resolve(&mut self.submission.tls_key);
        for key in &mut self.dkim {
            resolve(&mut key.private_key);
        }
    }

    /// What is allowed but probably wrong, one sentence each: printed at start and by
    /// `postwire config check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let public_host = url::Url::parse(&self.http.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let loopback_public = public_host == "localhost"
            || public_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback_public && !self.http.listen.ip().is_loopback() {
            out.push(format!(
                "http.public_url ({}) is a loopback address while http.listen ({}) takes \
                 connections from other hosts: tracking links in mail would point at each \
                 reader's own machine; set http.public_url to the address readers reach",
                self.http.public_url, self.http.listen
            ));
        }
        if !self.smtp.helo_name.contains('.') {
            out.push(format!(
                "smtp.helo_name ({:?}) is not a fully qualified domain name: receivers may \
                 refuse the EHLO, and the SPF record the domains API suggests (a:{}) names \
                 no public host; set it to the public name of the sending IP",
                self.smtp.helo_name, self.smtp.helo_name
            ));
        }
        if !self.bounces.domain.is_empty() && self.bounces.listen.0.is_none() {
            out.push(format!(
                "bounces.domain ({}) is set but bounces.listen is disabled: mail goes out with \
                 return paths on that domain; make sure a gateway elsewhere listens for it",
                self.bounces.domain
            ));
        }
        out
    }
}

/// SMTP submission (RFC 6409): apps that speak SMTP hand messages to Postwire here, with an
/// API key as the password.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Submission {
    /// Plain listener offering STARTTLS (RFC 3207); 587 in production. `""` disables it.
    pub listen: Listen,
    /// Implicit-TLS listener (RFC 8314); 465 in production. `""` disables it.
    pub tls_listen: Listen,
    /// PEM certificate chain for both listeners. With neither this nor `tls_key` set, a
    /// self-signed certificate is generated at start (and the log says so).
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// Clients in these networks (CIDRs) may submit without AUTH, as `trusted_key`.
    pub trusted_networks: Vec<IpNet>,
    /// The API key (`pw_…`, `send` scope) trusted networks submit as.
    pub trusted_key: Secret,
}

impl Default for Submission {
    fn default() -> Self {
        Self {
            listen: Listen::at(SocketAddr::from(([127, 0, 0, 1], 2587))),
            tls_listen: Listen::at(SocketAddr::from(([127, 0, 0, 1], 2465))),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            trusted_networks: Vec::new(),
            trusted_key: Secret::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Extra listener serving only `/metrics`, `/healthz` and `/readyz`, for processes that do
    /// not run the API gateway (`mta-worker`, `webhook-dispatcher`). Unset: none.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address the API gateway listens on.
    pub listen: SocketAddr,
    /// Public base URL of the gateway; tracking links and the open pixel point here.
    pub public_url: String,
    /// A connection must send a complete request head within this long of opening (or of its
    /// previous response), else it is closed: a slowloris client cannot hold sockets forever.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this long of the request head, plus the time
    /// `min_body_rate` earns for the bytes already received; else the request is answered
    /// 408 and its connection closed. Time spent waiting for an in-flight slot counts.
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average once `body_read_timeout` has passed
    /// (e.g. `"32KB"`: a 10 MB body may take 10 s + 312 s). 0: the body must arrive whole
    /// within `body_read_timeout`.
    pub min_body_rate: ByteSize,
    /// Connections open at once from one client address; more are closed at accept.
    pub max_connections_per_ip: usize,
    /// Connections open at once in all; kept below the process's file-descriptor limit.
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".into(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: ByteSize(32_000),
            max_connections_per_ip: 256,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite in `storage.path`: one process, nothing else to install.
    Embedded,
    /// RabbitMQ (`amqp.url`) for queues and Redis (`redis.url`) for state.
    Distributed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    /// Directory for the embedded database and generated keys.
    pub path: PathBuf,
    /// Distributed backend: prefix of every Redis key and RabbitMQ queue, so several
    /// installations can share one broker and one Redis.
    pub namespace: String,
    /// How long a finished message (no recipient pending) is kept with everything about it
    /// before the pruner removes it, on both backends; pending messages are never pruned. Also
    /// how long after a message is accepted its tracking links record hits (an expired click
    /// link still redirects).
    pub retention: Duration,
    /// When set, DKIM private keys made or imported through `/v1/domains` and webhook signing
    /// secrets are stored encrypted with it (AES-256-GCM). Values stored before it was set
    /// stay readable; once set, it must not change or be removed while such values exist.
    pub encryption_key: EncryptionKey,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            path: PathBuf::from("./data"),
            namespace: "postwire".into(),
            retention: Duration::from_secs(30 * 24 * 3600),
            encryption_key: EncryptionKey::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    pub url: Secret,
}

impl Default for Amqp {
    fn default() -> Self {
        Self { url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f") }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redis {
    pub url: Secret,
}

impl Default for Redis {
    fn default() -> Self {
        Self { url: Secret::new("redis://127.0.0.1:6379") }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Nameservers as `"ip:port"`; empty uses the system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when the MX offers it (any certificate); plain text otherwise or if the handshake fails.
    Opportunistic,
    /// Defer unless STARTTLS succeeds.
    Required,
    /// Never STARTTLS.
    Disabled,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Name sent in EHLO (and the SMTP listeners' greeting); should be the public name of the
    /// sending IP. Default: this machine's host name.
    pub helo_name: String,
    /// Port on the MX hosts (25 in production).
    pub port: u16,
    pub tls: TlsMode,
    /// TCP connect plus greeting.
    pub connect_timeout: Duration,
    /// Each command reply (RFC 5321 §4.5.3.2 suggests 5 minutes).
    pub command_timeout: Duration,
    /// Reply to the final `.` of DATA (RFC 5321 §4.5.3.2: 10 minutes).
    pub data_timeout: Duration,
    /// Most SMTP connections open at once to one MX host (on `port`, in this `tls` mode), busy
    /// and idle together; a delivery to a host at its cap waits for one of them. Connections are
    /// reused: after a transaction the connection is kept for the next message to the same host,
    /// which starts with RSET; a connection that failed in any way is closed, never reused.
    pub max_connections_per_host: usize,
    /// How long an idle connection is kept for reuse before QUIT; `"0s"` turns reuse off (one
    /// connection per delivery).
    pub connection_idle_timeout: Duration,
}

impl Default for Smtp {
    fn default() -> Self {
        Self {
            helo_name: machine_name(),
            port: 25,
            tls: TlsMode::Opportunistic,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            // Postfix's default_destination_concurrency_limit.
            max_connections_per_host: 20,
            connection_idle_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Delay before attempt n+1 is `schedule[min(n, len-1)]`: the last delay repeats.
    pub schedule: Vec<Duration>,
    /// A recipient still deferred this long after acceptance bounces with reason `expired`.
    pub max_age: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        let s = |t: &str| t.parse::<Duration>().expect("valid default");
        Self {
            schedule: ["1m", "5m", "15m", "30m", "1h", "2h", "4h"].map(s).to_vec(),
            max_age: s("48h"),
        }
    }
}

impl Retry {
    /// Delay after the `attempt`-th failed attempt (1-based).
    pub fn delay_after(&self, attempt: u32) -> std::time::Duration {
        let i = (attempt.saturating_sub(1) as usize).min(self.schedule.len().saturating_sub(1));
        self.schedule.get(i).map(|d| d.std()).unwrap_or(std::time::Duration::from_secs(60))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Worker {
    /// Delivery jobs in flight at once per worker process.
    pub concurrency: usize,
    /// How long a claimed job stays invisible to other workers. A live worker renews it every
    /// third of this while the delivery runs; a worker that dies releases it after this.
    pub lease: Duration,
    /// On shutdown (SIGTERM), how long the deliveries in flight may take to finish before the
    /// process exits anyway; a delivery cut off then is handed back by its lease running out.
    pub drain_timeout: Duration,
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            concurrency: 32,
            lease: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// Rules about signing (`[signing]`; not `[dkim]`, which is the array of keys).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signing {
    /// Refuse a message no DKIM key would sign (no `/v1/domains` key and no `[[dkim]]` key for
    /// its From domain): a 422 naming `from` from the API, `550 5.7.1` from SMTP submission.
    pub require_dkim: bool,
}

/// One DKIM signing key; several may be configured (e.g. RSA and Ed25519 for one domain).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// Messages whose From domain equals this are signed with `d=domain`.
    pub domain: String,
    pub selector: String,
    #[serde(default = "default_dkim_algorithm")]
    pub algorithm: DkimAlgorithm,
    /// PEM file: PKCS#8 (or PKCS#1 for RSA).
    pub private_key: PathBuf,
}

fn default_dkim_algorithm() -> DkimAlgorithm {
    DkimAlgorithm::RsaSha256
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracking {
    /// HMAC key for open/click tokens. Empty: generated once and kept in `storage.path`.
    pub secret: Secret,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// Allow endpoints on loopback and private ranges (development and tests only).
    pub allow_private_targets: bool,
    /// Delay before retry n is `retry_schedule[n-1]`; after the last one the delivery is given up.
    pub retry_schedule: Vec<Duration>,
    /// Time allowed for an endpoint to answer.
    pub timeout: Duration,
    /// An endpoint whose every attempt has failed for this long (since its last success) is
    /// disabled, with a `webhook.disabled` event to the other endpoints; `PATCH
    /// /v1/webhooks/{id}` enables it again.
    pub disable_after: Duration,
}

impl Default for Webhooks {
    fn default() -> Self {
        let s = |t: &str| t.parse::<Duration>().expect("valid default");
        Self {
            allow_private_targets: false,
            retry_schedule: ["5s", "5m", "30m", "2h", "5h", "10h"].map(s).to_vec(),
            timeout: s("15s"),
            disable_after: s("5d"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second per API key, on every authenticated `/v1` route (429 above it).
    /// Counted in fixed windows (the unix second); 0 switches the limit off.
    pub per_key_per_second: u32,
    /// Messages accepted per API key per UTC day (a batch counts its accepted items; a request
    /// that would go over is refused whole with 429). Resets at 00:00 UTC; 0 switches it off.
    pub per_key_per_day: u32,
    /// Envelope recipients (to + cc + bcc, duplicates counted once) per message (422 above it).
    pub max_recipients: usize,
    /// Attachments per message (422 above it).
    pub max_attachments: usize,
    /// Largest rendered message accepted (413 above it), as estimated at acceptance: bodies
    /// and attachments as encoded for sending (base64 grows a file by a third), plus headers.
    pub max_message_size: ByteSize,
    /// Largest HTTP request body accepted (413 above it).
    pub max_request_size: ByteSize,
    /// Largest `metadata` accepted, measured as its compact JSON (422 on `metadata` above it).
    /// Metadata is stored with the message and copied into every event and webhook about it,
    /// so it is bounded on its own, well below `max_message_size`.
    pub max_metadata_size: ByteSize,
    /// API requests the gateway handles at once (every route but `/healthz`, `/readyz`,
    /// `/metrics` and the docs). Further requests wait for a slot, their bodies unread, so the
    /// gateway's memory stays bounded when it is offered more than it can take; 0 switches the
    /// limit off.
    pub max_in_flight: usize,
    /// Requests that may wait for one of `max_in_flight`'s slots; beyond them a request is
    /// refused at once with 503 and `Retry-After: 1` (load shedding). 0: none wait.
    pub max_waiting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_key_per_second: 100,
            per_key_per_day: 100_000,
            max_recipients: 50,
            max_attachments: 20,
            max_message_size: ByteSize(10_000_000),
            max_request_size: ByteSize(25_000_000),
            max_metadata_size: ByteSize(8_000),
            max_in_flight: 256,
            max_waiting: 1024,
        }
    }
}
