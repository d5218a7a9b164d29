//! `orderflow bench drain-orders-created`: how fast one Delivery instance drains a preloaded
//! `orders.created` queue. It preloads the queue with `orders.created` commands for distinct orders, then
//! runs Delivery's own consumer code (the RabbitMQ consumer, the `OrderCommands` handler, the PostgreSQL
//! store) and reports messages/s and per-message handling latency. The HTTP server is the only part of a
//! `delivery-api` process it leaves out: it plays no role in draining.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use delivery_api::service::DeliveryService;
use delivery_api::workers::OrderCommands;
use orderflow_adapters::postgres::{PgDeliveryStore, PgSettings};
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_domain::{Address, CustomerId, EventId, OrderId, Quantity, RawAddress, Sku};
use orderflow_messages::{CloudEvent, EventBody, RoutingKey, Source};
use orderflow_messages::{OrderCreated, ShipmentLine};
use orderflow_ports::messaging::{CommandConsumer, CommandPublisher, Delivery, HandlerOutcome, MessageHandler};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Options of `orderflow bench drain-orders-created`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainOptions {
    /// The broker, with a vhost of the benchmark's own (its `orders.created` queue must start empty).
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: String,
    /// The PostgreSQL server.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Scratch schema for Delivery's store; dropped before and after.
    #[arg(long, default_value = "bench_drain")]
    pub schema: String,
    /// Messages to preload.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// The consumer's prefetch (`AMQP_PREFETCH`), which is also how many it handles at once.
    #[arg(long, default_value_t = 32)]
    pub prefetch: u16,
}

/// Times every delivery the real handler processes.
struct Timed {
    inner: OrderCommands,
    latencies: Mutex<Vec<Duration>>,
    handled: AtomicUsize,
    done: tokio::sync::Notify,
    expected: usize,
}

#[async_trait]
impl MessageHandler for Timed {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let started = Instant::now();
        let outcome = self.inner.handle(delivery).await;
        let took = started.elapsed();
        self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(took);
        if self.handled.fetch_add(1, Ordering::SeqCst) + 1 >= self.expected {
            self.done.notify_one();
        }
        outcome
    }
}

fn order_created(i: usize) -> anyhow::Result<CloudEvent> {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let address = Address::parse(RawAddress {
        name: "Bench",
        line1: "1 Queue Street",
        line2: None,
        city: "Berlin",
        postal_code: "10115",
        country: "DE",
    })?;
    let payload = OrderCreated {
        order_id,
        customer_id: CustomerId::parse(&format!("bench-{i}"))?,
        lines: vec![ShipmentLine { sku: Sku::parse("SKU-BENCH")?, quantity: Quantity::new(1)? }],
        shipping_address: address,
    };
    let body = EventBody::of(order_id, &payload);
    Ok(CloudEvent::wrap(EventId::from_uuid(Uuid::now_v7()), Source::Sales, body, chrono::Utc::now(), None))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the benchmark and returns its report as text.
///
/// # Errors
/// When the broker or the database cannot be used.
pub async fn drain_orders_created(options: DrainOptions) -> anyhow::Result<String> {
    let (admin, driver) = tokio_postgres::connect(&options.database_url, NoTls).await.context("connecting")?;
    let driver = tokio::spawn(driver);
    admin.batch_execute("SET client_min_messages = warning").await?;
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", options.schema)).await?;
    let pool_size = usize::from(options.prefetch).max(1);
    let store = Arc::new(
        PgDeliveryStore::connect(&PgSettings { pool_size, ..PgSettings::new(&options.database_url, &options.schema) })
            .await?,
    );
    let settings = RabbitSettings { prefetch: options.prefetch, ..RabbitSettings::new(&options.amqp_url) };
    let broker = Arc::new(
        RabbitBroker::connect(settings, &[RoutingKey::OrdersCreated, RoutingKey::OrdersCancelRequested])
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
    );

    let preload_started = Instant::now();
    for i in 0..options.count {
        broker.publish(RoutingKey::OrdersCreated, &order_created(i)?).await?;
    }
    let preloaded_in = preload_started.elapsed();

    let service = DeliveryService::new(store, Arc::new(SystemClock), Arc::new(UuidV7Ids));
    let handler = Arc::new(Timed {
        inner: OrderCommands { service },
        latencies: Mutex::new(Vec::with_capacity(options.count)),
        handled: AtomicUsize::new(0),
        done: tokio::sync::Notify::new(),
        expected: options.count,
    });
    let started = Instant::now();
    let consumer = Arc::clone(&broker);
    let timed: Arc<dyn MessageHandler> = handler.clone();
    let consuming = tokio::spawn(async move { consumer.consume(RoutingKey::OrdersCreated, timed).await });
    handler.done.notified().await;
    let drained_in = started.elapsed();
    broker.shutdown().await;
    let _ = consuming.await;

    let shipments: i64 =
        admin.query_one(&format!("SELECT count(*) FROM \"{}\".shipments", options.schema), &[]).await?.get(0);
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", options.schema)).await?;
    drop(admin);
    let _ = driver.await;

    let mut latencies = handler.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    latencies.sort();
    #[allow(clippy::cast_precision_loss)]
    let per_second = options.count as f64 / drained_in.as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    Ok(format!(
        "machine:     {cpus} cores\n\
         method:      {count} orders.created commands preloaded (in {preloaded_in:.1?}), then drained by one \
         Delivery consumer (RabbitMQ consumer + OrderCommands + PostgreSQL store), prefetch {prefetch}\n\
         drained:     {count} messages in {drained_in:.2?} ({shipments} shipments created)\n\
         messages/s:  {per_second:.1}\n\
         handling:    p50 {p50:.3?}, p90 {p90:.3?}, p99 {p99:.3?}, max {max:.3?}",
        count = options.count,
        prefetch = options.prefetch,
        p50 = percentile(&latencies, 0.50),
        p90 = percentile(&latencies, 0.90),
        p99 = percentile(&latencies, 0.99),
        max = latencies.last().copied().unwrap_or_default(),
    ))
}
