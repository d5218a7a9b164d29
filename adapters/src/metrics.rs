//! The process-wide metrics the adapters and services record — commands handled per queue and outcome,
//! handler latency, audit appends, outbox backlog, cache hits, rate-limit rejections — registered in
//! Prometheus' default registry, which every `/metrics` endpoint of the process serves with its own.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    // Registering twice only happens if two definitions share a name, which the names below do not;
    // an unregistered metric still counts, it is just not served.
    if let Err(error) = prometheus::register(Box::new(metric.clone())) {
        tracing::warn!(%error, "metric not registered");
    }
    metric
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid static metric definition"))
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(HistogramVec::new(opts, labels).expect("a valid static metric definition"))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid static metric definition"))
}

const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Commands handled, by queue and outcome: `done`, `retried`, `dead_lettered`, `requeued` (the
/// republish failed, so the delivery went back to its queue).
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("orderflow_messages_total", "Commands handled, by queue and outcome", &["queue", "outcome"])
});

/// How long handlers take, by queue.
pub static HANDLER_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram("orderflow_handler_seconds", "Time to handle one command, by queue", &["queue"], LATENCY_BUCKETS.to_vec())
});

/// Audit appends until the broker's delivery report, by result (`ok`, `failed`).
pub static AUDIT_APPEND_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "orderflow_audit_append_seconds",
        "Time from handing an audit event to Kafka to its delivery report, by result",
        &["result"],
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Outbox rows still owed to a destination (`command`, `audit`), by schema.
pub static OUTBOX_BACKLOG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "orderflow_outbox_backlog",
        "Outbox rows not yet published, by schema and destination",
        &["schema", "destination"],
    )
});

/// Age in seconds of the oldest outbox row owed to a destination, by schema (0 when none is owed).
pub static OUTBOX_OLDEST_SECONDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "orderflow_outbox_oldest_seconds",
        "Age of the oldest unpublished outbox row, by schema and destination",
        &["schema", "destination"],
    )
});

/// Time from an outbox row's commit until its destination acknowledged it, by destination (`command`,
/// `audit`): the relay's latency, as each service sees its own rows.
pub static OUTBOX_LAG_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "orderflow_outbox_lag_seconds",
        "Time from an outbox row's commit until its destination acknowledged it, by destination",
        &["destination"],
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Messages in each dead-letter queue the service consumes from, sampled periodically.
pub static DLQ_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge("orderflow_dlq_depth", "Messages in the dead-letter queue of each consumed queue", &["queue"])
});

/// Single-order cache lookups, by result (`hit`, `miss`, `error`).
pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter("orderflow_cache_lookups_total", "Order cache lookups, by result", &["result"]));

/// Rate-limit decisions that were not a plain allow: `limited` (429), `unavailable_allowed` (the limiter
/// could not decide and the policy let the request through), `unavailable_denied` (… and refused it).
pub static RATE_LIMIT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("orderflow_rate_limit_total", "Rate-limit decisions that were not a plain allow, by kind", &["kind"])
});

/// 1 while Sales refuses new orders because its command outbox or the queues it consumes are further
/// behind than configured (`OUTBOX_BACKLOG_LIMIT`, `OUTBOX_MAX_AGE`, `QUEUE_BACKLOG_LIMIT`), else 0.
pub static OVERLOADED: LazyLock<IntGaugeVec> =
    LazyLock::new(|| gauge("orderflow_overloaded", "1 while new orders are refused for back-pressure, else 0", &[]));

/// Webhook delivery attempts, by outcome: `delivered`, `retried`, `dead_lettered`.
pub static WEBHOOK_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter("orderflow_webhook_attempts_total", "Webhook delivery attempts, by outcome", &["outcome"])
});
