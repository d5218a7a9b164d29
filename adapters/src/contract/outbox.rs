//! The `OutboxStore` contract: commit order, batches held against other takers, per-destination settling
//! and wake-ups. Rows are written through the store's own write methods, via an [`OutboxFixture`] (which
//! the relay's tests in `orderflow-runtime` use too).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::ShipmentOrder;
use orderflow_domain::{CustomerId, EventId, OrderId, Shipment, ShipmentId};
use orderflow_messages::RoutingKey;
use orderflow_ports::delivery::{DeliveryStore, ShipmentChange};
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxStore};
use orderflow_ports::sales::{PlaceOutcome, SalesStore};
use uuid::Uuid;

use super::fixtures::{OrderDraft, address, eur, message, message_ids, name, owed, sku};

/// A store under test as an outbox, with a way to write rows through its own write methods.
#[async_trait]
pub trait OutboxFixture: Send + Sync {
    /// The store's outbox.
    fn outbox(&self) -> Arc<dyn OutboxStore>;

    /// Writes `messages` as the outbox rows of one ordinary write of the store (one transaction).
    async fn write(&self, messages: Vec<OutboxMessage>);
}

/// Writes outbox rows by placing one single-unit order of a fresh product per write.
pub struct SalesOutbox {
    store: Arc<dyn SalesStore>,
    // The same store as its outbox: made from the concrete type, since the MSRV cannot upcast trait objects.
    outbox: Arc<dyn OutboxStore>,
    writes: AtomicU32,
}

impl SalesOutbox {
    /// A fixture over an empty Sales store.
    pub fn new<S: SalesStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        Self { outbox: Arc::clone(&store) as Arc<dyn OutboxStore>, store, writes: AtomicU32::new(0) }
    }
}

#[async_trait]
impl OutboxFixture for SalesOutbox {
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::clone(&self.outbox)
    }

    async fn write(&self, messages: Vec<OutboxMessage>) {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        let code = format!("OUTBOX-{n}");
        self.store.put_product(sku(&code), name("Outbox fixture"), eur(100), 1).await.expect("product stored");
        let mut placement = OrderDraft::new("outbox").line(&code, 1).placement();
        placement.messages = messages;
        let outcome = self.store.place_order(placement).await.expect("the order is placed");
        assert!(matches!(outcome, PlaceOutcome::Created(_)), "the fixture's order is created, got {outcome:?}");
    }
}

/// Writes outbox rows by creating one shipment for a fresh order per write.
pub struct DeliveryOutbox {
    store: Arc<dyn DeliveryStore>,
    outbox: Arc<dyn OutboxStore>,
}

impl DeliveryOutbox {
    /// A fixture over an empty Delivery store.
    pub fn new<S: DeliveryStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        Self { outbox: Arc::clone(&store) as Arc<dyn OutboxStore>, store }
    }
}

#[async_trait]
impl OutboxFixture for DeliveryOutbox {
    fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::clone(&self.outbox)
    }

    async fn write(&self, messages: Vec<OutboxMessage>) {
        let order = ShipmentOrder {
            order_id: OrderId::from_uuid(Uuid::now_v7()),
            customer_id: CustomerId::parse("outbox").expect("a customer"),
            lines: vec![],
            shipping_address: address(),
        };
        let (shipment, _) = Shipment::create(ShipmentId::from_uuid(Uuid::now_v7()), order, super::fixtures::now());
        let change = ShipmentChange { shipment, expected_version: None, messages, inbox: None };
        self.store.save(change).await.expect("the shipment is saved");
    }
}

/// Comfortably longer than a wake-up or a rollback takes.
const PAST_SHORT: Duration = Duration::from_millis(150);

/// The ids `outbox` owes `destination` once a batch dropped unsettled has been handed back: a store may
/// roll it back in the background, so this asks again for a while until the rows are there.
async fn owed_again(outbox: &dyn OutboxStore, destination: Destination, expected: usize) -> Vec<EventId> {
    let started = Instant::now();
    loop {
        let ids = owed(outbox, destination).await;
        if ids.len() >= expected || started.elapsed() > Duration::from_secs(5) {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The command backlog counts the rows still owed to the broker — taken or not, audit-only rows not —
/// and ages from the oldest of them; settling them empties it.
pub async fn the_command_backlog_counts_owed_commands_and_ages_from_the_oldest(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    assert_eq!(outbox.command_backlog().await.expect("backlog read"), Default::default(), "empty at first");
    fixture.write(vec![message(Some(RoutingKey::OrdersCreated), true), message(None, true)]).await;
    tokio::time::sleep(PAST_SHORT).await;
    fixture.write(vec![message(Some(RoutingKey::OrdersShipped), false)]).await;
    let batch = outbox.take(Destination::Command, 100).await.expect("taken");

    let backlog = outbox.command_backlog().await.expect("backlog read");

    assert_eq!(backlog.rows, 2, "both commands, taken or not, and not the audit-only row");
    assert!(backlog.oldest >= PAST_SHORT, "the oldest command waited {:?}", backlog.oldest);
    assert!(backlog.oldest < Duration::from_secs(60), "the oldest command waited {:?}", backlog.oldest);
    let taken = message_ids(batch.messages());
    batch.settle(&taken).await.expect("settled");
    assert_eq!(outbox.command_backlog().await.expect("backlog read"), Default::default(), "nothing owed");
}

/// Rows are taken oldest first, across and within writes, at most `limit` of them, and a row settled is
/// not taken again. Each destination owes only its own rows, as written.
pub async fn rows_are_taken_in_commit_order_and_each_destination_owes_its_own(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let first = vec![message(None, true), message(Some(RoutingKey::OrdersCreated), true)];
    let second = vec![message(Some(RoutingKey::OrdersShipped), true)];
    let third = vec![message(None, true), message(Some(RoutingKey::PaymentsRequested), false)];
    let audited: Vec<EventId> = [&first, &second, &third]
        .into_iter()
        .flat_map(|w| w.iter().filter(|m| m.audit).map(OutboxMessage::id).collect::<Vec<_>>())
        .collect();
    let commands = vec![first[1].id(), second[0].id(), third[1].id()];
    for write in [first.clone(), second, third] {
        fixture.write(write).await;
    }

    let head = outbox.take(Destination::Audit, 2).await.expect("taken");
    let head_ids = message_ids(head.messages());
    let first_row = head.messages()[0].clone();
    head.settle(&head_ids).await.expect("settled");
    let rest = owed(outbox.as_ref(), Destination::Audit).await;

    assert_eq!(head_ids, audited[..2], "the first batch takes the two oldest rows");
    assert_eq!(first_row.event, first[0].event, "a row reads back as written");
    assert!(first_row.audit && first_row.command.is_none(), "an audit row owes the audit stream only");
    assert_eq!(rest, audited[2..], "the settled rows are not taken again; the rest come in order");
    assert_eq!(owed(outbox.as_ref(), Destination::Command).await, commands, "commands are owed apart");
    let command = outbox.take(Destination::Command, 1).await.expect("taken");
    let row = command.messages()[0].clone();
    command.settle(&[]).await.expect("handed back");
    assert_eq!(row.command, Some(RoutingKey::OrdersCreated), "a command row keeps its routing key");
    assert_eq!(row.event, first[1].event, "a command row reads back as written");
}

/// While a batch is held, no other taker gets its rows (or any other row of its orders); the other
/// destination is not held back; once handed back unsettled, the rows are owed as before.
pub async fn a_held_batch_keeps_its_rows_from_other_takers_until_it_settles(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let row = message(Some(RoutingKey::OrdersCreated), true);
    fixture.write(vec![row.clone()]).await;

    let held = outbox.take(Destination::Command, 10).await.expect("taken");
    let during = owed(outbox.as_ref(), Destination::Command).await;
    let other = owed(outbox.as_ref(), Destination::Audit).await;
    let held_ids = message_ids(held.messages());
    held.settle(&[]).await.expect("handed back");
    let after = owed(outbox.as_ref(), Destination::Command).await;

    assert_eq!(held_ids, vec![row.id()], "the row is taken");
    assert_eq!(during, vec![], "a held row is not taken again");
    assert_eq!(other, vec![row.id()], "the other destination is not held back");
    assert_eq!(after, vec![row.id()], "a batch handed back unsettled leaves its rows owed");
}

/// A batch dropped without settling (a relay that crashed or was cancelled) leaves its rows owed, and
/// another taker gets them.
pub async fn a_batch_dropped_unsettled_leaves_its_rows_owed(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let rows = vec![message(Some(RoutingKey::OrdersCreated), false), message(Some(RoutingKey::OrdersShipped), false)];
    fixture.write(rows.clone()).await;

    let batch = outbox.take(Destination::Command, 10).await.expect("taken");
    assert_eq!(batch.messages().len(), 2, "both rows are taken");
    drop(batch);

    let again = owed_again(outbox.as_ref(), Destination::Command, 2).await;
    assert_eq!(again, message_ids(&rows), "the rows are owed again, in order");
}

/// Rows of a batch left out of its settle (not published) are taken again first, ahead of rows written
/// after them.
pub async fn rows_left_out_of_a_settle_are_taken_again_first(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let earlier = message(Some(RoutingKey::OrdersCreated), false);
    let published = message(Some(RoutingKey::OrdersCreated), false);
    fixture.write(vec![earlier.clone(), published.clone()]).await;
    let batch = outbox.take(Destination::Command, 10).await.expect("taken");
    assert_eq!(message_ids(batch.messages()), vec![earlier.id(), published.id()]);
    let later = message(Some(RoutingKey::OrdersShipped), false);
    fixture.write(vec![later.clone()]).await;

    batch.settle(&[published.id()]).await.expect("settled");

    let again = owed(outbox.as_ref(), Destination::Command).await;
    assert_eq!(again, vec![earlier.id(), later.id()], "the unpublished row comes first, in commit order");
}

/// A row settled for every destination it has is never taken again; ids a batch does not hold are
/// ignored by its settle.
pub async fn a_row_settled_for_all_its_destinations_is_not_taken_again(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let both = message(Some(RoutingKey::OrdersCreated), true);
    let audit_only = message(None, true);
    let command_only = message(Some(RoutingKey::OrdersShipped), false);
    let stranger = message(Some(RoutingKey::OrdersShipped), true);
    fixture.write(vec![both.clone(), audit_only.clone(), command_only.clone()]).await;

    let commands = outbox.take(Destination::Command, 10).await.expect("taken");
    assert_eq!(message_ids(commands.messages()), vec![both.id(), command_only.id()]);
    commands.settle(&[both.id(), command_only.id(), stranger.id()]).await.expect("settled");
    let audit = outbox.take(Destination::Audit, 10).await.expect("taken");
    assert_eq!(message_ids(audit.messages()), vec![both.id(), audit_only.id()]);
    audit.settle(&[both.id(), audit_only.id(), audit_only.id()]).await.expect("settled");

    assert_eq!(owed(outbox.as_ref(), Destination::Command).await, vec![], "no command is owed any more");
    assert_eq!(owed(outbox.as_ref(), Destination::Audit).await, vec![], "no audit record is owed any more");
}

/// A row settled for one of its two destinations is still owed to the other.
pub async fn a_row_with_one_destination_left_is_owed_to_only_that_one(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let row = message(Some(RoutingKey::OrdersCreated), true);
    fixture.write(vec![row.clone()]).await;

    let commands = outbox.take(Destination::Command, 10).await.expect("taken");
    commands.settle(&[row.id()]).await.expect("settled");

    assert_eq!(owed(outbox.as_ref(), Destination::Command).await, vec![], "the command went out");
    assert_eq!(owed(outbox.as_ref(), Destination::Audit).await, vec![row.id()], "the audit stream is still owed it");
}

/// A row with no destination (neither a command nor audited) owes nothing, so it is never taken.
pub async fn a_row_without_destinations_is_never_taken(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let nowhere = message(None, false);
    let owed_row = message(None, true);
    fixture.write(vec![nowhere, owed_row.clone()]).await;

    assert_eq!(owed(outbox.as_ref(), Destination::Audit).await, vec![owed_row.id()]);
    assert_eq!(owed(outbox.as_ref(), Destination::Command).await, vec![]);
}

/// `wait_for_new` returns soon after a row is written, long before its maximum wait, for each destination.
pub async fn wait_for_new_returns_when_a_row_is_written(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let row = message(Some(RoutingKey::OrdersCreated), true);
    let writer = {
        let fixture = Arc::clone(&fixture);
        let row = row.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            fixture.write(vec![row]).await;
        })
    };

    let started = Instant::now();
    let (_, _) = tokio::join!(
        outbox.wait_for_new(Destination::Command, Duration::from_secs(5)),
        outbox.wait_for_new(Destination::Audit, Duration::from_secs(5))
    );
    let waited = started.elapsed();

    writer.await.expect("the writer finished");
    assert!(waited < Duration::from_secs(4), "wait_for_new ignored the write and slept {waited:?}");
    assert_eq!(owed(outbox.as_ref(), Destination::Command).await, vec![row.id()]);
}
