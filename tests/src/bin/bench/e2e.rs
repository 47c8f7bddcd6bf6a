//! End to end, side by side: the same N messages, RSA-2048-signed, to the same `smtp-sink` on
//! 127.0.0.2:25 — Postfix + OpenDKIM fed by `smtp-source`, then Postwire embedded and
//! distributed fed over HTTP. Each is timed from the first injected message to the N-th message
//! counted by the sink.

use std::time::{Duration, Instant};

use crate::load;
use crate::postfix::Postfix;
use crate::report::Row;
use crate::service::{self, Backend, Roles, Service};
use crate::sink::{DumpSummary, Mode, Sink};
use crate::{dkim, Args, Bench, MX, RECIPIENT_DOMAIN, SENDER_DOMAIN};

/// One side's result.
pub struct Run {
    pub name: String,
    /// Delivered messages per second; `None` when the sink did not get all N in time.
    pub rate: Option<f64>,
    pub detail: String,
    /// A delivered message (CRLF), for the DKIM ceiling.
    pub sample: Option<Vec<u8>>,
}

/// Postfix + OpenDKIM with `smtp-source -s <sessions>`.
pub async fn postfix(bench: &Bench, args: &Args) -> anyhow::Result<Run> {
    let dir = bench.dir.join("postfix-run");
    std::fs::create_dir_all(&dir)?;
    let sink = Sink::start(MX, Mode::Accept, &dir, "postfix")?;
    let mut postfix = Postfix::start(&dir, SENDER_DOMAIN, "pf1", MX, RECIPIENT_DOMAIN)?;
    bench.dns.add_txt(&format!("pf1._domainkey.{SENDER_DOMAIN}"), &postfix.txt_value);
    let message = dir.join("message.txt");
    std::fs::write(&message, smtp_source_message(&bench.text))?;
    eprintln!(
        "postfix: {} messages through {} with smtp-source -s {}…",
        args.messages, postfix.versions, args.sessions
    );

    sink.set_target(args.messages);
    let machine = MachineCpu::now();
    let start = Instant::now();
    let injected = postfix
        .inject(
            &message,
            args.messages,
            args.sessions,
            &format!("bench@{SENDER_DOMAIN}"),
            &format!("user@{RECIPIENT_DOMAIN}"),
        )
        .await;
    let reached = match &injected {
        Ok(_) => sink.wait_target(Duration::from_secs(args.deadline)).await,
        Err(_) => None,
    };
    let busy = machine.busy_since();
    postfix.stop();
    let sessions = sink.sessions();
    let summary = sink.finish(SENDER_DOMAIN)?;
    let injected = injected?;
    let records = [(format!("pf1._domainkey.{SENDER_DOMAIN}"), postfix.txt_value.clone())];
    let check = checks(&summary, args.messages, &records).await;
    let detail = format!(
        "{}; smtp-source done after {:.1} s; {sessions} SMTP sessions at the sink; {check}; machine CPU {busy}",
        delivered_note(reached, start, &summary, args.messages),
        (injected - start).as_secs_f64(),
    );
    Ok(Run {
        name: postfix.versions.clone(),
        rate: rate(reached, start, args.messages),
        detail,
        sample: summary.sample,
    })
}

/// Postwire on `backend`, fed by `args.clients` HTTP clients.
pub async fn postwire(bench: &Bench, args: &Args, backend: Backend) -> anyhow::Result<Run> {
    let dir = bench.dir.join(format!("e2e-{}", backend.name()));
    let sink = Sink::start(MX, Mode::Accept, &dir, backend.name())?;
    let options = bench.options(args, backend, Roles::All);
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let processes = svc.rss_kib().iter().map(|(role, _)| *role).collect::<Vec<_>>().join(" + ");
    eprintln!(
        "postwire {}: {} messages from {} HTTP clients to `{processes}`…",
        backend.name(),
        args.messages,
        args.clients
    );
    let target = bench.target(&svc);

    sink.set_target(args.messages);
    let cpu_before = svc.cpu_seconds();
    let others_before =
        (sink.cpu_seconds(), service::cpu_seconds(std::process::id()).unwrap_or(0.0));
    let machine = MachineCpu::now();
    let posted = load::closed_loop(&target, 0, args.messages, args.clients).await;
    let reached = match &posted {
        Ok(p) if p.accepted == args.messages => {
            sink.wait_target(Duration::from_secs(args.deadline)).await
        }
        _ => None,
    };
    let cpu = svc.cpu_seconds() - cpu_before;
    let sink_cpu = sink.cpu_seconds() - others_before.0;
    let bench_cpu = service::cpu_seconds(std::process::id()).unwrap_or(0.0) - others_before.1;
    let busy = machine.busy_since();
    let rss = svc.rss_note();
    let stopped = svc.stop().await;
    let sessions = sink.sessions();
    let summary = sink.finish(SENDER_DOMAIN)?;
    let posted = posted?;
    stopped?;
    let start = posted.started;
    let window = reached.unwrap_or_else(Instant::now) - start;
    let share = |seconds: f64| format!("{:.0}%", 100.0 * seconds / window.as_secs_f64());
    let records =
        [(format!("{}._domainkey.{SENDER_DOMAIN}", bench.rsa.selector), bench.rsa_txt.clone())];
    let check = checks(&summary, args.messages, &records).await;
    let detail = format!(
        "{}; all accepted after {:.1} s (POST {}){}; {sessions} SMTP sessions at the sink; {check}; \
         service CPU {cpu:.1} s ({:.2} ms/msg); share of one core over the run: service {}, smtp-sink {}, \
         load generator + DNS {}; machine CPU {busy}; RSS {rss}",
        delivered_note(reached, start, &summary, args.messages),
        (posted.finished - start).as_secs_f64(),
        posted.latency_summary(),
        posted.failure_note(),
        cpu * 1000.0 / args.messages as f64,
        share(cpu),
        share(sink_cpu),
        share(bench_cpu),
    );
    Ok(Run {
        name: format!("Postwire {} (`{processes}`)", backend.name()),
        rate: rate(reached, start, args.messages),
        detail,
        sample: summary.sample,
    })
}

/// The table rows for the runs, with each Postwire rate as a multiple of Postfix's.
pub fn rows(postfix: Option<&Run>, postwire: &[Run], args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    let reference = postfix.and_then(|p| p.rate);
    if let Some(p) = postfix {
        rows.push(Row::new(
            "End to end",
            format!("{} (`smtp-source -s {}`)", p.name, args.sessions),
            p.rate.map_or("**incomplete**".into(), |r| format!("{r:.0} msgs/s")),
            &p.detail,
        ));
    }
    for run in postwire {
        let ratio = match (run.rate, reference) {
            (Some(r), Some(p)) if p > 0.0 => format!(" (**{:.2}×** Postfix)", r / p),
            _ => String::new(),
        };
        rows.push(Row::new(
            "End to end",
            format!("{} ({} HTTP clients)", run.name, args.clients),
            run.rate.map_or("**incomplete**".into(), |r| format!("{r:.0} msgs/s{ratio}")),
            &run.detail,
        ));
    }
    rows
}

fn rate(reached: Option<Instant>, start: Instant, n: usize) -> Option<f64> {
    reached.map(|at| n as f64 / (at - start).as_secs_f64())
}

fn delivered_note(
    reached: Option<Instant>,
    start: Instant,
    summary: &DumpSummary,
    n: usize,
) -> String {
    match reached {
        Some(at) => format!("{n} delivered in {:.1} s", (at - start).as_secs_f64()),
        None => format!("**only {} of {n} reached the sink**", summary.messages),
    }
}

/// Every message once, every one signed, and one sample verified.
async fn checks(summary: &DumpSummary, n: usize, records: &[(String, String)]) -> String {
    let mut notes = Vec::new();
    if summary.messages != n || summary.distinct_recipients != n {
        notes.push(format!(
            "**sink holds {} messages for {} distinct recipients**",
            summary.messages, summary.distinct_recipients
        ));
    }
    notes.push(if summary.signed_rsa == summary.messages {
        format!("{}/{} carry an RSA DKIM-Signature", summary.signed_rsa, summary.messages)
    } else {
        format!("**only {}/{} carry an RSA DKIM-Signature**", summary.signed_rsa, summary.messages)
    });
    notes.push(match &summary.sample {
        Some(sample) => match dkim::verify(sample, records).await {
            Ok(pass) => format!("sample: {pass}"),
            Err(e) => format!("**sample: {e:#}**"),
        },
        None => "**no sample**".into(),
    });
    notes.join(", ")
}

/// The message smtp-source sends (`-F`): the same headers and ~4 KB text body Postwire renders.
fn smtp_source_message(text: &str) -> String {
    format!(
        "From: Bench <bench@{SENDER_DOMAIN}>\nTo: <user@{RECIPIENT_DOMAIN}>\nSubject: Benchmark message\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n{text}"
    )
}

/// The machine's CPU counters (`/proc/stat`, first line), to tell how busy all cores were.
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    fn now() -> MachineCpu {
        let line = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let ticks: Vec<u64> =
            line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: u64 = ticks.iter().take(8).sum();
        // idle and iowait are the 4th and 5th counters.
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        MachineCpu { busy: total - idle, total }
    }

    /// `"87% busy (all cores)"` since `self` was read.
    fn busy_since(&self) -> String {
        let now = MachineCpu::now();
        let total = now.total.saturating_sub(self.total).max(1);
        format!(
            "{:.0}% busy (all cores)",
            100.0 * now.busy.saturating_sub(self.busy) as f64 / total as f64
        )
    }
}
