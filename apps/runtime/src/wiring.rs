//! Which adapter backs each port the services have in common, and opening them. A service's builder is
//! given a [`Wiring`] that names, per port, memory or a real server: the binaries name the real ones,
//! `orderflow dev` and the in-process tests memory; everything after the choice is the same code.

use std::sync::Arc;
use std::time::Duration;

use orderflow_adapters::auth::{JwksVerifier, VerifierSettings};
use orderflow_adapters::kafka::{KafkaAuditLog, KafkaSettings};
use orderflow_adapters::memory::{InMemoryAuditLog, InMemoryBus, InMemoryOrderCache, InMemoryRateLimiter};
use orderflow_adapters::postgres::PgSettings;
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_adapters::redis::{ConnectionManager, RedisHealth, RedisOrderCache, RedisRateLimiter};
use orderflow_messages::RoutingKey;
use orderflow_ports::BoxError;
use orderflow_ports::cache::OrderCache;
use orderflow_ports::messaging::{AuditLog, CommandConsumer, CommandPublisher, DeadLetterAdmin};
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::system::HealthCheck;

use crate::config::RouteRule;
use crate::http::{AuthContext, RateLimitPolicy, RouteLimit};

/// Where a service keeps its state.
#[derive(Debug, Clone)]
pub enum Store {
    /// In process memory, lost when it stops.
    Memory,
    /// PostgreSQL, in the settings' schema.
    Postgres(PgSettings),
}

/// What carries commands between the services.
#[derive(Clone)]
pub enum Broker {
    /// An in-process bus, shared by the services of one process.
    Memory(Arc<InMemoryBus>),
    /// RabbitMQ.
    RabbitMq(RabbitSettings),
}

/// Where audit records go.
#[derive(Clone)]
pub enum Audit {
    /// An in-process log, shared by the services of one process.
    Memory(Arc<InMemoryAuditLog>),
    /// Kafka.
    Kafka(KafkaSettings),
}

/// What keeps the order cache and the rate-limit counters.
#[derive(Debug, Clone)]
pub enum Counters {
    /// Process memory: each replica counts on its own.
    Memory,
    /// Redis at this URL, shared by every replica.
    Redis(String),
}

/// Per-client rate limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per minute and burst; `None` = off.
    pub rate: Option<(u32, u32)>,
    /// Tighter limits on some requests, each counted on its own.
    pub routes: Vec<RouteRule>,
    /// What to do when the counters cannot be asked.
    pub policy: RateLimitPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self { rate: None, routes: Vec::new(), policy: RateLimitPolicy::Allow }
    }
}

/// The adapter of each port a service shares with the other, and the issuer whose tokens it trusts.
#[derive(Clone)]
pub struct Wiring {
    /// The service's store.
    pub store: Store,
    /// Commands in and out.
    pub broker: Broker,
    /// The audit stream.
    pub audit: Audit,
    /// Cache and rate-limit counters.
    pub counters: Counters,
    /// The issuer (`OAUTH_ISSUER`): tokens are verified against its JWKS whatever else is in memory.
    pub issuer: String,
    /// The audience tokens must name.
    pub audience: String,
    /// Per-client rate limits.
    pub limits: Limits,
}

impl Wiring {
    /// Every port on its real server.
    pub fn real(
        database: PgSettings,
        amqp: RabbitSettings,
        kafka: KafkaSettings,
        redis_url: String,
        issuer: String,
        audience: String,
    ) -> Self {
        Self {
            store: Store::Postgres(database),
            broker: Broker::RabbitMq(amqp),
            audit: Audit::Kafka(kafka),
            counters: Counters::Redis(redis_url),
            issuer,
            audience,
            limits: Limits::default(),
        }
    }

    /// Every port in memory, on a bus and audit log the caller shares between its services.
    pub fn in_memory(bus: Arc<InMemoryBus>, audit: Arc<InMemoryAuditLog>, issuer: String, audience: String) -> Self {
        Self {
            store: Store::Memory,
            broker: Broker::Memory(bus),
            audit: Audit::Memory(audit),
            counters: Counters::Memory,
            issuer,
            audience,
            limits: Limits::default(),
        }
    }

    /// The same, with these rate limits.
    #[must_use]
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }

    /// Opens the shared ports for the service `name` (which prefixes its rate-limit counters), declaring
    /// the topology of `queues` on a real broker and creating the audit topic when missing.
    ///
    /// # Errors
    /// When RabbitMQ or Kafka is unreachable or a URL is malformed. Redis connects lazily: the service
    /// starts, and reports not ready, while it is down.
    pub async fn connect(&self, name: &str, queues: &[RoutingKey]) -> Result<Connected, BoxError> {
        let mut health: Vec<Arc<dyn HealthCheck>> = Vec::new();
        let (publisher, consumer, dead_letters): (
            Arc<dyn CommandPublisher>,
            Arc<dyn CommandConsumer>,
            Arc<dyn DeadLetterAdmin>,
        ) = match &self.broker {
            Broker::Memory(bus) => (bus.clone(), bus.clone(), bus.clone()),
            Broker::RabbitMq(settings) => {
                let broker = Arc::new(RabbitBroker::connect(settings.clone(), queues).await?);
                health.push(broker.clone());
                (broker.clone(), broker.clone(), broker)
            }
        };
        let audit: Arc<dyn AuditLog> = match &self.audit {
            Audit::Memory(log) => log.clone(),
            Audit::Kafka(settings) => {
                let log = Arc::new(KafkaAuditLog::connect(settings.clone()).await?);
                health.push(log.clone());
                log
            }
        };
        let redis = match &self.counters {
            Counters::Memory => None,
            Counters::Redis(url) => {
                let redis = orderflow_adapters::redis::connect_lazy(url)?;
                health.push(Arc::new(RedisHealth(redis.clone())));
                Some(redis)
            }
        };
        // Each service counts its own requests: a client busy with one does not exhaust the other.
        let limiter_for = |per_minute: u32, burst: u32, prefix: String| -> Arc<dyn RateLimiter> {
            match &redis {
                None => Arc::new(InMemoryRateLimiter::new(per_minute, burst)),
                Some(redis) => Arc::new(RedisRateLimiter::new(redis.clone(), per_minute, burst, prefix)),
            }
        };
        let limiter =
            self.limits.rate.map(|(per_minute, burst)| limiter_for(per_minute, burst, format!("orderflow:{name}")));
        let routes = self
            .limits
            .routes
            .iter()
            .map(|rule| RouteLimit {
                method: rule.method.clone(),
                path: rule.path.clone(),
                limiter: limiter_for(
                    rule.per_minute,
                    rule.burst,
                    format!("orderflow:{name}:{} {}", rule.method, rule.path),
                ),
                burst: rule.burst,
            })
            .collect();
        let verifier = Arc::new(JwksVerifier::new(&self.issuer, &self.audience, VerifierSettings::default())?);
        Ok(Connected {
            publisher,
            consumer,
            dead_letters,
            audit,
            redis,
            auth: AuthContext { verifier, limiter, routes, policy: self.limits.policy },
            rate_limit_burst: self.limits.rate.map(|(_, burst)| burst),
            health,
            issuer: self.issuer.clone(),
        })
    }
}

/// The shared ports, open.
pub struct Connected {
    /// Where commands go.
    pub publisher: Arc<dyn CommandPublisher>,
    /// Where commands come from.
    pub consumer: Arc<dyn CommandConsumer>,
    /// The dead-letter queues.
    pub dead_letters: Arc<dyn DeadLetterAdmin>,
    /// The audit stream.
    pub audit: Arc<dyn AuditLog>,
    redis: Option<ConnectionManager>,
    /// Token verification and rate limits.
    pub auth: AuthContext,
    /// The rate limit's burst, for the `RateLimit-Limit` header; `None` when rate limiting is off.
    pub rate_limit_burst: Option<u32>,
    /// What `/health/ready` checks besides the store.
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// The issuer whose tokens are trusted (`OAUTH_ISSUER`), named in the OpenAPI documents.
    pub issuer: String,
}

impl Connected {
    /// A single-order read cache on the counters' server, whose entries live `ttl` without a write.
    pub fn order_cache(&self, ttl: Duration) -> Arc<dyn OrderCache> {
        match &self.redis {
            None => Arc::new(InMemoryOrderCache::new()),
            Some(redis) => Arc::new(RedisOrderCache::new(redis.clone(), ttl, "orderflow")),
        }
    }
}
