//! The configuration both services read, from the environment or the same-named flags: `--help` lists
//! every variable with its default, and a missing or malformed value is refused with its variable named.

use std::time::Duration;

use clap::{ArgAction, Args, Parser, ValueEnum};
use orderflow_adapters::kafka::KafkaSettings;
use orderflow_adapters::postgres::PgSettings;
use orderflow_adapters::rabbitmq::RabbitSettings;

use crate::http::RateLimitPolicy;
use crate::wiring::{Limits, Wiring};

/// Parses a binary's configuration from its flags and the environment, where a variable set to nothing
/// (`RATE_LIMIT_ROUTES=` in an env file) counts as unset, as shells and env files mean it; on a missing or
/// malformed value it prints the error, naming the variable, and exits.
pub fn parse<T: Parser>() -> T {
    let command = T::command().mut_args(|arg| {
        let blank =
            arg.get_env().and_then(std::env::var_os).is_some_and(|value| value.to_string_lossy().trim().is_empty());
        if blank { arg.env(None) } else { arg }
    });
    T::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
}

/// The required variables as flags, with the local services' addresses (as `.env.example` has them): for
/// tests of a configuration, which cannot set the process environment.
pub const LOCAL_REQUIRED: [&str; 5] = [
    "--database-url=postgres://postgres@127.0.0.1:5432/orderflow",
    "--amqp-url=amqp://guest:guest@127.0.0.1:5672/%2f",
    "--kafka-brokers=127.0.0.1:9092",
    "--redis-url=redis://127.0.0.1:6379",
    "--oauth-issuer=http://127.0.0.1:9000",
];

/// A service's configuration parsed from [`LOCAL_REQUIRED`] and `extra` flags: for tests of a
/// configuration, which cannot set the process environment.
pub trait ParseLocally: Parser {
    /// # Errors
    /// clap's, naming the flag and variable at fault.
    fn parse_locally(extra: &[&str]) -> Result<Self, clap::Error> {
        Self::try_parse_from(std::iter::once("service").chain(LOCAL_REQUIRED).chain(extra.iter().copied()))
    }
}

impl<C: Parser> ParseLocally for C {}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default: for log shippers).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

/// What to do with a request when the rate limiter cannot be asked (`RATE_LIMIT_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Let it through (availability over strictness).
    Allow,
    /// Refuse it with 503.
    Deny,
}

impl From<PolicyArg> for RateLimitPolicy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::Allow => Self::Allow,
            PolicyArg::Deny => Self::Deny,
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

impl std::str::FromStr for RouteRule {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let refused = || format!("{raw:?} is not METHOD PATH=PER_MINUTE/BURST (e.g. POST /orders=60/10)");
        let (route, limit) = raw.trim().split_once('=').ok_or_else(refused)?;
        let (method, path) = route.trim().split_once(' ').ok_or_else(refused)?;
        let (per_minute, burst) = limit.trim().split_once('/').ok_or_else(refused)?;
        let (method, path) = (method.trim(), path.trim());
        let valid =
            path.starts_with('/') && !method.is_empty() && method.chars().all(|c| c.is_ascii_alphabetic() || c == '*');
        let positive = |n: &str| n.trim().parse::<u32>().ok().filter(|n| *n > 0);
        match (valid, positive(per_minute), positive(burst)) {
            (true, Some(per_minute), Some(burst)) => {
                Ok(Self { method: method.to_ascii_uppercase(), path: path.to_owned(), per_minute, burst })
            }
            _ => Err(refused()),
        }
    }
}

/// A duration like `200ms` or `2s`.
///
/// # Errors
/// When `raw` is not one.
pub fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|e| format!("{e} (use e.g. 200ms, 2s)"))
}

/// The variables both services read (docs/design.md "Configuration"); each app adds its own.
#[derive(Debug, Clone, Args)]
pub struct SharedConfig {
    /// PostgreSQL, e.g. `postgres://postgres@127.0.0.1:5432/orderflow`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
    /// Server-side statement timeout.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub database_statement_timeout: Duration,
    /// Apply migrations at start, under an advisory lock (safe with replicas).
    #[arg(long, env = "DATABASE_MIGRATE", default_value_t = true, action = ArgAction::Set)]
    pub database_migrate: bool,
    /// RabbitMQ, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost is part of the URL).
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: String,
    /// Unacknowledged deliveries per queue, handled concurrently.
    #[arg(long, env = "AMQP_PREFETCH", default_value_t = 32)]
    pub amqp_prefetch: u16,
    /// TTLs of the retry levels `Q.retry.1..n`, comma-separated; every service must use the same.
    #[arg(long, env = "AMQP_RETRY_DELAYS", default_value = "1s,5s,25s", value_delimiter = ',', value_parser = duration)]
    pub amqp_retry_delays: Vec<Duration>,
    /// Kafka, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// The audit topic.
    #[arg(long, env = "AUDIT_TOPIC", default_value = "orders.audit")]
    pub audit_topic: String,
    /// Partitions of the audit topic, when the service creates it.
    #[arg(long, env = "AUDIT_PARTITIONS", default_value_t = 6)]
    pub audit_partitions: i32,
    /// Replication of the audit topic, when the service creates it.
    #[arg(long, env = "AUDIT_REPLICATION", default_value_t = 1)]
    pub audit_replication: i32,
    /// Redis, e.g. `redis://127.0.0.1:6379`.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// The token issuer, exactly as in the tokens' `iss`.
    #[arg(long, env = "OAUTH_ISSUER")]
    pub oauth_issuer: String,
    /// The audience tokens must name.
    #[arg(long, env = "OAUTH_AUDIENCE", default_value = "orderflow")]
    pub oauth_audience: String,
    /// Requests per minute per client and service; 0 turns rate limiting off.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_per_minute: u32,
    /// Requests a client may make at once.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,
    /// Tighter limits on some requests, comma-separated, e.g. `POST /orders=60/10, * /orders/*/cancel=30/5`.
    #[arg(long, env = "RATE_LIMIT_ROUTES", value_delimiter = ',')]
    pub rate_limit_routes: Vec<RouteRule>,
    /// What to do when Redis, which counts the requests, is down.
    #[arg(long, env = "RATE_LIMIT_POLICY", value_enum, default_value_t = PolicyArg::Allow)]
    pub rate_limit_policy: PolicyArg,
    /// How log lines are written.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

impl SharedConfig {
    /// The real servers these variables name, with the service's database `schema`.
    pub fn wiring(&self, schema: &str) -> Wiring {
        let mut database = PgSettings::new(&self.database_url, schema);
        database.pool_size = self.database_pool_size;
        database.statement_timeout = self.database_statement_timeout;
        database.migrate = self.database_migrate;
        let mut amqp = RabbitSettings::new(&self.amqp_url);
        amqp.prefetch = self.amqp_prefetch;
        amqp.retry_delays.clone_from(&self.amqp_retry_delays);
        let mut kafka = KafkaSettings::new(&self.kafka_brokers);
        kafka.topic.clone_from(&self.audit_topic);
        kafka.partitions = self.audit_partitions;
        kafka.replication = self.audit_replication;
        Wiring::real(
            database,
            amqp,
            kafka,
            self.redis_url.clone(),
            self.oauth_issuer.clone(),
            self.oauth_audience.clone(),
        )
        .with_limits(Limits {
            rate: (self.rate_limit_per_minute > 0).then_some((self.rate_limit_per_minute, self.rate_limit_burst)),
            routes: self.rate_limit_routes.clone(),
            policy: self.rate_limit_policy.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shared: SharedConfig,
    }

    fn parse(extra: &[&str]) -> Result<SharedConfig, clap::Error> {
        Cli::parse_locally(extra).map(|cli| cli.shared)
    }

    #[test]
    fn the_minimal_configuration_gets_the_documented_defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.oauth_audience, "orderflow");
        assert_eq!(config.amqp_retry_delays, [1, 5, 25].map(Duration::from_secs));
        assert_eq!((config.rate_limit_per_minute, config.rate_limit_burst), (600, 50));
        assert_eq!((config.audit_topic.as_str(), config.audit_partitions), ("orders.audit", 6));
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.database_migrate);
    }

    #[test]
    fn a_missing_variable_is_named() {
        for (i, variable) in
            ["DATABASE_URL", "AMQP_URL", "KAFKA_BROKERS", "REDIS_URL", "OAUTH_ISSUER"].iter().enumerate()
        {
            let args: Vec<&str> = LOCAL_REQUIRED.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
            let error = Cli::try_parse_from(std::iter::once("service").chain(args)).err().unwrap().to_string();
            assert!(error.contains(variable), "{variable}: {error}");
        }
    }

    #[test]
    fn a_malformed_variable_is_named() {
        for (variable, value) in [
            ("DATABASE_POOL_SIZE", "many"),
            ("DATABASE_STATEMENT_TIMEOUT", "5 parsecs"),
            ("DATABASE_MIGRATE", "perhaps"),
            ("AMQP_RETRY_DELAYS", "1s,soon"),
            ("AUDIT_PARTITIONS", "six"),
            ("RATE_LIMIT_PER_MINUTE", "-1"),
            ("RATE_LIMIT_POLICY", "maybe"),
            ("RATE_LIMIT_ROUTES", "POST /orders=sixty/10"),
            ("RATE_LIMIT_ROUTES", "/orders=60/10"),
            ("LOG_FORMAT", "xml"),
        ] {
            let flag = format!("--{}={value}", variable.to_ascii_lowercase().replace('_', "-"));
            let error = parse(&[&flag]).err().unwrap().to_string();
            assert!(error.contains(variable), "{variable}={value}: {error}");
        }
    }

    #[test]
    fn route_limits_are_read_as_method_path_and_limit() {
        let rules =
            parse(&["--rate-limit-routes=post /orders=60/10, * /orders/*/cancel=30/5"]).unwrap().rate_limit_routes;
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
        let wiring = parse(&["--rate-limit-per-minute=0"]).unwrap().wiring("sales");
        assert_eq!(wiring.limits.rate, None);
    }
}
