//! Chaos: "nothing stuck" (issue 11). N messages from 20 clients, each with its own
//! `Idempotency-Key` and retried with it after a connection error, a timeout, a 5xx or a 409 —
//! what README tells applications to do — while a random Postwire process is SIGKILLed (and
//! started again at once) every few seconds, through ingest and drain. A webhook endpoint
//! subscribed to `message.delivered` counts events per message; an SMTP server on the MX counts
//! deliveries per recipient (one recipient per message, so per message).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use postwire_e2e::smtp::{Script, SmtpServer};
use postwire_e2e::webhook::WebhookReceiver;
use rand::Rng as _;
use serde_json::Value;

use crate::report::Row;
use crate::service::{Backend, Roles, Service};
use crate::{Args, Bench};

/// The recipients' domain and its MX: apart from the other sections' (127.0.0.2), so a soak
/// can run beside a chaos run.
const CHAOS_DOMAIN: &str = "chaos.bench";
const CHAOS_MX: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 3);

/// A send the client could not finish within this long is given up.
const GIVE_UP: Duration = Duration::from_secs(60);
/// After the last kill, how long the service gets to finish delivering and telling.
const SETTLE: Duration = Duration::from_secs(90);

/// What the clients saw.
#[derive(Default)]
struct Sends {
    /// Message number → the id of its 202.
    accepted: HashMap<usize, String>,
    /// Message number → seconds since the start when its 202 came, and the attempts it took.
    accepted_at: HashMap<usize, (f64, u32)>,
    gave_up: Vec<usize>,
    /// Answers that are neither success nor retryable (a 4xx other than 409).
    refused: Vec<String>,
    retries: usize,
}

pub async fn chaos(bench: &Bench, args: &Args, backend: Backend) -> anyhow::Result<Vec<Row>> {
    let section = format!("Chaos, {}", backend.name());
    let dir = bench.dir.join(format!("chaos-{}", backend.name()));
    bench.dns.add_mx(CHAOS_DOMAIN, 10, &format!("mx.{CHAOS_DOMAIN}"));
    bench.dns.add_a(&format!("mx.{CHAOS_DOMAIN}"), CHAOS_MX);
    let sink = start_sink().await?;
    let hooks = WebhookReceiver::start().await;
    let options = bench.options(args, backend, Roles::All);
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/webhooks", svc.base))
        .bearer_auth(&svc.key)
        .json(&serde_json::json!({"url": format!("{}/hooks", hooks.url()), "events": ["message.delivered"]}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create webhook: {}", r.status());
    let total = args.chaos_messages;
    eprintln!(
        "chaos {}: {total} messages from {} clients, SIGKILL every {} s…",
        backend.name(),
        args.clients,
        args.kill_every
    );

    let mut target = bench.target(&svc);
    target.recipient_domain = CHAOS_DOMAIN.into();
    let run = format!("{:08x}", rand::random::<u32>());
    let sends = Arc::new(Mutex::new(Sends::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (target, run, sends, next) =
            (target.clone(), run.clone(), Arc::clone(&sends), Arc::clone(&next));
        clients.spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let key = format!("chaos-{run}-{i}");
                send_until_answered(&http, &target, &key, i, &sends, started).await;
            }
        });
    }

    // Kill through ingest and drain: until every accepted message is delivered and told, or
    // the drain deadline.
    let mut svc = svc;
    let mut kills: Vec<(f64, &'static str)> = Vec::new();
    let drain_deadline = Duration::from_secs(args.deadline.min(300));
    let mut ingest_done: Option<Instant> = None;
    let mut next_kill = Instant::now() + Duration::from_secs_f64(args.kill_every);
    let mut next_check = Instant::now();
    loop {
        if ingest_done.is_none() && clients.is_empty() {
            ingest_done = Some(Instant::now());
        }
        while let Some(joined) = clients.try_join_next() {
            joined.context("client task")??;
        }
        if let Some(done) = ingest_done.filter(|_| Instant::now() >= next_check) {
            next_check = Instant::now() + Duration::from_secs(1);
            let accepted = sends.lock().expect("sends").accepted.clone();
            if complete(&sink, &hooks, &accepted) || done.elapsed() > drain_deadline {
                break;
            }
        }
        if Instant::now() >= next_kill {
            let index = rand::thread_rng().gen_range(0..svc.process_count());
            let role = svc.kill_and_restart(index)?;
            kills.push((started.elapsed().as_secs_f64(), role));
            eprintln!("  {:6.1} s: SIGKILL {role}", started.elapsed().as_secs_f64());
            next_kill = Instant::now() + Duration::from_secs_f64(args.kill_every);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ingest_secs = ingest_done.map_or(0.0, |d| (d - started).as_secs_f64());
    let kill_end = started.elapsed().as_secs_f64();
    eprintln!("  kills stopped after {kill_end:.1} s; settling (up to {} s)…", SETTLE.as_secs());
    let accepted = sends.lock().expect("sends").accepted.clone();
    let settle_end = Instant::now() + SETTLE;
    while !complete(&sink, &hooks, &accepted) && Instant::now() < settle_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished = started.elapsed().as_secs_f64();
    let rss = svc.rss_note();
    let log_dir = dir.display().to_string();
    let sends = Arc::try_unwrap(sends)
        .map_err(|_| anyhow::anyhow!("clients still hold the results"))?
        .into_inner()
        .expect("sends");
    let tally = Tally::of(&sink, &hooks, &sends.accepted);
    let kill_roles = kill_summary(&kills);
    for &i in tally.lost.iter().chain(&tally.missing_events) {
        // What the service says about it, and the kills around its 202.
        let id = &sends.accepted[&i];
        let (at, attempts) = sends.accepted_at[&i];
        let state =
            client.get(format!("{}/v1/messages/{id}", svc.base)).bearer_auth(&svc.key).send().await;
        let state = match state {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("GET failed: {e}"),
        };
        let near: Vec<_> = kills.iter().filter(|(t, _)| (t - at).abs() < 6.0).collect();
        eprintln!(
            "  message {i} ({id}): 202 at {at:.2} s after {attempts} attempts; kills within 6 s: {near:?}; now: {}",
            state.chars().take(600).collect::<String>()
        );
    }
    if !tally.lost.is_empty() || !tally.missing_events.is_empty() {
        eprintln!(
            "  lost (accepted, never delivered): {:?}\n  delivered without a message.delivered event: {:?}\n  kills (s since start, role): {kills:?}\n  logs: {log_dir}",
            tally.lost, tally.missing_events
        );
    }
    svc.stop().await?;
    let duplicate_limit = total as f64 * 0.001;
    let met = tally.lost.is_empty()
        && sends.gave_up.is_empty()
        && tally.missing_events.is_empty()
        && (tally.duplicates as f64) <= duplicate_limit
        && sends.accepted.len() == total;
    let figure = format!(
        "{} lost, {} gave up, {} events missing, {} duplicates ({}) — **{}**",
        tally.lost.len(),
        sends.gave_up.len(),
        tally.missing_events.len(),
        tally.duplicates,
        percent(tally.duplicates, total),
        if met { "met" } else { "missed" },
    );
    let mut detail = format!(
        "{} of {total} accepted ({} retries, {} refused{}); {} kills ({kill_roles}) over {kill_end:.0} s, ingest done at {ingest_secs:.0} s; \
         {} delivered ({} deliveries), {} message.delivered events for {} messages ({} repeated); all settled at {finished:.0} s; {rss}",
        sends.accepted.len(),
        sends.retries,
        sends.refused.len(),
        sends.refused.first().map(|r| format!(": {r}")).unwrap_or_default(),
        kills.len(),
        tally.delivered,
        tally.deliveries,
        tally.events,
        tally.told,
        tally.events - tally.told,
    );
    if tally.unknown > 0 {
        detail.push_str(&format!("; {} delivered messages had no 202", tally.unknown));
    }
    Ok(vec![Row::new(
        &section,
        format!("{total} messages, {} clients, SIGKILL every {} s", args.clients, args.kill_every),
        figure,
        &detail,
    )])
}

/// The MX on 127.0.0.3:25; the previous backend's server may take a moment to let go of it.
async fn start_sink() -> anyhow::Result<SmtpServer> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match SmtpServer::start(CHAOS_MX, 25, Script::default()).await {
            Ok(sink) => return Ok(sink),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Posts message `i` with `key` until it is answered 202 (or another non-retryable answer), or
/// gives up after [`GIVE_UP`].
async fn send_until_answered(
    http: &reqwest::Client,
    target: &crate::load::Target,
    key: &str,
    i: usize,
    sends: &Mutex<Sends>,
    started: Instant,
) {
    let url = format!("{}/v1/messages", target.base);
    let body = target.body(i);
    let first = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let answer = http
            .post(&url)
            .bearer_auth(&target.key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await;
        let retry = match answer {
            Ok(r) if r.status().as_u16() == 202 => match r.json::<Value>().await {
                Ok(v) => {
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    let mut sends = sends.lock().expect("sends");
                    sends.accepted.insert(i, id);
                    sends.accepted_at.insert(i, (started.elapsed().as_secs_f64(), attempts));
                    return;
                }
                Err(_) => true,
            },
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 409 => true,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                sends.lock().expect("sends").refused.push(format!("message {i}: {status} {text}"));
                return;
            }
            Err(_) => true,
        };
        debug_assert!(retry);
        if first.elapsed() > GIVE_UP {
            sends.lock().expect("sends").gave_up.push(i);
            return;
        }
        sends.lock().expect("sends").retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Every accepted message delivered and told.
fn complete(sink: &SmtpServer, hooks: &WebhookReceiver, accepted: &HashMap<usize, String>) -> bool {
    let t = Tally::of(sink, hooks, accepted);
    t.lost.is_empty() && t.missing_events.is_empty()
}

/// Deliveries and events counted against what was accepted.
struct Tally {
    /// Distinct messages delivered, and all deliveries.
    delivered: usize,
    deliveries: usize,
    /// Deliveries beyond the first, over all messages.
    duplicates: usize,
    /// Accepted messages never delivered.
    lost: Vec<usize>,
    /// Delivered messages without a `message.delivered` event.
    missing_events: Vec<usize>,
    /// `message.delivered` requests received, and distinct messages they name.
    events: usize,
    told: usize,
    /// Delivered messages whose number has no 202 (a send given up after it was stored).
    unknown: usize,
}

impl Tally {
    fn of(sink: &SmtpServer, hooks: &WebhookReceiver, accepted: &HashMap<usize, String>) -> Tally {
        let mut per_message: HashMap<usize, usize> = HashMap::new();
        let suffix = format!("@{CHAOS_DOMAIN}");
        for received in sink.received() {
            for rcpt in &received.rcpt_to {
                let n = rcpt
                    .strip_prefix("user")
                    .and_then(|r| r.strip_suffix(&suffix))
                    .and_then(|n| n.parse().ok());
                if let Some(n) = n {
                    *per_message.entry(n).or_default() += 1;
                }
            }
        }
        let mut told_ids: HashSet<String> = HashSet::new();
        let mut events = 0;
        for request in hooks.requests() {
            let Ok(body) = request.json() else { continue };
            if body["type"] == "message.delivered" {
                events += 1;
                if let Some(id) = body["data"]["message_id"].as_str() {
                    told_ids.insert(id.to_owned());
                }
            }
        }
        let mut lost: Vec<usize> =
            accepted.keys().filter(|i| !per_message.contains_key(i)).copied().collect();
        lost.sort_unstable();
        let mut missing_events: Vec<usize> = per_message
            .keys()
            .filter(|i| accepted.get(i).is_some_and(|id| !told_ids.contains(id)))
            .copied()
            .collect();
        missing_events.sort_unstable();
        Tally {
            delivered: per_message.len(),
            deliveries: per_message.values().sum(),
            duplicates: per_message.values().map(|n| n - 1).sum(),
            lost,
            missing_events,
            events,
            told: told_ids.len(),
            unknown: per_message.keys().filter(|i| !accepted.contains_key(i)).count(),
        }
    }
}

/// `"api-gateway 5, mta-worker 4"`.
fn kill_summary(kills: &[(f64, &'static str)]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (_, role) in kills {
        match counts.iter_mut().find(|(r, _)| r == role) {
            Some((_, n)) => *n += 1,
            None => counts.push((role, 1)),
        }
    }
    counts.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "0 %".into();
    }
    format!("{:.2} %", part as f64 * 100.0 / whole as f64)
}
