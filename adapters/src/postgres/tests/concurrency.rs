//! Concurrency against the real server: the last units of stock, overlapping SKUs, one idempotency key
//! from many requests, and racing changes of one order.

use std::collections::HashMap;
use std::sync::Arc;

use orderflow_domain::{OrderId, OrderStatus, PaymentOutcome};
use orderflow_ports::sales::{ChangeError, ChangeOutcome, OrderQuery, PlaceError, PlaceOutcome, Placement, SalesStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::sales_store;
use crate::contract::fixtures::{OrderDraft, change_of, eur, later, name, now, sku};

async fn stock(store: &dyn SalesStore, code: &str, units: u32) {
    store.put_product(sku(code), name(&format!("Product {code}")), eur(1000), units).await.expect("product stored");
}

/// `(stock, reserved)` of a product.
async fn levels(store: &dyn SalesStore, code: &str) -> (u32, u32) {
    let found = store.products_by_sku(&[sku(code)]).await.expect("products read");
    assert_eq!(found.len(), 1, "product {code} exists once");
    (found[0].stock, found[0].reserved)
}

async fn order_count(store: &dyn SalesStore) -> usize {
    store.orders(OrderQuery { limit: 10_000, ..OrderQuery::default() }).await.expect("orders listed").items.len()
}

/// Places every placement at once (each task waits at a barrier first) and returns the outcomes.
async fn place_all(store: &Arc<dyn SalesStore>, placements: Vec<Placement>) -> Vec<Result<PlaceOutcome, PlaceError>> {
    let barrier = Arc::new(Barrier::new(placements.len()));
    let mut tasks = JoinSet::new();
    for placement in placements {
        let store = Arc::clone(store);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            store.place_order(placement).await
        });
    }
    tasks.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_orders_for_the_last_ten_units_sell_exactly_ten() {
    let store: Arc<dyn SalesStore> = Arc::new(sales_store().await);
    stock(store.as_ref(), "LAST-1", 10).await;
    let placements = (0..64).map(|i| OrderDraft::new(&format!("cust-{i}")).line("LAST-1", 1).placement()).collect();

    let outcomes = place_all(&store, placements).await;

    let mut created = 0;
    let mut short = 0;
    for outcome in outcomes {
        match outcome {
            Ok(PlaceOutcome::Created(_)) => created += 1,
            Err(PlaceError::InsufficientStock(skus)) => {
                assert_eq!(skus, vec![sku("LAST-1")], "the short SKU is listed");
                short += 1;
            }
            other => panic!("expected Created or InsufficientStock, got {other:?}"),
        }
    }
    assert_eq!(created, 10, "exactly the ten units are sold");
    assert_eq!(short, 54, "every other order is refused for insufficient stock");
    assert_eq!(levels(store.as_ref(), "LAST-1").await, (10, 10), "all ten units are reserved, no more");
    assert_eq!(order_count(store.as_ref()).await, 10, "ten orders exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_over_overlapping_skus_never_deadlock() {
    let store: Arc<dyn SalesStore> = Arc::new(sales_store().await);
    let codes: Vec<String> = (1..=8).map(|i| format!("OVL-{i}")).collect();
    for code in &codes {
        stock(store.as_ref(), code, 10_000).await;
    }
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut expected: HashMap<String, u32> = HashMap::new();
    let mut placements = Vec::new();
    for i in 0..200 {
        let mut skus = codes.clone();
        skus.shuffle(&mut rng);
        skus.truncate(rng.random_range(2..=4));
        let mut draft = OrderDraft::new(&format!("cust-{i}"));
        for code in &skus {
            let quantity = rng.random_range(1..=3);
            *expected.entry(code.clone()).or_default() += u32::try_from(quantity).expect("small");
            draft = draft.line(code, quantity);
        }
        placements.push(draft.placement());
    }

    let outcomes = place_all(&store, placements).await;

    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(PlaceOutcome::Created(_)) => None,
            Ok(other) => Some(format!("{other:?}")),
            Err(error) => Some(format!("{error:?}")),
        })
        .collect();
    assert!(failures.is_empty(), "every order is created (seed {seed}); failures: {failures:#?}");
    for code in &codes {
        let ordered = expected.get(code).copied().unwrap_or(0);
        assert_eq!(
            levels(store.as_ref(), code).await,
            (10_000, ordered),
            "{code}: reserved is the sum of the quantities ordered (seed {seed})"
        );
    }
    assert_eq!(order_count(store.as_ref()).await, 200, "two hundred orders exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_one_key_make_one_order() {
    let store: Arc<dyn SalesStore> = Arc::new(sales_store().await);
    stock(store.as_ref(), "KEY-1", 100).await;
    let not_before = later(now(), -3600);
    let placements = (0..50)
        .map(|_| OrderDraft::new("alice").line("KEY-1", 2).key("client-1", "k-1", "h-1", not_before).placement())
        .collect();

    let outcomes = place_all(&store, placements).await;

    let mut created = Vec::new();
    let mut replayed = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(PlaceOutcome::Created(order)) => created.push(order),
            Ok(PlaceOutcome::Replayed(order)) => replayed.push(order),
            Err(error) => panic!("expected Created or Replayed, got {error:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one request creates the order");
    assert_eq!(replayed.len(), 49, "every other request replays it");
    let first = &created[0];
    assert!(replayed.iter().all(|o| o == first), "every replay is the created order, as first returned");
    assert_eq!(levels(store.as_ref(), "KEY-1").await, (100, 2), "the stock is reserved once");
    let listed: Vec<OrderId> = store
        .orders(OrderQuery { limit: 100, ..OrderQuery::default() })
        .await
        .expect("orders listed")
        .items
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(listed, vec![first.id], "one order exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_of_one_order_apply_exactly_one() {
    let store: Arc<dyn SalesStore> = Arc::new(sales_store().await);
    stock(store.as_ref(), "PAY-1", 5).await;
    let order = match store.place_order(OrderDraft::new("alice").line("PAY-1", 1).placement()).await {
        Ok(PlaceOutcome::Created(order)) => order,
        other => panic!("the order should be created, got {other:?}"),
    };
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let at = now();
        let change = change_of(&order, order.clone().settle_payment(&PaymentOutcome::Completed, at), at);
        let store = Arc::clone(&store);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            store.apply(change).await
        });
    }

    let outcomes = tasks.join_all().await;

    let mut applied = 0;
    let mut conflicts = 0;
    for outcome in outcomes {
        match outcome {
            Ok(ChangeOutcome::Applied) => applied += 1,
            Err(ChangeError::Conflict { expected }) => {
                assert_eq!(expected, order.version, "the conflict names the version the change expected");
                conflicts += 1;
            }
            other => panic!("expected Applied or Conflict, got {other:?}"),
        }
    }
    assert_eq!(applied, 1, "exactly one change is applied");
    assert_eq!(conflicts, 19, "every other change is a conflict");
    let stored = store.order(order.id).await.expect("order read").expect("the order exists");
    assert_eq!(stored.status, OrderStatus::PendingShipment, "the order is paid");
    assert_eq!(stored.version, order.version + 1, "the version moved once");
    let timeline = store.timeline(order.id).await.expect("timeline read").expect("the order has a timeline");
    let types: Vec<&str> = timeline.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["orderflow.order.placed.v1", "orderflow.order.paid.v1"],
        "only the applied change wrote to the timeline"
    );
    assert_eq!(levels(store.as_ref(), "PAY-1").await, (5, 1), "paying moves no stock");
}
