//! The Redis adapters against a real server (`TEST_REDIS_URL`, else 127.0.0.1:6379), each test under its own
//! key prefix, deleted at the end: the order-cache and rate-limiter contract suites, then what only Redis
//! has (expiry, entries another build wrote, key prefixes), and against a port nothing listens on, the
//! Redis-down behaviour.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use orderflow_domain::{Address, Currency, CustomerId, Money, Order, OrderId, OrderRequest, Quantity, RawAddress, Sku};
use orderflow_ports::cache::{CacheError, OrderCache};
use orderflow_ports::rate_limit::{RateDecision, RateLimitError, RateLimiter};
use orderflow_ports::system::HealthCheck;
use uuid::Uuid;

use crate::contract::rate_limit::LimiterFixture;

use super::{RedisConnectError, RedisHealth, RedisOrderCache, RedisRateLimiter, connect, connect_lazy, ping};

/// Nothing listens on port 1, so connections are refused at once: Redis "down" without stopping the shared one.
const DEAD_REDIS: &str = "redis://127.0.0.1:1";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection and a key prefix of one test's own; [`TestRedis::clean_up`] deletes every key under it.
struct TestRedis {
    manager: ConnectionManager,
    prefix: String,
}

impl TestRedis {
    async fn new() -> Self {
        let manager = connect(&redis_url()).await.expect("the test Redis answers");
        Self { manager, prefix: format!("orderflow-test-{}", Uuid::new_v4().simple()) }
    }

    fn cache(&self, ttl: Duration) -> RedisOrderCache {
        RedisOrderCache::new(self.manager.clone(), ttl, &self.prefix)
    }

    fn limiter(&self, per_minute: u32, burst: u32) -> RedisRateLimiter {
        RedisRateLimiter::new(self.manager.clone(), per_minute, burst, &self.prefix)
    }

    /// Deletes the test's keys with SCAN + DEL (never `KEYS`, never `FLUSHDB`: other tests share the server).
    async fn clean_up(self) {
        let mut connection = self.manager.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("SCAN");
            if !keys.is_empty() {
                let _: i64 = ::redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.expect("DEL");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// Deletes every key under a prefix when dropped, from a thread of its own (a drop cannot await, and may run
/// inside the test's runtime).
struct PrefixCleanup {
    prefix: String,
}

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let manager = connect(&redis_url()).await.expect("the test Redis answers");
                TestRedis { manager, prefix }.clean_up().await;
            });
        })
        .join();
        if cleaned.is_err() {
            eprintln!("could not delete the test keys under {}", self.prefix);
        }
    }
}

/// A Redis cache under a prefix of its own, deleted when dropped.
struct IsolatedCache {
    cache: RedisOrderCache,
    _cleanup: PrefixCleanup,
}

impl IsolatedCache {
    async fn new() -> Self {
        let redis = TestRedis::new().await;
        let cache = redis.cache(Duration::from_secs(60));
        Self { cache, _cleanup: PrefixCleanup { prefix: redis.prefix } }
    }
}

#[async_trait]
impl OrderCache for IsolatedCache {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, CacheError> {
        self.cache.get(id).await
    }
    async fn put_if_newer(&self, order: &Order) -> Result<(), CacheError> {
        self.cache.put_if_newer(order).await
    }
    async fn put_all_if_newer(&self, orders: &[Order]) -> Result<(), CacheError> {
        self.cache.put_all_if_newer(orders).await
    }
    async fn invalidate(&self, id: OrderId) -> Result<(), CacheError> {
        self.cache.invalidate(id).await
    }
}

mod cache_contract {
    crate::order_cache_contract!(|| async { super::IsolatedCache::new().await });
}

/// Redis limiters, each under a prefix of its own, all deleted when the fixture is dropped.
struct RedisLimiters {
    manager: ConnectionManager,
    prefix: String,
    _cleanup: PrefixCleanup,
    made: AtomicU32,
}

impl RedisLimiters {
    async fn new() -> Self {
        let redis = TestRedis::new().await;
        let cleanup = PrefixCleanup { prefix: redis.prefix.clone() };
        Self { manager: redis.manager, prefix: redis.prefix, _cleanup: cleanup, made: AtomicU32::new(0) }
    }
}

impl LimiterFixture for RedisLimiters {
    fn limiter(&self, per_minute: u32, burst: u32) -> Arc<dyn RateLimiter> {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}:{n}", self.prefix);
        Arc::new(RedisRateLimiter::new(self.manager.clone(), per_minute, burst, prefix))
    }
}

mod rate_limiter_contract {
    crate::rate_limiter_contract!(|| async { super::RedisLimiters::new().await });
}

fn an_order() -> Order {
    let address = Address::parse(RawAddress {
        name: "Ada Lovelace",
        line1: "1 Main St",
        line2: None,
        city: "Berlin",
        postal_code: "10115",
        country: "DE",
    })
    .unwrap();
    let request = OrderRequest::new(
        CustomerId::parse("cust-42").unwrap(),
        vec![(Sku::parse("SKU-1").unwrap(), Quantity::new(2).unwrap())],
        address,
    )
    .unwrap();
    let price = Money::new(1999, Currency::parse("EUR").unwrap()).unwrap();
    Order::place(OrderId::from_uuid(Uuid::now_v7()), request, |_| Some(price), Utc::now().trunc_subsecs(6)).unwrap().0
}

// --- the order cache, beyond the contract --------------------------------------------------------------------

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_millis(200));
    let order = an_order();
    cache.put_if_newer(&order).await.unwrap();
    assert!(cache.get(order.id).await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(cache.get(order.id).await.unwrap(), None);
    redis.clean_up().await;
}

/// A batch is written with the version-comparing script even when the server has forgotten it (a restart,
/// `SCRIPT FLUSH`): the pipeline loads it first.
#[tokio::test]
async fn a_batch_is_stored_after_the_server_forgot_its_scripts() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_secs(60));
    let orders = [an_order(), an_order()];
    // Other tests' scripts are reloaded by their own invocations, which load on a miss.
    let () =
        ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut redis.manager.clone()).await.expect("scripts flushed");

    cache.put_all_if_newer(&orders).await.expect("the batch is written");

    for order in &orders {
        assert_eq!(cache.get(order.id).await.expect("the cache answers").as_ref(), Some(order));
    }
    redis.clean_up().await;
}

#[tokio::test]
async fn an_undecodable_entry_is_a_miss_and_is_dropped() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_secs(60));
    let order = an_order();
    let key = format!("{}:order:{}", redis.prefix, order.id);
    let mut connection = redis.manager.clone();
    let _: i64 = ::redis::cmd("HSET")
        .arg(&key)
        .arg("version")
        .arg(7)
        .arg("order")
        .arg("{\"not\":\"an order\"}")
        .query_async(&mut connection)
        .await
        .unwrap();

    assert_eq!(cache.get(order.id).await.unwrap(), None);
    cache.put_if_newer(&order).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), Some(order), "the dropped entry no longer blocks version 1");
    redis.clean_up().await;
}

// --- the rate limiter, beyond the contract -------------------------------------------------------------------

#[tokio::test]
async fn limiters_under_different_prefixes_count_separately() {
    let redis = TestRedis::new().await;
    let reads = redis.limiter(60, 1);
    let writes = RedisRateLimiter::new(redis.manager.clone(), 60, 1, format!("{}:writes", redis.prefix));

    assert!(matches!(reads.check("a").await.unwrap(), RateDecision::Allowed { .. }));
    assert!(matches!(writes.check("a").await.unwrap(), RateDecision::Allowed { .. }));
    assert!(matches!(reads.check("a").await.unwrap(), RateDecision::Limited { .. }));
    redis.clean_up().await;
}

// --- connecting, and Redis down ------------------------------------------------------------------------------

#[tokio::test]
async fn a_lazily_connected_manager_works_and_pings() {
    let manager = connect_lazy(&redis_url()).unwrap();
    ping(&manager).await.unwrap();
    let prefix = format!("orderflow-test-{}", Uuid::new_v4().simple());
    let cache = RedisOrderCache::new(manager.clone(), Duration::from_secs(60), &prefix);
    let order = an_order();
    cache.put_if_newer(&order).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), Some(order));
    TestRedis { manager, prefix }.clean_up().await;
}

#[tokio::test]
async fn readiness_reports_redis_as_cache_up_only_while_it_answers() {
    let up = RedisHealth(connect_lazy(&redis_url()).unwrap());
    let down = RedisHealth(connect_lazy(DEAD_REDIS).unwrap());

    assert_eq!(up.name(), "cache");
    assert!(up.check().await);
    assert!(!down.check().await);
}

#[tokio::test]
async fn a_malformed_url_is_refused() {
    assert!(matches!(connect_lazy("http://nope").unwrap_err(), RedisConnectError::InvalidUrl(_)));
    assert!(matches!(connect("nope").await.unwrap_err(), RedisConnectError::InvalidUrl(_)));
}

#[tokio::test]
async fn connecting_to_a_dead_redis_fails_fast() {
    let started = Instant::now();

    let error = connect(DEAD_REDIS).await.unwrap_err();

    assert!(matches!(error, RedisConnectError::Unreachable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn with_redis_down_every_call_fails_fast_with_unexpected_and_nothing_panics() {
    let manager = connect_lazy(DEAD_REDIS).unwrap();
    let cache = RedisOrderCache::new(manager.clone(), Duration::from_secs(60), "orderflow-test-down");
    let limiter = RedisRateLimiter::new(manager.clone(), 60, 3, "orderflow-test-down");
    let order = an_order();

    // Several rounds: the manager keeps trying to reconnect and must stay quick and well-behaved.
    for _ in 0..3 {
        let started = Instant::now();
        assert!(matches!(cache.get(order.id).await, Err(CacheError::Unexpected(_))));
        assert!(matches!(cache.put_if_newer(&order).await, Err(CacheError::Unexpected(_))));
        assert!(matches!(cache.invalidate(order.id).await, Err(CacheError::Unexpected(_))));
        assert!(matches!(limiter.check("a").await, Err(RateLimitError::Unexpected(_))));
        assert!(matches!(ping(&manager).await, Err(RedisConnectError::Unreachable(_))));
        assert!(started.elapsed() < Duration::from_secs(3), "a round took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_redis_that_accepts_but_never_answers_times_out_instead_of_hanging() {
    // A listener that takes connections and never replies: a hung server, or a network that drops replies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let manager = connect_lazy(&url).unwrap();
    let cache = RedisOrderCache::new(manager.clone(), Duration::from_secs(60), "orderflow-test-hung");
    let limiter = RedisRateLimiter::new(manager, 60, 3, "orderflow-test-hung");
    let started = Instant::now();

    assert!(matches!(cache.get(OrderId::from_uuid(Uuid::now_v7())).await, Err(CacheError::Unexpected(_))));
    assert!(matches!(limiter.check("a").await, Err(RateLimitError::Unexpected(_))));

    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    hold.abort();
}
