#![doc = include_str!("../README.md")]

pub mod config;
pub mod http;
pub mod pressure;
pub mod service;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use orderflow_domain::RoutingKey;
use orderflow_ports::auth::TokenVerifier;
use orderflow_ports::cache::OrderCache;
use orderflow_ports::messaging::{AuditLog, CommandConsumer, CommandPublisher, DeadLetterAdmin, MessageHandler};
use orderflow_ports::outbox::{OutboxRelay, OutboxStore, RelaySettings};
use orderflow_ports::payment::PaymentGateway;
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::sales::SalesStore;
use orderflow_ports::system::{Clock, HealthCheck, IdGenerator};
use orderflow_runtime::http::{AuthContext, RateLimitPolicy, RouteLimit, RunningService, ServiceParts};

use crate::pressure::{BackPressure, PressureLimits};
use crate::service::SalesService;
use crate::workers::{DeliveryReports, PaymentWorker};

/// The adapters the service runs on, chosen by the caller.
#[derive(Clone)]
pub struct SalesAdapters {
    /// Orders, catalogue, outbox.
    pub store: Arc<dyn SalesStore>,
    /// Single-order read cache.
    pub cache: Arc<dyn OrderCache>,
    /// The payment gateway.
    pub payments: Arc<dyn PaymentGateway>,
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
pub struct SalesSettings {
    /// Where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// Outbox relay tuning.
    pub relay: RelaySettings,
    /// What to do when the rate limiter is down.
    pub rate_limit_policy: RateLimitPolicy,
    /// `RATE_LIMIT_BURST`, announced as `RateLimit-Limit` on a 429; `None` when there is no limit.
    pub rate_limit_burst: Option<u32>,
    /// When to refuse new orders for back-pressure (off by default).
    pub pressure: PressureLimits,
}

impl Default for SalesSettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            relay: RelaySettings::default(),
            rate_limit_policy: RateLimitPolicy::Allow,
            rate_limit_burst: None,
            pressure: PressureLimits::default(),
        }
    }
}

/// A running Sales service: HTTP server, consumers, outbox relay and back-pressure. Dropping it stops
/// them all.
pub struct Application {
    running: RunningService,
    _watch: Option<Watch>,
}

impl Application {
    /// Binds the listener and starts the server, the consumers and the relay.
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be registered.
    pub async fn build(settings: SalesSettings, adapters: SalesAdapters) -> anyhow::Result<Self> {
        let pressure = Arc::new(BackPressure::new(settings.pressure));
        let service = SalesService {
            store: adapters.store.clone(),
            cache: adapters.cache,
            payments: adapters.payments,
            clock: adapters.clock,
            ids: adapters.ids,
            pressure: pressure.clone(),
        };
        let payment: Arc<dyn MessageHandler> = Arc::new(PaymentWorker { service: service.clone() });
        let reports: Arc<dyn MessageHandler> = Arc::new(DeliveryReports { service: service.clone() });
        let handlers = RoutingKey::SALES
            .into_iter()
            .map(|queue| {
                (queue, if queue == RoutingKey::PaymentsRequested { payment.clone() } else { reports.clone() })
            })
            .collect();
        let mut health = vec![Arc::new(Database(adapters.store.clone())) as Arc<dyn HealthCheck>];
        health.extend(adapters.health);
        let watch = settings.pressure.any().then(|| {
            health.push(pressure.clone());
            let outbox: Arc<dyn OutboxStore> = adapters.store.clone();
            Watch(tokio::spawn(pressure.watch(outbox, adapters.consumer.clone(), RoutingKey::SALES.to_vec())))
        });
        let parts = ServiceParts {
            name: "orderflow Sales API",
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
        let running = RunningService::start(parts)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("starting the Sales API on {}", settings.http_addr))?;
        Ok(Self { running, _watch: watch })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.running.addr().port()
    }

    /// Runs until SIGTERM or Ctrl-C, then settles the messages in flight (see [`RunningService`]).
    ///
    /// # Errors
    /// When the signal handler cannot be installed or the server panicked.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { running, _watch } = self;
        running.run_until_stopped().await.map_err(|e| anyhow::anyhow!(e))
    }
}

/// The back-pressure sampler, stopped with the service.
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Readiness of the store: it answers a cheap read.
struct Database(Arc<dyn SalesStore>);

#[async_trait::async_trait]
impl HealthCheck for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> bool {
        self.0.products(1, None).await.is_ok()
    }
}
