//! Redis adapters: the single-order read cache and the per-client rate limiter, sharing one auto-reconnecting
//! connection manager that fails fast when Redis is down, so callers can fall back instead of hanging.

mod cache;
mod rate_limit;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use ::redis::aio::ConnectionManager;
use ::redis::aio::ConnectionManagerConfig;
pub use cache::RedisOrderCache;
use orderflow_ports::system::HealthCheck;
pub use rate_limit::RedisRateLimiter;

/// Longest a TCP connect + handshake to Redis may take before the attempt fails.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a single command (or script) may wait for its reply.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why Redis could not be reached or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConnectError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL")]
    InvalidUrl(#[source] ::redis::RedisError),
    /// The server refused, timed out or failed.
    #[error("Redis unreachable")]
    Unreachable(#[source] ::redis::RedisError),
}

/// The manager's settings: short timeouts and no retry inside a call, because every caller has a fallback
/// (the store for the cache, the configured policy for the limiter) and a request must not wait on a dead
/// Redis. The manager still reconnects by itself: each failed call starts a fresh attempt for the next one.
fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(0)
}

fn client(url: &str) -> Result<::redis::Client, RedisConnectError> {
    ::redis::Client::open(url).map_err(RedisConnectError::InvalidUrl)
}

/// Connects to `url` (`redis://host:port/db`) and returns a manager that reconnects on its own after a failure.
///
/// # Errors
/// [`RedisConnectError::InvalidUrl`] for a malformed URL; [`RedisConnectError::Unreachable`] when the first
/// connection fails, within [`CONNECTION_TIMEOUT`].
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisConnectError> {
    ConnectionManager::new_with_config(client(url)?, config()).await.map_err(RedisConnectError::Unreachable)
}

/// A manager for `url` that connects on first use, so a service can start (degraded) while Redis is down;
/// each command then fails fast until Redis is back, and the manager reconnects by itself.
///
/// # Errors
/// [`RedisConnectError::InvalidUrl`] for a malformed URL.
pub fn connect_lazy(url: &str) -> Result<ConnectionManager, RedisConnectError> {
    ConnectionManager::new_lazy_with_config(client(url)?, config()).map_err(RedisConnectError::InvalidUrl)
}

/// The Redis server behind a connection, as `/health/ready` reports it (`cache`: it backs the order cache
/// and the rate limiter's counters).
pub struct RedisHealth(pub ConnectionManager);

#[async_trait::async_trait]
impl HealthCheck for RedisHealth {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn check(&self) -> bool {
        ping(&self.0).await.is_ok()
    }
}

/// Checks that Redis answers, for readiness probes and the "Redis up" gauge.
///
/// # Errors
/// [`RedisConnectError::Unreachable`] when Redis does not answer `PING`.
pub async fn ping(manager: &ConnectionManager) -> Result<(), RedisConnectError> {
    let mut connection = manager.clone();
    ::redis::cmd("PING").query_async::<()>(&mut connection).await.map_err(RedisConnectError::Unreachable)
}
