//! Crashes against the real server: a backend killed in the middle of a transaction leaves nothing behind,
//! and a store whose pooled connections are killed fails cleanly and then recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderflow_ports::outbox::Destination;
use orderflow_ports::sales::{OrderQuery, PlaceError, PlaceOutcome, SalesStore};
use tokio::task::JoinSet;

use super::{TestSchema, database_url};
use crate::contract::fixtures::{OrderDraft, eur, name, owed, sku};
use crate::postgres::{PgSalesStore, PgSettings};

/// Waits until none of `pids` is a live backend any more (termination is asynchronous).
async fn wait_until_gone(observer: &tokio_postgres::Client, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: i64 = observer
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids])
            .await
            .expect("activity read")
            .get(0);
        if alive == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "backends {pids:?} still alive 10 s after being terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stock(store: &dyn SalesStore, code: &str, units: u32) {
    store.put_product(sku(code), name(&format!("Product {code}")), eur(1000), units).await.expect("product stored");
}

async fn levels(store: &dyn SalesStore, code: &str) -> (u32, u32) {
    let found = store.products_by_sku(&[sku(code)]).await.expect("products read");
    assert_eq!(found.len(), 1, "product {code} exists once");
    (found[0].stock, found[0].reserved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_mid_transaction_leaves_nothing_behind() {
    let schema = TestSchema::new();
    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
    stock(&store, "CRASH-1", 5).await;
    let placement = OrderDraft::new("alice").line("CRASH-1", 1).placement();
    let order = placement.order.clone();
    assert!(!placement.messages.is_empty(), "a placement writes outbox rows");
    let victim = schema.connect_raw().await;
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid read").get(0);

    // What a placement writes, by hand, in a transaction that never commits.
    victim.batch_execute("BEGIN").await.expect("begin");
    let reserved = victim
        .execute("UPDATE products SET reserved = reserved + 1 WHERE sku = $1", &[&"CRASH-1"])
        .await
        .expect("stock reserved");
    assert_eq!(reserved, 1, "the product row is reserved");
    victim
        .execute(
            "INSERT INTO orders (id, customer_id, status, total_minor, currency, shipping_address, version,
                                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            &[
                &order.id.as_uuid(),
                &order.customer_id.as_str(),
                &order.status.as_str(),
                &order.total.amount_minor,
                &order.total.currency.as_str(),
                &serde_json::to_value(&order.shipping_address).expect("address as JSON"),
                &i32::try_from(order.version).expect("small"),
                &order.created_at,
            ],
        )
        .await
        .expect("order row inserted");
    for message in &placement.messages {
        let event = serde_json::to_string(&message.event).expect("event as JSON");
        let (id, subject) = (message.id().as_uuid(), message.event.subject.as_str());
        if let Some(key) = message.command {
            victim
                .execute(
                    "INSERT INTO command_outbox (id, partition, routing_key, event)
                     VALUES ($1, outbox_partition($2), $3, $4)",
                    &[&id, &subject, &key.as_str(), &event],
                )
                .await
                .expect("command row inserted");
        }
        if message.audit {
            victim
                .execute(
                    "INSERT INTO audit_outbox (id, partition, event) VALUES ($1, outbox_partition($2), $3)",
                    &[&id, &subject, &event],
                )
                .await
                .expect("audit row inserted");
        }
    }
    let pending: i64 = victim
        .query_one("SELECT (SELECT count(*) FROM command_outbox) + (SELECT count(*) FROM audit_outbox)", &[])
        .await
        .expect("outbox read")
        .get(0);
    assert!(pending >= i64::try_from(placement.messages.len()).expect("small"), "the transaction sees its rows");

    let killer = schema.connect_raw().await;
    let terminated: bool =
        killer.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate").get(0);
    assert!(terminated, "the backend was terminated");
    assert!(victim.batch_execute("COMMIT").await.is_err(), "the killed connection cannot commit");
    wait_until_gone(&killer, &[pid]).await;

    assert_eq!(store.order(order.id).await.expect("order read"), None, "no order was stored");
    assert_eq!(store.timeline(order.id).await.expect("timeline read"), None, "the order has no timeline");
    assert_eq!(levels(&store, "CRASH-1").await, (5, 0), "the reservation was rolled back");
    for destination in [Destination::Command, Destination::Audit] {
        assert_eq!(owed(&store, destination).await, vec![], "nothing to publish");
    }
    let lines: i64 = killer.query_one("SELECT count(*) FROM order_lines", &[]).await.expect("lines read").get(0);
    assert_eq!(lines, 0, "no order lines were stored");
    let after = store.place_order(OrderDraft::new("bob").line("CRASH-1", 5).placement()).await;
    assert!(matches!(after, Ok(PlaceOutcome::Created(_))), "all five units can still be sold, got {after:?}");
    assert_eq!(levels(&store, "CRASH-1").await, (5, 5), "the new order holds all five units");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_call_whose_connection_is_killed_fails_cleanly_and_the_next_call_works() {
    let schema = TestSchema::new();
    // Its own application name, so only this store's connections are killed (other tests run alongside).
    let application = format!("of_kill_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let settings = PgSettings {
        url: format!("{url}{separator}application_name={application}"),
        pool_size: 4,
        ..schema.settings()
    };
    let store: Arc<dyn SalesStore> = Arc::new(PgSalesStore::connect(&settings).await.expect("connect to PostgreSQL"));
    stock(store.as_ref(), "KILL-1", 100).await;
    // Several placements at once, so the pool holds several connections.
    let mut warm = JoinSet::new();
    for i in 0..4 {
        let store = Arc::clone(&store);
        warm.spawn(async move {
            store.place_order(OrderDraft::new(&format!("warm-{i}")).line("KILL-1", 1).placement()).await
        });
    }
    for outcome in warm.join_all().await {
        assert!(matches!(outcome, Ok(PlaceOutcome::Created(_))), "the warm-up order is created, got {outcome:?}");
    }
    let mut created = 4;
    let killer = schema.connect_raw().await;

    // Several rounds: the first call of a round races the kill, which is the interesting case.
    for round in 0..8 {
        let pids: Vec<i32> = killer
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                &[&application],
            )
            .await
            .expect("activity read")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!pids.is_empty(), "the store's connections are visible under {application}");
        for pid in &pids {
            killer.execute("SELECT pg_terminate_backend($1)", &[pid]).await.expect("terminate");
        }
        let first = store.place_order(OrderDraft::new("first").line("KILL-1", 1).placement()).await;
        wait_until_gone(&killer, &pids).await;
        let second = store.place_order(OrderDraft::new("second").line("KILL-1", 1).placement()).await;

        match first {
            Ok(PlaceOutcome::Created(_)) => created += 1,
            Err(PlaceError::Unexpected(_)) => {}
            other => panic!("round {round}: the call racing the kill works or fails as Unexpected, got {other:?}"),
        }
        match second {
            Ok(PlaceOutcome::Created(_)) => created += 1,
            other => panic!(
                "round {round}: the call after the killed backends are gone works on a fresh connection, got {other:?}"
            ),
        }
    }
    assert_eq!(levels(store.as_ref(), "KILL-1").await, (100, created), "one unit is reserved per created order");
    let orders = store.orders(OrderQuery { limit: 100, ..OrderQuery::default() }).await.expect("orders listed").items;
    assert_eq!(orders.len(), usize::try_from(created).expect("small"), "only the created orders exist");
}
