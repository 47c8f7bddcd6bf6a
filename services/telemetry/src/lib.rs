//! Metrics and logging shared by every Postwire service.
//!
//! [`Metrics`] owns its own Prometheus registry (no process-wide statics), so tests can run
//! several apps in one process and each `/metrics` shows only its own counters. The metric
//! names are a published contract (DESIGN.md): dashboards and alerts depend on them.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric Postwire exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `postwire_messages_accepted_total`: messages answered with 202.
    pub messages_accepted: IntCounter,
    /// `postwire_deliveries_total{result}`: per-recipient outcomes of delivery attempts.
    pub deliveries: IntCounterVec,
    /// `postwire_smtp_transaction_seconds`: connect to QUIT (or failure) per SMTP transaction.
    pub smtp_transaction_seconds: Histogram,
    /// `postwire_queue_depth`: delivery jobs not yet finished, read from the store at scrape time.
    pub queue_depth: IntGauge,
    /// `postwire_webhook_deliveries_total{result}`: `delivered`, `failed` (will retry), `gave_up`.
    pub webhook_deliveries: IntCounterVec,
    /// `postwire_http_requests_total{route,status}`.
    pub http_requests: IntCounterVec,
    /// `postwire_http_request_duration_seconds{route}`.
    pub http_request_duration: HistogramVec,
    /// `postwire_smtp_in_sessions_total{listener,result}`: inbound SMTP sessions by listener
    /// (`submission`, `submission_tls`, `bounces`) and how they ended (`quit`, `closed`,
    /// `timeout`, `refused`, `error`).
    pub smtp_in_sessions: IntCounterVec,
    /// `postwire_inbound_messages_total{kind}`: messages received on the bounce listener by
    /// what they turned out to be (`dsn`, `arf`, `autoreply`, `unknown`).
    pub inbound_messages: IntCounterVec,
    /// `postwire_store_pruned_total{kind}`: records removed under `storage.retention`:
    /// `message` (a finished message with everything about it), `idempotency` (an expired
    /// `Idempotency-Key` record).
    pub store_pruned: IntCounterVec,
    /// `postwire_store_size_bytes`: the store's size (embedded: database and WAL files;
    /// distributed: Redis `used_memory`), sampled by the pruner.
    pub store_size_bytes: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let messages_accepted = IntCounter::new(
            "postwire_messages_accepted_total",
            "Messages accepted (202) by the API",
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new("postwire_deliveries_total", "Per-recipient delivery attempt outcomes"),
            &["result"],
        )
        .expect("valid metric");
        let smtp_transaction_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "postwire_smtp_transaction_seconds",
                "Duration of outbound SMTP transactions",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("postwire_queue_depth", "Delivery jobs queued, deferred or in flight")
                .expect("valid metric");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new("postwire_webhook_deliveries_total", "Webhook delivery attempts by result"),
            &["result"],
        )
        .expect("valid metric");
        let http_requests = IntCounterVec::new(
            Opts::new("postwire_http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new("postwire_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
            &["route"],
        )
        .expect("valid metric");
        let smtp_in_sessions = IntCounterVec::new(
            Opts::new(
                "postwire_smtp_in_sessions_total",
                "Inbound SMTP sessions by listener and end",
            ),
            &["listener", "result"],
        )
        .expect("valid metric");
        let inbound_messages = IntCounterVec::new(
            Opts::new(
                "postwire_inbound_messages_total",
                "Messages received for the bounce domain by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let store_pruned = IntCounterVec::new(
            Opts::new("postwire_store_pruned_total", "Records pruned under storage.retention"),
            &["kind"],
        )
        .expect("valid metric");
        let store_size_bytes =
            IntGauge::new("postwire_store_size_bytes", "Size of the store in bytes")
                .expect("valid metric");
        for c in [
            Box::new(messages_accepted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(store_pruned.clone()),
            Box::new(store_size_bytes.clone()),
            Box::new(smtp_in_sessions.clone()),
            Box::new(inbound_messages.clone()),
            Box::new(deliveries.clone()),
            Box::new(smtp_transaction_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_request_duration.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Pre-create the label sets dashboards chart so they read 0 rather than "no data".
        for r in ["delivered", "deferred", "bounced"] {
            deliveries.with_label_values(&[r]);
        }
        for r in ["delivered", "failed", "gave_up"] {
            webhook_deliveries.with_label_values(&[r]);
        }
        for k in ["dsn", "arf", "autoreply", "unknown"] {
            inbound_messages.with_label_values(&[k]);
        }
        for k in ["message", "idempotency"] {
            store_pruned.with_label_values(&[k]);
        }
        Self {
            registry,
            messages_accepted,
            deliveries,
            smtp_transaction_seconds,
            queue_depth,
            webhook_deliveries,
            http_requests,
            http_request_duration,
            smtp_in_sessions,
            inbound_messages,
            store_pruned,
            store_size_bytes,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.render_without(&[])
    }

    /// The exposition without the named metric families: a value that could not be read
    /// (e.g. queue depth while the broker is down) is left out rather than shown stale, so
    /// `absent()` alerts fire.
    pub fn render_without(&self, skip: &[&str]) -> String {
        let families: Vec<_> =
            self.registry.gather().into_iter().filter(|f| !skip.contains(&f.name())).collect();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// Installs the `tracing` subscriber for a binary, writing to stderr (stdout is reserved for
/// command output, e.g. the key printed by `keys create`). `RUST_LOG` filters; without it,
/// `default_filter`. `json`: one JSON object per line; otherwise text, coloured only when
/// stderr is a terminal (never escape codes in files or pipes).
pub fn init_tracing(json: bool, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_metric_names_are_exported() {
        let m = Metrics::new();
        m.messages_accepted.inc();
        m.http_requests.with_label_values(&["/v1/messages", "202"]).inc();
        m.http_request_duration.with_label_values(&["/v1/messages"]).observe(0.01);
        m.smtp_transaction_seconds.observe(0.2);
        let text = m.render();
        for name in [
            "postwire_messages_accepted_total 1",
            "postwire_deliveries_total{result=\"bounced\"} 0",
            "postwire_smtp_transaction_seconds_bucket",
            "postwire_queue_depth 0",
            "postwire_webhook_deliveries_total{result=\"delivered\"} 0",
            "postwire_http_requests_total{route=\"/v1/messages\",status=\"202\"} 1",
            "postwire_http_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        let without = m.render_without(&["postwire_queue_depth"]);
        assert!(
            !without.contains("postwire_queue_depth")
                && without.contains("postwire_messages_accepted_total 1")
        );
    }
}
