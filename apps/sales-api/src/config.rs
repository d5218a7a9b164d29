//! The Sales service's configuration, read from the environment: the shared variables plus the
//! simulated payment gateway's.

use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::postgres::PgSalesStore;
use orderflow_adapters::redis::RedisOrderCache;
use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_ports::outbox::RelaySettings;
use orderflow_runtime::config::{ConfigError, Connections, Env, RuntimeConfig, Service};

use crate::pressure::PressureLimits;
use crate::{Application, SalesAdapters, SalesSettings};

/// How long a cached order lives without being written again; writes keep it fresh, this only bounds
/// what a lost write-through could leave behind.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Everything the `sales-api` binary reads.
#[derive(Debug, Clone)]
pub struct SalesConfig {
    /// The variables both services share.
    pub runtime: RuntimeConfig,
    /// `PAYMENT_DECLINE_ABOVE_MINOR`, `PAYMENT_LATENCY`, `PAYMENT_TRANSIENT_FAILURE_RATE`.
    pub payment: PaymentSettings,
    /// `OUTBOX_BACKLOG_LIMIT`, `OUTBOX_MAX_AGE`, `QUEUE_BACKLOG_LIMIT`: back-pressure, off unless set.
    pub pressure: PressureLimits,
}

impl SalesConfig {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let defaults = PaymentSettings::default();
        let rate: f64 = env.parsed("PAYMENT_TRANSIENT_FAILURE_RATE", defaults.transient_failure_rate)?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError {
                variable: "PAYMENT_TRANSIENT_FAILURE_RATE",
                reason: format!("{rate} is not between 0 and 1"),
            });
        }
        Ok(Self {
            runtime: RuntimeConfig::from_env(Service::Sales, env)?,
            payment: PaymentSettings {
                decline_above_minor: env.parsed("PAYMENT_DECLINE_ABOVE_MINOR", defaults.decline_above_minor)?,
                latency: env.duration("PAYMENT_LATENCY", Some(defaults.latency))?.unwrap_or_default(),
                transient_failure_rate: rate,
            },
            pressure: PressureLimits {
                backlog: match env.optional("OUTBOX_BACKLOG_LIMIT") {
                    None => None,
                    Some(_) => Some(env.parsed("OUTBOX_BACKLOG_LIMIT", 0)?),
                },
                max_age: env.duration("OUTBOX_MAX_AGE", None)?,
                queued: match env.optional("QUEUE_BACKLOG_LIMIT") {
                    None => None,
                    Some(_) => Some(env.parsed("QUEUE_BACKLOG_LIMIT", 0)?),
                },
            },
        })
    }
}

impl Application {
    /// Connects the real adapters (PostgreSQL, RabbitMQ, Kafka, Redis, the issuer's JWKS) and starts the
    /// service. Nothing falls back to memory: a dependency that cannot be reached stops the start.
    ///
    /// # Errors
    /// When a dependency cannot be reached or the address cannot be bound.
    pub async fn connect(config: SalesConfig) -> anyhow::Result<Self> {
        let runtime = &config.runtime;
        let store = Arc::new(PgSalesStore::connect(&runtime.database).await?);
        let connections = Connections::open(runtime).await.map_err(|e| anyhow::anyhow!(e))?;
        let settings = SalesSettings {
            http_addr: runtime.http_addr,
            relay: RelaySettings::default(),
            rate_limit_policy: runtime.rate_limit_policy,
            rate_limit_burst: runtime.rate_limit.map(|(_, burst)| burst),
            pressure: config.pressure,
        };
        let adapters = SalesAdapters {
            store,
            cache: Arc::new(RedisOrderCache::new(connections.redis.clone(), CACHE_TTL, "orderflow")),
            payments: Arc::new(SimulatedPaymentGateway::new(config.payment)),
            publisher: connections.broker.clone(),
            consumer: connections.broker.clone(),
            audit: connections.audit,
            dead_letters: connections.broker,
            health: connections.health,
            verifier: connections.verifier,
            limiter: connections.limiter,
            route_limits: connections.routes,
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Ids),
        };
        Self::build(settings, adapters).await
    }
}
