//! SMTP in: what the submission listener accepts, and how many DSNs the bounce listener
//! records, with `postwire api-gateway` alone (accepted messages stay queued).
//!
//! - Submission: Postfix's `smtp-source` with 20 sessions sends N one-recipient ~4 KB messages
//!   through `submission.trusted_networks` (no AUTH round trips), as the HTTP ingest rows are
//!   driven without delivery. Accepted = the rise of `postwire_messages_accepted_total`.
//! - DSNs: for each message just submitted, a Postfix-shaped DSN to its VERP return path
//!   (minted with the service's tracking secret for position 0), sent from `<>` over 20
//!   connections, each carrying one DSN after another (MAIL, RCPT and DATA pipelined, as an MTA
//!   with PIPELINING does); every one bounces its queued recipient, writes an event and a
//!   suppression entry. Recorded = the rise of `postwire_inbound_messages_total{kind="dsn"}`.

use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use postwire_tracking::{MailCopy, TrackingKeys};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::ingest::Cpu;
use crate::load::Outcome;
use crate::report::Row;
use crate::service::{self, Backend, Roles, Service, SmtpIn};
use crate::{Args, Bench, RECIPIENT_DOMAIN, SENDER_DOMAIN};

const BOUNCE_DOMAIN: &str = "bounces.sender.bench";
const SESSIONS: usize = 20;

/// The SMTP-in rows for `backend`.
pub async fn smtp_in(bench: &Bench, args: &Args, backend: Backend) -> anyhow::Result<Vec<Row>> {
    let dir = bench.dir.join(format!("smtp-in-{}", backend.name()));
    let ports = SmtpIn {
        submission: crate::postfix::free_port()?,
        bounces: crate::postfix::free_port()?,
        bounce_domain: BOUNCE_DOMAIN,
    };
    let options =
        service::Options { smtp_in: Some(ports), ..bench.options(args, backend, Roles::ApiOnly) };
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let section = format!("SMTP in, {}", backend.name());
    let count = args.smtp_messages;

    // The same shape over HTTP first, for comparison: single sends by 20 closed-loop clients.
    eprintln!("smtp in {}: {count} single sends over HTTP, {SESSIONS} clients…", backend.name());
    let cpu = Cpu::read(&svc);
    let http = crate::load::closed_loop(&bench.target(&svc), 0, count, SESSIONS).await?;
    let http_cpu = cpu.note(&svc, &http);
    let mut rows = vec![Row::new(
        &section,
        format!("`POST /v1/messages`, {SESSIONS} closed-loop clients (for comparison)"),
        format!("{:.0} msgs/s", http.rate()),
        &format!("{}{}; {http_cpu}", http.latency_summary(), http.failure_note()),
    )];

    let message = dir.join("message.eml");
    std::fs::write(
        &message,
        format!(
            "From: Bench <bench@{SENDER_DOMAIN}>\nTo: user@{RECIPIENT_DOMAIN}\nSubject: Benchmark\n\
             MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{}",
            bench.text
        ),
    )?;
    eprintln!("smtp in {}: {count} messages by smtp-source, {SESSIONS} sessions…", backend.name());
    let before = accepted(&svc).await?;
    let cpu = Cpu::read(&svc);
    let started = Instant::now();
    let status = tokio::process::Command::new("smtp-source")
        .args(["-s", &SESSIONS.to_string(), "-m", &count.to_string(), "-N"])
        .args(["-f", &format!("bench@{SENDER_DOMAIN}"), "-t", &format!("user@{RECIPIENT_DOMAIN}")])
        .arg("-F")
        .arg(&message)
        .arg(format!("127.0.0.1:{}", ports.submission))
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("spawn smtp-source (apt-get install postfix)")?;
    anyhow::ensure!(status.success(), "smtp-source exited with {status}");
    let outcome = window(started, accepted(&svc).await? - before);
    let cpu_note = cpu.note(&svc, &outcome);
    rows.push(Row::new(
        &section,
        format!("submission, `smtp-source -s {SESSIONS}`, trusted network"),
        format!("{:.0} msgs/s", outcome.rate()),
        &format!(
            "{} of {count} accepted ({} B each); {cpu_note}; RSS after: {}",
            outcome.accepted,
            bench.text.len(),
            svc.rss_note()
        ),
    ));

    let ids = queued_ids(&svc, count).await?;
    eprintln!("smtp in {}: {} DSNs, {SESSIONS} connections…", backend.name(), ids.len());
    let keys = TrackingKeys::new(svc.settings().tracking.secret.expose().as_bytes());
    let lifetime = svc.settings().storage.retention.std();
    let paths: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let copy =
                MailCopy { message_id: id, recipient: 0, expires_at: SystemTime::now() + lifetime };
            keys.return_path(&copy).map(|local| format!("{local}@{BOUNCE_DOMAIN}"))
        })
        .collect();
    let before = inbound_dsn(&svc).await?;
    let cpu = Cpu::read(&svc);
    let started = Instant::now();
    let per_connection = paths.len().div_ceil(SESSIONS).max(1);
    let sends = paths.chunks(per_connection).map(|chunk| {
        let chunk = chunk.to_vec();
        tokio::spawn(async move { send_dsns(ports.bounces, &chunk).await })
    });
    let mut failures = 0;
    for send in futures::future::join_all(sends).await {
        if let Err(e) = send.context("DSN sender")? {
            eprintln!("a DSN connection failed: {e:#}");
            failures += 1;
        }
    }
    let outcome = window(started, inbound_dsn(&svc).await? - before);
    let cpu_note = cpu.note(&svc, &outcome);
    rows.push(Row::new(
        &section,
        format!("bounce intake, Postfix-shaped DSNs, {SESSIONS} pipelining connections"),
        format!("{:.0} DSNs/s", outcome.rate()),
        &format!(
            "{} of {} recorded (each bounces a queued recipient, stores its event and a \
             suppression){}; {cpu_note}",
            outcome.accepted,
            paths.len(),
            if failures > 0 { format!(", {failures} connections failed") } else { String::new() },
        ),
    ));
    svc.stop().await?;
    Ok(rows)
}

/// One connection to the bounce listener carrying a DSN to each of `paths`, MAIL, RCPT and DATA
/// pipelined; fails at the first reply that is not the expected one.
async fn send_dsns(port: u16, paths: &[String]) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    expect(&mut r, "220").await?;
    w.write_all(b"EHLO mx.rcpt.bench\r\n").await?;
    expect(&mut r, "250").await?;
    for path in paths {
        w.write_all(format!("MAIL FROM:<>\r\nRCPT TO:<{path}>\r\nDATA\r\n").as_bytes()).await?;
        for code in ["250", "250", "354"] {
            expect(&mut r, code).await?;
        }
        w.write_all(format!("{}.\r\n", dsn(path)).as_bytes()).await?;
        expect(&mut r, "250").await?;
    }
    w.write_all(b"QUIT\r\n").await?;
    Ok(())
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    code: &str,
) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        anyhow::ensure!(r.read_line(&mut line).await? > 0, "connection closed");
        anyhow::ensure!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// An outcome of `n` over the time since `started`.
fn window(started: Instant, n: u64) -> Outcome {
    let mut outcome = Outcome::new(started);
    outcome.accepted = n as usize;
    outcome.finished = Instant::now();
    outcome
}

fn dsn(return_path: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.{RECIPIENT_DOMAIN}\r\nTo: {return_path}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; \
         boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nNo such user.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.{RECIPIENT_DOMAIN}\r\n\r\n\
         Final-Recipient: rfc822; user@{RECIPIENT_DOMAIN}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b1--\r\n"
    )
}

async fn metric(svc: &Service, name: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("{}/metrics", svc.base)).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0) as u64)
}

async fn accepted(svc: &Service) -> anyhow::Result<u64> {
    metric(svc, "postwire_messages_accepted_total ").await
}

async fn inbound_dsn(svc: &Service) -> anyhow::Result<u64> {
    metric(svc, "postwire_inbound_messages_total{kind=\"dsn\"} ").await
}

/// Ids of up to `n` queued messages, newest first, through the search API.
async fn queued_ids(svc: &Service, n: usize) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    let mut cursor: Option<String> = None;
    while ids.len() < n {
        let mut url = format!("{}/v1/messages?status=queued&limit=100", svc.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value =
            client.get(url).bearer_auth(&svc.key).send().await?.error_for_status()?.json().await?;
        for m in page["data"].as_array().into_iter().flatten() {
            ids.extend(m["id"].as_str().map(String::from));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.truncate(n);
    anyhow::ensure!(!ids.is_empty(), "no queued message found to bounce");
    Ok(ids)
}
