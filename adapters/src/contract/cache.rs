//! The `OrderCache` contract: what is put reads back, versions decide which write wins (also when puts
//! race), and invalidation drops one entry. Each check takes a fresh, empty cache.

use std::sync::Arc;

use orderflow_domain::{Order, OrderId, OrderStatus};
use orderflow_ports::cache::OrderCache;
use rand::seq::SliceRandom;
use uuid::Uuid;

use super::fixtures::OrderDraft;

fn an_order() -> Order {
    OrderDraft::new("cust-42").line("SKU-1", 2).placement().order
}

fn at_version(order: &Order, version: u32) -> Order {
    Order { version, ..order.clone() }
}

async fn cached(cache: &dyn OrderCache, id: OrderId) -> Option<Order> {
    cache.get(id).await.expect("the cache answers")
}

async fn put(cache: &dyn OrderCache, order: &Order) {
    cache.put_if_newer(order).await.expect("the cache is written");
}

/// A cached order reads back equal; an order never put is a miss.
pub async fn a_cached_order_reads_back_equal_and_an_unknown_one_is_a_miss(cache: Arc<dyn OrderCache>) {
    let order = an_order();

    put(cache.as_ref(), &order).await;

    assert_eq!(cached(cache.as_ref(), order.id).await, Some(order));
    assert_eq!(cached(cache.as_ref(), OrderId::from_uuid(Uuid::now_v7())).await, None);
}

/// `put_if_newer` keeps the cached version against an older or equal one, and takes a newer one.
pub async fn put_if_newer_never_replaces_a_newer_version_with_an_older_or_equal_one(cache: Arc<dyn OrderCache>) {
    let cache = cache.as_ref();
    let order = an_order();
    let v2 = Order { status: OrderStatus::PendingShipment, ..at_version(&order, 2) };

    put(cache, &v2).await;
    put(cache, &at_version(&order, 1)).await;
    put(cache, &Order { status: OrderStatus::Cancelled, ..at_version(&order, 2) }).await;
    assert_eq!(cached(cache, order.id).await, Some(v2), "older and equal versions must not replace v2");

    let v3 = Order { status: OrderStatus::Shipped, ..at_version(&order, 3) };
    put(cache, &v3).await;
    assert_eq!(cached(cache, order.id).await, Some(v3), "a newer version replaces the cached one");
}

/// `put_all_if_newer` stores each order of the batch as `put_if_newer` would: a new order and a newer
/// version are stored, an older version of a cached one is not, and an empty batch is nothing.
pub async fn putting_a_batch_stores_each_order_unless_a_newer_version_is_cached(cache: Arc<dyn OrderCache>) {
    let cache = cache.as_ref();
    let (kept, replaced, new) = (an_order(), an_order(), an_order());
    let kept_v3 = Order { status: OrderStatus::Shipped, ..at_version(&kept, 3) };
    put(cache, &kept_v3).await;
    put(cache, &at_version(&replaced, 1)).await;
    let replaced_v2 = Order { status: OrderStatus::PendingShipment, ..at_version(&replaced, 2) };

    let batch = [at_version(&kept, 2), replaced_v2.clone(), new.clone()];
    cache.put_all_if_newer(&batch).await.expect("the cache is written");
    cache.put_all_if_newer(&[]).await.expect("an empty batch is nothing to write");

    assert_eq!(cached(cache, kept.id).await, Some(kept_v3), "an older version does not replace v3");
    assert_eq!(cached(cache, replaced.id).await, Some(replaced_v2), "a newer version replaces v1");
    assert_eq!(cached(cache, new.id).await, Some(new), "a new order is stored");
}

/// Fifty versions put concurrently in random order leave the newest cached.
pub async fn concurrent_puts_in_random_order_leave_the_newest_version_cached(cache: Arc<dyn OrderCache>) {
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
        task.await.expect("the put did not panic").expect("the cache is written");
    }

    assert_eq!(cached(cache.as_ref(), order.id).await.map(|cached| cached.version), Some(50));
}

/// A read right after a writer's put sees that version, even while readers holding the previous state
/// put it concurrently.
pub async fn a_read_right_after_each_write_sees_it_even_while_stale_readers_put_older_states(
    cache: Arc<dyn OrderCache>,
) {
    let mut order = an_order();

    for version in 2..=1001 {
        // A reader that loaded the previous state from the store races the writer's write-through.
        let stale = at_version(&order, version - 1);
        let reader = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.put_if_newer(&stale).await })
        };
        order.version = version;
        put(cache.as_ref(), &order).await;

        let seen = cached(cache.as_ref(), order.id).await.map(|cached| cached.version);
        assert_eq!(seen, Some(version), "a read right after committing v{version} must see it");
        reader.await.expect("the reader did not panic").expect("the cache is written");
        assert_eq!(cached(cache.as_ref(), order.id).await.map(|cached| cached.version), Some(version));
    }
}

/// Invalidating drops the entry (twice is harmless), after which any version repopulates it; other
/// orders' entries stay.
pub async fn invalidate_drops_the_entry_and_the_next_put_repopulates_it(cache: Arc<dyn OrderCache>) {
    let cache = cache.as_ref();
    let (order, other) = (at_version(&an_order(), 5), an_order());
    put(cache, &order).await;
    put(cache, &other).await;

    cache.invalidate(order.id).await.expect("invalidated");
    assert_eq!(cached(cache, order.id).await, None);
    cache.invalidate(order.id).await.expect("invalidating a missing entry is fine");
    assert_eq!(cached(cache, other.id).await, Some(other), "another order's entry stays");

    let older = at_version(&order, 1);
    put(cache, &older).await;
    assert_eq!(cached(cache, order.id).await, Some(older), "the invalidated version no longer blocks an older one");
}
