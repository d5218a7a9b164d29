//! How a Delivery service is assembled and run: [`Application::build`] takes a [`DeliverySetup`] naming
//! memory or a real server per port, opens them and starts the service. The binary, `orderflow dev` and
//! the tests all come through here.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures::FutureExt;
use orderflow_adapters::memory::InMemoryDeliveryStore;
use orderflow_adapters::postgres::PgDeliveryStore;
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_messages::RoutingKey;
use orderflow_ports::delivery::DeliveryStore;
use orderflow_ports::messaging::MessageHandler;
use orderflow_runtime::relay::RelaySettings;
use orderflow_runtime::service::{Pages, RunningService, ServiceParts};
use orderflow_runtime::wiring::{Store, Wiring};

use crate::console::{self, ConsoleSettings};
use crate::http;
use crate::service::DeliveryService;
use crate::workers::{self, AutopilotSettings, OrderCommands};

/// What to build: the settings, and per port memory or a real server.
pub struct DeliverySetup {
    /// Settings that are not adapters.
    pub settings: DeliverySettings,
    /// The store, broker, audit stream, counters and issuer.
    pub wiring: Wiring,
}

/// Settings that are not adapters.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// Outbox relay tuning.
    pub relay: RelaySettings,
    /// Ships and delivers by itself when set.
    pub autopilot: Option<AutopilotSettings>,
    /// The staff's console at `/console`, when set.
    pub console: Option<ConsoleSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            relay: RelaySettings::default(),
            autopilot: None,
            console: None,
        }
    }
}

/// A running Delivery service: HTTP server, consumers, outbox relay and autopilot. Dropping it stops
/// them all.
pub struct Application(RunningService);

impl Application {
    /// Opens the ports `setup` names and starts the server, the consumers, the relay and (when set) the
    /// autopilot. Nothing falls back to memory: a real server that cannot be reached stops the start.
    ///
    /// # Errors
    /// When a server cannot be reached or the address cannot be bound.
    pub async fn build(setup: DeliverySetup) -> anyhow::Result<Self> {
        let DeliverySetup { settings, wiring } = setup;
        let store: Arc<dyn DeliveryStore> = match &wiring.store {
            Store::Memory => Arc::new(InMemoryDeliveryStore::new()),
            Store::Postgres(database) => {
                Arc::new(PgDeliveryStore::connect(database).await.context("connecting the Delivery store")?)
            }
        };
        // Delivery declares the queues it consumes and those it sends to, not the queues Sales keeps to itself.
        let queues: Vec<RoutingKey> =
            RoutingKey::ALL.into_iter().filter(|k| !RoutingKey::SALES_INTERNAL.contains(k)).collect();
        let shared = wiring.connect("delivery", &queues).await.map_err(|e| anyhow::anyhow!(e))?;
        let service = DeliveryService::new(store.clone(), Arc::new(SystemClock), Arc::new(UuidV7Ids));
        let handler: Arc<dyn MessageHandler> = Arc::new(OrderCommands { service: service.clone() });
        let pages = match settings.console {
            Some(console) => {
                let routes = console::routes(
                    settings.http_addr,
                    service.clone(),
                    shared.auth.verifier.clone(),
                    &shared.issuer,
                    console,
                )
                .context("setting up the console")?;
                vec![Pages { path: console::PATH, routes: console::templates(), endpoint: routes }]
            }
            None => Vec::new(),
        };
        let parts = ServiceParts {
            name: "orderflow Delivery API",
            version: env!("CARGO_PKG_VERSION"),
            http_addr: settings.http_addr,
            body_limit: http::BODY_LIMIT,
            api: http::api(&service, shared.dead_letters.clone()),
            shared,
            health: Vec::new(),
            outbox: store,
            relay: settings.relay,
            handlers: RoutingKey::DELIVERY.into_iter().map(|queue| (queue, handler.clone())).collect(),
            tasks: settings
                .autopilot
                .map(|autopilot| ("autopilot", workers::autopilot(service, autopilot).boxed()))
                .into_iter()
                .collect(),
            pages,
        };
        let running = RunningService::start(parts)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("starting the Delivery API on {}", settings.http_addr))?;
        Ok(Self(running))
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.0.addr().port()
    }

    /// What runs besides the HTTP server (see [`RunningService::workers`]).
    pub fn workers(&self) -> &[String] {
        self.0.workers()
    }

    /// Runs until SIGTERM or Ctrl-C, then settles the messages in flight (see [`RunningService`]).
    ///
    /// # Errors
    /// When the signal handler cannot be installed or the server panicked.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run_until_stopped().await.map_err(|e| anyhow::anyhow!(e))
    }
}
