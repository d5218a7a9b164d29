#![doc = include_str!("../README.md")]

pub mod config;
pub mod http;
pub mod service;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use orderflow_domain::RoutingKey;
use orderflow_ports::auth::TokenVerifier;
use orderflow_ports::delivery::{DeliveryStore, ShipmentQuery};
use orderflow_ports::messaging::{AuditLog, CommandConsumer, CommandPublisher, DeadLetterAdmin, MessageHandler};
use orderflow_ports::outbox::{OutboxRelay, RelaySettings};
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::system::{Clock, HealthCheck, IdGenerator};
use orderflow_runtime::http::{AuthContext, RateLimitPolicy, RouteLimit, RunningService, ServiceParts};

use crate::service::DeliveryService;
use crate::workers::{AutopilotSettings, OrderCommands};

/// The adapters the service runs on, chosen by the caller.
#[derive(Clone)]
pub struct DeliveryAdapters {
    /// Shipments, outbox.
    pub store: Arc<dyn DeliveryStore>,
    /// Where commands go.
    pub publisher: Arc<dyn CommandPublisher>,
    /// Where commands come from.
    pub consumer: Arc<dyn CommandConsumer>,
    /// The audit stream.
    pub audit: Arc<dyn AuditLog>,
    /// Operations on the dead-letter queues of the queues this service consumes.
    pub dead_letters: Arc<dyn DeadLetterAdmin>,
    /// Dependencies `/health/ready` checks besides the store (which it always checks).
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// Verifies bearer tokens.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Per-client rate limiting; `None` = off.
    pub limiter: Option<Arc<dyn RateLimiter>>,
    /// Tighter per-client limits on some kinds of request.
    pub route_limits: Vec<RouteLimit>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Fresh ids.
    pub ids: Arc<dyn IdGenerator>,
}

/// Settings that are not adapters.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// Outbox relay tuning.
    pub relay: RelaySettings,
    /// What to do when the rate limiter is down.
    pub rate_limit_policy: RateLimitPolicy,
    /// `RATE_LIMIT_BURST`, announced as `RateLimit-Limit` on a 429; `None` when there is no limit.
    pub rate_limit_burst: Option<u32>,
    /// Ships and delivers by itself when set.
    pub autopilot: Option<AutopilotSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            relay: RelaySettings::default(),
            rate_limit_policy: RateLimitPolicy::Allow,
            rate_limit_burst: None,
            autopilot: None,
        }
    }
}

/// A running Delivery service: HTTP server, consumers, outbox relay and autopilot. Dropping it stops
/// them all.
pub struct Application(RunningService);

impl Application {
    /// Binds the listener and starts the server, the consumers, the relay and (when set) the autopilot.
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be registered.
    pub async fn build(settings: DeliverySettings, adapters: DeliveryAdapters) -> anyhow::Result<Self> {
        let service = DeliveryService {
            store: adapters.store.clone(),
            clock: adapters.clock,
            ids: adapters.ids,
            created: Arc::default(),
        };
        let handler: Arc<dyn MessageHandler> = Arc::new(OrderCommands { service: service.clone() });
        let handlers = RoutingKey::DELIVERY.into_iter().map(|queue| (queue, handler.clone())).collect();
        let mut health = vec![Arc::new(Database(adapters.store.clone())) as Arc<dyn HealthCheck>];
        health.extend(adapters.health);
        let parts = ServiceParts {
            name: "orderflow Delivery API",
            version: env!("CARGO_PKG_VERSION"),
            http_addr: settings.http_addr,
            body_limit: http::BODY_LIMIT,
            api: http::api(&service, adapters.dead_letters),
            auth: AuthContext {
                verifier: adapters.verifier,
                limiter: adapters.limiter,
                routes: adapters.route_limits,
                policy: settings.rate_limit_policy,
            },
            rate_limit_burst: settings.rate_limit_burst,
            health,
            relay: OutboxRelay::new(adapters.store, adapters.publisher, adapters.audit, settings.relay),
            consumer: adapters.consumer,
            handlers,
        };
        let mut running = RunningService::start(parts)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("starting the Delivery API on {}", settings.http_addr))?;
        if let Some(autopilot) = settings.autopilot {
            running.spawn(workers::autopilot(service, autopilot));
        }
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

    /// Runs until SIGTERM or Ctrl-C, then settles the messages in flight (see [`RunningService`]).
    ///
    /// # Errors
    /// When the signal handler cannot be installed or the server panicked.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run_until_stopped().await.map_err(|e| anyhow::anyhow!(e))
    }
}

/// Readiness of the store: it answers a cheap read.
struct Database(Arc<dyn DeliveryStore>);

#[async_trait::async_trait]
impl HealthCheck for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> bool {
        self.0.shipments(ShipmentQuery { limit: 1, ..ShipmentQuery::default() }).await.is_ok()
    }
}
