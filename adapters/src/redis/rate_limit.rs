//! The Redis per-client rate limiter: GCRA (a token bucket kept as one timestamp) in a Lua script, timed by the
//! Redis server's clock so every replica sharing the Redis enforces the same allowance.

use std::time::Duration;

use ::redis::Script;
use ::redis::aio::ConnectionManager;
use async_trait::async_trait;
use orderflow_ports::rate_limit::{RateDecision, RateLimitError, RateLimiter};

/// GCRA over the client's theoretical arrival time (TAT, µs on the server clock). KEYS[1] the client's key;
/// ARGV[1] the emission interval (µs per request), ARGV[2] the burst. Returns `{1, remaining}` when allowed
/// and `{0, µs until a request is allowed}` when limited. A script runs atomically, so concurrent checks of
/// one client are serialised; `TIME` inside a script is replicated by effects (Redis ≥ 5).
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + interval
local capacity = interval * burst
if new_tat - now > capacity then
  return {0, new_tat - now - capacity}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((capacity - (new_tat - now)) / interval)}
";

/// Allows `per_minute` requests per client on average with bursts up to `burst`, counted in Redis under
/// `{key_prefix}:rl:{client}`.
#[derive(Clone)]
pub struct RedisRateLimiter {
    connection: ConnectionManager,
    /// Microseconds between two requests at the sustained rate: one token's refill time.
    interval_us: u64,
    burst: u32,
    key_prefix: String,
    gcra: Script,
}

impl RedisRateLimiter {
    /// A limiter over `manager` of `per_minute` requests per client (at least 1) with bursts of `burst`
    /// (at least 1), under keys starting with `key_prefix` (`orderflow` in production; use one prefix per
    /// scope or route to give each its own limits; tests use a unique one each).
    pub fn new(manager: ConnectionManager, per_minute: u32, burst: u32, key_prefix: impl Into<String>) -> Self {
        Self {
            connection: manager,
            interval_us: (60_000_000 / u64::from(per_minute.max(1))).max(1),
            burst: burst.max(1),
            key_prefix: key_prefix.into(),
            gcra: Script::new(GCRA),
        }
    }

    fn key(&self, client: &str) -> String {
        format!("{}:rl:{client}", self.key_prefix)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError> {
        let mut connection = self.connection.clone();
        let (allowed, value): (i64, i64) = self
            .gcra
            .key(self.key(client))
            .arg(self.interval_us)
            .arg(self.burst)
            .invoke_async(&mut connection)
            .await
            .map_err(|error| RateLimitError::Unexpected(Box::new(error)))?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(if allowed == 1 {
            RateDecision::Allowed { remaining: u32::try_from(value).unwrap_or(u32::MAX) }
        } else {
            RateDecision::Limited { retry_after: Duration::from_micros(value) }
        })
    }
}
