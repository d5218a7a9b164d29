//! The Delivery service's configuration, read from the environment: the shared variables plus the
//! autopilot's.

use std::sync::Arc;

use orderflow_adapters::postgres::PgDeliveryStore;
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_ports::outbox::RelaySettings;
use orderflow_runtime::config::{ConfigError, Connections, Env, RuntimeConfig, Service};

use crate::workers::AutopilotSettings;
use crate::{Application, DeliveryAdapters, DeliverySettings};

/// Everything the `delivery-api` binary reads.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The variables both services share.
    pub runtime: RuntimeConfig,
    /// `AUTOPILOT_SHIP_AFTER` and `AUTOPILOT_DELIVER_AFTER`; off unless both are set.
    pub autopilot: Option<AutopilotSettings>,
}

impl DeliveryConfig {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let ship_after = env.duration("AUTOPILOT_SHIP_AFTER", None)?;
        let deliver_after = env.duration("AUTOPILOT_DELIVER_AFTER", None)?;
        let autopilot = match (ship_after, deliver_after) {
            (Some(ship_after), Some(deliver_after)) => Some(AutopilotSettings { ship_after, deliver_after }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError {
                    variable: "AUTOPILOT_DELIVER_AFTER",
                    reason: "must be set when AUTOPILOT_SHIP_AFTER is".to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    variable: "AUTOPILOT_SHIP_AFTER",
                    reason: "must be set when AUTOPILOT_DELIVER_AFTER is".to_owned(),
                });
            }
        };
        Ok(Self { runtime: RuntimeConfig::from_env(Service::Delivery, env)?, autopilot })
    }
}

impl Application {
    /// Connects the real adapters (PostgreSQL, RabbitMQ, Kafka, Redis, the issuer's JWKS) and starts the
    /// service. Nothing falls back to memory: a dependency that cannot be reached stops the start.
    ///
    /// # Errors
    /// When a dependency cannot be reached or the address cannot be bound.
    pub async fn connect(config: DeliveryConfig) -> anyhow::Result<Self> {
        let runtime = &config.runtime;
        let store = Arc::new(PgDeliveryStore::connect(&runtime.database).await?);
        let connections = Connections::open(runtime).await.map_err(|e| anyhow::anyhow!(e))?;
        let settings = DeliverySettings {
            http_addr: runtime.http_addr,
            relay: RelaySettings::default(),
            rate_limit_policy: runtime.rate_limit_policy,
            rate_limit_burst: runtime.rate_limit.map(|(_, burst)| burst),
            autopilot: config.autopilot,
        };
        let adapters = DeliveryAdapters {
            store,
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
