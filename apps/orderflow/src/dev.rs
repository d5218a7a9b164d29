//! The embedded stack of `orderflow dev`: both services, a dev token issuer, in-memory adapters (or, when
//! asked, PostgreSQL stores), one in-process bus — the same `Application`s the service binaries run, on
//! other adapters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use delivery_api::console::{self, ConsoleSettings};
use delivery_api::workers::AutopilotSettings;
use delivery_api::{DeliverySettings, DeliverySetup};
use orderflow_adapters::memory::{BusSettings, InMemoryAuditLog, InMemoryBus};
use orderflow_adapters::postgres::PgSettings;
use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
use orderflow_adapters::system::SystemClock;
use orderflow_domain::{Currency, Money, ProductName, Sku};
use orderflow_runtime::dev_issuer::{
    CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET, DevClient, DevIssuer, DevUser, RunningIssuer,
};
use orderflow_runtime::wiring::{Limits, Store, Wiring};
use sales_api::pressure::PressureLimits;
use sales_api::webhooks::WebhookSettings;
use sales_api::{Mail, SalesSettings, SalesSetup, SeedProduct};

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
    /// Per-client rate limits, counted by each service on its own (off by default).
    pub limits: Limits,
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
            // The services' own defaults: `orderflow dev` answers where the binaries would.
            sales_addr: SalesSettings::default().http_addr,
            delivery_addr: DeliverySettings::default().http_addr,
            issuer_addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            autopilot: Some(AutopilotSettings {
                ship_after: Duration::from_secs(2),
                deliver_after: Duration::from_secs(3),
            }),
            payment: PaymentSettings::default(),
            bus: BusSettings::default(),
            limits: Limits::default(),
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
    /// The audit stream.
    pub audit: Arc<InMemoryAuditLog>,
    /// The payment gateway.
    pub payments: Arc<SimulatedPaymentGateway>,
}

impl DevStack {
    /// Starts the issuer, then both services, through the same builders as the service binaries: only
    /// the adapters differ.
    ///
    /// # Errors
    /// When an address cannot be bound.
    pub async fn start(options: DevOptions) -> anyhow::Result<Self> {
        // The console needs an address known before start: the issuer only sends people back to it.
        let mut clients = DevClient::defaults();
        let mut console = None;
        if options.delivery_addr.port() != 0 {
            let public_url = console::local_url(options.delivery_addr)?;
            clients.push(DevClient::console(console::redirect_uri(&public_url)?));
            console = Some(ConsoleSettings {
                client_id: CONSOLE_CLIENT_ID.to_owned(),
                client_secret: CONSOLE_CLIENT_SECRET.to_owned(),
                public_url: Some(public_url),
                session_key: None,
            });
        }
        let issuer = DevIssuer::new(AUDIENCE, clients)
            .with_users(DevUser::defaults())
            .bind(options.issuer_addr)
            .await
            .with_context(|| format!("starting the dev token issuer on {}", options.issuer_addr))?;
        let bus = Arc::new(InMemoryBus::new(options.bus.clone(), Arc::new(SystemClock)));
        let audit = Arc::new(InMemoryAuditLog::new());
        let wiring = Wiring::in_memory(bus.clone(), audit.clone(), issuer.issuer_url().to_owned(), AUDIENCE.to_owned())
            .with_limits(options.limits.clone());
        let store = |schema: fn(&DevPostgres) -> &str| match &options.postgres {
            None => Store::Memory,
            Some(pg) => Store::Postgres(PgSettings::new(&pg.url, schema(pg))),
        };
        let payments = Arc::new(SimulatedPaymentGateway::new(options.payment.clone()));
        let sales = sales_api::Application::build(SalesSetup {
            settings: SalesSettings {
                http_addr: options.sales_addr,
                pressure: options.pressure,
                // Endpoints on this machine, for trying webhooks out.
                webhooks: WebhookSettings { allow_loopback: true, ..WebhookSettings::default() },
                catalogue: if options.seed_catalogue { sample_catalogue()? } else { Vec::new() },
                ..SalesSettings::default()
            },
            wiring: Wiring { store: store(|pg| &pg.sales_schema), ..wiring.clone() },
            payments: payments.clone(),
            mail: Mail::Log,
        })
        .await?;
        let delivery = delivery_api::Application::build(DeliverySetup {
            settings: DeliverySettings {
                http_addr: options.delivery_addr,
                autopilot: options.autopilot,
                console,
                ..DeliverySettings::default()
            },
            wiring: Wiring { store: store(|pg| &pg.delivery_schema), ..wiring },
        })
        .await?;
        Ok(Self { issuer, sales, delivery, bus, audit, payments })
    }

    /// Runs both services until SIGTERM or Ctrl-C, then lets each settle its messages in flight, as the
    /// binaries do.
    ///
    /// # Errors
    /// When a signal handler cannot be installed or a server panicked.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { issuer, sales, delivery, .. } = self;
        let (sales, delivery) = tokio::join!(sales.run_until_stopped(), delivery.run_until_stopped());
        drop(issuer);
        sales.and(delivery)
    }
}

/// The sample catalogue of `orderflow dev`.
fn sample_catalogue() -> anyhow::Result<Vec<SeedProduct>> {
    let eur = Currency::parse("EUR")?;
    let products = [
        ("SKU-001", "Espresso beans, 1 kg", 1999, 100),
        ("SKU-002", "Milk frother", 4999, 20),
        ("SKU-003", "Ceramic cup", 899, 500),
        ("SKU-004", "Grinder", 12999, 5),
    ];
    products
        .into_iter()
        .map(|(sku, name, price, stock)| {
            Ok(SeedProduct {
                sku: Sku::parse(sku)?,
                name: ProductName::parse(name)?,
                price: Money::new(price, eur)?,
                stock,
            })
        })
        .collect()
}
