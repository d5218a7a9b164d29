//! The `RateLimiter` contract: a burst per client, then limited for as long as one request's refill takes,
//! refilling at the configured rate, and exact under concurrency. Each check makes fresh limiters through a
//! [`LimiterFixture`].

use std::sync::Arc;
use std::time::Duration;

use orderflow_ports::rate_limit::{RateDecision, RateLimiter};

/// Makes the limiters of one check.
pub trait LimiterFixture: Send + Sync {
    /// A limiter of `per_minute` requests per client on average with bursts of `burst`, sharing no counts
    /// with any other limiter (also of other checks). The fixture cleans up when dropped.
    fn limiter(&self, per_minute: u32, burst: u32) -> Arc<dyn RateLimiter>;
}

async fn check(limiter: &dyn RateLimiter, client: &str) -> RateDecision {
    limiter.check(client).await.expect("the limiter decides")
}

/// A burst is allowed with the remaining allowance counting down, the next request is limited for about
/// one request's refill time, and another client still has its whole burst.
pub async fn a_burst_is_allowed_then_limited_for_one_requests_refill_and_other_clients_are_unaffected(
    fixture: Arc<dyn LimiterFixture>,
) {
    let limiter = fixture.limiter(60, 3);

    for remaining in [2, 1, 0] {
        assert_eq!(check(limiter.as_ref(), "a").await, RateDecision::Allowed { remaining });
    }
    let RateDecision::Limited { retry_after } = check(limiter.as_ref(), "a").await else {
        panic!("the fourth request in a burst of three must be limited");
    };

    // One request refills in 1 s at 60/min; a little of it has passed since the burst.
    assert!(retry_after > Duration::from_millis(800) && retry_after <= Duration::from_secs(1), "{retry_after:?}");
    assert_eq!(check(limiter.as_ref(), "b").await, RateDecision::Allowed { remaining: 2 }, "b has its own burst");
}

/// Requests refill at the configured rate, up to the burst and no further; the retry-after of a limited
/// request is when the next one is allowed.
pub async fn requests_refill_at_the_configured_rate_up_to_the_burst(fixture: Arc<dyn LimiterFixture>) {
    let limiter = fixture.limiter(600, 2); // one request per 100 ms
    let limiter = limiter.as_ref();
    check(limiter, "a").await;
    check(limiter, "a").await;
    let RateDecision::Limited { retry_after } = check(limiter, "a").await else {
        panic!("the burst is spent");
    };
    assert!(retry_after > Duration::from_millis(20) && retry_after <= Duration::from_millis(100), "{retry_after:?}");

    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    assert_eq!(check(limiter, "a").await, RateDecision::Allowed { remaining: 0 }, "one request refilled");
    assert!(matches!(check(limiter, "a").await, RateDecision::Limited { .. }), "and only one");

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(check(limiter, "a").await, RateDecision::Allowed { remaining: 1 }, "refilled to the burst, not beyond");
}

/// A hundred concurrent checks of one client allow exactly the burst.
pub async fn concurrent_checks_allow_exactly_the_burst(fixture: Arc<dyn LimiterFixture>) {
    let limiter = fixture.limiter(1, 10); // one request per minute: nothing refills during the check

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.check("busy").await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let decision = task.await.expect("the check did not panic").expect("the limiter decides");
        if matches!(decision, RateDecision::Allowed { .. }) {
            allowed += 1;
        }
    }

    assert_eq!(allowed, 10);
}

/// The in-memory limiter as a [`LimiterFixture`]: each limiter counts on its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct InMemoryLimiterFixture;

impl LimiterFixture for InMemoryLimiterFixture {
    fn limiter(&self, per_minute: u32, burst: u32) -> Arc<dyn RateLimiter> {
        Arc::new(crate::memory::InMemoryRateLimiter::new(per_minute, burst))
    }
}
