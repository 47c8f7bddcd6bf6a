//! Soak: "nothing unbounded" (issue 11). `postwire serve` with a short `storage.retention`
//! under a fixed offered rate, every message delivered to `smtp-sink`, for `--soak-minutes`;
//! the service's RSS and the store's size on disk sampled every minute, with the slope over the
//! last 10 minutes (the last half when the run is shorter) to show whether they level off.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::report::Row;
use crate::service::{self, Backend, Roles, Service};
use crate::sink::{Mode, Sink};
use crate::{load, Args, Bench, MX};

/// One sample: minutes since the start, RSS in MB, store bytes in MB, messages delivered.
struct Sample {
    minute: f64,
    rss_mb: f64,
    store_mb: f64,
    delivered: usize,
}

pub async fn soak(bench: &Bench, args: &Args) -> anyhow::Result<Vec<Row>> {
    let dir = bench.dir.join("soak");
    let sink = Sink::start(MX, Mode::Count, &dir, "soak")?;
    let options = service::Options {
        retention: Some(&args.soak_retention),
        ..bench.options(args, Backend::Embedded, Roles::All)
    };
    let svc = Service::start(&bench.postwire, &dir, &options).await?;
    let minutes = args.soak_minutes;
    eprintln!(
        "soak: {} msgs/s offered to `postwire serve` for {minutes} min, retention {}…",
        args.soak_rate, args.soak_retention
    );
    let target = bench.target(&svc);
    let rate = args.soak_rate;
    let load = tokio::spawn(async move {
        load::open_loop(&target, 0, rate, Duration::from_secs_f64(minutes * 60.0)).await
    });

    let start = Instant::now();
    let mut samples = Vec::new();
    let data = dir.join("data");
    for m in 0..=(minutes.floor() as u64) {
        tokio::time::sleep_until((start + Duration::from_secs(60 * m)).into()).await;
        let sample = Sample {
            minute: start.elapsed().as_secs_f64() / 60.0,
            rss_mb: svc.rss_kib().iter().map(|(_, k)| *k).sum::<u64>() as f64 / 1024.0,
            store_mb: dir_bytes(&data) as f64 / 1e6,
            delivered: sink.messages(),
        };
        eprintln!(
            "  {:5.1} min: RSS {:.1} MB, store {:.1} MB, {} delivered",
            sample.minute, sample.rss_mb, sample.store_mb, sample.delivered
        );
        samples.push(sample);
    }
    let posted = load.await??;
    let rss_note = svc.rss_note();
    svc.stop().await?;
    let delivered = sink.messages();
    drop(sink);

    let window = if minutes >= 20.0 { 10.0 } else { minutes / 2.0 };
    let last = samples.last().map_or(0.0, |s| s.minute);
    let recent: Vec<&Sample> =
        samples.iter().filter(|s| s.minute >= last - window - 0.01).collect();
    let rss_slope = slope(&recent, |s| s.rss_mb);
    let store_slope = slope(&recent, |s| s.store_mb);
    let rss_peak = samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
    let store_peak = samples.iter().map(|s| s.store_mb).fold(0.0, f64::max);
    // Level: over the window, growth under 1 % of the peak per minute (a fall is level too).
    let verdict = |slope: f64, peak: f64| match slope {
        s if s > peak * 0.01 => "still growing",
        s if s < -peak * 0.01 => "levels off (falling)",
        _ => "levels off",
    };
    let series = |f: fn(&Sample) -> f64| {
        samples.iter().map(|s| format!("{:.0}", f(s))).collect::<Vec<_>>().join(" → ")
    };
    let summary = format!(
        "{:.0} min at {rate:.0} msgs/s offered, retention {}: {} accepted, {delivered} delivered{}",
        last,
        args.soak_retention,
        posted.accepted,
        posted.failure_note()
    );
    Ok(vec![
        Row::new(
            "Soak, embedded",
            "RSS of `postwire serve`, MB per minute",
            format!(
                "{:+.2} MB/min over the last {window:.0} min — {}",
                rss_slope,
                verdict(rss_slope, rss_peak)
            ),
            &format!("{}; {summary}; at the end {rss_note}", series(|s| s.rss_mb)),
        ),
        Row::new(
            "Soak, embedded",
            "store size on disk (database + WAL), MB per minute",
            format!(
                "{:+.2} MB/min over the last {window:.0} min — {}",
                store_slope,
                verdict(store_slope, store_peak)
            ),
            &format!("{}; POST {}", series(|s| s.store_mb), posted.latency_summary()),
        ),
    ])
}

/// Least-squares slope of `f` per minute over the samples.
fn slope(samples: &[&Sample], f: fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.minute).sum::<f64>() / n;
    let my = samples.iter().map(|s| f(s)).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s.minute - mx) * (f(s) - my)).sum();
    let var: f64 = samples.iter().map(|s| (s.minute - mx).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

/// Bytes of the regular files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
