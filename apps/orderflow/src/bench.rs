//! `orderflow bench place-orders`: places 2-line orders through the PostgreSQL Sales store with a number of
//! concurrent callers and reports orders/s and latency percentiles.
//!
//! Each run starts clean: the bench schema is dropped, recreated by the store's migrations and seeded with
//! products holding ample stock; it is dropped again at the end. Orders are built exactly as the Sales
//! service builds them (`Order::place`, the event's outgoing messages wrapped as outbox messages, an
//! optional idempotency key), except that prices come from the seeded catalogue instead of a
//! `products_by_sku` read, so the benchmark measures the write path alone.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderflow_adapters::postgres::{PgSalesStore, PgSettings};
use orderflow_domain::{
    Address, Currency, CustomerId, EventId, Money, Order, OrderId, OrderRequest, ProductName, Quantity, RawAddress, Sku,
};
use orderflow_messages::Source;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{IdempotencyRecord, PlaceOutcome, Placement, SalesStore};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use sales_api::service::IDEMPOTENCY_TTL;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Stock each seeded product starts with: enough that no run ever runs out.
const SEED_STOCK: u32 = 1_000_000_000;
/// Unit price of every seeded product, in minor units (the baseline's `1999`).
const SEED_PRICE_MINOR: i64 = 1999;

/// Options of `orderflow bench place-orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlaceOrdersOptions {
    /// The PostgreSQL server to use.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Scratch schema for the run; dropped before and after.
    #[arg(long, default_value = "bench_orders")]
    pub schema: String,
    /// Concurrent callers (also the connection pool size).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring (not counted).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Products in the catalogue; each order takes two distinct ones at random.
    #[arg(long, default_value_t = 1000)]
    pub products: usize,
    /// Send an idempotency key with every order, as the HTTP API does when the client sets one (on by
    /// default; `--idempotency-keys=false` turns it off).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub idempotency_keys: bool,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct PlaceOrdersReport {
    /// Logical CPUs of this machine.
    pub cpus: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// The server's `server_version`.
    pub server_version: String,
    /// The options the run used.
    pub options: PlaceOrdersOptions,
    /// Orders placed in the measured window (started after the warm-up, before its end).
    pub placed: usize,
    /// From the end of the warm-up until the last measured order completed.
    pub elapsed: Duration,
    /// Latencies of the measured orders, sorted ascending.
    pub latencies: Vec<Duration>,
}

impl PlaceOrdersReport {
    /// Orders placed per second in the measured window.
    pub fn orders_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.placed as f64 / secs } else { 0.0 }
    }

    /// The latency at quantile `q` (0.0–1.0), nearest rank; zero when nothing was measured.
    pub fn latency(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1]
    }
}

impl fmt::Display for PlaceOrdersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(f, "machine:     {} cores, {}", self.cpus, self.cpu_model)?;
        writeln!(f, "server:      PostgreSQL {}", self.server_version)?;
        writeln!(
            f,
            "method:      PgSalesStore::place_order, 2-line orders (2 distinct random SKUs of {}, quantity 1 each), \
             idempotency keys {}, pool of {}",
            o.products,
            if o.idempotency_keys { "on" } else { "off" },
            o.concurrency
        )?;
        writeln!(f, "concurrency: {} callers", o.concurrency)?;
        writeln!(
            f,
            "duration:    {:.1} s measured (after {} warm-up)",
            self.elapsed.as_secs_f64(),
            humantime::format_duration(o.warmup)
        )?;
        writeln!(f, "orders:      {} placed", self.placed)?;
        writeln!(f, "orders/s:    {:.1}", self.orders_per_second())?;
        write!(
            f,
            "latency:     p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(self.latency(0.50)),
            ms(self.latency(0.90)),
            ms(self.latency(0.99)),
            ms(self.latency(1.0))
        )
    }
}

/// Runs the benchmark: resets the bench schema, seeds the catalogue, places orders with
/// `options.concurrency` callers for the warm-up plus the measured duration, and drops the schema.
///
/// # Errors
/// When the database is unreachable, the options are unusable, or any order fails to be placed.
pub async fn place_orders(options: PlaceOrdersOptions) -> anyhow::Result<PlaceOrdersReport> {
    anyhow::ensure!(options.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(options.products >= 2, "--products must be at least 2 (orders have two distinct lines)");
    anyhow::ensure!(!options.duration.is_zero(), "--duration must be positive");
    anyhow::ensure!(valid_schema(&options.schema), "--schema must match [a-z_][a-z0-9_]* (at most 40 characters)");

    let (admin, driver) = tokio_postgres::connect(&options.database_url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(&options.database_url)))?;
    let driver = tokio::spawn(driver);
    // The DROP notices ("does not exist, skipping", "drop cascades to …") are noise here.
    admin.batch_execute("SET client_min_messages = warning").await?;
    let server_version = admin.query_one("SHOW server_version", &[]).await?.get::<_, String>(0);
    let drop_schema = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", options.schema);
    admin.batch_execute(&drop_schema).await.context("dropping the bench schema")?;

    let run = run(&options, &admin).await;

    let dropped = admin.batch_execute(&drop_schema).await.context("dropping the bench schema");
    drop(admin);
    let _ = driver.await;
    let (placed, elapsed, latencies) = run?;
    dropped?;
    Ok(PlaceOrdersReport {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        cpu_model: cpu_model(),
        server_version,
        options,
        placed,
        elapsed,
        latencies,
    })
}

/// Creates and seeds the store, then drives the callers. Returns the measured orders, window and latencies.
async fn run(
    options: &PlaceOrdersOptions,
    admin: &tokio_postgres::Client,
) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
    let settings =
        PgSettings { pool_size: options.concurrency, ..PgSettings::new(&options.database_url, &options.schema) };
    let store = PgSalesStore::connect(&settings).await.context("connecting the Sales store")?;
    let catalogue = Arc::new(seed(&store, options.products).await?);
    admin
        .batch_execute(&format!("ANALYZE \"{}\".products", options.schema))
        .await
        .context("analysing the products table")?;

    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..options.concurrency {
        let store = store.clone();
        let catalogue = Arc::clone(&catalogue);
        let idempotency = options.idempotency_keys;
        callers.spawn(async move { call(&store, &catalogue, caller, idempotency, measure_from, end).await });
    }
    let mut latencies = Vec::new();
    let mut failure = None;
    while let Some(joined) = callers.join_next().await {
        match joined.context("a caller panicked").and_then(|r| r) {
            Ok(mut measured) => latencies.append(&mut measured),
            Err(error) => {
                // Stop the others at once: the run is void.
                callers.abort_all();
                failure.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    latencies.sort_unstable();
    Ok((latencies.len(), elapsed, latencies))
}

/// The seeded catalogue: SKUs and the one price they all have.
struct Catalogue {
    skus: Vec<Sku>,
    price: Money,
}

/// Puts `count` products with [`SEED_STOCK`] units each into the store.
async fn seed(store: &PgSalesStore, count: usize) -> anyhow::Result<Catalogue> {
    let price = Money::new(SEED_PRICE_MINOR, Currency::parse("EUR")?)?;
    let mut skus = Vec::with_capacity(count);
    for i in 1..=count {
        let sku = Sku::parse(&format!("SKU-{i}"))?;
        let name = ProductName::parse(&format!("Bench product {i}"))?;
        store.put_product(sku.clone(), name, price, SEED_STOCK).await.with_context(|| format!("seeding {sku}"))?;
        skus.push(sku);
    }
    Ok(Catalogue { skus, price })
}

/// One caller: places orders back to back until `end`, returning the latencies of those started at or
/// after `measure_from`.
async fn call(
    store: &PgSalesStore,
    catalogue: &Catalogue,
    caller: usize,
    idempotency: bool,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let customer = CustomerId::parse(&format!("bench-{caller}"))?;
    let address = Address::parse(RawAddress {
        name: "Ada Lovelace",
        line1: "1 Main St",
        city: "Berlin",
        postal_code: "10115",
        country: "DE",
        ..RawAddress::default()
    })?;
    let quantity = Quantity::new(1)?;
    let n = catalogue.skus.len();
    let mut latencies = Vec::new();
    loop {
        let started = Instant::now();
        if started >= end {
            return Ok(latencies);
        }
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n)) % n;
        let lines = vec![(catalogue.skus[a].clone(), quantity), (catalogue.skus[b].clone(), quantity)];
        let request = OrderRequest::new(customer.clone(), lines, address.clone())?;
        let placement = placement(request, catalogue.price, idempotency)?;
        match store.place_order(placement).await.context("placing an order")? {
            PlaceOutcome::Created(_) => {}
            PlaceOutcome::Replayed(order) => anyhow::bail!("order {} was replayed, not created", order.id),
        }
        if started >= measure_from {
            latencies.push(started.elapsed());
        }
    }
}

/// Builds what the Sales service's `place_order` hands the store for `request`.
fn placement(request: OrderRequest, price: Money, idempotency: bool) -> anyhow::Result<Placement> {
    let now = chrono::Utc::now();
    let id = OrderId::from_uuid(Uuid::now_v7());
    let (order, event) = Order::place(id, request, |_| Some(price), now)?;
    let messages = orderflow_messages::order_messages(&event, &order)
        .into_iter()
        .map(|o| OutboxMessage::from_outgoing(o, EventId::from_uuid(Uuid::now_v7()), Source::Sales, now, None))
        .collect();
    let idempotency = idempotency.then(|| IdempotencyRecord {
        client: "bench-client".to_owned(),
        key: Uuid::new_v4().to_string(),
        // The HTTP layer sends a SHA-256 hex of the body: 64 hex digits, like these.
        request_hash: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        not_before: now - IDEMPOTENCY_TTL,
    });
    Ok(Placement { order, messages, idempotency })
}

/// The rule the store applies to schema names; checked here too because the schema is dropped by name.
fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 40
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The URL without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The CPU model from `/proc/cpuinfo`, or "unknown CPU".
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(latencies_ms: &[u64]) -> PlaceOrdersReport {
        PlaceOrdersReport {
            cpus: 2,
            cpu_model: "test".into(),
            server_version: "15".into(),
            options: PlaceOrdersOptions {
                database_url: String::new(),
                schema: "bench_orders".into(),
                concurrency: 16,
                duration: Duration::from_secs(20),
                warmup: Duration::from_secs(3),
                products: 1000,
                idempotency_keys: true,
            },
            placed: latencies_ms.len(),
            elapsed: Duration::from_secs(2),
            latencies: latencies_ms.iter().map(|&ms| Duration::from_millis(ms)).collect(),
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let r = report(&(1..=100).collect::<Vec<_>>());
        assert_eq!(r.latency(0.50), Duration::from_millis(50));
        assert_eq!(r.latency(0.99), Duration::from_millis(99));
        assert_eq!(r.latency(1.0), Duration::from_millis(100));
        assert_eq!(r.latency(0.0), Duration::from_millis(1));
        assert_eq!(r.orders_per_second(), 50.0);
        assert_eq!(report(&[]).latency(0.5), Duration::ZERO);
    }

    #[test]
    fn placements_mirror_the_service() {
        let price = Money::new(SEED_PRICE_MINOR, Currency::parse("EUR").unwrap()).unwrap();
        let address = Address::parse(RawAddress {
            name: "A",
            line1: "B",
            city: "C",
            postal_code: "1",
            country: "DE",
            ..RawAddress::default()
        })
        .unwrap();
        let q = Quantity::new(1).unwrap();
        let lines = vec![(Sku::parse("SKU-1").unwrap(), q), (Sku::parse("SKU-2").unwrap(), q)];
        let request = OrderRequest::new(CustomerId::parse("bench-0").unwrap(), lines, address).unwrap();
        let p = placement(request, price, true).unwrap();
        assert_eq!(p.order.lines.len(), 2);
        assert_eq!(p.order.total.amount_minor, 2 * SEED_PRICE_MINOR);
        assert_eq!(p.messages.len(), 2, "payment command + audit record");
        assert_eq!(p.idempotency.unwrap().request_hash.len(), 64);
    }

    #[test]
    fn schema_names_and_urls() {
        assert!(valid_schema("bench_orders"));
        assert!(!valid_schema("x\"; DROP"));
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
