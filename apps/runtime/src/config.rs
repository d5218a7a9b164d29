//! What both service binaries share: their configuration read from the environment (one typed config,
//! with an error naming the variable that is missing or malformed) and the connections to the real
//! broker, cache and token issuer. There is no fallback: a binary that cannot reach a dependency says so
//! and does not start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::RoutingKey;
use orderflow_ports::BoxError;
use orderflow_ports::auth::TokenVerifier;
use orderflow_ports::rate_limit::RateLimiter;
use orderflow_ports::system::HealthCheck;

use crate::http::{RateLimitPolicy, RouteLimit};
use orderflow_adapters::auth::{JwksVerifier, VerifierSettings};
use orderflow_adapters::kafka::{KafkaAuditLog, KafkaSettings};
use orderflow_adapters::postgres::PgSettings;
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_adapters::redis::{ConnectionManager, RedisRateLimiter};

/// A configuration variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default: for log shippers).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// Reads variables through a lookup function, so tests need not touch the process environment.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    /// Variables from `lookup` (e.g. `|name| std::env::var(name).ok()`).
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    /// A variable that must be set and non-empty.
    ///
    /// # Errors
    /// [`ConfigError`] when it is missing or empty.
    pub fn required(&self, variable: &'static str) -> Result<String, ConfigError> {
        self.optional(variable).ok_or(ConfigError { variable, reason: "is required but not set".to_owned() })
    }

    /// A variable, if set and non-empty.
    pub fn optional(&self, variable: &str) -> Option<String> {
        (self.lookup)(variable).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// A variable parsed with `FromStr`, or `default` when unset.
    ///
    /// # Errors
    /// [`ConfigError`] when it does not parse.
    pub fn parsed<T: std::str::FromStr>(&self, variable: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(variable) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| ConfigError { variable, reason: format!("{raw:?}: {e}") }),
        }
    }

    /// A duration like `200ms` or `2s`, or `default` when unset.
    ///
    /// # Errors
    /// [`ConfigError`] when it does not parse.
    pub fn duration(&self, variable: &'static str, default: Option<Duration>) -> Result<Option<Duration>, ConfigError> {
        match self.optional(variable) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(&raw)
                .map(Some)
                .map_err(|e| ConfigError { variable, reason: format!("{raw:?}: {e} (use e.g. 200ms, 2s)") }),
        }
    }
}

/// Which service a configuration is for: it decides the default schema, address and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The Sales API.
    Sales,
    /// The Delivery API.
    Delivery,
}

impl Service {
    /// The schema, `OTEL_SERVICE_NAME` default and log name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sales => "sales",
            Self::Delivery => "delivery",
        }
    }

    /// The queues the service consumes.
    pub fn consumes(self) -> &'static [RoutingKey] {
        match self {
            Self::Sales => &RoutingKey::SALES,
            Self::Delivery => &RoutingKey::DELIVERY,
        }
    }

    /// The queues whose topology the service declares: the ones it consumes and the ones it publishes to.
    pub fn queues(self) -> Vec<RoutingKey> {
        match self {
            Self::Sales => RoutingKey::ALL.to_vec(),
            Self::Delivery => RoutingKey::ALL.into_iter().filter(|k| *k != RoutingKey::PaymentsRequested).collect(),
        }
    }
}

/// One entry of `RATE_LIMIT_ROUTES`: `METHOD PATH=PER_MINUTE/BURST`, e.g. `POST /orders=60/10` or
/// `* /orders/*/cancel=30/5` (`*` for any method; `*` in the path for one segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The method, or `*`.
    pub method: String,
    /// The path pattern.
    pub path: String,
    /// Requests per minute on average.
    pub per_minute: u32,
    /// Requests at once.
    pub burst: u32,
}

impl RouteRule {
    fn parse(raw: &str) -> Option<Self> {
        let (route, limit) = raw.trim().split_once('=')?;
        let (method, path) = route.trim().split_once(' ')?;
        let (per_minute, burst) = limit.trim().split_once('/')?;
        let path = path.trim();
        let method = method.trim();
        let valid =
            path.starts_with('/') && !method.is_empty() && method.chars().all(|c| c.is_ascii_alphabetic() || c == '*');
        valid.then_some(())?;
        Some(Self {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            per_minute: per_minute.trim().parse().ok().filter(|n| *n > 0)?,
            burst: burst.trim().parse().ok().filter(|n| *n > 0)?,
        })
    }
}

/// The configuration both binaries share (docs/design.md "Configuration and modes").
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Which service.
    pub service: Service,
    /// `HTTP_ADDR`.
    pub http_addr: SocketAddr,
    /// `DATABASE_URL`, `DATABASE_SCHEMA`, `DATABASE_POOL_SIZE`, `DATABASE_STATEMENT_TIMEOUT`, `DATABASE_MIGRATE`.
    pub database: PgSettings,
    /// `AMQP_URL`, `AMQP_PREFETCH`, `AMQP_RETRY_DELAYS` (comma-separated durations, one per retry level).
    pub amqp: RabbitSettings,
    /// `KAFKA_BROKERS`, `AUDIT_TOPIC`, `AUDIT_PARTITIONS`, `AUDIT_REPLICATION`.
    pub kafka: KafkaSettings,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `OAUTH_ISSUER`.
    pub oauth_issuer: String,
    /// `OAUTH_AUDIENCE`.
    pub oauth_audience: String,
    /// `RATE_LIMIT_PER_MINUTE`, `RATE_LIMIT_BURST`; `None` when the rate is 0.
    pub rate_limit: Option<(u32, u32)>,
    /// `RATE_LIMIT_ROUTES`: tighter per-client limits on some kinds of request.
    pub rate_limit_routes: Vec<RouteRule>,
    /// `RATE_LIMIT_POLICY` (`allow` or `deny` when Redis is down).
    pub rate_limit_policy: RateLimitPolicy,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

impl RuntimeConfig {
    /// Reads the shared variables.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or malformed.
    pub fn from_env(service: Service, env: &Env<'_>) -> Result<Self, ConfigError> {
        let default_addr = match service {
            Service::Sales => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Service::Delivery => SocketAddr::from(([127, 0, 0, 1], 8081)),
        };
        let mut database = PgSettings::new(env.required("DATABASE_URL")?, service.name());
        database.schema = env.optional("DATABASE_SCHEMA").unwrap_or(database.schema);
        database.pool_size = env.parsed("DATABASE_POOL_SIZE", database.pool_size)?;
        database.statement_timeout =
            env.duration("DATABASE_STATEMENT_TIMEOUT", Some(database.statement_timeout))?.unwrap_or_default();
        database.migrate = env.parsed("DATABASE_MIGRATE", true)?;
        let mut amqp = RabbitSettings::new(env.required("AMQP_URL")?);
        amqp.prefetch = env.parsed("AMQP_PREFETCH", amqp.prefetch)?;
        if let Some(raw) = env.optional("AMQP_RETRY_DELAYS") {
            amqp.retry_delays =
                raw.split(',')
                    .map(|d| humantime::parse_duration(d.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| ConfigError { variable: "AMQP_RETRY_DELAYS", reason: format!("{raw:?}: {e}") })?;
        }
        let mut kafka = KafkaSettings::new(env.required("KAFKA_BROKERS")?);
        kafka.topic = env.optional("AUDIT_TOPIC").unwrap_or(kafka.topic);
        kafka.partitions = env.parsed("AUDIT_PARTITIONS", kafka.partitions)?;
        kafka.replication = env.parsed("AUDIT_REPLICATION", kafka.replication)?;
        let per_minute: u32 = env.parsed("RATE_LIMIT_PER_MINUTE", 600)?;
        let burst: u32 = env.parsed("RATE_LIMIT_BURST", 50)?;
        let rate_limit_routes = env
            .optional("RATE_LIMIT_ROUTES")
            .map(|raw| {
                raw.split(',')
                    .filter(|entry| !entry.trim().is_empty())
                    .map(|entry| {
                        RouteRule::parse(entry).ok_or_else(|| ConfigError {
                            variable: "RATE_LIMIT_ROUTES",
                            reason: format!("{entry:?} is not METHOD PATH=PER_MINUTE/BURST (e.g. POST /orders=60/10)"),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let rate_limit_policy = match env.optional("RATE_LIMIT_POLICY").as_deref() {
            None | Some("allow") => RateLimitPolicy::Allow,
            Some("deny") => RateLimitPolicy::Deny,
            Some(other) => {
                return Err(ConfigError {
                    variable: "RATE_LIMIT_POLICY",
                    reason: format!("{other:?} is neither allow nor deny"),
                });
            }
        };
        let log_format = match env.optional("LOG_FORMAT").as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError {
                    variable: "LOG_FORMAT",
                    reason: format!("{other:?} is neither json nor pretty"),
                });
            }
        };
        Ok(Self {
            service,
            http_addr: env.parsed("HTTP_ADDR", default_addr)?,
            database,
            amqp,
            kafka,
            redis_url: env.required("REDIS_URL")?,
            oauth_issuer: env.required("OAUTH_ISSUER")?,
            oauth_audience: env.optional("OAUTH_AUDIENCE").unwrap_or_else(|| "orderflow".to_owned()),
            rate_limit: (per_minute > 0).then_some((per_minute, burst)),
            rate_limit_routes,
            rate_limit_policy,
            log_format,
        })
    }
}

/// Starts `tracing` with the configured format and `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,poem=warn,lapin=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The connections every service makes besides its own store.
pub struct Connections {
    /// RabbitMQ: publisher, consumer and dead-letter operations.
    pub broker: Arc<RabbitBroker>,
    /// Kafka: the audit stream.
    pub audit: Arc<KafkaAuditLog>,
    /// Redis, shared by the cache and the rate limiter; connects lazily, so the service starts (and
    /// reports not ready) while Redis is down.
    pub redis: ConnectionManager,
    /// Verifies bearer tokens against the issuer's JWKS.
    pub verifier: Arc<dyn TokenVerifier>,
    /// The per-client rate limiter, when configured.
    pub limiter: Option<Arc<dyn RateLimiter>>,
    /// The per-client limits of `RATE_LIMIT_ROUTES`, each counted on its own.
    pub routes: Vec<RouteLimit>,
    /// What `/health/ready` checks besides the store.
    pub health: Vec<Arc<dyn HealthCheck>>,
}

impl Connections {
    /// Connects to the broker (declaring its topology) and to Kafka (creating the audit topic when
    /// missing), and prepares Redis and the verifier.
    ///
    /// # Errors
    /// When RabbitMQ or Kafka is unreachable or a URL is malformed.
    pub async fn open(config: &RuntimeConfig) -> Result<Self, BoxError> {
        let broker = Arc::new(RabbitBroker::connect(config.amqp.clone(), &config.service.queues()).await?);
        let audit = Arc::new(KafkaAuditLog::connect(config.kafka.clone()).await?);
        let redis = orderflow_adapters::redis::connect_lazy(&config.redis_url)?;
        let verifier: Arc<dyn TokenVerifier> =
            Arc::new(JwksVerifier::new(&config.oauth_issuer, &config.oauth_audience, VerifierSettings::default())?);
        let limiter = config.rate_limit.map(|(per_minute, burst)| {
            // Each service counts its own requests: a client busy with one does not exhaust the other.
            let prefix = format!("orderflow:{}", config.service.name());
            Arc::new(RedisRateLimiter::new(redis.clone(), per_minute, burst, prefix)) as Arc<dyn RateLimiter>
        });
        let routes = config
            .rate_limit_routes
            .iter()
            .map(|rule| RouteLimit {
                method: rule.method.clone(),
                path: rule.path.clone(),
                limiter: Arc::new(RedisRateLimiter::new(
                    redis.clone(),
                    rule.per_minute,
                    rule.burst,
                    format!("orderflow:{}:{} {}", config.service.name(), rule.method, rule.path),
                )),
                burst: rule.burst,
            })
            .collect();
        let health: Vec<Arc<dyn HealthCheck>> = vec![
            Arc::new(BrokerHealth(Arc::clone(&broker))),
            Arc::new(AuditHealth(Arc::clone(&audit))),
            Arc::new(RedisHealth(redis.clone())),
        ];
        Ok(Self { broker, audit, redis, verifier, limiter, routes, health })
    }
}

struct BrokerHealth(Arc<RabbitBroker>);

#[async_trait]
impl HealthCheck for BrokerHealth {
    fn name(&self) -> &'static str {
        "broker"
    }

    async fn check(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.0.ping()).await.unwrap_or(false)
    }
}

struct AuditHealth(Arc<KafkaAuditLog>);

#[async_trait]
impl HealthCheck for AuditHealth {
    fn name(&self) -> &'static str {
        "audit"
    }

    async fn check(&self) -> bool {
        self.0.ping().await
    }
}

struct RedisHealth(ConnectionManager);

#[async_trait]
impl HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn check(&self) -> bool {
        orderflow_adapters::redis::ping(&self.0).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<RuntimeConfig, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let lookup = move |name: &str| vars.get(name).cloned();
        RuntimeConfig::from_env(Service::Sales, &Env::new(&lookup))
    }

    const MINIMAL: [(&str, &str); 5] = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1/orderflow"),
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ("KAFKA_BROKERS", "127.0.0.1:9092"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("OAUTH_ISSUER", "http://127.0.0.1:9000"),
    ];

    #[test]
    fn the_minimal_configuration_gets_the_documented_defaults() {
        let config = config(&MINIMAL).unwrap();
        assert_eq!(config.http_addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.database.schema, "sales");
        assert_eq!(config.oauth_audience, "orderflow");
        assert_eq!(config.amqp.retry_delays, [1, 5, 25].map(Duration::from_secs));
        assert_eq!(config.rate_limit, Some((600, 50)));
        assert_eq!(config.kafka.topic, "orders.audit");
        assert_eq!(config.kafka.partitions, 6);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn a_missing_variable_is_named() {
        for missing in ["DATABASE_URL", "AMQP_URL", "KAFKA_BROKERS", "REDIS_URL", "OAUTH_ISSUER"] {
            let vars: Vec<_> = MINIMAL.iter().copied().filter(|(k, _)| *k != missing).collect();
            assert_eq!(config(&vars).unwrap_err().variable, missing);
        }
    }

    #[test]
    fn a_malformed_variable_is_named() {
        for (variable, value) in [
            ("HTTP_ADDR", "localhost"),
            ("DATABASE_POOL_SIZE", "many"),
            ("DATABASE_STATEMENT_TIMEOUT", "5 parsecs"),
            ("AMQP_RETRY_DELAYS", "1s,soon"),
            ("AUDIT_PARTITIONS", "six"),
            ("RATE_LIMIT_PER_MINUTE", "-1"),
            ("RATE_LIMIT_POLICY", "maybe"),
            ("RATE_LIMIT_ROUTES", "POST /orders=sixty/10"),
            ("RATE_LIMIT_ROUTES", "/orders=60/10"),
            ("LOG_FORMAT", "xml"),
        ] {
            let mut vars = MINIMAL.to_vec();
            vars.push((variable, value));
            assert_eq!(config(&vars).unwrap_err().variable, variable, "{value}");
        }
    }

    #[test]
    fn route_limits_are_read_as_method_path_and_limit() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("RATE_LIMIT_ROUTES", "post /orders=60/10, * /orders/*/cancel=30/5"));
        let rules = config(&vars).unwrap().rate_limit_routes;
        assert_eq!(
            rules,
            [
                RouteRule { method: "POST".into(), path: "/orders".into(), per_minute: 60, burst: 10 },
                RouteRule { method: "*".into(), path: "/orders/*/cancel".into(), per_minute: 30, burst: 5 },
            ]
        );
    }

    #[test]
    fn a_rate_of_zero_turns_rate_limiting_off() {
        let mut vars = MINIMAL.to_vec();
        vars.push(("RATE_LIMIT_PER_MINUTE", "0"));
        assert_eq!(config(&vars).unwrap().rate_limit, None);
    }
}
