//! The Redis adapters against a real server (`TEST_REDIS_URL`, else 127.0.0.1:6379), each test under its own
//! key prefix, deleted at the end; and against a port nothing listens on, for the Redis-down behaviour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use chrono::{SubsecRound, Utc};
use orderflow_domain::{
    Address, Currency, CustomerId, Money, Order, OrderId, OrderRequest, OrderStatus, Quantity, RawAddress, Sku,
};
use orderflow_ports::cache::{CacheError, OrderCache};
use orderflow_ports::rate_limit::{RateDecision, RateLimitError, RateLimiter};
use rand::seq::SliceRandom;
use uuid::Uuid;

use super::{RedisConnectError, RedisOrderCache, RedisRateLimiter, connect, connect_lazy, ping};

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

fn at_version(order: &Order, version: u32) -> Order {
    Order { version, ..order.clone() }
}

// --- the order cache -----------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cached_order_reads_back_equal_and_an_unknown_one_is_a_miss() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_secs(60));
    let order = an_order();

    cache.put_if_newer(&order).await.unwrap();

    assert_eq!(cache.get(order.id).await.unwrap(), Some(order));
    assert_eq!(cache.get(OrderId::from_uuid(Uuid::now_v7())).await.unwrap(), None);
    redis.clean_up().await;
}

#[tokio::test]
async fn put_if_newer_never_replaces_a_newer_version_with_an_older_or_equal_one() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_secs(60));
    let order = an_order();
    let v2 = Order { status: OrderStatus::PendingShipment, ..at_version(&order, 2) };

    cache.put_if_newer(&v2).await.unwrap();
    cache.put_if_newer(&at_version(&order, 1)).await.unwrap();
    cache.put_if_newer(&Order { status: OrderStatus::Cancelled, ..at_version(&order, 2) }).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), Some(v2), "older and equal versions must not replace v2");

    let v3 = Order { status: OrderStatus::Shipped, ..at_version(&order, 3) };
    cache.put_if_newer(&v3).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), Some(v3), "a newer version replaces the cached one");
    redis.clean_up().await;
}

#[tokio::test]
async fn concurrent_puts_in_random_order_leave_the_newest_version_cached() {
    let redis = TestRedis::new().await;
    let cache = Arc::new(redis.cache(Duration::from_secs(60)));
    let order = an_order();
    let mut versions: Vec<u32> = (1..=50).collect();
    versions.shuffle(&mut rand::rng());

    let tasks: Vec<_> = versions
        .into_iter()
        .map(|version| {
            let (cache, order) = (Arc::clone(&cache), at_version(&order, version));
            tokio::spawn(async move { cache.put_if_newer(&order).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    assert_eq!(cache.get(order.id).await.unwrap().map(|cached| cached.version), Some(50));
    redis.clean_up().await;
}

#[tokio::test]
async fn a_read_right_after_each_write_sees_it_even_while_stale_readers_put_older_states() {
    let redis = TestRedis::new().await;
    let cache = Arc::new(redis.cache(Duration::from_secs(60)));
    let mut order = an_order();

    for version in 2..=1001 {
        // A reader that loaded the previous state from the store races the writer's write-through.
        let stale = at_version(&order, version - 1);
        let reader = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.put_if_newer(&stale).await })
        };
        order.version = version;
        cache.put_if_newer(&order).await.unwrap();

        let seen = cache.get(order.id).await.unwrap().map(|cached| cached.version);
        assert_eq!(seen, Some(version), "a read right after committing v{version} must see it");
        reader.await.unwrap().unwrap();
        assert_eq!(cache.get(order.id).await.unwrap().map(|cached| cached.version), Some(version));
    }
    redis.clean_up().await;
}

#[tokio::test]
async fn invalidate_drops_the_entry_and_the_next_put_repopulates_it() {
    let redis = TestRedis::new().await;
    let cache = redis.cache(Duration::from_secs(60));
    let order = an_order();
    cache.put_if_newer(&order).await.unwrap();

    cache.invalidate(order.id).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), None);
    cache.invalidate(order.id).await.unwrap();

    cache.put_if_newer(&order).await.unwrap();
    assert_eq!(cache.get(order.id).await.unwrap(), Some(order));
    redis.clean_up().await;
}

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

// --- the rate limiter ----------------------------------------------------------------------------------------

#[tokio::test]
async fn a_burst_above_the_limit_is_limited_for_one_tokens_time_and_other_clients_are_unaffected() {
    let redis = TestRedis::new().await;
    let limiter = redis.limiter(60, 3);

    for expected in [2, 1, 0] {
        assert_eq!(limiter.check("a").await.unwrap(), RateDecision::Allowed { remaining: expected });
    }
    let RateDecision::Limited { retry_after } = limiter.check("a").await.unwrap() else {
        panic!("the fourth request in a burst of three must be limited");
    };

    // One token takes 1 s at 60/min; a few ms have passed since the burst.
    assert!(retry_after > Duration::from_millis(800) && retry_after <= Duration::from_secs(1), "{retry_after:?}");
    assert_eq!(limiter.check("b").await.unwrap(), RateDecision::Allowed { remaining: 2 });
    redis.clean_up().await;
}

#[tokio::test]
async fn tokens_refill_at_the_configured_rate() {
    let redis = TestRedis::new().await;
    let limiter = redis.limiter(600, 2); // one token per 100 ms
    limiter.check("a").await.unwrap();
    limiter.check("a").await.unwrap();
    let RateDecision::Limited { retry_after } = limiter.check("a").await.unwrap() else {
        panic!("the burst is spent");
    };
    assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");

    tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
    assert_eq!(limiter.check("a").await.unwrap(), RateDecision::Allowed { remaining: 0 });
    assert!(matches!(limiter.check("a").await.unwrap(), RateDecision::Limited { .. }));

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(limiter.check("a").await.unwrap(), RateDecision::Allowed { remaining: 1 }, "refilled to the burst");
    redis.clean_up().await;
}

#[tokio::test]
async fn concurrent_checks_allow_exactly_the_burst() {
    let redis = TestRedis::new().await;
    let limiter = Arc::new(redis.limiter(1, 10)); // a token per minute: nothing refills during the test

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.check("busy").await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if matches!(task.await.unwrap().unwrap(), RateDecision::Allowed { .. }) {
            allowed += 1;
        }
    }

    assert_eq!(allowed, 10);
    redis.clean_up().await;
}

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
