//! `orderflow bench e2e`: the whole path a user sees, from `POST /orders` in to the order `delivered` out,
//! against services that are already running (it starts nothing).
//!
//! Setup: tokens from the issuer (client-credentials grant, through [`crate::token::fetch`]) and a catalogue
//! of `--products` SKUs (`SKU-0001` …) with ample stock, put with the admin client. Load: 2-line orders
//! (two distinct random SKUs, quantity 1 each, a unique `Idempotency-Key`) either from `--concurrency`
//! clients back to back (`burst`) or open loop at `--rate` orders/s (`rate`: every POST is its own task,
//! sent on schedule whatever the server answers, so a slow server does not lower the offered rate).
//! Drain: PostgreSQL is polled until every accepted order is `delivered` (or in another final state, or the
//! drain timeout passes), every 250 ms. Meanwhile, every second, the outbox backlog of both services and the RSS of the
//! given processes are sampled. POST→delivered latencies come from the database: the order's `created_at`
//! and its `updated_at` once `delivered` (the time Sales recorded the delivery; nothing changes a
//! delivered order afterwards). The same query splits that latency into the four hops of an order's way
//! (see [`HOPS`]), from the time each step's writer recorded: the order's `order.paid` timeline event, and
//! Delivery's shipment `created_at` and `updated_at` once `delivered`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::bench::{cpu_model, redact};

/// Stock each product is put with: enough that no run ever runs out (the API's maximum).
const SEED_STOCK: i64 = 1_000_000_000;
/// Unit price of every product, in minor units (the baselines' `1999`).
const SEED_PRICE_MINOR: i64 = 1999;
/// How often the drain is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often the outbox backlog and the RSS are sampled. Counting owed rows walks index entries of rows
/// already published (until vacuum removes them), which cost PostgreSQL ~25 ms per schema under a burst:
/// sampled every 250 ms, the sampler took a tenth of the CPU of the system it measured.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A POST not answered within this long counts as an error (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Concurrent `PUT /products/…` requests while setting up the catalogue.
const SETUP_CONCURRENCY: usize = 8;
/// Order states that never become `delivered`: the drain stops waiting for such orders.
const FINAL_NOT_DELIVERED: [&str; 2] = ["payment_failed", "cancelled"];

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `--concurrency` clients, each sending its next order as soon as the previous one is answered.
    Burst,
    /// Open loop: `--rate` orders/s at fixed intervals, each POST its own task, whatever the responses.
    Rate,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Burst => "burst",
            Self::Rate => "rate",
        })
    }
}

/// A process to sample the memory of: `NAME=PID`, e.g. `sales=1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePid {
    /// What the report calls it.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

impl FromStr for ServicePid {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (name, pid) = raw.split_once('=').ok_or_else(|| format!("{raw:?} is not NAME=PID (e.g. sales=1234)"))?;
        let pid = pid.trim().parse().map_err(|_| format!("{pid:?} is not a process id"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{raw:?} has no name (use e.g. sales=1234)"));
        }
        Ok(Self { name: name.to_owned(), pid })
    }
}

/// Options of `orderflow bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eOptions {
    /// Base URL of the running Sales API; several, comma-separated, to spread the orders over replicas
    /// in turn.
    #[arg(long, env = "SALES_URL", default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub sales: Vec<String>,
    /// The OAuth2 issuer the services trust (discovery at /.well-known/openid-configuration).
    #[arg(long, env = "OAUTH_ISSUER", default_value = "http://127.0.0.1:9000")]
    pub issuer: String,
    /// The client that places orders (needs `orders:write`).
    #[arg(long, default_value = "sales-client")]
    pub client_id: String,
    /// Its secret.
    #[arg(long, default_value = "dev-secret-sales")]
    pub client_secret: String,
    /// The client that puts the catalogue (needs `admin`).
    #[arg(long, default_value = "admin")]
    pub admin_client_id: String,
    /// Its secret.
    #[arg(long, default_value = "dev-secret-admin")]
    pub admin_client_secret: String,
    /// The database both services use (read only: order states and outbox backlogs).
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/orderflow")]
    pub database_url: String,
    /// The Sales service's schema.
    #[arg(long, default_value = "sales")]
    pub sales_schema: String,
    /// The Delivery service's schema.
    #[arg(long, default_value = "delivery")]
    pub delivery_schema: String,
    /// `burst` (closed loop, `--concurrency` clients) or `rate` (open loop, `--rate` orders/s).
    #[arg(long, value_enum, default_value_t = Mode::Burst)]
    pub mode: Mode,
    /// Burst mode: concurrent clients, each sending orders back to back.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Rate mode: orders per second offered.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send orders.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Products in the catalogue (`SKU-0001` …); each order takes two distinct ones at random.
    #[arg(long, default_value_t = 1000)]
    pub products: usize,
    /// How long to wait, after the load, for the accepted orders to be delivered.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// A service process to sample the memory of, as NAME=PID (repeatable), e.g. `--pid sales=1234`.
    #[arg(long = "pid")]
    pub pids: Vec<ServicePid>,
}

/// Memory of one sampled process, in KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssPeak {
    /// The process.
    pub service: ServicePid,
    /// The largest `VmRSS` sampled during the run.
    pub sampled_max_kib: u64,
    /// `VmHWM` at the last sample: the kernel's peak RSS since the process started.
    pub hwm_kib: u64,
    /// Samples read (0: the process could not be read).
    pub samples: usize,
    /// CPU time (user + system, clock ticks) at the first and at the last sample: what the process spent
    /// during the run, which depends less on how fast the machine happens to be than throughput does.
    pub cpu_ticks: Option<(u64, u64)>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct E2eReport {
    /// Logical CPUs of this machine.
    pub cpus: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The database server's `server_version`.
    pub server_version: String,
    /// The options the run used.
    pub options: E2eOptions,
    /// POSTs sent.
    pub sent: usize,
    /// Rate mode: the latest a POST left after its scheduled time.
    pub max_send_lag: Duration,
    /// From the first POST until the last POST was answered.
    pub load_elapsed: Duration,
    /// Latencies of all POSTs (whatever their outcome), sorted ascending.
    pub post_latencies: Vec<Duration>,
    /// POSTs by outcome: the HTTP status (`201`, `409`, …) or the kind of error (`timeout`, …).
    pub statuses: BTreeMap<String, usize>,
    /// Orders accepted (201 with an order id).
    pub accepted: usize,
    /// Accepted orders found `delivered` at the end.
    pub delivered: usize,
    /// Accepted orders not delivered at the end, by status (`missing`: not in the database).
    pub not_delivered: BTreeMap<String, usize>,
    /// Whether the drain gave up at `--drain-timeout` with orders still on their way.
    pub drain_timed_out: bool,
    /// From the end of the load until no accepted order was on its way any more.
    pub drain_elapsed: Duration,
    /// From the first POST until the last accepted order was delivered (by the database's clock).
    pub e2e_elapsed: Duration,
    /// POST→delivered latencies of the delivered orders (`created_at` → `updated_at`), sorted ascending.
    pub e2e_latencies: Vec<Duration>,
    /// The same latencies split into [`HOPS`], each sorted ascending.
    pub hop_latencies: [Vec<Duration>; 4],
    /// The largest outbox backlog sampled (rows owed, both destinations' tables together): Sales, Delivery.
    pub max_backlog: [i64; 2],
    /// Outbox backlog samples taken.
    pub backlog_samples: usize,
    /// Memory of the processes given with `--pid`.
    pub rss: Vec<RssPeak>,
    /// CPU time every process of the machine spent while the benchmark sampled, by process name, most
    /// first (clock ticks), and how long it sampled: where the machine's time went, services, database,
    /// broker and load generator alike.
    pub machine_cpu: (Vec<(String, u64)>, Duration),
}

impl E2eReport {
    /// Accepted orders per second of the load (accepted ÷ first POST to last answer).
    pub fn front_door_per_second(&self) -> f64 {
        per_second(self.accepted, self.load_elapsed)
    }

    /// Delivered orders per second, from the first POST to the last delivery.
    pub fn e2e_per_second(&self) -> f64 {
        per_second(self.delivered, self.e2e_elapsed)
    }
}

impl fmt::Display for E2eReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(f, "machine:         {} cores, {}", self.cpus, self.cpu_model)?;
        writeln!(f, "server:          PostgreSQL {}", self.server_version)?;
        writeln!(
            f,
            "target:          sales {}, issuer {}, schemas {}/{}",
            o.sales.join(" "),
            o.issuer,
            o.sales_schema,
            o.delivery_schema
        )?;
        match o.mode {
            Mode::Burst => writeln!(
                f,
                "load:            burst, {} clients back to back for {}",
                o.concurrency,
                humantime::format_duration(o.duration)
            )?,
            Mode::Rate => writeln!(
                f,
                "load:            rate, {} orders/s offered open loop (each POST its own task) for {}",
                o.rate,
                humantime::format_duration(o.duration)
            )?,
        }
        writeln!(
            f,
            "orders:          2 distinct random SKUs of {}, quantity 1 each, a unique Idempotency-Key each; \
             drain timeout {}",
            o.products,
            humantime::format_duration(o.drain_timeout)
        )?;
        write!(f, "sent:            {} POSTs, answered within {:.1} s", self.sent, self.load_elapsed.as_secs_f64())?;
        if o.mode == Mode::Rate {
            write!(f, " (max send lag behind schedule {:.1} ms)", ms(self.max_send_lag))?;
        }
        writeln!(f)?;
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        writeln!(f, "statuses:        {}", statuses.join(", "))?;
        writeln!(
            f,
            "front door:      {:.1} orders/s accepted ({} ÷ {:.1} s); POST latency {}",
            self.front_door_per_second(),
            self.accepted,
            self.load_elapsed.as_secs_f64(),
            quantiles(&self.post_latencies)
        )?;
        let still: Vec<String> = self.not_delivered.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        if self.drain_timed_out {
            writeln!(
                f,
                "delivered:       {} of {} accepted; NOT DRAINED after {}: {}",
                self.delivered,
                self.accepted,
                humantime::format_duration(o.drain_timeout),
                still.join(", ")
            )?;
        } else if still.is_empty() {
            writeln!(
                f,
                "delivered:       {} of {} accepted, all delivered {:.1} s after the load ended",
                self.delivered,
                self.accepted,
                self.drain_elapsed.as_secs_f64()
            )?;
        } else {
            writeln!(
                f,
                "delivered:       {} of {} accepted within {:.1} s after the load; never delivered: {}",
                self.delivered,
                self.accepted,
                self.drain_elapsed.as_secs_f64(),
                still.join(", ")
            )?;
        }
        writeln!(
            f,
            "end to end:      {:.1} orders/s ({} delivered ÷ {:.1} s from the first POST to the last delivery)",
            self.e2e_per_second(),
            self.delivered,
            self.e2e_elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "POST→delivered:  {} (order created_at → updated_at when delivered, from the database)",
            quantiles(&self.e2e_latencies)
        )?;
        for (hop, latencies) in HOPS.iter().zip(&self.hop_latencies) {
            writeln!(f, "  {hop:<44} {}", quantiles(latencies))?;
        }
        writeln!(
            f,
            "outbox backlog:  max {} rows (sales), {} rows (delivery) owed, {} samples every {} ms",
            self.max_backlog[0],
            self.max_backlog[1],
            self.backlog_samples,
            SAMPLE_EVERY.as_millis()
        )?;
        if self.rss.is_empty() {
            writeln!(f, "peak RSS:        not sampled (no --pid)")?;
        }
        for r in &self.rss {
            if r.samples == 0 {
                writeln!(f, "peak RSS:        {} (pid {}): could not be read", r.service.name, r.service.pid)?;
            } else {
                writeln!(
                    f,
                    "peak RSS:        {} (pid {}): {:.1} MiB sampled max VmRSS, {:.1} MiB VmHWM (peak since start)",
                    r.service.name,
                    r.service.pid,
                    mib(r.sampled_max_kib),
                    mib(r.hwm_kib)
                )?;
            }
        }
        for r in &self.rss {
            // Linux reports /proc CPU times in USER_HZ, which is 100 on every architecture it runs on.
            if let Some((first, last)) = r.cpu_ticks.filter(|_| self.delivered > 0) {
                let per_thousand = (last - first) as f64 / 100.0 * 1000.0 / self.delivered as f64;
                writeln!(
                    f,
                    "CPU:             {} (pid {}): {per_thousand:.3} s per 1,000 delivered orders (user + system)",
                    r.service.name, r.service.pid
                )?;
            }
        }
        let (spent, over) = &self.machine_cpu;
        let total: u64 = spent.iter().map(|(_, ticks)| ticks).sum();
        if total > 0 && self.delivered > 0 {
            let busy = total as f64 / 100.0 / (over.as_secs_f64() * self.cpus.max(1) as f64) * 100.0;
            writeln!(
                f,
                "machine CPU:     {:.1} s in {:.1} s on {} cores ({busy:.0}% busy), by process (share, ms per delivered order):",
                total as f64 / 100.0,
                over.as_secs_f64(),
                self.cpus
            )?;
            for (name, ticks) in spent.iter().take(8) {
                let share = *ticks as f64 * 100.0 / total as f64;
                let per_order = *ticks as f64 * 10.0 / self.delivered as f64;
                writeln!(f, "                 {name:<16} {share:5.1}%  {per_order:.2} ms")?;
            }
        }
        write!(f, "E2E_ORDERS_PER_SEC={:.2}", self.e2e_per_second())
    }
}

/// Runs the benchmark against the running services: setup, load, drain, report.
///
/// # Errors
/// When the options are unusable, the issuer, Sales API or database cannot be reached, or the catalogue
/// cannot be put.
pub async fn e2e(options: E2eOptions) -> anyhow::Result<E2eReport> {
    anyhow::ensure!(options.products >= 2, "--products must be at least 2 (orders have two distinct lines)");
    anyhow::ensure!(options.products <= 9999, "--products must be at most 9999 (SKU-0001 … SKU-9999)");
    anyhow::ensure!(!options.duration.is_zero(), "--duration must be positive");
    anyhow::ensure!(options.mode != Mode::Burst || options.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        options.mode != Mode::Rate || (options.rate.is_finite() && options.rate > 0.0),
        "--rate must be a positive number of orders/s"
    );
    let sales: Vec<String> = options.sales.iter().map(|url| url.trim_end_matches('/').to_owned()).collect();
    let first = sales.first().context("--sales names no Sales API")?.clone();

    let (db, driver) = tokio_postgres::connect(&options.database_url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(&options.database_url)))?;
    let driver = tokio::spawn(driver);
    let server_version = db.query_one("SHOW server_version", &[]).await?.get::<_, String>(0);
    let sales_schema = quote_ident(&options.sales_schema);

    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let admin_token = crate::token::fetch(&options.issuer, &options.admin_client_id, &options.admin_client_secret, &[])
        .await
        .with_context(|| format!("a token for {}", options.admin_client_id))?;
    let token = crate::token::fetch(&options.issuer, &options.client_id, &options.client_secret, &[])
        .await
        .with_context(|| format!("a token for {}", options.client_id))?;
    let skus = put_catalogue(&http, &first, &admin_token, options.products).await?;

    let target = Arc::new(Target { http, sales, next: AtomicUsize::new(0), bearer: format!("Bearer {token}"), skus });
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(sample(
        options.database_url.clone(),
        [quote_ident(&options.sales_schema), quote_ident(&options.delivery_schema)],
        options.pids.clone(),
        stopped,
    ));

    let first_post = Utc::now();
    let load = match options.mode {
        Mode::Burst => burst(&target, options.concurrency, options.duration).await?,
        Mode::Rate => rate(&target, options.rate, options.duration).await?,
    };
    let load_ended = Instant::now();

    let mut statuses = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut post_latencies = Vec::with_capacity(load.results.len());
    for result in &load.results {
        post_latencies.push(result.latency);
        *statuses.entry(result.outcome.key()).or_insert(0) += 1;
        if let Outcome::Accepted(id) = result.outcome {
            accepted.push(id);
        }
    }
    post_latencies.sort_unstable();

    let drain = drain(&db, &sales_schema, &accepted, options.drain_timeout).await;
    let drain_elapsed = load_ended.elapsed();
    let _ = stop.send(());
    let samples = sampler.await.context("the sampler panicked")?;
    let (drain_timed_out, by_status) = drain?;
    let samples = samples?;

    let delivery_schema = quote_ident(&options.delivery_schema);
    let delivered_rows = db
        .query(
            &format!(
                "SELECT o.created_at, o.updated_at,
                        (SELECT (e.event->>'time')::timestamptz FROM {sales_schema}.order_events e
                         WHERE e.order_id = o.id AND e.event->>'type' = 'orderflow.order.paid.v1' LIMIT 1),
                        s.created_at, s.updated_at
                 FROM {sales_schema}.orders o JOIN {delivery_schema}.shipments s ON s.order_id = o.id
                 WHERE o.id = ANY($1) AND o.status = 'delivered'"
            ),
            &[&accepted],
        )
        .await
        .context("reading the delivered orders")?;
    drop(db);
    let _ = driver.await;
    let mut e2e_latencies = Vec::with_capacity(delivered_rows.len());
    let mut hop_latencies: [Vec<Duration>; 4] = Default::default();
    let mut last_delivered = first_post;
    for row in &delivered_rows {
        let created: DateTime<Utc> = row.get(0);
        let delivered: DateTime<Utc> = row.get(1);
        e2e_latencies.push(since(created, delivered));
        last_delivered = last_delivered.max(delivered);
        // Without an `order.paid.v1` event (another version of it) the order counts in the total only.
        if let Some(paid) = row.get::<_, Option<DateTime<Utc>>>(2) {
            let steps = [created, paid, row.get(3), row.get(4), delivered];
            for (hop, pair) in hop_latencies.iter_mut().zip(steps.windows(2)) {
                hop.push(since(pair[0], pair[1]));
            }
        }
    }
    e2e_latencies.sort_unstable();
    for hop in &mut hop_latencies {
        hop.sort_unstable();
    }
    let delivered = e2e_latencies.len();

    Ok(E2eReport {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: cpu_model(),
        server_version,
        options,
        sent: load.results.len(),
        max_send_lag: load.max_send_lag,
        load_elapsed: load.elapsed,
        post_latencies,
        statuses,
        accepted: accepted.len(),
        delivered,
        not_delivered: not_delivered(&by_status, accepted.len()),
        drain_timed_out,
        drain_elapsed,
        e2e_elapsed: since(first_post, last_delivered),
        e2e_latencies,
        hop_latencies,
        max_backlog: samples.max_backlog,
        backlog_samples: samples.backlog_samples,
        rss: samples.rss,
        machine_cpu: samples.machine_cpu,
    })
}

/// The hops of an order's way, in the order [`E2eReport::hop_latencies`] holds them.
pub const HOPS: [&str; 4] = [
    "placed → paid (relay, RabbitMQ, payment)",
    "paid → shipment (relay, RabbitMQ, Delivery)",
    "shipment → delivered in Delivery (autopilot)",
    "→ delivered in Sales (relay, RabbitMQ, Sales)",
];

/// What the load tasks share.
struct Target {
    http: reqwest::Client,
    /// The Sales APIs, taken in turn.
    sales: Vec<String>,
    next: AtomicUsize,
    bearer: String,
    skus: Vec<String>,
}

/// How one POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 201 with the new order's id.
    Accepted(Uuid),
    /// Any other HTTP status (or a 201 without a readable id: `201 (no id)`).
    Status(String),
    /// No response: `timeout`, `connect error`, `request error`.
    Error(&'static str),
}

impl Outcome {
    fn key(&self) -> String {
        match self {
            Self::Accepted(_) => "201".to_owned(),
            Self::Status(status) => status.clone(),
            Self::Error(kind) => (*kind).to_owned(),
        }
    }
}

/// One POST.
struct PostResult {
    latency: Duration,
    finished: Instant,
    outcome: Outcome,
}

/// All POSTs of the load.
struct Load {
    results: Vec<PostResult>,
    elapsed: Duration,
    max_send_lag: Duration,
}

/// Puts `SKU-0001` … with a fixed price and [`SEED_STOCK`] units, a few requests at a time.
async fn put_catalogue(
    http: &reqwest::Client,
    sales: &str,
    admin_token: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let skus: Vec<String> = (1..=count).map(sku).collect();
    let shared = Arc::new(skus.clone());
    let mut putters = JoinSet::new();
    for first in 0..SETUP_CONCURRENCY.min(count) {
        let (http, skus) = (http.clone(), Arc::clone(&shared));
        let (sales, bearer) = (sales.to_owned(), format!("Bearer {admin_token}"));
        putters.spawn(async move {
            for (i, sku) in skus.iter().enumerate().skip(first).step_by(SETUP_CONCURRENCY) {
                let body = serde_json::json!({
                    "name": format!("Bench product {}", i + 1),
                    "price": { "amount_minor": SEED_PRICE_MINOR, "currency": "EUR" },
                    "stock": SEED_STOCK,
                });
                let response = http
                    .put(format!("{sales}/products/{sku}"))
                    .header(reqwest::header::AUTHORIZATION, &bearer)
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("PUT /products/{sku}"))?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    anyhow::bail!("PUT /products/{sku} answered {status}: {text}");
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = putters.join_next().await {
        joined.context("a catalogue task panicked")??;
    }
    Ok(skus)
}

/// Closed loop: `concurrency` clients, each posting its next order once the previous one is answered.
async fn burst(target: &Arc<Target>, concurrency: usize, duration: Duration) -> anyhow::Result<Load> {
    let start = Instant::now();
    let end = start + duration;
    let mut clients = JoinSet::new();
    for client in 0..concurrency {
        let target = Arc::clone(target);
        clients.spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut results = Vec::new();
            let mut n = 0usize;
            while Instant::now() < end {
                let (a, b) = two_distinct(&mut rng, target.skus.len());
                results.push(post_order(&target, &format!("bench-e2e-{client}-{n}"), a, b).await);
                n += 1;
            }
            results
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = clients.join_next().await {
        results.append(&mut joined.context("a load client panicked")?);
    }
    Ok(finish(results, start, Duration::ZERO))
}

/// Open loop: one POST every `1/rate` s for `duration`, each its own task, whatever the server answers.
async fn rate(target: &Arc<Target>, rate: f64, duration: Duration) -> anyhow::Result<Load> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let start = Instant::now();
    let mut posts = JoinSet::new();
    let mut max_send_lag = Duration::ZERO;
    for n in 0usize.. {
        let at = scheduled(n, rate);
        if at >= duration {
            break;
        }
        let at = start + at;
        tokio::time::sleep_until(at.into()).await;
        max_send_lag = max_send_lag.max(Instant::now().saturating_duration_since(at));
        let (a, b) = two_distinct(&mut rng, target.skus.len());
        let target = Arc::clone(target);
        posts.spawn(async move { post_order(&target, &format!("bench-e2e-{n}"), a, b).await });
    }
    let mut results = Vec::with_capacity(posts.len());
    while let Some(joined) = posts.join_next().await {
        results.push(joined.context("a POST task panicked")?);
    }
    Ok(finish(results, start, max_send_lag))
}

fn finish(results: Vec<PostResult>, start: Instant, max_send_lag: Duration) -> Load {
    let last = results.iter().map(|r| r.finished).max().unwrap_or(start);
    Load { elapsed: last.saturating_duration_since(start), results, max_send_lag }
}

/// Posts one 2-line order of the SKUs at `a` and `b`.
async fn post_order(target: &Target, customer: &str, a: usize, b: usize) -> PostResult {
    let body = serde_json::json!({
        "customer_id": customer,
        "lines": [
            { "sku": target.skus[a], "quantity": 1 },
            { "sku": target.skus[b], "quantity": 1 },
        ],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Main St",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    });
    let started = Instant::now();
    let sent = target
        .http
        .post(format!("{}/orders", target.sales[target.next.fetch_add(1, Ordering::Relaxed) % target.sales.len()]))
        .header(reqwest::header::AUTHORIZATION, &target.bearer)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await;
    let outcome = match sent {
        Err(e) => Outcome::Error(error_kind(&e)),
        Ok(response) => {
            let status = response.status();
            let body = response.bytes().await;
            match body {
                Err(e) => Outcome::Error(error_kind(&e)),
                Ok(body) if status == reqwest::StatusCode::CREATED => match created_id(&body) {
                    Some(id) => Outcome::Accepted(id),
                    None => Outcome::Status("201 (no id)".to_owned()),
                },
                Ok(_) => Outcome::Status(status.as_u16().to_string()),
            }
        }
    };
    let finished = Instant::now();
    PostResult { latency: finished.saturating_duration_since(started), finished, outcome }
}

/// The `id` of a created order's JSON.
fn created_id(body: &[u8]) -> Option<Uuid> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("id")?.as_str()?.parse().ok()
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "request error"
    }
}

/// Polls the accepted orders' states until none is on its way any more or `timeout` passes. Returns whether
/// it timed out and the last count per status. Each poll reads only the orders still on their way: reading
/// all of them again was 45 ms of PostgreSQL's CPU a poll, taken from the system while it finished the
/// last orders.
async fn drain(
    db: &tokio_postgres::Client,
    sales_schema: &str,
    accepted: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<(bool, BTreeMap<String, usize>)> {
    let query = format!("SELECT id, status FROM {sales_schema}.orders WHERE id = ANY($1)");
    let statement = db.prepare(&query).await.context("preparing the drain query")?;
    let deadline = Instant::now() + timeout;
    let mut on_the_way = accepted.to_vec();
    let mut settled: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let rows = db.query(&statement, &[&on_the_way]).await.context("polling the orders' states")?;
        let mut by_status = settled.clone();
        let mut arrived = std::collections::HashSet::new();
        for row in rows {
            let (id, status): (Uuid, String) = (row.get(0), row.get(1));
            if status == "delivered" || FINAL_NOT_DELIVERED.contains(&status.as_str()) {
                *settled.entry(status.clone()).or_default() += 1;
                arrived.insert(id);
            }
            *by_status.entry(status).or_default() += 1;
        }
        // An order the database does not hold stays on the way, and is reported missing at the deadline.
        on_the_way.retain(|id| !arrived.contains(id));
        if on_the_way.is_empty() {
            return Ok((false, by_status));
        }
        if Instant::now() >= deadline {
            return Ok((true, by_status));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The accepted orders that are not delivered, by status; `missing` for those the database does not have.
fn not_delivered(by_status: &BTreeMap<String, usize>, accepted: usize) -> BTreeMap<String, usize> {
    let mut still: BTreeMap<String, usize> =
        by_status.iter().filter(|(s, _)| s.as_str() != "delivered").map(|(s, n)| (s.clone(), *n)).collect();
    let found: usize = by_status.values().sum();
    if found < accepted {
        still.insert("missing".to_owned(), accepted - found);
    }
    still
}

/// What the sampler saw.
struct Samples {
    max_backlog: [i64; 2],
    backlog_samples: usize,
    rss: Vec<RssPeak>,
    machine_cpu: (Vec<(String, u64)>, Duration),
}

/// Every [`SAMPLE_EVERY`] until `stop` fires (and once more then): the outbox backlog of both schemas and
/// the memory of the given processes.
async fn sample(
    database_url: String,
    schemas: [String; 2],
    pids: Vec<ServicePid>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Samples> {
    let (db, driver) = tokio_postgres::connect(&database_url, NoTls).await.context("connecting the sampler")?;
    let driver = tokio::spawn(driver);
    // Each outbox table holds only what its destination is still owed.
    let owed = |schema: &str| {
        format!("((SELECT count(*) FROM {schema}.command_outbox) + (SELECT count(*) FROM {schema}.audit_outbox))")
    };
    let query = format!("SELECT {}, {}", owed(&schemas[0]), owed(&schemas[1]));
    let statement = db.prepare(&query).await.context("preparing the outbox backlog query")?;
    let mut samples = Samples {
        max_backlog: [0, 0],
        backlog_samples: 0,
        rss: pids
            .into_iter()
            .map(|service| RssPeak { service, sampled_max_kib: 0, hwm_kib: 0, samples: 0, cpu_ticks: None })
            .collect(),
        machine_cpu: (Vec::new(), Duration::ZERO),
    };
    let (started, before) = (std::time::Instant::now(), process_times());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let row = db.query_one(&statement, &[]).await.context("sampling the outbox backlog")?;
        for (i, max) in samples.max_backlog.iter_mut().enumerate() {
            *max = (*max).max(row.get::<_, i64>(i));
        }
        samples.backlog_samples += 1;
        for peak in &mut samples.rss {
            if let Some((rss, hwm)) = std::fs::read_to_string(format!("/proc/{}/status", peak.service.pid))
                .ok()
                .and_then(|status| memory_kib(&status))
            {
                peak.sampled_max_kib = peak.sampled_max_kib.max(rss);
                peak.hwm_kib = peak.hwm_kib.max(hwm);
                peak.samples += 1;
            }
            if let Some((_, ticks, _)) =
                std::fs::read_to_string(format!("/proc/{}/stat", peak.service.pid)).ok().and_then(|s| process_stat(&s))
            {
                peak.cpu_ticks = Some((peak.cpu_ticks.map_or(ticks, |(first, _)| first), ticks));
            }
        }
        if last {
            break;
        }
    }
    samples.machine_cpu = (cpu_by_name(&before, &process_times()), started.elapsed());
    drop(db);
    let _ = driver.await;
    Ok(samples)
}

/// The command name, user + system CPU time (clock ticks) and start time of a `/proc/PID/stat` line: its
/// 2nd, 14th + 15th and 22nd fields; the name may hold spaces and parentheses.
fn process_stat(stat: &str) -> Option<(String, u64, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14), stime (15) and starttime (22) are the 12th, 13th
    // and 20th here.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks, fields.get(19)?.parse().ok()?))
}

/// CPU time of every process on the machine: its name and ticks, by pid and start time (a pid can be
/// reused).
type ProcessTimes = HashMap<(u32, u64), (String, u64)>;

fn process_times() -> ProcessTimes {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (name, ticks, started) = process_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            Some(((pid, started), (name, ticks)))
        })
        .collect()
}

/// The ticks each process name spent from `before` to `after`, most first. A process that started in
/// between counts whole; one that ended in between is not seen (the services' and the database's
/// processes live through a run).
fn cpu_by_name(before: &ProcessTimes, after: &ProcessTimes) -> Vec<(String, u64)> {
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for (process, (name, ticks)) in after {
        let earlier = before.get(process).map_or(0, |(_, ticks)| *ticks);
        *by_name.entry(name).or_default() += ticks.saturating_sub(earlier);
    }
    let mut spent: Vec<(String, u64)> =
        by_name.into_iter().filter(|(_, ticks)| *ticks > 0).map(|(name, ticks)| (name.to_owned(), ticks)).collect();
    spent.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    spent
}

/// `VmRSS` and `VmHWM` (KiB) of a `/proc/PID/status` text.
fn memory_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The `n`-th SKU (1-based): `SKU-0001`.
fn sku(n: usize) -> String {
    format!("SKU-{n:04}")
}

/// Two distinct indexes below `n` (n ≥ 2), uniformly.
fn two_distinct(rng: &mut SmallRng, n: usize) -> (usize, usize) {
    let a = rng.random_range(0..n);
    let b = (a + rng.random_range(1..n)) % n;
    (a, b)
}

/// When the `n`-th POST of an open loop at `rate`/s is due, from the start.
fn scheduled(n: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate)
}

/// A double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `to − from`, zero when negative.
fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// The value at quantile `q` (0.0–1.0) of ascending `sorted`, nearest rank; zero when empty.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// "p50 … ms, p90 …, p99 …, max …" of ascending `sorted`.
fn quantiles(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "none measured".to_owned();
    }
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.90)),
        ms(percentile(sorted, 0.99)),
        ms(percentile(sorted, 1.0))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(quantiles(&millis(&[3])), "p50 3.0 ms, p90 3.0 ms, p99 3.0 ms, max 3.0 ms");
        assert_eq!(per_second(100, Duration::from_secs(4)), 25.0);
        assert_eq!(per_second(100, Duration::ZERO), 0.0);
    }

    #[test]
    fn pids_parse_as_name_equals_pid() {
        assert_eq!("sales=1234".parse(), Ok(ServicePid { name: "sales".into(), pid: 1234 }));
        assert!("sales".parse::<ServicePid>().is_err());
        assert!("=12".parse::<ServicePid>().is_err());
        assert!("sales=x".parse::<ServicePid>().is_err());
    }

    #[test]
    fn memory_comes_from_proc_status() {
        let status = "Name:\tsales-api\nVmPeak:\t  900 kB\nVmHWM:\t   54321 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(memory_kib(status), Some((12345, 54321)));
        assert_eq!(memory_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn cpu_time_comes_from_proc_stat_whatever_the_command_name() {
        let stat = "4242 (sales (api) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(process_stat(stat), Some(("sales (api) x".to_owned(), 1234 + 567, 100)));
        assert_eq!(process_stat("4242 (truncated) S 1"), None);
    }

    #[test]
    fn the_machine_s_cpu_is_summed_by_process_name_counting_processes_started_meanwhile_whole() {
        let times = |entries: &[((u32, u64), &str, u64)]| -> ProcessTimes {
            entries.iter().map(|(process, name, ticks)| (*process, ((*name).to_owned(), *ticks))).collect()
        };
        let before = times(&[((1, 10), "postgres", 100), ((2, 10), "postgres", 50), ((3, 5), "sales-api", 10)]);
        let after = times(&[
            ((1, 10), "postgres", 300),
            ((3, 5), "sales-api", 110),
            ((4, 20), "postgres", 40),
            ((2, 99), "beam.smp", 7),
            ((5, 1), "idle", 0),
        ]);
        let expected = [("postgres", 240), ("sales-api", 100), ("beam.smp", 7)].map(|(n, t)| (n.to_owned(), t));
        assert_eq!(cpu_by_name(&before, &after), expected, "a reused pid is another process; idle ones are left out");
    }

    #[test]
    fn open_loop_schedule_skus_and_identifiers() {
        assert_eq!(scheduled(0, 100.0), Duration::ZERO);
        assert_eq!(scheduled(250, 100.0), Duration::from_millis(2500));
        assert_eq!(sku(1), "SKU-0001");
        assert_eq!(sku(1000), "SKU-1000");
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let (a, b) = two_distinct(&mut rng, 3);
            assert!(a < 3 && b < 3 && a != b);
        }
        assert_eq!(quote_ident("sales"), "\"sales\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn undelivered_orders_are_counted_by_status() {
        let by_status: BTreeMap<String, usize> =
            [("delivered".to_owned(), 7), ("shipped".to_owned(), 2)].into_iter().collect();
        let still = not_delivered(&by_status, 10);
        assert_eq!(still.get("shipped"), Some(&2));
        assert_eq!(still.get("missing"), Some(&1));
        assert_eq!(still.get("delivered"), None);
        assert_eq!(
            created_id(br#"{"id":"0190a0a0-0000-7000-8000-000000000001","status":"pending_payment"}"#),
            "0190a0a0-0000-7000-8000-000000000001".parse().ok()
        );
        assert_eq!(created_id(b"{}"), None);
    }
}
