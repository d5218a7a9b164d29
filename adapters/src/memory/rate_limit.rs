//! The in-memory per-client rate limiter: a token bucket per client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_ports::rate_limit::{RateDecision, RateLimitError, RateLimiter};

use super::lock;

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// Allows `per_minute` requests per client on average, with bursts up to `burst`.
pub struct InMemoryRateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl InMemoryRateLimiter {
    /// A limiter of `per_minute` requests per client with bursts of `burst` (at least 1).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RateLimiter for InMemoryRateLimiter {
    async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry(client.to_owned()).or_insert(Bucket { tokens: self.burst, refilled_at: now });
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            // Truncation is intended: a partly refilled token is not a request.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let remaining = bucket.tokens.floor() as u32;
            Ok(RateDecision::Allowed { remaining })
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second.max(f64::MIN_POSITIVE);
            // The exact time until a request is allowed, as the Redis limiter says; rounding it up to whole
            // seconds is the HTTP layer's business (`Retry-After`).
            Ok(RateDecision::Limited { retry_after: Duration::from_secs_f64(wait.min(3600.0)) })
        }
    }
}
