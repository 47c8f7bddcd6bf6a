//! `bench`: end-to-end throughput of the embedded (SQLite) app on loopback, and the DKIM signing
//! ceiling of one core.
//!
//! Everything runs in this process: a DNS server, one accepting SMTP sink on 127.0.0.2 as the
//! benchmark domain's MX, and a real `App` (gateway, MTA worker, webhook dispatcher) with an
//! RSA-2048 DKIM key for the sender domain. `--concurrency` HTTP clients, each with its own
//! keep-alive connection, post `--messages` one-recipient messages with a ~4 KB text body. The
//! run stops by itself and exits non-zero unless the sink received every message exactly once.
//!
//! ```text
//! cargo run --release -p postwire-e2e --bin bench -- --messages 3000
//! ```
//!
//! The load generator shares the machine (and the tokio runtime) with the app, so the figures
//! are a floor for the app alone, not a ceiling.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use postwire_config::{Backend, DkimAlgorithm, DkimKey, Retry};
use postwire_e2e::app::{test_settings, TestApp};
use postwire_e2e::dns::DnsServer;
use postwire_e2e::smtp::{pick_free_port, Received, Script, SmtpServer};
use postwire_mta_worker::dkim::DkimSigners;
use serde_json::json;

const SENDER_DOMAIN: &str = "sender.bench";
const RECIPIENT_DOMAIN: &str = "rcpt.bench";
const MX_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[derive(Parser, Debug)]
#[command(about = "End-to-end throughput benchmark of Postwire on loopback")]
struct Args {
    /// Messages to send, one recipient each.
    #[arg(long, default_value_t = 3000)]
    messages: usize,
    /// Concurrent HTTP clients, each on its own keep-alive connection.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// MTA worker concurrency (`[worker] concurrency`; the production default is 32).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Size of each message's text body, in bytes.
    #[arg(long, default_value_t = 4096)]
    body_bytes: usize,
    /// How long to wait for every message to reach the sink.
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    deadline: u64,
    /// Seconds of signing per algorithm for the DKIM ceiling row.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    dkim_seconds: f64,
}

/// What the HTTP clients measured.
struct Posting {
    /// Per-request durations of the 202s.
    latencies: Vec<Duration>,
    /// When the last 202 body was read.
    last_accepted: Instant,
    /// Non-202 replies and transport errors, with a sample.
    failures: usize,
    first_failure: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole benchmark; `Ok(false)` when delivery was incomplete or duplicated.
async fn run(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.messages > 0 && args.concurrency > 0, "--messages and --concurrency must be positive");
    let dir = tempfile::tempdir()?;
    let dns = DnsServer::start().await;
    let port = pick_free_port();
    let sink = SmtpServer::start(MX_IP, port, Script::default()).await?;
    dns.add_mx(RECIPIENT_DOMAIN, 10, &format!("mx.{RECIPIENT_DOMAIN}"));
    dns.add_a(&format!("mx.{RECIPIENT_DOMAIN}"), MX_IP);

    eprintln!("generating DKIM keys…");
    let rsa = publish_key(&dns, dir.path(), SENDER_DOMAIN, "rsa1", DkimAlgorithm::RsaSha256)?;
    let mut settings = test_settings(dir.path(), dns.addr(), port);
    settings.worker.concurrency = args.workers;
    settings.retry = Retry::default();
    settings.dkim = vec![rsa.clone()];
    // `test_settings` may pick another backend from the environment; name what actually runs.
    let backend = match settings.storage.backend {
        Backend::Embedded => "embedded (SQLite)",
        Backend::Distributed => "distributed (RabbitMQ + Redis)",
    };
    let app = TestApp::start(settings).await?;

    let text = body_text(args.body_bytes);
    eprintln!(
        "posting {} messages from {} clients (MTA worker concurrency {})…",
        args.messages, args.concurrency, args.workers
    );
    let start = Instant::now();
    let posting = post_all(&app, args, &text, start).await?;
    let accepted = posting.latencies.len();
    // How far delivery kept up while the API was taking the load.
    let delivered_during_posting = sink.received().len();
    eprintln!(
        "{accepted} accepted in {:.2?}; waiting for delivery…",
        posting.last_accepted - start
    );

    // The sink's counter wakes the wait the moment the last accepted message arrives.
    let deadline = Duration::from_secs(args.deadline);
    let waited = sink.wait_for_messages(accepted, deadline).await.is_ok();
    let delivered_at = Instant::now();
    // Give late duplicates (a redelivery after a lost reply, say) a moment to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = sink.received();
    let connections = sink.connections();
    app.stop().await;

    let mut ok = true;
    if posting.failures > 0 {
        ok = false;
        println!(
            "WARNING: {} of {} POSTs failed; first: {}",
            posting.failures,
            args.messages,
            posting.first_failure.as_deref().unwrap_or("?")
        );
    }
    if !waited {
        ok = false;
        println!(
            "WARNING: the sink got {} of {accepted} accepted messages within {deadline:?}",
            received.len()
        );
    }
    ok &= check_received(&received, args.messages);

    let ceiling_message = received
        .first()
        .map(|r| strip_dkim_signatures(&r.data))
        .unwrap_or_else(|| fallback_message(&text));
    eprintln!("measuring the DKIM ceiling over a {} byte message…", ceiling_message.len());
    let ed = publish_key(&dns, dir.path(), "ed.bench", "ed1", DkimAlgorithm::Ed25519Sha256)?;
    let signers = DkimSigners::from_settings(&[rsa, ed])?;
    let per_algorithm = Duration::from_secs_f64(args.dkim_seconds);
    // Signing is synchronous: one thread, nothing else running now that the app stopped.
    let (rsa_rate, ed_rate) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
        Ok((
            signatures_per_second(&signers, SENDER_DOMAIN, &ceiling_message, per_algorithm)?,
            signatures_per_second(&signers, "ed.bench", &ceiling_message, per_algorithm)?,
        ))
    })
    .await??;

    let mut sorted = posting.latencies.clone();
    sorted.sort_unstable();
    let accept_window = posting.last_accepted - start;
    let deliver_window = delivered_at - start;
    let delivered_rate = if waited {
        format!("{:.0}", accepted as f64 / deliver_window.as_secs_f64())
    } else {
        "incomplete".to_owned()
    };
    println!();
    println!("| scenario | messages | accepted msg/s | POST p50 | POST p99 | delivered msg/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {backend}, RSA-2048 DKIM | {} | {:.0} | {:.1} ms | {:.1} ms | {} |",
        args.messages,
        accepted as f64 / accept_window.as_secs_f64(),
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        delivered_rate,
    );
    println!("| DKIM ceiling, one core | RSA-2048: {rsa_rate:.0} sig/s | Ed25519: {ed_rate:.0} sig/s | | | |");
    println!();
    println!(
        "all accepted after {:.2} s, all delivered after {:.2} s (from the first POST); \
         POST max {:.1} ms; {} SMTP connections; {} clients, MTA worker concurrency {}, ~{} B text body",
        accept_window.as_secs_f64(),
        deliver_window.as_secs_f64(),
        ms(sorted.last().copied().unwrap_or_default()),
        connections,
        args.concurrency,
        args.workers,
        args.body_bytes,
    );
    let drain = deliver_window.saturating_sub(accept_window);
    if waited && accepted > delivered_during_posting && !drain.is_zero() {
        println!(
            "{delivered_during_posting} delivered while posting ({:.0} msg/s), the other {} in the {:.2} s after ({:.0} msg/s)",
            delivered_during_posting as f64 / accept_window.as_secs_f64(),
            accepted - delivered_during_posting,
            drain.as_secs_f64(),
            (accepted - delivered_during_posting) as f64 / drain.as_secs_f64(),
        );
    }
    println!(
        "machine: {} CPUs (nproc){}; load generator, sink and app share them; command: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model().map(|m| format!(", {m}")).unwrap_or_default(),
        command_line(),
    );
    Ok(ok)
}

/// Posts every message from `args.concurrency` clients pulling from one counter.
async fn post_all(app: &TestApp, args: &Args, text: &str, start: Instant) -> anyhow::Result<Posting> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = app.url("/v1/messages");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        // One client each, so each holds its own keep-alive connection.
        let client = reqwest::Client::builder().build()?;
        let (next, url, key, text, total) =
            (Arc::clone(&next), url.clone(), app.key.clone(), text.to_owned(), args.messages);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut last = start;
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = json!({
                    "from": format!("Bench <bench@{SENDER_DOMAIN}>"),
                    "to": [recipient(i)],
                    "subject": format!("Benchmark message {i}"),
                    "text": text,
                });
                let sent = Instant::now();
                match post(&client, &url, &key, &body).await {
                    Ok(()) => {
                        last = Instant::now();
                        latencies.push(last - sent);
                    }
                    Err(e) => failures.push(format!("message {i}: {e:#}")),
                }
            }
            (latencies, last, failures)
        });
    }
    let mut posting = Posting { latencies: Vec::new(), last_accepted: start, failures: 0, first_failure: None };
    while let Some(joined) = tasks.join_next().await {
        let (latencies, last, failures) = joined.context("client task")?;
        posting.latencies.extend(latencies);
        posting.last_accepted = posting.last_accepted.max(last);
        posting.failures += failures.len();
        if posting.first_failure.is_none() {
            posting.first_failure = failures.into_iter().next();
        }
    }
    Ok(posting)
}

/// One `POST /v1/messages`, body read to the end; Ok only on 202.
async fn post(client: &reqwest::Client, url: &str, key: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let response = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = response.status();
    let reply = response.bytes().await?;
    anyhow::ensure!(status == 202, "{status}: {}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn recipient(i: usize) -> String {
    format!("user{i}@{RECIPIENT_DOMAIN}")
}

/// Every recipient exactly once, each message signed; prints a warning line per problem.
fn check_received(received: &[Received], expected: usize) -> bool {
    let mut ok = true;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for r in received {
        for to in &r.rcpt_to {
            if !seen.insert(to.to_ascii_lowercase()) {
                duplicates += 1;
            }
        }
    }
    let missing = (0..expected).filter(|i| !seen.contains(&recipient(*i))).count();
    if received.len() != expected || duplicates > 0 || missing > 0 {
        ok = false;
        println!(
            "WARNING: the sink holds {} messages for {expected} sent: {missing} recipients missing, {duplicates} duplicate deliveries",
            received.len()
        );
    }
    let unsigned = received
        .iter()
        .filter(|r| !String::from_utf8_lossy(&r.data).to_ascii_lowercase().contains("dkim-signature:"))
        .count();
    if unsigned > 0 {
        ok = false;
        println!("WARNING: {unsigned} received messages carry no DKIM-Signature");
    }
    ok
}

/// Generates a key like `postwire dkim generate`, writes its PEM and publishes its TXT record.
fn publish_key(
    dns: &DnsServer,
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> anyhow::Result<DkimKey> {
    let pair = postwire::keygen::generate(algorithm).map_err(anyhow::Error::msg)?;
    let path = dir.join(format!("{selector}.pem"));
    std::fs::write(&path, pair.private_pem)?;
    dns.add_txt(&format!("{selector}._domainkey.{domain}"), &pair.txt_value);
    Ok(DkimKey { domain: domain.into(), selector: selector.into(), algorithm, private_key: path })
}

/// Signs `message` with `domain`'s key in a loop for `duration` on this thread.
fn signatures_per_second(
    signers: &DkimSigners,
    domain: &str,
    message: &[u8],
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        let header = signers.signature_headers(domain, message)?;
        anyhow::ensure!(!header.is_empty(), "no DKIM key for {domain}");
        count += 1;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// The message as the MTA rendered it, minus the DKIM-Signature header fields it added.
fn strip_dkim_signatures(data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut out = String::new();
    let mut skipping = false;
    for line in head.split("\r\n") {
        let continuation = line.starts_with([' ', '\t']);
        if !continuation {
            skipping = line.to_ascii_lowercase().starts_with("dkim-signature:");
        }
        if !skipping {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// A stand-in for a rendered message when none reached the sink.
fn fallback_message(text: &str) -> Vec<u8> {
    format!(
        "From: Bench <bench@{SENDER_DOMAIN}>\r\nTo: user0@{RECIPIENT_DOMAIN}\r\nSubject: Benchmark message 0\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <0@{SENDER_DOMAIN}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}",
        text.replace('\n', "\r\n")
    )
    .into_bytes()
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

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// The invocation, in `cargo run` form.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo run --release -p postwire-e2e --bin bench -- {}", args.join(" "))
        .trim_end()
        .to_owned()
}
