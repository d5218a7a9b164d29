#![doc = include_str!("../README.md")]

pub mod config;
pub mod http;
pub mod service;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use orderflow_adapters::http::{AuthContext, HttpMetrics, RateLimitPolicy};
use orderflow_domain::RoutingKey;
use orderflow_ports::auth::TokenVerifier;
use orderflow_ports::delivery::DeliveryStore;
use orderflow_ports::messaging::{AuditLog, CommandConsumer, CommandPublisher, DeadLetterAdmin, MessageHandler};
use orderflow_ports::outbox::{OutboxRelay, RelaySettings};
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::system::{Clock, HealthCheck, IdGenerator};
use tokio::task::JoinHandle;

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
    /// Dependencies `/health/ready` checks besides the store.
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// Verifies bearer tokens.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Per-client rate limiting; `None` = off.
    pub limiter: Option<Arc<dyn RateLimiter>>,
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
    /// Ships and delivers by itself when set.
    pub autopilot: Option<AutopilotSettings>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            relay: RelaySettings::default(),
            rate_limit_policy: RateLimitPolicy::Allow,
            autopilot: None,
        }
    }
}

/// A running Delivery service: HTTP server, consumers and outbox relay. Dropping it stops them all.
pub struct Application {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    consumer: Arc<dyn CommandConsumer>,
}

impl Application {
    /// Binds the listener and starts the server, the consumers and the relay.
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be registered.
    pub async fn build(settings: DeliverySettings, adapters: DeliveryAdapters) -> anyhow::Result<Self> {
        let service = DeliveryService { store: adapters.store.clone(), clock: adapters.clock, ids: adapters.ids };
        let registry = prometheus::Registry::new();
        let metrics = HttpMetrics::register(&registry).context("registering HTTP metrics")?;
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding the Delivery API to {}", settings.http_addr))?;
        let addr = listener.local_addr()?;
        let auth =
            AuthContext { verifier: adapters.verifier, limiter: adapters.limiter, policy: settings.rate_limit_policy };
        let admin = http::Admin { dead_letters: adapters.dead_letters, health: adapters.health };
        let app = http::routes(service.clone(), auth, admin, metrics, registry, format!("http://{addr}"));

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            let acceptor = poem::listener::TcpAcceptor::from_tokio(listener);
            match acceptor {
                Ok(acceptor) => {
                    if let Err(error) = poem::Server::new_with_acceptor(acceptor).run(app).await {
                        tracing::error!(%error, "Delivery HTTP server stopped");
                    }
                }
                Err(error) => tracing::error!(%error, "Delivery HTTP listener unusable"),
            }
        }));
        let relay = OutboxRelay::new(adapters.store, adapters.publisher, adapters.audit, settings.relay);
        tasks.push(tokio::spawn(relay.run()));
        if let Some(autopilot) = settings.autopilot {
            tasks.push(tokio::spawn(workers::autopilot(service.clone(), autopilot)));
        }
        let handler: Arc<dyn MessageHandler> = Arc::new(OrderCommands { service });
        for queue in RoutingKey::DELIVERY {
            let handler = handler.clone();
            let consumer = adapters.consumer.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(error) = consumer.consume(queue, handler).await {
                    tracing::error!(%error, queue = queue.as_str(), "Delivery consumer stopped");
                }
            }));
        }
        tracing::info!(%addr, "Delivery API listening");
        Ok(Self { addr, tasks, consumer: adapters.consumer })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Runs until SIGTERM or Ctrl-C (or until the server task ends, which it normally does not). On a
    /// signal the consumers stop taking messages and settle those in flight (for up to
    /// [`SHUTDOWN_GRACE`]); anything cut off after that was not acked, so the broker delivers it again.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let Some(server) = self.tasks.first_mut() else { return Ok(()) };
        tokio::select! {
            result = server => {
                result.context("the HTTP server panicked")?;
            }
            signal = shutdown_signal() => {
                signal?;
                tracing::info!("shutting down: settling the messages in flight");
                if tokio::time::timeout(SHUTDOWN_GRACE, self.consumer.shutdown()).await.is_err() {
                    tracing::warn!("messages still in flight after {SHUTDOWN_GRACE:?}; the broker will redeliver them");
                }
            }
        }
        Ok(())
    }
}

/// How long a stopping service waits for the messages it is handling.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Resolves on SIGTERM (how orchestrators stop a container) or Ctrl-C.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
