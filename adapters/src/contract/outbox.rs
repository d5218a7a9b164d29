//! The `OutboxStore` contract, and the relay over it: commit order, leases, per-destination marking,
//! wake-ups, and at-least-once publishing through a failing broker. Rows are written through the store's
//! own write methods, via an [`OutboxFixture`].

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::ShipmentOrder;
use orderflow_domain::{CustomerId, EventId, OrderId, Shipment, ShipmentId};
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::delivery::{DeliveryStore, ShipmentChange};
use orderflow_ports::messaging::{CommandPublisher, PublishError};
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxRelay, OutboxStore, RelaySettings};
use orderflow_ports::sales::{PlaceOutcome, SalesStore};
use uuid::Uuid;

use super::fixtures::{OrderDraft, address, eur, message, message_ids, name, sku};
use crate::memory::{BusSettings, InMemoryAuditLog, InMemoryBus};
use crate::system::SystemClock;

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

/// A lease long enough that nothing claimed in a check comes back during it.
const LONG: Duration = Duration::from_secs(60);
/// A lease short enough to wait out in a check.
const SHORT: Duration = Duration::from_millis(50);
/// Comfortably longer than [`SHORT`].
const PAST_SHORT: Duration = Duration::from_millis(150);

/// The ids a claim for `destination` returns now.
async fn owed(outbox: &dyn OutboxStore, destination: Destination, lease: Duration) -> Vec<EventId> {
    message_ids(&outbox.claim(destination, 100, lease).await.expect("claimed"))
}

/// The command backlog counts the rows still owed to the broker — claimed or not, audit-only rows not —
/// and ages from the oldest of them; marking them published empties it.
pub async fn the_command_backlog_counts_owed_commands_and_ages_from_the_oldest(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    assert_eq!(outbox.command_backlog().await.expect("backlog read"), Default::default(), "empty at first");
    fixture.write(vec![message(Some(RoutingKey::OrdersCreated), true), message(None, true)]).await;
    tokio::time::sleep(PAST_SHORT).await;
    fixture.write(vec![message(Some(RoutingKey::OrdersShipped), false)]).await;
    let claimed = owed(outbox.as_ref(), Destination::Command, LONG).await;

    let backlog = outbox.command_backlog().await.expect("backlog read");

    assert_eq!(backlog.rows, 2, "both commands, claimed or not, and not the audit-only row");
    assert!(backlog.oldest >= PAST_SHORT, "the oldest command waited {:?}", backlog.oldest);
    assert!(backlog.oldest < LONG, "the oldest command waited {:?}", backlog.oldest);
    outbox.mark_published(Destination::Command, &claimed).await.expect("marked");
    assert_eq!(outbox.command_backlog().await.expect("backlog read"), Default::default(), "nothing owed");
}

/// Claims return rows oldest first, across and within writes, at most `limit` of them; rows still leased
/// are skipped by the next claim. Each destination sees only the rows owed to it.
pub async fn claimed_rows_come_in_commit_order(fixture: Arc<dyn OutboxFixture>) {
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

    let head = outbox.claim(Destination::Audit, 2, LONG).await.expect("claimed");
    let rest = outbox.claim(Destination::Audit, 100, LONG).await.expect("claimed");

    assert_eq!(message_ids(&head), audited[..2], "the first claim takes the two oldest rows");
    assert_eq!(head[0], first[0], "a row reads back as written");
    assert_eq!(message_ids(&rest), audited[2..], "the next claim skips leased rows and takes the rest, in order");
    assert_eq!(owed(outbox.as_ref(), Destination::Audit, LONG).await, vec![], "every audit row is leased");
    assert_eq!(owed(outbox.as_ref(), Destination::Command, LONG).await, commands, "commands are claimed apart");
}

/// A claimed row is skipped while its lease runs, and claimed again, still owed, once it expires; a lease
/// for one destination does not hold back the other.
pub async fn a_claimed_row_is_not_claimed_again_until_its_lease_expires(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let row = message(Some(RoutingKey::OrdersCreated), true);
    fixture.write(vec![row.clone()]).await;

    let first = owed(outbox.as_ref(), Destination::Command, SHORT).await;
    let during = owed(outbox.as_ref(), Destination::Command, SHORT).await;
    let other = owed(outbox.as_ref(), Destination::Audit, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let after = owed(outbox.as_ref(), Destination::Command, SHORT).await;

    assert_eq!(first, vec![row.id()], "the row is claimed");
    assert_eq!(during, vec![], "a leased row is not claimed again");
    assert_eq!(other, vec![row.id()], "the other destination's claim is not held back by the lease");
    assert_eq!(after, vec![row.id()], "the row is claimed again after its lease expired");
}

/// A released row is claimed again at once, ahead of rows written after it.
pub async fn a_released_row_is_claimed_again_first(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let earlier = message(Some(RoutingKey::OrdersCreated), false);
    fixture.write(vec![earlier.clone()]).await;
    assert_eq!(owed(outbox.as_ref(), Destination::Command, LONG).await, vec![earlier.id()]);
    let later = message(Some(RoutingKey::OrdersShipped), false);
    fixture.write(vec![later.clone()]).await;

    outbox.release(Destination::Command, &[earlier.id()]).await.expect("released");

    let again = owed(outbox.as_ref(), Destination::Command, LONG).await;
    assert_eq!(again, vec![earlier.id(), later.id()], "the released row comes first, in commit order");
}

/// A row marked published for every destination it has is never claimed again; marking twice is harmless.
pub async fn a_row_marked_for_all_its_destinations_is_not_claimed_again(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let both = message(Some(RoutingKey::OrdersCreated), true);
    let audit_only = message(None, true);
    let command_only = message(Some(RoutingKey::OrdersShipped), false);
    fixture.write(vec![both.clone(), audit_only.clone(), command_only.clone()]).await;
    assert_eq!(owed(outbox.as_ref(), Destination::Audit, SHORT).await, vec![both.id(), audit_only.id()]);
    assert_eq!(owed(outbox.as_ref(), Destination::Command, SHORT).await, vec![both.id(), command_only.id()]);

    outbox.mark_published(Destination::Command, &[both.id(), command_only.id()]).await.expect("marked");
    outbox.mark_published(Destination::Audit, &[both.id(), audit_only.id(), audit_only.id()]).await.expect("marked");
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(owed(outbox.as_ref(), Destination::Command, SHORT).await, vec![], "no command is owed any more");
    assert_eq!(owed(outbox.as_ref(), Destination::Audit, SHORT).await, vec![], "no audit record is owed any more");
    outbox.mark_published(Destination::Audit, &[both.id()]).await.expect("marking a published row again is harmless");
}

/// A row marked for one of its two destinations is still owed to the other.
pub async fn a_row_with_one_destination_left_is_claimed_for_only_that_one(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let row = message(Some(RoutingKey::OrdersCreated), true);
    fixture.write(vec![row.clone()]).await;

    outbox.mark_published(Destination::Command, &[row.id()]).await.expect("marked");

    assert_eq!(owed(outbox.as_ref(), Destination::Command, SHORT).await, vec![], "the command went out");
    let audit = outbox.claim(Destination::Audit, 10, SHORT).await.expect("claimed");
    assert_eq!(audit, vec![row], "the audit stream is still owed the row, as written");
}

/// A row with no destination (neither a command nor audited) owes nothing, so it is never claimed.
pub async fn a_row_without_destinations_is_never_claimed(fixture: Arc<dyn OutboxFixture>) {
    let outbox = fixture.outbox();
    let nowhere = message(None, false);
    let owed_row = message(None, true);
    fixture.write(vec![nowhere, owed_row.clone()]).await;

    assert_eq!(owed(outbox.as_ref(), Destination::Audit, LONG).await, vec![owed_row.id()]);
    assert_eq!(owed(outbox.as_ref(), Destination::Command, LONG).await, vec![]);
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
    assert_eq!(owed(outbox.as_ref(), Destination::Command, LONG).await, vec![row.id()]);
}

/// A command publisher that refuses while `failing` is set, and records what it passed on.
struct FlakyPublisher {
    inner: Arc<dyn CommandPublisher>,
    failing: AtomicBool,
    attempts: AtomicU32,
    published: Mutex<Vec<(RoutingKey, EventId)>>,
}

impl FlakyPublisher {
    fn new(failing: bool) -> Self {
        let bus = InMemoryBus::new(BusSettings::default(), Arc::new(SystemClock));
        Self {
            inner: Arc::new(bus),
            failing: AtomicBool::new(failing),
            attempts: AtomicU32::new(0),
            published: Mutex::new(Vec::new()),
        }
    }

    fn published(&self) -> Vec<(RoutingKey, EventId)> {
        self.published.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl CommandPublisher for FlakyPublisher {
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(PublishError::Unexpected("the broker is down".into()));
        }
        self.inner.publish(key, event).await?;
        self.published.lock().expect("not poisoned").push((key, event.id));
        Ok(())
    }
}

fn relay(fixture: &dyn OutboxFixture, commands: Arc<FlakyPublisher>, audit: Arc<InMemoryAuditLog>) -> OutboxRelay {
    let settings = RelaySettings { batch: 2, lease: SHORT, ..RelaySettings::default() };
    OutboxRelay::new(fixture.outbox(), commands, audit, settings)
}

/// Runs the relay's rounds for `destination` until one claims nothing.
async fn drain(relay: &OutboxRelay, destination: Destination) {
    for _ in 0..100 {
        if relay.publish_batch(destination).await.expect("the round publishes") == 0 {
            return;
        }
    }
    panic!("the relay still claimed rows after 100 rounds");
}

fn audit_ids(audit: &InMemoryAuditLog) -> Vec<EventId> {
    audit.events().iter().map(|e| e.id).collect()
}

/// The relay publishes every row once to each of its destinations, commands and audit records each in
/// row order, and leaves nothing owed.
pub async fn the_relay_publishes_every_row_once_and_leaves_nothing_owed(fixture: Arc<dyn OutboxFixture>) {
    let placed = message(None, true);
    let payment = message(Some(RoutingKey::PaymentsRequested), false);
    let both = message(Some(RoutingKey::OrdersCreated), true);
    let later_audit = message(None, true);
    fixture.write(vec![placed.clone(), payment.clone()]).await;
    fixture.write(vec![both.clone()]).await;
    fixture.write(vec![later_audit.clone()]).await;
    let commands = Arc::new(FlakyPublisher::new(false));
    let audit = Arc::new(InMemoryAuditLog::new());
    let relay = relay(fixture.as_ref(), Arc::clone(&commands), Arc::clone(&audit));

    drain(&relay, Destination::Command).await;
    drain(&relay, Destination::Audit).await;

    assert_eq!(
        commands.published(),
        vec![(RoutingKey::PaymentsRequested, payment.id()), (RoutingKey::OrdersCreated, both.id())],
        "each command is published once, in row order"
    );
    assert_eq!(
        audit_ids(&audit),
        vec![placed.id(), both.id(), later_audit.id()],
        "each audit record is appended once, in row order"
    );
    tokio::time::sleep(PAST_SHORT).await;
    for destination in [Destination::Command, Destination::Audit] {
        assert_eq!(owed(fixture.outbox().as_ref(), destination, SHORT).await, vec![], "nothing is owed");
        assert_eq!(relay.publish_batch(destination).await.expect("an idle round"), 0, "an idle round does nothing");
    }
    assert_eq!(commands.published().len(), 2, "nothing is published twice");
    assert_eq!(audit.events().len(), 3, "nothing is appended twice");
}

/// While the command publisher fails, commands stay owed and the audit stream is not held back; once it
/// recovers, every owed command is published exactly once.
pub async fn rows_stay_owed_while_the_publisher_fails_and_publish_after_it_recovers(fixture: Arc<dyn OutboxFixture>) {
    let placed = message(None, true);
    let payment = message(Some(RoutingKey::PaymentsRequested), false);
    let created = message(Some(RoutingKey::OrdersCreated), false);
    fixture.write(vec![placed.clone(), payment.clone()]).await;
    fixture.write(vec![created.clone()]).await;
    let commands = Arc::new(FlakyPublisher::new(true));
    let audit = Arc::new(InMemoryAuditLog::new());
    let relay = relay(fixture.as_ref(), Arc::clone(&commands), Arc::clone(&audit));

    assert!(relay.publish_batch(Destination::Command).await.is_err(), "a round through a failing publisher fails");
    drain(&relay, Destination::Audit).await;
    tokio::time::sleep(PAST_SHORT).await;
    assert!(relay.publish_batch(Destination::Command).await.is_err(), "the commands are still owed after the lease");
    assert!(commands.attempts.load(Ordering::SeqCst) >= 2, "the relay tried again");
    assert_eq!(commands.published(), vec![], "nothing reached the broker");
    assert_eq!(audit_ids(&audit), vec![placed.id()], "the audit stream was not held back by the broker");

    commands.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(PAST_SHORT).await;
    drain(&relay, Destination::Command).await;
    drain(&relay, Destination::Audit).await;

    assert_eq!(
        commands.published(),
        vec![(RoutingKey::PaymentsRequested, payment.id()), (RoutingKey::OrdersCreated, created.id())],
        "after recovery every owed command is published once, in row order"
    );
    assert_eq!(audit_ids(&audit), vec![placed.id()], "the audit record is appended once");
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(owed(fixture.outbox().as_ref(), Destination::Command, SHORT).await, vec![], "nothing is owed");
}
