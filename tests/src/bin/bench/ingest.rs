//! Ingest and scale: what the API accepts, durably, and whether that holds as the queue grows.
//!
//! - Ingest runs `postwire api-gateway` alone, so accepted messages stay queued and the figures
//!   are the API's: a warm-up, an open-loop offered load, saturation with many closed-loop
//!   clients, and batches.
//! - Scale runs the whole service against a sink that answers every RCPT with 450, with a one-hour
//!   retry delay, so every accepted message stays queued (deferred or pending); it fills the queue
//!   one step (10k) at a time through the batch route, reading the accept rate of each step and
//!   the service's RSS after it.

use std::time::{Duration, Instant};

use crate::load::{self, Outcome};
use crate::report::Row;
use crate::service::{self, Backend, Roles, Service};
use crate::sink::{Mode, Sink};
use crate::{Args, Bench, MX};

/// The ingest rows for `backend`.
pub async fn ingest(bench: &Bench, args: &Args, backend: Backend) -> anyhow::Result<Vec<Row>> {
    let dir = bench.dir.join(format!("ingest-{}", backend.name()));
    let options = bench.options(args, backend, Roles::ApiOnly);
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let target = bench.target(&svc);
    let section = format!("Ingest, {}", backend.name());
    let seconds = Duration::from_secs_f64(args.ingest_seconds);
    let mut next = 0;
    let mut rows = Vec::new();

    eprintln!(
        "ingest {}: warm-up, then {} msgs/s offered for {seconds:?}…",
        backend.name(),
        args.offered_rate
    );
    let warm = load::closed_loop(&target, next, 1000, args.clients).await?;
    next += 1000 + warm.failures;
    let cpu = Cpu::read(&svc);
    let open = load::open_loop(&target, next, args.offered_rate, seconds).await?;
    let open_cpu = cpu.note(&svc, &open);
    next += open.accepted + open.failures;
    rows.push(Row::new(
        &section,
        format!(
            "`POST /v1/messages`, {:.0} msgs/s offered (open loop, {:.0} s)",
            args.offered_rate,
            seconds.as_secs_f64()
        ),
        format!("{:.0} msgs/s", open.rate()),
        &format!(
            "{} (from the due time){}; {open_cpu}; RSS after: {}",
            open.latency_summary(),
            open.failure_note(),
            svc.rss_note()
        ),
    ));

    eprintln!("ingest {}: saturation, {} clients…", backend.name(), args.saturation_clients);
    let cpu = Cpu::read(&svc);
    let saturated = load::saturate(&target, next, seconds, args.saturation_clients).await?;
    let saturated_cpu = cpu.note(&svc, &saturated);
    next += saturated.accepted + saturated.failures;
    rows.push(Row::new(
        &section,
        format!(
            "`POST /v1/messages`, saturation ({} closed-loop clients)",
            args.saturation_clients
        ),
        format!("{:.0} msgs/s", saturated.rate()),
        &format!(
            "{}{}; {saturated_cpu}; RSS after: {}",
            saturated.latency_summary(),
            saturated.failure_note(),
            svc.rss_note()
        ),
    ));

    eprintln!("ingest {}: batches of {}…", backend.name(), args.batch_size);
    let cpu = Cpu::read(&svc);
    let batch =
        load::batches(&target, next, args.batch_messages, args.batch_size, args.batch_clients)
            .await?;
    let batch_cpu = cpu.note(&svc, &batch);
    rows.push(Row::new(
        &section,
        format!("`POST /v1/messages/batch` × {} ({} clients)", args.batch_size, args.batch_clients),
        format!("{:.0} msgs/s", batch.rate()),
        &format!(
            "{} messages; per batch {}{}; {batch_cpu}; RSS after: {}",
            batch.accepted,
            batch.latency_summary(),
            batch.failure_note(),
            svc.rss_note()
        ),
    ));
    svc.stop().await?;
    Ok(rows)
}

/// The scale rows for `backend`: one per 10× milestone, and one with every step's rate.
pub async fn scale(bench: &Bench, args: &Args, backend: Backend) -> anyhow::Result<Vec<Row>> {
    let dir = bench.dir.join(format!("scale-{}", backend.name()));
    let sink = Sink::start(MX, Mode::Defer, &dir, &format!("scale-{}", backend.name()))?;
    let options =
        service::Options { retry: r#"["1h"]"#, ..bench.options(args, backend, Roles::All) };
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let target = bench.target(&svc);
    let section = format!("Scale, {}", backend.name());
    let start_rss = total_rss(&svc);
    let started = Instant::now();
    let mut steps: Vec<(usize, Outcome, u64)> = Vec::new();
    let mut queued = 0;
    while queued < args.scale_max {
        let step = args.scale_step.min(args.scale_max - queued);
        let outcome =
            load::batches(&target, queued, step, args.batch_size, args.batch_clients).await?;
        let failed = outcome.failures > 0;
        queued += outcome.accepted;
        let rss = total_rss(&svc);
        eprintln!(
            "scale {}: {queued} queued, last step {:.0} msgs/s, RSS {:.0} MB{}",
            backend.name(),
            outcome.rate(),
            rss as f64 / 1024.0,
            outcome.failure_note()
        );
        steps.push((queued, outcome, rss));
        if failed {
            break;
        }
    }
    let fill = started.elapsed();
    let sessions = sink.sessions();
    let per_process = svc.rss_note();
    svc.stop().await?;
    drop(sink);

    let mut rows = Vec::new();
    let mut milestone = args.scale_step;
    for (queued, outcome, rss) in &steps {
        if *queued >= milestone || Some(queued) == steps.last().map(|s| &s.0) {
            rows.push(Row::new(
                &section,
                format!("{} queued", thousands(*queued)),
                format!("{:.0} msgs/s", outcome.rate()),
                &format!(
                    "accept rate of the step that reached it; RSS {:.0} MB{}",
                    *rss as f64 / 1024.0,
                    outcome.failure_note()
                ),
            ));
            while milestone <= *queued {
                milestone *= 10;
            }
        }
    }
    let rates: Vec<String> = steps.iter().map(|(_, o, _)| format!("{:.0}", o.rate())).collect();
    let rss: Vec<String> =
        steps.iter().map(|(_, _, r)| format!("{:.0}", *r as f64 / 1024.0)).collect();
    rows.push(Row::new(
        &section,
        format!("every {} step (batches of {}, {} clients)", thousands(args.scale_step), args.batch_size, args.batch_clients),
        format!("{:.0} msgs/s overall", queued as f64 / fill.as_secs_f64()),
        &format!(
            "msgs/s per step: {}; RSS MB after each: {} (at start {:.0}; at the end {per_process}); the sink answered 450 to every RCPT, in {sessions} SMTP sessions",
            compact(&rates),
            compact(&rss),
            start_rss as f64 / 1024.0,
        ),
    ));
    Ok(rows)
}

/// CPU used by the service and by this process (the load generator) from one reading to the next.
pub struct Cpu {
    service: f64,
    generator: f64,
}

impl Cpu {
    pub fn read(svc: &Service) -> Cpu {
        Cpu {
            service: svc.cpu_seconds(),
            generator: service::cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    /// `"CPU, share of one core: service 95%, load generator 80%"` over the outcome's window.
    pub fn note(&self, svc: &Service, outcome: &Outcome) -> String {
        let now = Cpu::read(svc);
        let window = (outcome.finished - outcome.started).as_secs_f64().max(1e-3);
        format!(
            "CPU, share of one core: service {:.0}%, load generator {:.0}%",
            100.0 * (now.service - self.service) / window,
            100.0 * (now.generator - self.generator) / window,
        )
    }
}

fn total_rss(svc: &Service) -> u64 {
    svc.rss_kib().iter().map(|(_, kib)| kib).sum()
}

/// All values when few, else every n-th (and the last) so a 1M run stays readable.
fn compact(values: &[String]) -> String {
    let every = values.len().div_ceil(20).max(1);
    let mut picked: Vec<&str> = values.iter().step_by(every).map(String::as_str).collect();
    if every > 1 && (values.len() - 1) % every != 0 {
        picked.push(values.last().map(String::as_str).unwrap_or_default());
    }
    let note = if every > 1 { format!(" (every {every}th step)") } else { String::new() };
    format!("{}{note}", picked.join(", "))
}

fn thousands(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
