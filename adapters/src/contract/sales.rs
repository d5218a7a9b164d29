//! The `SalesStore` contract: placing (stock, idempotency keys, all-or-nothing), applying changes
//! (versions, inbox, stock effects), the timeline, and the keyset-paged lists. Each check takes a fresh,
//! empty store and panics on a violation.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use orderflow_domain::{Carrier, Order, OrderId, OrderStatus, PaymentOutcome, Sku, TrackingNumber};
use orderflow_ports::notify::NotifyError;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, NotifyOnceError, OrderQuery, PlaceError, PlaceOutcome, Placement, Product,
    PutProductError, SalesStore,
};

use super::fixtures::{LIFECYCLE_AUDIT, OrderDraft, change_of, eur, inbox, later, message_ids, name, sku};

async fn stock(store: &dyn SalesStore, code: &str, units: u32) -> Product {
    store.put_product(sku(code), name(&format!("Product {code}")), eur(1000), units).await.expect("product stored")
}

async fn product(store: &dyn SalesStore, code: &str) -> Product {
    let mut found = store.products_by_sku(&[sku(code)]).await.expect("products read");
    assert_eq!(found.len(), 1, "product {code} should exist exactly once, got {found:?}");
    found.remove(0)
}

/// `(stock, reserved)` of a product.
async fn levels(store: &dyn SalesStore, code: &str) -> (u32, u32) {
    let p = product(store, code).await;
    (p.stock, p.reserved)
}

async fn place(store: &dyn SalesStore, placement: Placement) -> Order {
    match store.place_order(placement).await.expect("the order is placed") {
        PlaceOutcome::Created(order) => order,
        PlaceOutcome::Replayed(order) => panic!("a new order was replayed as {}", order.id),
    }
}

/// Every row the outbox owes right now; the next call returns only rows written after this one.
async fn owed(store: &dyn SalesStore) -> Vec<orderflow_domain::EventId> {
    super::fixtures::drain_outbox(store).await
}

async fn all_orders(store: &dyn SalesStore) -> Vec<Order> {
    store.orders(OrderQuery { limit: 1000, ..OrderQuery::default() }).await.expect("orders listed").items
}

fn ids(orders: &[Order]) -> Vec<OrderId> {
    orders.iter().map(|o| o.id).collect()
}

fn sorted(skus: &[Sku]) -> BTreeSet<Sku> {
    skus.iter().cloned().collect()
}

fn dhl() -> (Carrier, TrackingNumber) {
    (Carrier::parse("DHL").expect("a carrier"), TrackingNumber::parse("TRK-1").expect("a tracking number"))
}

/// Placing reserves every line's stock (stock on hand unchanged) and stores the order, its outbox rows and
/// its timeline.
pub async fn placing_an_order_reserves_its_stock_and_stores_order_and_outbox(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    stock(store, "B-2", 3).await;
    let placement = OrderDraft::new("alice").line("A-1", 2).line("B-2", 1).contact("alice@example.com").placement();
    let expected = placement.order.clone();
    let messages = placement.messages.clone();

    let outcome = store.place_order(placement).await.expect("the order is placed");

    assert_eq!(outcome, PlaceOutcome::Created(expected.clone()), "placing returns the order as given");
    assert_eq!(levels(store, "A-1").await, (5, 2), "A-1: stock unchanged, 2 reserved");
    assert_eq!(levels(store, "B-2").await, (3, 1), "B-2: stock unchanged, 1 reserved");
    assert_eq!(store.order(expected.id).await.expect("order read"), Some(expected.clone()), "the order reads back");
    assert_eq!(owed(store).await, message_ids(&messages), "the outbox holds the placement's messages, in order");
    let audit: Vec<_> = messages.iter().filter(|m| m.audit).map(|m| m.event.clone()).collect();
    assert_eq!(store.timeline(expected.id).await.expect("timeline read"), Some(audit), "the timeline holds the audit");
}

/// An order short of stock on some lines is refused listing every short SKU (including one short only
/// because of another order's reservation), and nothing is written.
pub async fn an_order_short_of_stock_stores_nothing_and_lists_every_short_sku(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 1).await;
    stock(store, "B-2", 3).await;
    stock(store, "C-3", 10).await;
    let first = place(store, OrderDraft::new("bob").line("B-2", 2).placement()).await;
    let before = owed(store).await;
    let placement = OrderDraft::new("alice").line("A-1", 2).line("B-2", 2).line("C-3", 1).placement();
    let id = placement.order.id;

    let error = store.place_order(placement).await.expect_err("the order is short of stock");

    match error {
        PlaceError::InsufficientStock(short) => {
            assert_eq!(sorted(&short), sorted(&[sku("A-1"), sku("B-2")]), "every short SKU is listed, once");
            assert_eq!(short.len(), 2, "no SKU is listed twice: {short:?}");
        }
        other => panic!("expected InsufficientStock, got {other:?}"),
    }
    assert_eq!(levels(store, "A-1").await, (1, 0), "A-1 reservations unchanged");
    assert_eq!(levels(store, "B-2").await, (3, 2), "B-2 reservations unchanged");
    assert_eq!(levels(store, "C-3").await, (10, 0), "C-3 is not reserved by a refused order");
    assert_eq!(store.order(id).await.expect("order read"), None, "the refused order is not stored");
    assert_eq!(store.timeline(id).await.expect("timeline read"), None, "the refused order has no timeline");
    assert_eq!(ids(&all_orders(store).await), vec![first.id], "only the first order is listed");
    assert!(!before.is_empty(), "the first order wrote outbox rows");
    assert_eq!(owed(store).await, vec![], "the refused order wrote no outbox rows");
}

/// An order naming a SKU not in the catalogue is refused listing it, and nothing is written.
pub async fn placing_with_an_unknown_sku_stores_nothing(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let placement = OrderDraft::new("alice").line("A-1", 1).line("GONE-9", 1).placement();
    let id = placement.order.id;

    let error = store.place_order(placement).await.expect_err("the order names an unknown SKU");

    match error {
        PlaceError::UnknownSkus(unknown) => assert_eq!(unknown, vec![sku("GONE-9")], "the unknown SKU is listed"),
        other => panic!("expected UnknownSkus, got {other:?}"),
    }
    assert_eq!(levels(store, "A-1").await, (5, 0), "nothing is reserved");
    assert_eq!(store.order(id).await.expect("order read"), None, "the order is not stored");
    assert_eq!(store.timeline(id).await.expect("timeline read"), None, "the order has no timeline");
    assert_eq!(owed(store).await, vec![], "no outbox rows are written");
    assert_eq!(store.products_by_sku(&[sku("GONE-9")]).await.expect("products read"), vec![], "no product is created");
}

/// The same client, key and body again replays the first order as first returned, and writes nothing.
pub async fn the_same_key_and_hash_replays_the_first_order(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let not_before = later(super::fixtures::now(), -3600);
    let first =
        place(store, OrderDraft::new("alice").line("A-1", 2).key("client-1", "k-1", "h-1", not_before).placement())
            .await;
    let first_rows = owed(store).await;
    let retry = OrderDraft::new("alice").line("A-1", 2).key("client-1", "k-1", "h-1", not_before).placement();
    let retry_id = retry.order.id;

    let outcome = store.place_order(retry).await.expect("the retry is answered");

    assert_eq!(outcome, PlaceOutcome::Replayed(first.clone()), "the retry replays the first order");
    assert_eq!(levels(store, "A-1").await, (5, 2), "stock is reserved once");
    assert_eq!(store.order(retry_id).await.expect("order read"), None, "the retry's order is not stored");
    assert_eq!(ids(&all_orders(store).await), vec![first.id], "one order is listed");
    assert_eq!(first_rows.len(), 2, "the first order wrote its payment command and audit record");
    assert_eq!(owed(store).await, vec![], "the retry wrote no outbox rows");
}

/// The same client and key with another body is refused as reused, and nothing is written.
pub async fn the_same_key_with_another_hash_is_refused_as_reused(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let not_before = later(super::fixtures::now(), -3600);
    let first =
        place(store, OrderDraft::new("alice").line("A-1", 2).key("client-1", "k-1", "h-1", not_before).placement())
            .await;
    owed(store).await;
    let other = OrderDraft::new("alice").line("A-1", 1).key("client-1", "k-1", "h-2", not_before).placement();
    let other_id = other.order.id;

    let error = store.place_order(other).await.expect_err("the key is reused with another body");

    assert!(matches!(error, PlaceError::KeyReused), "expected KeyReused, got {error:?}");
    assert_eq!(levels(store, "A-1").await, (5, 2), "only the first order's stock is reserved");
    assert_eq!(store.order(other_id).await.expect("order read"), None, "the refused order is not stored");
    assert_eq!(ids(&all_orders(store).await), vec![first.id], "one order is listed");
    assert_eq!(owed(store).await, vec![], "the refused order wrote no outbox rows");
}

/// A key recorded before the request's `not_before` is expired: it places a new order (even with another
/// body), and from then on the key replays that new order.
pub async fn an_expired_key_may_be_used_again(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let now = super::fixtures::now();
    let first = place(
        store,
        OrderDraft::new("alice").line("A-1", 1).key("client-1", "k-1", "h-1", later(now, -3600)).placement(),
    )
    .await;
    // Whether a store records the key at the order's time or at its own commit time, it is before this.
    let expiry = later(super::fixtures::now(), 60);
    let again = OrderDraft::new("alice").line("A-1", 2).at(later(expiry, 1)).key("client-1", "k-1", "h-2", expiry);

    let second = place(store, again.placement()).await;

    assert_ne!(second.id, first.id, "a new order is created");
    assert_eq!(levels(store, "A-1").await, (5, 3), "both orders hold their stock");
    let retry = OrderDraft::new("alice").line("A-1", 2).key("client-1", "k-1", "h-2", expiry).placement();
    assert_eq!(
        store.place_order(retry).await.expect("the retry is answered"),
        PlaceOutcome::Replayed(second),
        "the reused key now replays the new order"
    );
}

/// Keys recorded before a moment are forgotten, and only those: a forgotten key then places a new order
/// even with another body (a remembered one would be refused as reused), while a kept key still replays.
pub async fn keys_recorded_before_a_moment_are_forgotten_and_only_those(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let now = super::fixtures::now();
    // Far enough back that neither key has expired for a placement.
    let not_before = later(now, -86_400);
    let old = OrderDraft::new("alice").line("A-1", 1).at(later(now, -7_200)).key("client-1", "old", "h-1", not_before);
    let first = place(store, old.placement()).await;
    let kept = OrderDraft::new("alice").line("A-1", 1).at(now).key("client-1", "kept", "h-1", not_before);
    let kept = place(store, kept.placement()).await;

    let forgotten = store.forget_idempotency_keys(later(now, -3_600)).await.expect("keys forgotten");

    assert_eq!(forgotten, 1, "only the key recorded before the moment goes");
    let reused = OrderDraft::new("alice").line("A-1", 2).key("client-1", "old", "h-2", not_before).placement();
    let second = place(store, reused).await;
    assert_ne!(second.id, first.id, "the forgotten key places a new order");
    let retry = OrderDraft::new("alice").line("A-1", 1).key("client-1", "kept", "h-1", not_before).placement();
    assert_eq!(
        store.place_order(retry).await.expect("the retry is answered"),
        PlaceOutcome::Replayed(kept),
        "the kept key still replays its order"
    );
    assert_eq!(
        store.forget_idempotency_keys(later(now, -3_600)).await.expect("keys forgotten"),
        0,
        "nothing older is left"
    );
}

/// Two clients may use the same key, even with different bodies: each gets its own order.
pub async fn keys_of_different_clients_do_not_collide(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let not_before = later(super::fixtures::now(), -3600);
    let first = OrderDraft::new("alice").line("A-1", 1).key("client-1", "same-key", "h-1", not_before).placement();
    let second = OrderDraft::new("bob").line("A-1", 2).key("client-2", "same-key", "h-2", not_before).placement();

    let first = place(store, first).await;
    let second = place(store, second).await;

    assert_ne!(first.id, second.id);
    assert_eq!(levels(store, "A-1").await, (5, 3), "both orders hold their stock");
    assert_eq!(ids(&all_orders(store).await), vec![second.id, first.id], "both orders are stored");
}

/// Forty concurrent single-unit orders for a product with ten units: exactly ten are created, the rest
/// refused as short of stock, and exactly ten units are reserved.
pub async fn concurrent_placements_never_oversell(store: Arc<dyn SalesStore>) {
    stock(store.as_ref(), "A-1", 10).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            let placement = OrderDraft::new(&format!("customer-{i}")).line("A-1", 1).placement();
            tokio::spawn(async move { store.place_order(placement).await })
        })
        .collect();

    let mut created = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.expect("the placing task finished") {
            Ok(PlaceOutcome::Created(_)) => created += 1,
            Err(PlaceError::InsufficientStock(short)) => {
                assert_eq!(short, vec![sku("A-1")]);
                refused += 1;
            }
            other => panic!("expected Created or InsufficientStock, got {other:?}"),
        }
    }

    assert_eq!((created, refused), (10, 30), "exactly the ten units on hand are sold");
    assert_eq!(levels(store.as_ref(), "A-1").await, (10, 10), "ten units are reserved, never more");
    assert_eq!(all_orders(store.as_ref()).await.len(), 10, "ten orders are stored");
}

/// A change computed from a version the order has moved past is a conflict, and writes nothing: no order
/// change, no stock effect, no outbox rows, no timeline entry.
pub async fn applying_a_change_with_a_stale_version_is_a_conflict_and_writes_nothing(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let order = place(store, OrderDraft::new("alice").line("A-1", 2).placement()).await;
    let pay = change_of(
        &order,
        order.clone().settle_payment(&PaymentOutcome::Completed, super::fixtures::now()),
        super::fixtures::now(),
    );
    let paid = pay.order.clone();
    let pay_messages = pay.messages.clone();
    // Computed from the same read as the payment: once that is applied, this one is stale.
    let cancel = change_of(&order, order.clone().cancel(super::fixtures::now()), super::fixtures::now());
    assert_eq!(store.apply(pay).await.expect("the payment is applied"), ChangeOutcome::Applied);
    let timeline = store.timeline(order.id).await.expect("timeline read");
    let placed_and_paid = owed(store).await;

    let error = store.apply(cancel).await.expect_err("the stale change is refused");

    assert!(
        matches!(error, ChangeError::Conflict { expected } if expected == order.version),
        "expected Conflict {{ expected: {} }}, got {error:?}",
        order.version
    );
    assert_eq!(store.order(order.id).await.expect("order read"), Some(paid), "the order stays paid");
    assert_eq!(levels(store, "A-1").await, (5, 2), "the stock stays reserved");
    assert_eq!(store.timeline(order.id).await.expect("timeline read"), timeline, "the timeline is unchanged");
    assert!(placed_and_paid.ends_with(&message_ids(&pay_messages)), "the payment wrote its messages");
    assert_eq!(owed(store).await, vec![], "the refused change wrote no outbox rows");
}

/// A change whose inbox entry (message id, consumer) is already recorded is `AlreadyProcessed` and writes
/// nothing, even when computed from the current version; the same message id for another consumer is new.
pub async fn applying_a_change_twice_with_the_same_inbox_entry_is_already_processed(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let order = place(store, OrderDraft::new("alice").line("A-1", 2).placement()).await;
    let mut pay = change_of(
        &order,
        order.clone().settle_payment(&PaymentOutcome::Completed, super::fixtures::now()),
        super::fixtures::now(),
    );
    pay.inbox = Some(inbox("msg-1", "payments.requested"));
    let paid = pay.order.clone();
    assert_eq!(store.apply(pay.clone()).await.expect("the payment is applied"), ChangeOutcome::Applied);
    let timeline = store.timeline(order.id).await.expect("timeline read");
    owed(store).await;

    let redelivered = store.apply(pay).await.expect("the redelivery is answered");
    let (carrier, tracking) = dhl();
    let mut ship =
        change_of(&paid, paid.clone().mark_shipped(carrier, tracking, super::fixtures::now()), super::fixtures::now());
    ship.inbox = Some(inbox("msg-1", "payments.requested"));
    let current_but_seen = store.apply(ship.clone()).await.expect("the seen message is answered");

    assert_eq!(redelivered, ChangeOutcome::AlreadyProcessed, "the same change again is already processed");
    assert_eq!(current_but_seen, ChangeOutcome::AlreadyProcessed, "any change with a seen entry is skipped");
    assert_eq!(store.order(order.id).await.expect("order read"), Some(paid), "the order stays as first paid");
    assert_eq!(levels(store, "A-1").await, (5, 2), "no stock effect is applied");
    assert_eq!(store.timeline(order.id).await.expect("timeline read"), timeline, "the timeline is unchanged");
    assert_eq!(owed(store).await, vec![], "no outbox rows are written");

    ship.inbox = Some(inbox("msg-1", "orders.shipped"));
    assert_eq!(
        store.apply(ship).await.expect("the other consumer's change is applied"),
        ChangeOutcome::Applied,
        "the same message id for another consumer is processed"
    );
}

/// A failed payment releases the order's reservation; shipping commits it (stock and reservation both
/// drop); a later delivery changes neither.
pub async fn releasing_and_committing_stock_moves_reserved_and_stock(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 10).await;
    stock(store, "B-2", 10).await;
    let failing = place(store, OrderDraft::new("alice").line("A-1", 3).line("B-2", 1).placement()).await;
    let shipping = place(store, OrderDraft::new("bob").line("A-1", 4).placement()).await;
    assert_eq!(levels(store, "A-1").await, (10, 7));

    let declined = PaymentOutcome::Declined { reason: "card declined".to_owned() };
    let fail =
        change_of(&failing, failing.clone().settle_payment(&declined, super::fixtures::now()), super::fixtures::now());
    assert_eq!(store.apply(fail).await.expect("the failure is applied"), ChangeOutcome::Applied);
    assert_eq!(levels(store, "A-1").await, (10, 4), "A-1: the failed order's 3 units are released");
    assert_eq!(levels(store, "B-2").await, (10, 0), "B-2: the failed order's unit is released");

    let pay = change_of(
        &shipping,
        shipping.clone().settle_payment(&PaymentOutcome::Completed, super::fixtures::now()),
        super::fixtures::now(),
    );
    let paid = pay.order.clone();
    store.apply(pay).await.expect("the payment is applied");
    assert_eq!(levels(store, "A-1").await, (10, 4), "paying keeps the reservation");
    let (carrier, tracking) = dhl();
    let ship =
        change_of(&paid, paid.clone().mark_shipped(carrier, tracking, super::fixtures::now()), super::fixtures::now());
    let shipped = ship.order.clone();
    store.apply(ship).await.expect("the shipping is applied");
    assert_eq!(levels(store, "A-1").await, (6, 0), "shipping takes the 4 units out of stock and reserve");

    let deliver = change_of(&shipped, shipped.clone().mark_delivered(super::fixtures::now()), super::fixtures::now());
    store.apply(deliver).await.expect("the delivery is applied");
    assert_eq!(levels(store, "A-1").await, (6, 0), "delivering after shipping moves no stock");
    assert_eq!(store.order(shipping.id).await.expect("order read").map(|o| o.status), Some(OrderStatus::Delivered));
}

/// A change of an order the store does not hold is `NotFound`, and writes nothing.
pub async fn a_change_of_an_unknown_order_is_not_found(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let never_placed = OrderDraft::new("alice").line("A-1", 1).placement().order;
    let mut pay = change_of(
        &never_placed,
        never_placed.clone().settle_payment(&PaymentOutcome::Completed, super::fixtures::now()),
        super::fixtures::now(),
    );
    pay.inbox = Some(inbox("msg-1", "payments.requested"));

    let error = store.apply(pay.clone()).await.expect_err("the order does not exist");

    assert!(matches!(error, ChangeError::NotFound), "expected NotFound, got {error:?}");
    assert_eq!(store.order(never_placed.id).await.expect("order read"), None, "no order is created");
    assert_eq!(owed(store).await, vec![], "no outbox rows are written");
    assert_eq!(levels(store, "A-1").await, (5, 0), "no stock moves");
    let again = store.apply(pay).await.expect_err("the inbox entry was not recorded");
    assert!(matches!(again, ChangeError::NotFound), "expected NotFound again, got {again:?}");
}

/// A batch gives every change the outcome it would have alone: applied, already processed, conflict, not
/// found, and a second change of an order in the same batch a conflict; what applies is written whole
/// (stock summed over the batch, timeline, outbox, inbox) and the rest writes nothing.
pub async fn a_batch_of_changes_gives_each_the_outcome_it_would_have_alone(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 10).await;
    stock(store, "B-2", 10).await;
    let now = super::fixtures::now();
    let (carrier, tracking) = dhl();
    let mut paid = Vec::new();
    for (customer, quantity) in [("alice", 1), ("bob", 2), ("carol", 3), ("dave", 1)] {
        let order = place(store, OrderDraft::new(customer).line("A-1", quantity).line("B-2", 1).placement()).await;
        let pay = change_of(&order, order.clone().settle_payment(&PaymentOutcome::Completed, now), now);
        paid.push(pay.order.clone());
        store.apply(pay).await.expect("the payment is applied");
    }
    let [alice, bob, carol, dave] = paid.try_into().expect("four orders");
    // dave's shipped report was processed before: its redelivery is recognised.
    let mut dave_ship = change_of(&dave, dave.clone().mark_shipped(carrier.clone(), tracking.clone(), now), now);
    dave_ship.inbox = Some(inbox("ship-dave", "orders.shipped"));
    store.apply(dave_ship.clone()).await.expect("dave's shipping is applied");
    owed(store).await;

    let ship = |order: &Order, message: &str| {
        let mut change = change_of(order, order.clone().mark_shipped(carrier.clone(), tracking.clone(), now), now);
        change.inbox = Some(inbox(message, "orders.shipped"));
        change
    };
    let mut stale = ship(&carol, "ship-carol");
    stale.expected_version -= 1;
    let never_placed = OrderDraft::new("erin").line("A-1", 1).placement().order;
    let unknown = change_of(&never_placed, never_placed.clone().settle_payment(&PaymentOutcome::Completed, now), now);
    let changes = vec![
        ship(&alice, "ship-alice"),
        dave_ship,
        stale,
        unknown,
        ship(&bob, "ship-bob"),
        ship(&alice, "ship-alice-again"),
    ];

    let outcomes = store.apply_all(changes).await.expect("the batch is applied");

    assert!(matches!(outcomes[0], Ok(ChangeOutcome::Applied)), "alice: {:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Ok(ChangeOutcome::AlreadyProcessed)), "dave: {:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Err(ChangeError::Conflict { .. })), "carol: {:?}", outcomes[2]);
    assert!(matches!(outcomes[3], Err(ChangeError::NotFound)), "erin: {:?}", outcomes[3]);
    assert!(matches!(outcomes[4], Ok(ChangeOutcome::Applied)), "bob: {:?}", outcomes[4]);
    assert!(matches!(outcomes[5], Err(ChangeError::Conflict { .. })), "alice again: {:?}", outcomes[5]);
    let status = async |id| store.order(id).await.expect("order read").map(|o| o.status);
    assert_eq!(status(alice.id).await, Some(OrderStatus::Shipped));
    assert_eq!(status(bob.id).await, Some(OrderStatus::Shipped));
    assert_eq!(status(carol.id).await, Some(OrderStatus::PendingShipment), "the stale change wrote nothing");
    assert_eq!(levels(store, "A-1").await, (10 - 1 - 2 - 1, 3), "alice, bob and dave shipped; carol holds 3");
    assert_eq!(levels(store, "B-2").await, (10 - 3, 1));
    assert_eq!(owed(store).await.len(), 2, "one audit record each for alice and bob, nothing else");
    let timeline = store.timeline(bob.id).await.expect("timeline read").expect("bob's timeline");
    assert_eq!(timeline.last().map(|e| e.event_type.as_str()), Some("orderflow.order.shipped.v1"));
    let again = store.apply(ship(&alice, "ship-alice")).await.expect("a redelivery is no error");
    assert_eq!(again, ChangeOutcome::AlreadyProcessed, "the batch recorded alice's inbox entry");
    let carol_again = store.apply(ship(&carol, "ship-carol")).await.expect("carol's report applies on its own");
    assert_eq!(carol_again, ChangeOutcome::Applied, "the refused change left no inbox entry behind");

    let mut read = store.orders_by_id(&[bob.id, never_placed.id, alice.id]).await.expect("orders read");
    read.sort_by_key(|o| o.id);
    let mut expected = vec![alice.id, bob.id];
    expected.sort();
    assert_eq!(ids(&read), expected, "the orders that exist");
}

/// The timeline holds an order's audit events (never its commands), oldest first; an unknown order has none.
pub async fn the_timeline_lists_audit_events_oldest_first(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 5).await;
    let t0 = super::fixtures::now();
    let placement = OrderDraft::new("alice").line("A-1", 1).at(t0).placement();
    let mut messages: Vec<OutboxMessage> = placement.messages.clone();
    let order = place(store, placement).await;
    let pay = change_of(&order, order.clone().settle_payment(&PaymentOutcome::Completed, later(t0, 1)), later(t0, 1));
    let paid = pay.order.clone();
    messages.extend(pay.messages.clone());
    store.apply(pay).await.expect("the payment is applied");
    let (carrier, tracking) = dhl();
    let ship = change_of(&paid, paid.clone().mark_shipped(carrier, tracking, later(t0, 2)), later(t0, 2));
    let shipped = ship.order.clone();
    messages.extend(ship.messages.clone());
    store.apply(ship).await.expect("the shipping is applied");
    let deliver = change_of(&shipped, shipped.clone().mark_delivered(later(t0, 3)), later(t0, 3));
    messages.extend(deliver.messages.clone());
    store.apply(deliver).await.expect("the delivery is applied");

    let timeline = store.timeline(order.id).await.expect("timeline read").expect("the order has a timeline");

    let types: Vec<&str> = timeline.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, LIFECYCLE_AUDIT, "the audit events, oldest first");
    let audit: Vec<_> = messages.iter().filter(|m| m.audit).map(|m| m.event.clone()).collect();
    assert_eq!(timeline, audit, "the events are stored as sent");
    let unknown = OrderId::from_uuid(uuid::Uuid::now_v7());
    assert_eq!(store.timeline(unknown).await.expect("timeline read"), None, "an unknown order has no timeline");
}

async fn pages(store: &dyn SalesStore, query: OrderQuery) -> Vec<Vec<Order>> {
    let mut pages = Vec::new();
    let mut query = query;
    for _ in 0..100 {
        let page = store.orders(query.clone()).await.expect("orders listed");
        assert!(page.items.len() <= query.limit, "a page holds at most {} orders", query.limit);
        pages.push(page.items);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return pages,
        }
    }
    panic!("paging did not end after 100 pages");
}

/// Orders list newest first, filtered by customer and status, and paging with `after = next` yields every
/// matching order exactly once.
pub async fn orders_are_listed_newest_first_with_filters_and_keyset_pages(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    stock(store, "A-1", 100).await;
    let t0 = later(super::fixtures::now(), -100);
    let mut placed = Vec::new();
    for i in 0..7 {
        let customer = if i % 2 == 0 { "alice" } else { "bob" };
        let mut order = place(store, OrderDraft::new(customer).line("A-1", 1).at(later(t0, i)).placement()).await;
        if i % 3 == 0 {
            let pay = change_of(
                &order,
                order.clone().settle_payment(&PaymentOutcome::Completed, later(t0, 50)),
                later(t0, 50),
            );
            order = pay.order.clone();
            store.apply(pay).await.expect("the payment is applied");
        }
        placed.push(order);
    }
    let newest_first: Vec<Order> = placed.iter().rev().cloned().collect();
    let alice: Vec<OrderId> = newest_first.iter().filter(|o| o.customer_id.as_str() == "alice").map(|o| o.id).collect();
    let paid: Vec<OrderId> =
        newest_first.iter().filter(|o| o.status == OrderStatus::PendingShipment).map(|o| o.id).collect();
    let alice_paid: Vec<OrderId> = newest_first
        .iter()
        .filter(|o| o.customer_id.as_str() == "alice" && o.status == OrderStatus::PendingShipment)
        .map(|o| o.id)
        .collect();

    let everything = store.orders(OrderQuery { limit: 100, ..OrderQuery::default() }).await.expect("orders listed");
    assert_eq!(everything.items, newest_first, "all orders, newest first, as stored");
    assert_eq!(everything.next, None, "a list that fits one page has no next key");
    let by_customer = OrderQuery { customer_id: Some("alice".to_owned()), limit: 100, ..OrderQuery::default() };
    assert_eq!(ids(&store.orders(by_customer).await.expect("orders listed").items), alice, "alice's orders");
    let by_status = OrderQuery { status: Some(OrderStatus::PendingShipment), limit: 100, ..OrderQuery::default() };
    assert_eq!(ids(&store.orders(by_status).await.expect("orders listed").items), paid, "paid orders");
    let both = OrderQuery {
        customer_id: Some("alice".to_owned()),
        status: Some(OrderStatus::PendingShipment),
        limit: 100,
        after: None,
    };
    assert_eq!(ids(&store.orders(both).await.expect("orders listed").items), alice_paid, "alice's paid orders");
    let nobody = OrderQuery { customer_id: Some("nobody".to_owned()), limit: 100, ..OrderQuery::default() };
    assert_eq!(store.orders(nobody).await.expect("orders listed").items, vec![], "an unknown customer has none");

    let paged = pages(store, OrderQuery { limit: 3, ..OrderQuery::default() }).await;
    assert_eq!(paged[0].len(), 3, "the first page is full");
    assert_eq!(ids(&paged.concat()), ids(&newest_first), "pages of 3 yield every order once, newest first");
    let paged =
        pages(store, OrderQuery { customer_id: Some("alice".to_owned()), limit: 2, ..OrderQuery::default() }).await;
    assert_eq!(ids(&paged.concat()), alice, "filtered pages yield every match once");
    let paged = pages(store, OrderQuery { limit: 7, ..OrderQuery::default() }).await;
    assert_eq!(ids(&paged.concat()), ids(&newest_first), "an exactly full page loses nothing");
    let unique: HashSet<OrderId> = ids(&paged.concat()).into_iter().collect();
    assert_eq!(unique.len(), 7);
}

/// The catalogue lists in SKU order whatever the insertion order, and paging with `after = next` yields
/// every product once; `products_by_sku` leaves missing SKUs out.
pub async fn products_are_paged_in_sku_order(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    let mut stored = Vec::new();
    for code in ["C-3", "A-1", "E-5", "B-2", "D-4"] {
        stored.push(stock(store, code, 7).await);
    }
    stored.sort_by(|a, b| a.sku.cmp(&b.sku));

    let mut listed = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store.products(2, after.clone()).await.expect("products listed");
        assert!(page.items.len() <= 2, "a page holds at most 2 products");
        listed.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    assert_eq!(listed, stored, "every product once, in SKU order, as stored");
    let first = store.products(2, None).await.expect("products listed");
    assert_eq!(first.items, stored[..2], "the first page is full");
    assert_eq!(first.next, Some(sku("B-2")), "the next key is the last SKU of the page");
    let all = store.products(10, None).await.expect("products listed");
    assert_eq!((all.items.len(), all.next), (5, None), "a catalogue that fits one page has no next key");
    let some = store.products_by_sku(&[sku("E-5"), sku("NOPE-0"), sku("A-1")]).await.expect("products read");
    let found: BTreeSet<Sku> = some.iter().map(|p| p.sku.clone()).collect();
    assert_eq!(found, sorted(&[sku("A-1"), sku("E-5")]), "missing SKUs are left out");
    assert_eq!(some.len(), 2);
}

/// Stock may not drop below what open orders reserve; an update at or above it keeps the reservations and
/// changes name and price.
pub async fn stock_below_reservations_is_refused(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    let original = stock(store, "A-1", 5).await;
    assert_eq!(
        original,
        Product { sku: sku("A-1"), name: name("Product A-1"), price: eur(1000), stock: 5, reserved: 0 }
    );
    place(store, OrderDraft::new("alice").line("A-1", 3).placement()).await;

    let error = store.put_product(sku("A-1"), name("Renamed"), eur(1), 2).await.expect_err("stock below reserved");

    assert!(
        matches!(error, PutProductError::StockBelowReserved { stock: 2, reserved: 3 }),
        "expected StockBelowReserved {{ stock: 2, reserved: 3 }}, got {error:?}"
    );
    assert_eq!(
        product(store, "A-1").await,
        Product { reserved: 3, ..original.clone() },
        "the refused update changes nothing"
    );
    let updated = store.put_product(sku("A-1"), name("Renamed"), eur(1500), 3).await.expect("stock equal to reserved");
    let expected = Product { sku: sku("A-1"), name: name("Renamed"), price: eur(1500), stock: 3, reserved: 3 };
    assert_eq!(updated, expected, "the update keeps the reservations");
    assert_eq!(product(store, "A-1").await, expected, "the update reads back");
}

/// Messages of no stored change (a refused order's notification) are written to the outbox in their
/// order, and nothing else is stored.
pub async fn enqueued_messages_are_owed_in_their_order_and_store_no_order(store: Arc<dyn SalesStore>) {
    let store = store.as_ref();
    let refused = OrderDraft::new("eve").line("A-1", 1).contact("eve@example.com").placement();
    let messages = refused.messages.clone();

    store.enqueue(messages.clone()).await.expect("the messages are written");

    assert_eq!(owed(store).await, message_ids(&messages), "the outbox owes them, in order");
    assert_eq!(store.order(refused.order.id).await.expect("order read"), None, "no order is stored");
    assert_eq!(store.timeline(refused.order.id).await.expect("timeline read"), None, "nor a timeline");
}

/// A sending that counts its runs and ends as `result` says.
fn counted<'a>(
    runs: &'a std::sync::atomic::AtomicUsize,
    result: Result<(), &'static str>,
) -> futures::future::BoxFuture<'a, Result<(), NotifyError>> {
    Box::pin(async move {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        result.map_err(|refused| NotifyError::Refused(refused.to_owned()))
    })
}

/// A notification is sent once per message: a redelivery finds it recorded and sends nothing; a failed
/// sending records nothing, so the next delivery sends it; the same message for another consumer is its own.
pub async fn a_notification_is_sent_once_per_message_and_again_only_after_a_failure(store: Arc<dyn SalesStore>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = AtomicUsize::new(0);
    let first = inbox("m-notify-1", "notifications.requested");

    let failed = store.notify_once(&first, counted(&runs, Err("mailbox full"))).await;
    assert!(
        matches!(failed, Err(NotifyOnceError::Send(NotifyError::Refused(_)))),
        "the failure is returned: {failed:?}"
    );
    let sent = store.notify_once(&first, counted(&runs, Ok(()))).await.expect("the retry sends");
    assert_eq!(sent, ChangeOutcome::Applied);
    let again = store.notify_once(&first, counted(&runs, Ok(()))).await.expect("the redelivery is answered");
    assert_eq!(again, ChangeOutcome::AlreadyProcessed, "a redelivery is recognised");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the failed attempt and the retry ran; the redelivery did not");

    let other = inbox("m-notify-1", "another.consumer");
    assert_eq!(store.notify_once(&other, counted(&runs, Ok(()))).await.expect("sent"), ChangeOutcome::Applied);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the same message for another consumer is sent");
}

/// Deliveries of one message that race send it once: the others either wait and find it sent or are told
/// it is in flight (to be retried), and nothing is sent twice.
pub async fn concurrent_deliveries_of_one_notification_send_it_once(store: Arc<dyn SalesStore>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = AtomicUsize::new(0);
    let entry = inbox("m-notify-race", "notifications.requested");
    let slow = || -> futures::future::BoxFuture<'_, Result<(), NotifyError>> {
        Box::pin(async {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Ok(())
        })
    };
    let outcomes = futures::future::join_all((0..8).map(|_| store.notify_once(&entry, slow()))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one delivery sent it: {outcomes:?}");
    let applied = outcomes.iter().filter(|o| matches!(o, Ok(ChangeOutcome::Applied))).count();
    assert_eq!(applied, 1, "one delivery recorded it: {outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(_) | Err(NotifyOnceError::InFlight))),
        "the others found it sent or in flight: {outcomes:?}"
    );
    let after = store.notify_once(&entry, slow()).await.expect("answered");
    assert_eq!(after, ChangeOutcome::AlreadyProcessed, "once sent, it stays sent");
}
