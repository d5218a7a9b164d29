//! How a Sales service is assembled and run: [`Application::build`] takes a [`SalesSetup`] naming memory
//! or a real server per port, opens them and starts the service. The binary, `orderflow dev` and the
//! tests all come through here; tests that need a double for one port call [`Application::assemble`],
//! which `build` ends in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use orderflow_adapters::memory::{InMemorySalesStore, LogNotifier};
use orderflow_adapters::postgres::PgSalesStore;
use orderflow_adapters::smtp::SmtpNotifier;
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_adapters::webhook::HttpWebhookSender;
use orderflow_domain::{Money, ProductName, Sku};
use orderflow_messages::RoutingKey;
use orderflow_ports::cache::OrderCache;
use orderflow_ports::messaging::MessageHandler;
use orderflow_ports::notify::Notifier;
use orderflow_ports::outbox::OutboxStore;
use orderflow_ports::payment::PaymentGateway;
use orderflow_ports::sales::SalesStore;
use orderflow_ports::system::{Clock, HealthCheck, IdGenerator};
use orderflow_ports::webhooks::{WebhookSender, WebhookStore};
use orderflow_runtime::relay::RelaySettings;
use orderflow_runtime::service::{RunningService, ServiceParts};
use orderflow_runtime::wiring::{Connected, Store, Wiring};

use crate::http;
use crate::notifications::Notifications;
use crate::pressure::{BackPressure, PressureLimits};
use crate::service::SalesService;
use crate::webhooks::{WebhookSettings, Webhooks};
use crate::workers::{DeliveryReports, NotificationWorker, PaymentWorker};

/// How long a cached order lives without being written again; writes keep it fresh, this only bounds
/// what a lost write-through could leave behind.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// How often each replica deletes the idempotency keys past their day.
const FORGET_KEYS_EVERY: Duration = Duration::from_secs(600);

/// What to build: the settings, and per port memory or a real server.
pub struct SalesSetup {
    /// Settings that are not adapters.
    pub settings: SalesSettings,
    /// The store, broker, audit stream, counters and issuer.
    pub wiring: Wiring,
    /// The payment gateway.
    pub payments: Arc<dyn PaymentGateway>,
    /// Where notification e-mail goes.
    pub mail: Mail,
}

/// Where notification e-mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mail {
    /// Written to the log, not sent (`orderflow dev`, or no `SMTP_URL`).
    Log,
    /// Sent through an SMTP server.
    Smtp {
        /// `SMTP_URL`.
        url: String,
        /// `NOTIFY_FROM`: the sender's mailbox.
        from: String,
    },
}

/// Settings that are not adapters.
#[derive(Debug, Clone)]
pub struct SalesSettings {
    /// Where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// Outbox relay tuning.
    pub relay: RelaySettings,
    /// When to refuse new orders for back-pressure (off by default).
    pub pressure: PressureLimits,
    /// How webhooks are retried, polled and where they may go.
    pub webhooks: WebhookSettings,
    /// Products put in the catalogue before the first request is served (`orderflow dev`'s sample), so
    /// no client can see the service without them.
    pub catalogue: Vec<SeedProduct>,
}

/// A product to put in the catalogue at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedProduct {
    /// The SKU.
    pub sku: Sku,
    /// Display name.
    pub name: ProductName,
    /// Unit price.
    pub price: Money,
    /// Units on hand.
    pub stock: u32,
}

impl Default for SalesSettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            relay: RelaySettings::default(),
            pressure: PressureLimits::default(),
            webhooks: WebhookSettings::default(),
            catalogue: Vec::new(),
        }
    }
}

/// The ports the service runs on, open.
pub struct SalesAdapters {
    /// Orders, catalogue, outbox.
    pub store: Arc<dyn SalesStore>,
    /// Webhook endpoints and deliveries: the same store, which owes them with each change.
    pub webhook_store: Arc<dyn WebhookStore>,
    /// Sends webhook deliveries.
    pub webhook_sender: Arc<dyn WebhookSender>,
    /// Single-order read cache.
    pub cache: Arc<dyn OrderCache>,
    /// The payment gateway.
    pub payments: Arc<dyn PaymentGateway>,
    /// Sends notification e-mail.
    pub notifier: Arc<dyn Notifier>,
    /// Broker, audit stream, token verification and rate limits.
    pub shared: Connected,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Fresh ids.
    pub ids: Arc<dyn IdGenerator>,
}

/// A running Sales service: HTTP server, consumers, outbox relay and back-pressure. Dropping it stops
/// them all.
pub struct Application {
    running: RunningService,
}

impl Application {
    /// Opens the ports `setup` names and starts the service. Nothing falls back to memory: a real
    /// server that cannot be reached stops the start.
    ///
    /// # Errors
    /// When a server cannot be reached or the address cannot be bound.
    pub async fn build(setup: SalesSetup) -> anyhow::Result<Self> {
        let SalesSetup { settings, wiring, payments, mail } = setup;
        let notifier: Arc<dyn Notifier> = match &mail {
            Mail::Log => Arc::new(LogNotifier),
            Mail::Smtp { url, from } => Arc::new(SmtpNotifier::new(url, from)?),
        };
        let (store, webhook_store): (Arc<dyn SalesStore>, Arc<dyn WebhookStore>) = match &wiring.store {
            Store::Memory => {
                let store = Arc::new(InMemorySalesStore::new());
                (store.clone(), store)
            }
            Store::Postgres(database) => {
                let store = Arc::new(PgSalesStore::connect(database).await.context("connecting the Sales store")?);
                (store.clone(), store)
            }
        };
        let webhook_sender = Arc::new(HttpWebhookSender::new(settings.webhooks.allow_loopback)?);
        let shared = wiring.connect("sales", &RoutingKey::ALL).await.map_err(|e| anyhow::anyhow!(e))?;
        let adapters = SalesAdapters {
            store,
            webhook_store,
            webhook_sender,
            cache: shared.order_cache(CACHE_TTL),
            payments,
            notifier,
            shared,
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Ids),
        };
        Self::assemble(settings, adapters).await
    }

    /// Starts the service on ports already open.
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be registered.
    pub async fn assemble(settings: SalesSettings, adapters: SalesAdapters) -> anyhow::Result<Self> {
        for product in &settings.catalogue {
            let SeedProduct { sku, name, price, stock } = product.clone();
            adapters.store.put_product(sku, name, price, stock).await.context("seeding the catalogue")?;
        }
        let pressure = Arc::new(BackPressure::new(settings.pressure));
        let webhooks = Arc::new(Webhooks::new(
            adapters.webhook_store,
            adapters.webhook_sender,
            adapters.clock.clone(),
            adapters.ids.clone(),
            settings.webhooks.clone(),
        ));
        let service = SalesService::new(
            adapters.store.clone(),
            adapters.cache,
            adapters.payments,
            adapters.clock,
            adapters.ids,
            pressure.clone(),
        );
        let payment: Arc<dyn MessageHandler> = Arc::new(PaymentWorker { service: service.clone() });
        let reports: Arc<dyn MessageHandler> = Arc::new(DeliveryReports { service: service.clone() });
        let notifications = Arc::new(Notifications::new(adapters.store.clone(), adapters.notifier));
        let notify: Arc<dyn MessageHandler> = Arc::new(NotificationWorker { notifications });
        let handlers = RoutingKey::SALES
            .into_iter()
            .map(|queue| {
                let handler = match queue {
                    RoutingKey::PaymentsRequested => payment.clone(),
                    RoutingKey::NotificationsRequested => notify.clone(),
                    _ => reports.clone(),
                };
                (queue, handler)
            })
            .collect();
        let mut health: Vec<Arc<dyn HealthCheck>> = Vec::new();
        if settings.pressure.any() {
            health.push(pressure.clone());
        }
        let outbox: Arc<dyn OutboxStore> = adapters.store.clone();
        let mut tasks = Vec::new();
        tasks.push(("webhooks", webhooks.clone().run().boxed()));
        tasks.push(("idempotency key expiry", service.clone().keep_forgetting_expired_keys(FORGET_KEYS_EVERY).boxed()));
        if settings.pressure.any() {
            let watch = pressure.watch(outbox.clone(), adapters.shared.consumer.clone(), RoutingKey::SALES.to_vec());
            tasks.push(("back-pressure", watch.boxed()));
        }
        let parts = ServiceParts {
            name: "orderflow Sales API",
            version: env!("CARGO_PKG_VERSION"),
            http_addr: settings.http_addr,
            body_limit: http::BODY_LIMIT,
            api: http::api(&service, webhooks, adapters.shared.dead_letters.clone()),
            shared: adapters.shared,
            health,
            outbox,
            relay: settings.relay,
            handlers,
            tasks,
            pages: Vec::new(),
        };
        let running = RunningService::start(parts)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("starting the Sales API on {}", settings.http_addr))?;
        Ok(Self { running })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.running.addr().port()
    }

    /// What runs besides the HTTP server (see [`RunningService::workers`]).
    pub fn workers(&self) -> &[String] {
        self.running.workers()
    }

    /// Runs until SIGTERM or Ctrl-C, then settles the messages in flight (see [`RunningService`]).
    ///
    /// # Errors
    /// When the signal handler cannot be installed or the server panicked.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.running.run_until_stopped().await.map_err(|e| anyhow::anyhow!(e))
    }
}
