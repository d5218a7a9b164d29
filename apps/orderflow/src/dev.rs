//! The embedded stack of `orderflow dev`: both services, a dev token issuer, in-memory adapters (or, when
//! asked, PostgreSQL stores), one in-process bus — the same `Application`s the service binaries run, on
//! other adapters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use delivery_api::workers::AutopilotSettings;
use delivery_api::{DeliveryAdapters, DeliverySettings};
use orderflow_adapters::auth::{JwksVerifier, VerifierSettings};
use orderflow_adapters::memory::{
    BusSettings, InMemoryAuditLog, InMemoryBus, InMemoryDeliveryStore, InMemoryOrderCache, InMemoryRateLimiter,
    InMemorySalesStore,
};
use orderflow_adapters::postgres::{PgDeliveryStore, PgSalesStore, PgSettings};
use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_domain::{Currency, Money, ProductName, Sku};
use orderflow_ports::auth::TokenVerifier;
use orderflow_ports::delivery::DeliveryStore;
use orderflow_ports::outbox::RelaySettings;
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::sales::SalesStore;
use orderflow_ports::system::Clock;
use orderflow_runtime::dev_issuer::{DevClient, DevIssuer, RunningIssuer};
use sales_api::pressure::PressureLimits;
use sales_api::{SalesAdapters, SalesSettings};

/// The audience the dev issuer mints tokens for and the services expect.
pub const AUDIENCE: &str = "orderflow";

/// What to start.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Sales API address (port 0 picks one).
    pub sales_addr: SocketAddr,
    /// Delivery API address.
    pub delivery_addr: SocketAddr,
    /// Token issuer address.
    pub issuer_addr: SocketAddr,
    /// Ship and deliver automatically after these delays.
    pub autopilot: Option<AutopilotSettings>,
    /// The simulated payment gateway's rules.
    pub payment: PaymentSettings,
    /// Retry delays and prefetch of the in-process bus.
    pub bus: BusSettings,
    /// Requests per minute and burst per client; `None` = off.
    pub rate_limit: Option<(u32, u32)>,
    /// Put a few sample products in the catalogue.
    pub seed_catalogue: bool,
    /// Keep the services' state in PostgreSQL instead of memory.
    pub postgres: Option<DevPostgres>,
    /// When Sales refuses new orders for back-pressure (off by default).
    pub pressure: PressureLimits,
}

/// Where `orderflow dev` keeps state when asked to use PostgreSQL.
#[derive(Debug, Clone)]
pub struct DevPostgres {
    /// The database URL.
    pub url: String,
    /// The Sales schema (`sales` by default).
    pub sales_schema: String,
    /// The Delivery schema (`delivery` by default).
    pub delivery_schema: String,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            sales_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            delivery_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            issuer_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            autopilot: Some(AutopilotSettings {
                ship_after: Duration::from_secs(2),
                deliver_after: Duration::from_secs(3),
            }),
            payment: PaymentSettings::default(),
            bus: BusSettings::default(),
            rate_limit: None,
            seed_catalogue: true,
            postgres: None,
            pressure: PressureLimits::default(),
        }
    }
}

impl DevOptions {
    /// Everything on free loopback ports, no autopilot, no sample products, fast retries: for tests.
    pub fn for_tests() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            sales_addr: any,
            delivery_addr: any,
            issuer_addr: any,
            autopilot: None,
            bus: BusSettings { retry_delays: vec![Duration::from_millis(20); 3], prefetch: 16 },
            seed_catalogue: false,
            ..Self::default()
        }
    }
}

/// The running stack. Dropping it stops everything.
pub struct DevStack {
    /// The token issuer.
    pub issuer: RunningIssuer,
    /// The Sales service.
    pub sales: sales_api::Application,
    /// The Delivery service.
    pub delivery: delivery_api::Application,
    /// The bus between them (its dead letters are inspectable).
    pub bus: Arc<InMemoryBus>,
    /// Sales' store.
    pub sales_store: Arc<dyn SalesStore>,
    /// Delivery's store.
    pub delivery_store: Arc<dyn DeliveryStore>,
    /// The audit stream.
    pub audit: Arc<InMemoryAuditLog>,
    /// The payment gateway.
    pub payments: Arc<SimulatedPaymentGateway>,
}

impl DevStack {
    /// Starts the issuer, then both services.
    ///
    /// # Errors
    /// When an address cannot be bound.
    pub async fn start(options: DevOptions) -> anyhow::Result<Self> {
        let issuer = DevIssuer::start(options.issuer_addr, AUDIENCE, DevClient::defaults())
            .await
            .with_context(|| format!("starting the dev token issuer on {}", options.issuer_addr))?;
        let verifier: Arc<dyn TokenVerifier> =
            Arc::new(JwksVerifier::new(issuer.issuer_url(), AUDIENCE, VerifierSettings::default())?);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let bus = Arc::new(InMemoryBus::new(options.bus.clone(), clock.clone()));
        let audit = Arc::new(InMemoryAuditLog::new());
        let (sales_store, delivery_store): (Arc<dyn SalesStore>, Arc<dyn DeliveryStore>) = match &options.postgres {
            None => (Arc::new(InMemorySalesStore::new()), Arc::new(InMemoryDeliveryStore::new())),
            Some(pg) => (
                Arc::new(
                    PgSalesStore::connect(&PgSettings::new(&pg.url, &pg.sales_schema))
                        .await
                        .context("connecting the Sales store to PostgreSQL")?,
                ),
                Arc::new(
                    PgDeliveryStore::connect(&PgSettings::new(&pg.url, &pg.delivery_schema))
                        .await
                        .context("connecting the Delivery store to PostgreSQL")?,
                ),
            ),
        };
        let payments = Arc::new(SimulatedPaymentGateway::new(options.payment.clone()));
        let limiter = options
            .rate_limit
            .map(|(per_minute, burst)| Arc::new(InMemoryRateLimiter::new(per_minute, burst)) as Arc<dyn RateLimiter>);
        if options.seed_catalogue {
            seed(sales_store.as_ref()).await?;
        }
        let relay = RelaySettings { idle_poll: Duration::from_millis(200), ..RelaySettings::default() };
        let sales = sales_api::Application::build(
            SalesSettings {
                http_addr: options.sales_addr,
                relay: relay.clone(),
                rate_limit_burst: options.rate_limit.map(|(_, burst)| burst),
                pressure: options.pressure,
                ..SalesSettings::default()
            },
            SalesAdapters {
                store: sales_store.clone(),
                cache: Arc::new(InMemoryOrderCache::new()),
                payments: payments.clone(),
                publisher: bus.clone(),
                consumer: bus.clone(),
                audit: audit.clone(),
                dead_letters: bus.clone(),
                health: Vec::new(),
                verifier: verifier.clone(),
                limiter: limiter.clone(),
                route_limits: Vec::new(),
                clock: clock.clone(),
                ids: Arc::new(UuidV7Ids),
            },
        )
        .await?;
        let delivery = delivery_api::Application::build(
            DeliverySettings {
                http_addr: options.delivery_addr,
                relay,
                autopilot: options.autopilot,
                rate_limit_burst: options.rate_limit.map(|(_, burst)| burst),
                ..DeliverySettings::default()
            },
            DeliveryAdapters {
                store: delivery_store.clone(),
                publisher: bus.clone(),
                consumer: bus.clone(),
                audit: audit.clone(),
                dead_letters: bus.clone(),
                health: Vec::new(),
                verifier,
                limiter,
                route_limits: Vec::new(),
                clock,
                ids: Arc::new(UuidV7Ids),
            },
        )
        .await?;
        Ok(Self { issuer, sales, delivery, bus, sales_store, delivery_store, audit, payments })
    }
}

/// The sample catalogue of `orderflow dev`.
async fn seed(store: &dyn SalesStore) -> anyhow::Result<()> {
    let eur = Currency::parse("EUR")?;
    let products = [
        ("SKU-001", "Espresso beans, 1 kg", 1999, 100),
        ("SKU-002", "Milk frother", 4999, 20),
        ("SKU-003", "Ceramic cup", 899, 500),
        ("SKU-004", "Grinder", 12999, 5),
    ];
    for (sku, name, price, stock) in products {
        store.put_product(Sku::parse(sku)?, ProductName::parse(name)?, Money::new(price, eur)?, stock).await?;
    }
    Ok(())
}
