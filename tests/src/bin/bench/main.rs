//! `bench`: Postwire against Postfix + OpenDKIM on the same machine, in one run, as one table.
//!
//! - End to end: N one-recipient messages (~4 KB text) to a domain whose MX is 127.0.0.2, each
//!   signed with RSA-2048, delivered to Postfix's `smtp-sink` on 127.0.0.2:25 — by Postfix +
//!   OpenDKIM fed with `smtp-source -s 20`, and by the real `postwire` binary (embedded, then
//!   distributed on the local RabbitMQ + Redis) fed over HTTP by 20 clients ([`e2e`]).
//! - Ingest: `POST /v1/messages` at a fixed open-loop load and at saturation, and
//!   `POST /v1/messages/batch`, on both backends ([`ingest`]).
//! - SMTP in: submission through `smtp-source -s 20` and DSNs to the bounce listener ([`smtp_in`]).
//! - Scale: accept rate and RSS as 10k, 100k (and with `--scale-max 1000000`, 1M) messages sit
//!   queued behind a deferring sink ([`ingest::scale`]).
//! - DKIM: signatures per second of one core, RSA-2048 and Ed25519 ([`dkim`]).
//! - Not by default: chaos (SIGKILLs under idempotent retrying clients: lost, duplicates,
//!   missing webhook events; [`chaos`]) and soak (RSS and store size per minute under steady
//!   load with a short retention; [`soak`]).
//!
//! Postwire runs as separate processes ([`service`]) with a config pointing its resolver at a
//! DNS server in this process; Postfix runs from a throwaway config directory ([`postfix`]).
//! Everything it starts is stopped when it ends. Needs root (port 25, smtp-sink) and
//! `postfix`, `opendkim`, `opendkim-tools` installed; `scripts/bench.sh` does all of that.
//!
//! ```text
//! scripts/bench.sh                         # the whole default run, ~10-15 minutes
//! target/release/bench --sections e2e --backends embedded --messages 1000
//! ```

mod chaos;
mod dkim;
mod e2e;
mod ingest;
mod load;
mod postfix;
mod report;
mod service;
mod sink;
mod smtp_in;
mod soak;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use postwire_config::{DkimAlgorithm, DkimKey};
use postwire_e2e::dns::DnsServer;

use crate::report::Row;
use crate::service::{Backend, Service};

pub const SENDER_DOMAIN: &str = "sender.bench";
pub const RECIPIENT_DOMAIN: &str = "rcpt.bench";
/// The benchmark domain's MX, where smtp-sink listens.
pub const MX: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 25);

#[derive(Parser, Debug)]
#[command(
    about = "Postwire vs Postfix + OpenDKIM on this machine: end to end, ingest, scale, DKIM"
)]
pub struct Args {
    /// Sections to run, comma-separated: e2e, ingest, smtp, scale, dkim, and (not by
    /// default) chaos, soak.
    #[arg(long, value_delimiter = ',', default_value = "e2e,ingest,smtp,scale,dkim")]
    sections: Vec<String>,
    /// Postwire backends to run, comma-separated: embedded, distributed.
    #[arg(long, value_delimiter = ',', default_value = "embedded,distributed")]
    backends: Vec<String>,
    /// Leave Postfix out of the end-to-end section.
    #[arg(long)]
    no_postfix: bool,
    /// End to end: messages per side, one recipient each.
    #[arg(long, default_value_t = 3000)]
    pub messages: usize,
    /// End to end: concurrent HTTP clients feeding Postwire.
    #[arg(long, alias = "concurrency", default_value_t = 20)]
    pub clients: usize,
    /// End to end: parallel SMTP sessions of smtp-source feeding Postfix.
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// Size of each message's text body, in bytes.
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    /// `[worker] concurrency` for Postwire; unset keeps the shipped default.
    #[arg(long)]
    pub workers: Option<usize>,
    /// End to end: seconds to wait for the sink to count every message.
    #[arg(long, default_value_t = 600)]
    pub deadline: u64,
    /// Ingest: offered load of the open-loop run, messages per second.
    #[arg(long, default_value_t = 2000.0)]
    pub offered_rate: f64,
    /// Ingest: seconds of the open-loop and of the saturation run.
    #[arg(long, default_value_t = 10.0)]
    pub ingest_seconds: f64,
    /// Ingest: closed-loop clients of the saturation run.
    #[arg(long, default_value_t = 50)]
    pub saturation_clients: usize,
    /// Messages per `POST /v1/messages/batch` (ingest and scale).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Ingest: messages sent through the batch route.
    #[arg(long, default_value_t = 20_000)]
    pub batch_messages: usize,
    /// Concurrent clients posting batches (ingest and scale).
    #[arg(long, default_value_t = 4)]
    pub batch_clients: usize,
    /// SMTP in: messages submitted by smtp-source (and DSNs sent back for them).
    #[arg(long, default_value_t = 10_000)]
    pub smtp_messages: usize,
    /// Scale: fill the queue up to this many messages (1000000 for the 1M row).
    #[arg(long, default_value_t = 100_000)]
    pub scale_max: usize,
    /// Scale: messages per step; the accept rate and RSS are read after each.
    #[arg(long, default_value_t = 10_000)]
    pub scale_step: usize,
    /// Chaos: messages sent (by `--clients` clients) while processes are killed.
    #[arg(long, default_value_t = 3000)]
    pub chaos_messages: usize,
    /// Chaos: seconds between SIGKILLs of a random Postwire process.
    #[arg(long, default_value_t = 3.0)]
    pub kill_every: f64,
    /// Soak: minutes of steady load on `postwire serve`.
    #[arg(long, default_value_t = 30.0)]
    pub soak_minutes: f64,
    /// Soak: offered load, messages per second.
    #[arg(long, default_value_t = 200.0)]
    pub soak_rate: f64,
    /// Soak: `storage.retention` of the service.
    #[arg(long, default_value = "5m")]
    pub soak_retention: String,
    /// DKIM: seconds of signing per algorithm.
    #[arg(long, default_value_t = 2.0)]
    dkim_seconds: f64,
    /// The `postwire` binary (default: next to this one).
    #[arg(long)]
    postwire_bin: Option<PathBuf>,
    /// Where the table is written as well as to stdout.
    #[arg(long, default_value = "target/bench/report.md")]
    report: PathBuf,
    /// Keep the working directory (configs, logs, sink dumps) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// What every section shares.
pub struct Bench {
    pub dir: PathBuf,
    pub dns: DnsServer,
    pub postwire: PathBuf,
    /// Postwire's RSA-2048 key for the sender domain, and its published TXT value.
    pub rsa: DkimKey,
    pub rsa_txt: String,
    pub text: Arc<str>,
}

impl Bench {
    /// How a section usually runs Postwire: on the bench's DNS server and RSA key, retrying
    /// after 1 s, with `--workers`, no SMTP listeners and the shipped retention.
    pub fn options<'a>(
        &'a self,
        args: &Args,
        backend: Backend,
        roles: service::Roles,
    ) -> service::Options<'a> {
        service::Options {
            backend,
            roles,
            dns: self.dns.addr(),
            dkim: &self.rsa,
            retry: r#"["1s"]"#,
            workers: args.workers,
            smtp_in: None,
            retention: None,
        }
    }

    pub fn target(&self, svc: &Service) -> load::Target {
        load::Target {
            base: svc.base.clone(),
            key: svc.key.clone(),
            from: format!("Bench <bench@{SENDER_DOMAIN}>"),
            recipient_domain: RECIPIENT_DOMAIN.into(),
            text: Arc::clone(&self.text),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected sections; `Ok(false)` when one of them failed (its row says how).
async fn run(args: &Args) -> anyhow::Result<bool> {
    let sections = |s: &str| args.sections.iter().any(|x| x == s);
    let backends: Vec<Backend> = args
        .backends
        .iter()
        .map(|b| match b.as_str() {
            "embedded" => Ok(Backend::Embedded),
            "distributed" => Ok(Backend::Distributed),
            other => anyhow::bail!("--backends: `{other}` is not embedded or distributed"),
        })
        .collect::<anyhow::Result<_>>()?;
    let postwire = match &args.postwire_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("postwire"),
    };
    anyhow::ensure!(
        postwire.exists(),
        "{} not found: cargo build --release -p postwire",
        postwire.display()
    );

    let tmp = tempfile::Builder::new().prefix("postwire-bench-").tempdir()?;
    let dns = DnsServer::start().await;
    // Long enough that Postwire's MX and key lookups are cached for the run, as in production.
    dns.set_ttl(3600);
    dns.add_mx(RECIPIENT_DOMAIN, 10, &format!("mx.{RECIPIENT_DOMAIN}"));
    dns.add_a(&format!("mx.{RECIPIENT_DOMAIN}"), Ipv4Addr::new(127, 0, 0, 2));
    eprintln!("generating DKIM keys…");
    let (rsa, rsa_txt) =
        dkim::publish_key(&dns, tmp.path(), SENDER_DOMAIN, "pw1", DkimAlgorithm::RsaSha256)?;
    let bench = Bench {
        dir: tmp.path().to_path_buf(),
        dns,
        postwire,
        rsa,
        rsa_txt,
        text: body_text(args.body_bytes).into(),
    };

    let load_before = loadavg();
    let mut rows: Vec<Row> = Vec::new();
    let mut ok = true;
    let mut failed = |rows: &mut Vec<Row>, section: &str, what: &str, e: anyhow::Error| {
        eprintln!("{section} / {what} failed: {e:#}");
        ok = false;
        rows.push(Row::new(section, what, "**failed**", &format!("{e:#}")));
    };

    let mut sample = None;
    if sections("e2e") {
        let reference = if args.no_postfix {
            None
        } else {
            match e2e::postfix(&bench, args).await {
                Ok(run) => Some(run),
                Err(e) => {
                    failed(&mut rows, "End to end", "Postfix + OpenDKIM", e);
                    None
                }
            }
        };
        let mut runs = Vec::new();
        for &backend in &backends {
            match e2e::postwire(&bench, args, backend).await {
                Ok(run) => runs.push(run),
                Err(e) => {
                    failed(&mut rows, "End to end", &format!("Postwire {}", backend.name()), e)
                }
            }
        }
        sample = runs.iter().find_map(|r| r.sample.clone());
        rows.extend(e2e::rows(reference.as_ref(), &runs, args));
    }
    if sections("ingest") {
        for &backend in &backends {
            match ingest::ingest(&bench, args, backend).await {
                Ok(r) => rows.extend(r),
                Err(e) => failed(&mut rows, &format!("Ingest, {}", backend.name()), "ingest", e),
            }
        }
    }
    if sections("smtp") {
        for &backend in &backends {
            match smtp_in::smtp_in(&bench, args, backend).await {
                Ok(r) => rows.extend(r),
                Err(e) => failed(&mut rows, &format!("SMTP in, {}", backend.name()), "smtp", e),
            }
        }
    }
    if sections("scale") {
        for &backend in &backends {
            match ingest::scale(&bench, args, backend).await {
                Ok(r) => rows.extend(r),
                Err(e) => failed(&mut rows, &format!("Scale, {}", backend.name()), "scale", e),
            }
        }
    }
    if sections("chaos") {
        for &backend in &backends {
            match chaos::chaos(&bench, args, backend).await {
                Ok(r) => rows.extend(r),
                Err(e) => failed(&mut rows, &format!("Chaos, {}", backend.name()), "chaos", e),
            }
        }
    }
    if sections("soak") {
        match soak::soak(&bench, args).await {
            Ok(r) => rows.extend(r),
            Err(e) => failed(&mut rows, "Soak, embedded", "soak", e),
        }
    }
    if sections("dkim") {
        match dkim_rows(&bench, args, sample).await {
            Ok(r) => rows.extend(r),
            Err(e) => failed(&mut rows, "DKIM", "ceiling", e),
        }
    }

    let table = report::render(&rows, &notes(args, &load_before));
    println!("\n{table}");
    if let Some(parent) = args.report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.report, &table)
        .with_context(|| format!("write {}", args.report.display()))?;
    eprintln!("table written to {}", args.report.display());
    if args.keep {
        eprintln!("working directory kept: {}", tmp.keep().display());
    }
    Ok(ok)
}

/// Signatures per second of one core over a delivered message (or a stand-in of the same shape).
async fn dkim_rows(
    bench: &Bench,
    args: &Args,
    sample: Option<Vec<u8>>,
) -> anyhow::Result<Vec<Row>> {
    let (ed, _) =
        dkim::publish_key(&bench.dns, &bench.dir, "ed.bench", "ed1", DkimAlgorithm::Ed25519Sha256)?;
    let message =
        sample.map(|m| dkim::strip_signatures(&m)).unwrap_or_else(|| stand_in(&bench.text));
    let keys = vec![bench.rsa.clone(), ed];
    let seconds = Duration::from_secs_f64(args.dkim_seconds);
    let size = message.len();
    eprintln!("DKIM ceiling over a {size} byte message…");
    let rates =
        tokio::task::spawn_blocking(move || dkim::ceiling(&keys, &message, seconds)).await??;
    Ok(rates
        .into_iter()
        .map(|(algorithm, rate)| {
            let name = match algorithm {
                DkimAlgorithm::RsaSha256 => "RSA-2048 (rsa-sha256)",
                DkimAlgorithm::Ed25519Sha256 => "Ed25519 (ed25519-sha256)",
            };
            Row::new(
                "DKIM ceiling",
                name,
                format!("{rate:.0} signatures/s per core"),
                &format!("Postwire's signer, one thread, over a {size} byte message"),
            )
        })
        .collect())
}

/// `/proc/loadavg`'s 1-minute figure: how busy the shared machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn notes(args: &Args, load_before: &str) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines().find_map(|l| {
            l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned())
        })
    });
    vec![
        format!(
            "Machine: {cpus} CPUs{}; the load generator, smtp-sink, the DNS server and the service under test share them. \
             Measured {}; load average (1 min) {load_before} at the start, {} at the end.",
            model.map(|m| format!(" ({m})")).unwrap_or_default(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            loadavg(),
        ),
        format!(
            "End to end: {} messages per side, one recipient each, ~{} B text body, timed from the first injected message to the last one counted by `smtp-sink -c` on {MX}. \
             Ingest runs `postwire api-gateway` alone (nothing delivered meanwhile). \
             Scale runs the whole service against a sink that defers every RCPT (retry in 1 h), so every accepted message stays queued.",
            args.messages, args.body_bytes,
        ),
        // scripts/bench.sh names itself; run directly, the binary's own command line.
        format!(
            "Command: `{}`",
            std::env::var("POSTWIRE_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "))
        ),
    ]
}

/// About `bytes` of plain prose in lines under 78 characters.
fn body_text(bytes: usize) -> String {
    const LINE: &str = "Your order has shipped and will arrive within three business days.\n";
    let mut text = String::from("Hello,\n\n");
    while text.len() + LINE.len() <= bytes {
        text.push_str(LINE);
    }
    text
}

/// A rendered message of the benchmark's shape, for when none reached a sink.
fn stand_in(text: &str) -> Vec<u8> {
    format!(
        "From: Bench <bench@{SENDER_DOMAIN}>\r\nTo: user0@{RECIPIENT_DOMAIN}\r\nSubject: Benchmark message 0\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <0@{SENDER_DOMAIN}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}",
        text.replace('\n', "\r\n")
    )
    .into_bytes()
}
