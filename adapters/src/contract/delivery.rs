//! The `DeliveryStore` contract: one shipment per order, optimistic versions, the inbox, and the filtered,
//! keyset-paged shipment list. Each check takes a fresh, empty store and panics on a violation.

use std::sync::Arc;

use orderflow_domain::ShipmentOrder;
use orderflow_domain::{
    Carrier, CustomerId, EventId, OrderId, Quantity, Shipment, ShipmentEvent, ShipmentId, ShipmentStatus, Step,
    Timestamp, TrackingNumber,
};
use orderflow_messages::ShipmentLine;
use orderflow_messages::Source;
use orderflow_ports::delivery::{DeliveryStore, Due, ShipmentChange, ShipmentQuery};
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{ChangeError, ChangeOutcome};
use uuid::Uuid;

use super::fixtures::{address, event_id, inbox, later, message_ids, sku};

fn delivery_messages(event: &ShipmentEvent, at: Timestamp) -> Vec<OutboxMessage> {
    vec![OutboxMessage::from_outgoing(
        orderflow_messages::shipment_message(event),
        event_id(),
        Source::Delivery,
        at,
        None,
    )]
}

fn paid_order(order_id: OrderId) -> ShipmentOrder {
    ShipmentOrder {
        order_id,
        customer_id: CustomerId::parse("alice").expect("a customer"),
        lines: vec![ShipmentLine { sku: sku("A-1"), quantity: Quantity::new(2).expect("a quantity") }],
        shipping_address: address(),
    }
}

/// Creating a new shipment for `order_id` at `at`.
fn creation(order_id: OrderId, at: Timestamp) -> ShipmentChange {
    let (shipment, event) = Shipment::create(ShipmentId::from_uuid(Uuid::now_v7()), paid_order(order_id), at);
    ShipmentChange { shipment, expected_version: None, messages: delivery_messages(&event, at), inbox: None }
}

/// The change a transition of `before` makes; panics when it is refused or changes nothing.
fn change_of(before: &Shipment, step: Step<Shipment, ShipmentEvent>, at: Timestamp) -> ShipmentChange {
    match step {
        Step::Applied { state, event } => ShipmentChange {
            shipment: state,
            expected_version: Some(before.version),
            messages: delivery_messages(&event, at),
            inbox: None,
        },
        Step::Unchanged(s) => panic!("the transition left shipment {} unchanged", s.id),
    }
}

fn shipping(before: &Shipment, at: Timestamp) -> ShipmentChange {
    let carrier = Carrier::parse("DHL").expect("a carrier");
    let tracking = TrackingNumber::parse("TRK-1").expect("a tracking number");
    change_of(before, before.clone().ship(carrier, tracking, at).expect("a pending shipment ships"), at)
}

async fn save(store: &dyn DeliveryStore, change: ShipmentChange) -> Shipment {
    let shipment = change.shipment.clone();
    assert_eq!(store.save(change).await.expect("the shipment is saved"), ChangeOutcome::Applied);
    shipment
}

async fn owed(store: &dyn DeliveryStore) -> Vec<EventId> {
    super::fixtures::drain_outbox(store).await
}

fn ids(shipments: &[Shipment]) -> Vec<ShipmentId> {
    shipments.iter().map(|s| s.id).collect()
}

/// A second shipment for an order that has one is a conflict, and writes nothing.
pub async fn creating_a_second_shipment_for_an_order_is_a_conflict(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let first_change = creation(order_id, super::fixtures::now());
    let first_messages = message_ids(&first_change.messages);
    let first = save(store, first_change).await;
    let second = creation(order_id, super::fixtures::now());
    let second_id = second.shipment.id;

    let error = store.save(second).await.expect_err("the order already has a shipment");

    assert!(matches!(error, ChangeError::Conflict { .. }), "expected Conflict, got {error:?}");
    assert_eq!(store.shipment(second_id).await.expect("shipment read"), None, "the second shipment is not stored");
    assert_eq!(
        store.shipment_for_order(order_id).await.expect("shipment read"),
        Some(first.clone()),
        "the order keeps its first shipment"
    );
    assert_eq!(store.shipment(first.id).await.expect("shipment read"), Some(first));
    assert_eq!(owed(store).await, first_messages, "only the first shipment wrote outbox rows");
}

/// A change computed from a version the shipment has moved past is a conflict, and writes nothing.
pub async fn changing_with_a_stale_version_is_a_conflict(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let created = save(store, creation(OrderId::from_uuid(Uuid::now_v7()), super::fixtures::now())).await;
    let shipped = save(store, shipping(&created, super::fixtures::now())).await;
    owed(store).await;
    // Computed from the version before shipping.
    let stale_cancel = change_of(&created, created.clone().cancel(super::fixtures::now()), super::fixtures::now());

    let error = store.save(stale_cancel).await.expect_err("the change is stale");

    assert!(
        matches!(error, ChangeError::Conflict { expected } if expected == created.version),
        "expected Conflict {{ expected: {} }}, got {error:?}",
        created.version
    );
    assert_eq!(store.shipment(created.id).await.expect("shipment read"), Some(shipped), "the shipment stays shipped");
    assert_eq!(owed(store).await, vec![], "the refused change wrote no outbox rows");
}

/// Changing a shipment the store does not hold is `NotFound`, and writes nothing.
pub async fn changing_an_unknown_shipment_is_not_found(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let (never_saved, _) = Shipment::create(
        ShipmentId::from_uuid(Uuid::now_v7()),
        paid_order(OrderId::from_uuid(Uuid::now_v7())),
        super::fixtures::now(),
    );

    let error =
        store.save(shipping(&never_saved, super::fixtures::now())).await.expect_err("the shipment does not exist");

    assert!(matches!(error, ChangeError::NotFound), "expected NotFound, got {error:?}");
    assert_eq!(store.shipment(never_saved.id).await.expect("shipment read"), None, "nothing is created");
    assert_eq!(
        store.shipment_for_order(never_saved.order.order_id).await.expect("shipment read"),
        None,
        "nothing is created for the order"
    );
    assert_eq!(owed(store).await, vec![], "no outbox rows are written");
}

/// A redelivered command (same message id and consumer) is `AlreadyProcessed` and writes nothing, whether
/// it would create a shipment or change one; another consumer of the same message id is processed.
pub async fn a_redelivered_message_is_already_processed(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let mut create = creation(order_id, super::fixtures::now());
    create.inbox = Some(inbox("msg-1", "orders.created"));
    let first = save(store, create).await;
    owed(store).await;
    // A consumer handling the redelivery would build a new shipment with a new id.
    let mut again = creation(order_id, super::fixtures::now());
    again.inbox = Some(inbox("msg-1", "orders.created"));
    let again_id = again.shipment.id;
    let mut cancel = change_of(&first, first.clone().cancel(super::fixtures::now()), super::fixtures::now());
    cancel.inbox = Some(inbox("msg-1", "orders.created"));

    let redelivered = store.save(again).await.expect("the redelivery is answered");
    let seen_change = store.save(cancel.clone()).await.expect("the seen message is answered");

    assert_eq!(redelivered, ChangeOutcome::AlreadyProcessed, "the redelivered creation is already processed");
    assert_eq!(seen_change, ChangeOutcome::AlreadyProcessed, "any change with a seen entry is skipped");
    assert_eq!(store.shipment(again_id).await.expect("shipment read"), None, "no second shipment is stored");
    assert_eq!(
        store.shipment_for_order(order_id).await.expect("shipment read"),
        Some(first.clone()),
        "the first shipment is unchanged"
    );
    let all = store.shipments(ShipmentQuery { limit: 100, ..ShipmentQuery::default() }).await.expect("listed");
    assert_eq!(ids(&all.items), vec![first.id], "one shipment is listed");
    assert_eq!(owed(store).await, vec![], "no outbox rows are written");

    cancel.inbox = Some(inbox("msg-1", "orders.cancel_requested"));
    assert_eq!(
        store.save(cancel).await.expect("the other consumer's change is applied"),
        ChangeOutcome::Applied,
        "the same message id for another consumer is processed"
    );
}

/// A batch commits every change that applies; a stale one, an unknown one and a redelivered one in the
/// same batch each get their own outcome and leave nothing behind — not even the stale change's inbox
/// entry, so its message is processed when it comes again.
pub async fn a_batch_commits_what_applies_and_refuses_the_rest_alone(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let now = super::fixtures::now;
    let (a, b, stale_base) = (
        save(store, creation(OrderId::from_uuid(Uuid::now_v7()), now())).await,
        save(store, creation(OrderId::from_uuid(Uuid::now_v7()), now())).await,
        save(store, creation(OrderId::from_uuid(Uuid::now_v7()), now())).await,
    );
    let moved_on = save(store, shipping(&stale_base, now())).await;
    let mut seen = shipping(&b, now());
    seen.inbox = Some(inbox("msg-seen", "orders.cancel_requested"));
    store.save_all(vec![]).await.expect("an empty batch is fine");
    owed(store).await;
    let (never_saved, _) =
        Shipment::create(ShipmentId::from_uuid(Uuid::now_v7()), paid_order(OrderId::from_uuid(Uuid::now_v7())), now());
    let mut stale = change_of(&stale_base, stale_base.clone().cancel(now()), now());
    stale.inbox = Some(inbox("msg-stale", "orders.cancel_requested"));
    let mut redelivered = shipping(&b, now());
    redelivered.inbox = Some(inbox("msg-seen", "orders.cancel_requested"));
    store.save(seen).await.expect("the first delivery is applied");
    let shipped_b = store.shipment(b.id).await.expect("read").expect("b exists");
    owed(store).await;
    let ship_a = shipping(&a, now());
    let shipped_a = ship_a.shipment.clone();
    let ship_a_messages = message_ids(&ship_a.messages);

    let outcomes = store
        .save_all(vec![ship_a, stale, shipping(&never_saved, now()), redelivered])
        .await
        .expect("the batch is committed");

    assert!(matches!(outcomes[0], Ok(ChangeOutcome::Applied)), "a ships: {:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Err(ChangeError::Conflict { .. })), "stale: {:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Err(ChangeError::NotFound)), "unknown: {:?}", outcomes[2]);
    assert!(matches!(outcomes[3], Ok(ChangeOutcome::AlreadyProcessed)), "redelivered: {:?}", outcomes[3]);
    assert_eq!(outcomes.len(), 4);
    assert_eq!(store.shipment(a.id).await.expect("read"), Some(shipped_a), "a is shipped");
    assert_eq!(
        store.shipment(stale_base.id).await.expect("read"),
        Some(moved_on.clone()),
        "the stale change wrote nothing"
    );
    assert_eq!(store.shipment(b.id).await.expect("read"), Some(shipped_b), "the redelivery wrote nothing");
    assert_eq!(owed(store).await, ship_a_messages, "only the applied change's messages are owed");
    let mut again = change_of(&moved_on, moved_on.clone().deliver(now()).expect("a shipped one delivers"), now());
    again.inbox = Some(inbox("msg-stale", "orders.cancel_requested"));
    assert_eq!(
        store.save(again).await.expect("saved"),
        ChangeOutcome::Applied,
        "the stale change's inbox entry was taken back with it"
    );
}

/// Creations in a batch: new shipments are created with their messages and inbox entries; one for an
/// order that has its shipment, a second one for an order in the same batch, and a redelivery write nothing.
pub async fn a_batch_of_creations_creates_each_new_shipment_once(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let now = super::fixtures::now;
    let (fresh, other, taken) =
        (OrderId::from_uuid(Uuid::now_v7()), OrderId::from_uuid(Uuid::now_v7()), OrderId::from_uuid(Uuid::now_v7()));
    let existing = save(store, creation(taken, now())).await;
    let mut processed = creation(OrderId::from_uuid(Uuid::now_v7()), now());
    processed.inbox = Some(inbox("created-seen", "orders.created"));
    let processed_order = processed.shipment.order.order_id;
    store.save(processed).await.expect("the first delivery is applied");
    owed(store).await;

    let mut first = creation(fresh, now());
    first.inbox = Some(inbox("created-fresh", "orders.created"));
    let mut redelivered = creation(processed_order, now());
    redelivered.inbox = Some(inbox("created-seen", "orders.created"));
    let changes =
        vec![first.clone(), creation(taken, now()), creation(fresh, now()), redelivered, creation(other, now())];
    let expected_messages: Vec<EventId> =
        [&changes[0], &changes[4]].iter().flat_map(|c| message_ids(&c.messages)).collect();

    let outcomes = store.save_all(changes.clone()).await.expect("the batch is committed");

    assert!(matches!(outcomes[0], Ok(ChangeOutcome::Applied)), "fresh: {:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Err(ChangeError::Conflict { .. })), "taken: {:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Err(ChangeError::Conflict { .. })), "fresh again: {:?}", outcomes[2]);
    assert!(matches!(outcomes[3], Ok(ChangeOutcome::AlreadyProcessed)), "redelivered: {:?}", outcomes[3]);
    assert!(matches!(outcomes[4], Ok(ChangeOutcome::Applied)), "other: {:?}", outcomes[4]);
    assert_eq!(store.shipment_for_order(fresh).await.expect("read"), Some(first.shipment.clone()));
    assert_eq!(store.shipment(changes[2].shipment.id).await.expect("read"), None, "one shipment per order");
    assert_eq!(store.shipment_for_order(taken).await.expect("read"), Some(existing), "the first one stands");
    assert_eq!(store.shipment(changes[4].shipment.id).await.expect("read"), Some(changes[4].shipment.clone()));
    let mut owed_now = owed(store).await;
    owed_now.sort();
    let mut expected = expected_messages;
    expected.sort();
    assert_eq!(owed_now, expected, "the messages of the two new shipments, nothing else");
    assert_eq!(
        store.save(first).await.expect("a redelivery is no error"),
        ChangeOutcome::AlreadyProcessed,
        "the batch recorded the inbox entry"
    );
}

async fn pages(store: &dyn DeliveryStore, query: ShipmentQuery) -> Vec<Vec<Shipment>> {
    let mut pages = Vec::new();
    let mut query = query;
    for _ in 0..100 {
        let page = store.shipments(query.clone()).await.expect("shipments listed");
        assert!(page.items.len() <= query.limit, "a page holds at most {} shipments", query.limit);
        pages.push(page.items);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return pages,
        }
    }
    panic!("paging did not end after 100 pages");
}

/// Shipments list newest first (or oldest first), filtered by status or tracking number, and paging with
/// `after = next` yields every match exactly once.
pub async fn shipments_filter_by_status_and_page_keyset(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let t0 = later(super::fixtures::now(), -1000);
    let mut saved = Vec::new();
    for i in 0..6 {
        let mut shipment = save(store, creation(OrderId::from_uuid(Uuid::now_v7()), later(t0, i))).await;
        if i % 2 == 1 {
            shipment = save(store, shipping(&shipment, later(t0, 100 + i))).await;
        }
        saved.push(shipment);
    }
    let newest_first: Vec<Shipment> = saved.iter().rev().cloned().collect();
    let matching = |f: &dyn Fn(&Shipment) -> bool| -> Vec<ShipmentId> {
        newest_first.iter().filter(|s| f(s)).map(|s| s.id).collect()
    };
    let query = |status, limit| ShipmentQuery { status, limit, ..ShipmentQuery::default() };

    let everything = store.shipments(query(None, 100)).await.expect("shipments listed");
    assert_eq!(everything.items, newest_first, "all shipments, newest first, as stored");
    assert_eq!(everything.next, None, "a list that fits one page has no next key");
    let pending = store.shipments(query(Some(ShipmentStatus::Pending), 100)).await.expect("listed");
    assert_eq!(ids(&pending.items), matching(&|s| s.status == ShipmentStatus::Pending), "pending shipments");
    let none = store.shipments(query(Some(ShipmentStatus::Delivered), 100)).await.expect("listed");
    assert_eq!(none.items, vec![], "no shipment is delivered");

    let paged = pages(store, query(None, 4)).await;
    assert_eq!(paged[0].len(), 4, "the first page is full");
    assert_eq!(ids(&paged.concat()), ids(&newest_first), "pages of 4 yield every shipment once, newest first");
    let paged = pages(store, query(Some(ShipmentStatus::Pending), 1)).await;
    assert_eq!(
        ids(&paged.concat()),
        matching(&|s| s.status == ShipmentStatus::Pending),
        "filtered pages yield every match once"
    );
    let paged = pages(store, query(None, 6)).await;
    assert_eq!(ids(&paged.concat()), ids(&newest_first), "an exactly full page loses nothing");

    let oldest_first = |status, limit| ShipmentQuery { oldest_first: true, ..query(status, limit) };
    let paged = pages(store, oldest_first(Some(ShipmentStatus::Pending), 1)).await;
    let mut queue = matching(&|s| s.status == ShipmentStatus::Pending);
    queue.reverse();
    assert_eq!(ids(&paged.concat()), queue, "the work queue pages oldest first");

    let tracking = TrackingNumber::parse("TRK-1").expect("a tracking number");
    let by_tracking = ShipmentQuery { tracking_number: Some(tracking), ..query(None, 10) };
    let found = store.shipments(by_tracking).await.expect("searched");
    assert_eq!(ids(&found.items), matching(&|s| s.tracking_number.is_some()), "a tracking number finds its shipments");
    let unknown = ShipmentQuery { tracking_number: TrackingNumber::parse("NOPE-0").ok(), ..query(None, 10) };
    assert_eq!(store.shipments(unknown).await.expect("searched").items, vec![], "an unknown one finds nothing");
}

/// The autopilot's due list holds the shipments of one status last changed before an instant, the longest
/// waiting first whatever order they were created in, and no more than asked.
pub async fn due_shipments_come_longest_waiting_first(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let t0 = later(super::fixtures::now(), -1000);
    let mut saved = Vec::new();
    // Created in id order, but changed at times that follow neither that order nor its reverse.
    for offset in [3, 1, 4, 0, 5, 2] {
        saved.push(save(store, creation(OrderId::from_uuid(Uuid::now_v7()), later(t0, offset))).await);
    }
    let shipped = save(store, shipping(&saved[2], later(t0, 6))).await;

    let due = |status, cutoff, limit| async move {
        let due = store.due(status, cutoff, limit).await.expect("listed");
        due.into_iter().map(|d| d.shipment).collect::<Vec<_>>()
    };
    let expected = [3, 1, 5, 0].map(|i| saved[i].id);
    let pending = due(ShipmentStatus::Pending, later(t0, 5), 100).await;
    assert_eq!(ids(&pending), expected, "pending and changed before t0+5, longest waiting first");
    let first_two = due(ShipmentStatus::Pending, later(t0, 5), 2).await;
    assert_eq!(ids(&first_two), expected[..2], "no more than the limit, the longest waiting kept");
    let due_shipped = due(ShipmentStatus::Shipped, later(t0, 7), 100).await;
    assert_eq!(ids(&due_shipped), [shipped.id], "only the shipped one, once its change is before the cutoff");
    let not_yet = due(ShipmentStatus::Shipped, later(t0, 6), 100).await;
    assert_eq!(not_yet, vec![], "changed at the cutoff is not before it");
}

/// A due shipment comes with the trace context its creation's messages carried, kept through its later
/// changes, so the autopilot's steps continue the order's trace; one created without any has none.
pub async fn a_due_shipment_carries_the_trace_of_its_creation(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let t0 = later(super::fixtures::now(), -1000);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = creation(OrderId::from_uuid(Uuid::now_v7()), t0);
    for message in &mut traced.messages {
        message.event.traceparent = Some(traceparent.to_owned());
    }
    let traced = save(store, traced).await;
    let shipped = save(store, shipping(&traced, later(t0, 1))).await;
    let untraced = save(store, creation(OrderId::from_uuid(Uuid::now_v7()), t0)).await;

    let due = store.due(ShipmentStatus::Shipped, later(t0, 2), 100).await.expect("listed");
    let mine: Vec<&Due> = due.iter().filter(|d| d.shipment.id == shipped.id).collect();
    assert_eq!(mine.len(), 1, "the shipped one is due");
    assert_eq!(mine[0].traceparent.as_deref(), Some(traceparent), "its creation's trace, kept through shipping");
    let pending = store.due(ShipmentStatus::Pending, later(t0, 2), 100).await.expect("listed");
    let other = pending.iter().find(|d| d.shipment.id == untraced.id).expect("the untraced one is due");
    assert_eq!(other.traceparent, None, "a creation without trace context leaves none");
}

/// A console session signed out stays signed out, whichever replica asks, and no other is; signing out
/// twice is harmless, and the record of a session past its end is forgotten at a later sign-out.
pub async fn a_signed_out_console_session_stays_signed_out_and_no_other_is(store: Arc<dyn DeliveryStore>) {
    let store = store.as_ref();
    let now = super::fixtures::now();
    let session = format!("session-{}", Uuid::now_v7());
    let other = format!("session-{}", Uuid::now_v7());
    let ending = format!("session-{}", Uuid::now_v7());
    assert!(!store.signed_out(&session).await.expect("read"), "not signed out yet");

    store.sign_out(&session, later(now, 3600), now).await.expect("signed out");
    store.sign_out(&session, later(now, 3600), now).await.expect("signed out again");
    store.sign_out(&ending, later(now, 10), now).await.expect("signed out");
    assert!(store.signed_out(&session).await.expect("read"), "signed out");
    assert!(store.signed_out(&ending).await.expect("read"), "signed out until it would have ended");
    assert!(!store.signed_out(&other).await.expect("read"), "another session is not");

    store.sign_out(&other, later(now, 3600), later(now, 11)).await.expect("signed out");
    assert!(!store.signed_out(&ending).await.expect("read"), "a session past its end is forgotten");
    assert!(store.signed_out(&session).await.expect("read"), "one still running is kept");
}
