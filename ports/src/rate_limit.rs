//! The per-client rate limiter port.

use std::time::Duration;

use async_trait::async_trait;

use crate::BoxError;

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allowed {
        /// Requests left in the current window.
        remaining: u32,
    },
    /// Too many requests.
    Limited {
        /// When a request will be allowed again.
        retry_after: Duration,
    },
}

/// Why the limiter could not decide; the caller applies its configured policy (default: allow).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The backing store is unreachable.
    #[error("rate limiter unavailable")]
    Unexpected(#[source] BoxError),
}

/// Counts requests per client, atomically, across all replicas that share it.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one request from `client`'s allowance.
    ///
    /// # Errors
    /// [`RateLimitError::Unexpected`] when the limiter cannot decide.
    async fn check(&self, client: &str) -> Result<RateDecision, RateLimitError>;
}
