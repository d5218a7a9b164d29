//! The outbox relay over the stores it publishes: on the in-memory stores and on PostgreSQL — every row
//! once and in commit order, a failing destination, two relays (two replicas) sharing the tables, the
//! `LISTEN/NOTIFY` wake-up, and purging. Each PostgreSQL test gets a schema of its own, dropped after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orderflow_adapters::contract::fixtures::{
    LIFECYCLE_AUDIT, OrderDraft, change_of, eur, inbox, message, name, now, owed, sku,
};
use orderflow_adapters::contract::outbox::{DeliveryOutbox, OutboxFixture, SalesOutbox};
use orderflow_adapters::contract::postgres::TestSchema;
use orderflow_adapters::memory::{
    BusSettings, InMemoryAuditLog, InMemoryBus, InMemoryDeliveryStore, InMemorySalesStore,
};
use orderflow_adapters::postgres::{PgDeliveryStore, PgSalesStore, PgSettings};
use orderflow_adapters::system::SystemClock;
use orderflow_domain::{Carrier, EventId, Order, PaymentOutcome, TrackingNumber};
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::messaging::{AuditLog, CommandPublisher, PublishError};
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxStore};
use orderflow_ports::sales::{ChangeOutcome, PlaceOutcome, SalesStore};
use orderflow_runtime::relay::{OutboxRelay, RelaySettings};
use orderflow_runtime::telemetry;
use tracing_subscriber::layer::SubscriberExt;

/// Both destinations in one test double: counts what reaches each, keeps the order of arrival, and refuses
/// everything while `down` is set.
#[derive(Default)]
struct Recorder {
    down: AtomicBool,
    commands: Mutex<HashMap<EventId, u32>>,
    audit: Mutex<HashMap<EventId, u32>>,
    command_log: Mutex<Vec<(RoutingKey, CloudEvent)>>,
    audit_log: Mutex<Vec<CloudEvent>>,
}

impl Recorder {
    fn commands(&self) -> HashMap<EventId, u32> {
        self.commands.lock().expect("not poisoned").clone()
    }
    fn audit(&self) -> HashMap<EventId, u32> {
        self.audit.lock().expect("not poisoned").clone()
    }
    fn command_log(&self) -> Vec<(RoutingKey, EventId)> {
        self.command_log.lock().expect("not poisoned").iter().map(|(key, event)| (*key, event.id)).collect()
    }
    fn commands_sent(&self) -> Vec<CloudEvent> {
        self.command_log.lock().expect("not poisoned").iter().map(|(_, event)| event.clone()).collect()
    }
    fn audit_log(&self) -> Vec<CloudEvent> {
        self.audit_log.lock().expect("not poisoned").clone()
    }
    fn refuse_while_down(&self) -> Result<(), PublishError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PublishError::Unexpected("the destination is down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl CommandPublisher for Recorder {
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError> {
        self.refuse_while_down()?;
        *self.commands.lock().expect("not poisoned").entry(event.id).or_default() += 1;
        self.command_log.lock().expect("not poisoned").push((key, event.clone()));
        Ok(())
    }
}

#[async_trait]
impl AuditLog for Recorder {
    async fn append(&self, event: &CloudEvent) -> Result<(), PublishError> {
        self.refuse_while_down()?;
        *self.audit.lock().expect("not poisoned").entry(event.id).or_default() += 1;
        self.audit_log.lock().expect("not poisoned").push(event.clone());
        Ok(())
    }
}

fn relay(store: Arc<dyn OutboxStore>, recorder: &Arc<Recorder>, settings: RelaySettings) -> OutboxRelay {
    OutboxRelay::new(store, Arc::clone(recorder) as _, Arc::clone(recorder) as _, settings)
}

/// Runs publish rounds for both destinations until they take nothing; returns how many rows the relay
/// took for the audit stream (every row here goes there).
async fn drain(relay: &OutboxRelay) -> usize {
    let mut total = 0;
    for destination in [Destination::Command, Destination::Audit] {
        loop {
            match relay.publish_batch(destination).await.expect("the round publishes") {
                0 => break,
                n if destination == Destination::Audit => total += n,
                _ => {}
            }
        }
    }
    total
}

/// Runs publish rounds for both destinations until the tables owe nothing at all (other relays may hold
/// partitions this one cannot take meanwhile); returns how many rows this relay took for the audit stream.
async fn drain_shared(relay: &OutboxRelay, sql: &tokio_postgres::Client) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = 0;
    loop {
        let mut took = 0;
        for destination in [Destination::Command, Destination::Audit] {
            let n = relay.publish_batch(destination).await.expect("the round publishes");
            took += n;
            if destination == Destination::Audit {
                total += n;
            }
        }
        if took == 0 {
            if owed_rows(sql).await == 0 {
                return total;
            }
            assert!(Instant::now() < deadline, "rows are still owed after a minute");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Rows owed, both destinations together.
async fn owed_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT (SELECT count(*) FROM command_outbox) + (SELECT count(*) FROM audit_outbox)", &[])
        .await
        .expect("outbox read")
        .get(0)
}

async fn stock(store: &dyn SalesStore, code: &str, units: u32) {
    store.put_product(sku(code), name(&format!("Product {code}")), eur(1000), units).await.expect("product stored");
}

async fn place(store: &dyn SalesStore, customer: &str, code: &str) -> Order {
    match store.place_order(OrderDraft::new(customer).line(code, 1).placement()).await {
        Ok(PlaceOutcome::Created(order)) => order,
        other => panic!("the order should be created, got {other:?}"),
    }
}

fn tracking() -> (Carrier, TrackingNumber) {
    (Carrier::parse("DHL").expect("a carrier"), TrackingNumber::parse("TRK-1").expect("a tracking number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_relays_publish_every_row_once_with_each_orders_rows_in_commit_order() {
    let schema = TestSchema::new();
    let settings = PgSettings { pool_size: 4, ..schema.settings() };
    let first = PgSalesStore::connect(&settings).await.expect("connect to PostgreSQL");
    let second =
        PgSalesStore::connect(&PgSettings { migrate: false, ..settings }).await.expect("connect a second replica");
    let sql = schema.connect_raw().await;
    let template = serde_json::to_value(&message(Some(RoutingKey::OrdersCreated), true).event).expect("event JSON");
    // 2,000 orders with five messages each, written step by step, so each order's rows lie far apart.
    sql.execute(
        "WITH o AS MATERIALIZED (SELECT gen_random_uuid() AS order_id, n FROM generate_series(1, 2000) AS n),
              r AS MATERIALIZED (
                  SELECT gen_random_uuid() AS id, order_id, step, n FROM o, generate_series(1, 5) AS step),
              e AS MATERIALIZED (
                  SELECT id, order_id, step, n,
                         jsonb_set(jsonb_set($1::jsonb, '{id}', to_jsonb(id::text)), '{subject}',
                                   to_jsonb(order_id::text))::text AS event
                  FROM r),
              c AS (INSERT INTO command_outbox (id, partition, routing_key, event)
                    SELECT id, outbox_partition(order_id::text), 'orders.created', event FROM e ORDER BY step, n)
         INSERT INTO audit_outbox (id, partition, event)
         SELECT id, outbox_partition(order_id::text), event FROM e ORDER BY step, n",
        &[&template],
    )
    .await
    .expect("ten thousand rows written");
    // Each order's ids in commit order, per destination.
    let mut written: HashMap<&str, HashMap<uuid::Uuid, Vec<uuid::Uuid>>> = HashMap::new();
    for table in ["command_outbox", "audit_outbox"] {
        let rows = sql
            .query(&format!("SELECT id, (event::jsonb)->>'subject' FROM {table} ORDER BY seq"), &[])
            .await
            .expect("rows read");
        let orders = written.entry(table).or_default();
        for row in rows {
            let order: uuid::Uuid = row.get::<_, String>(1).parse().expect("a uuid subject");
            orders.entry(order).or_default().push(row.get(0));
        }
    }
    assert_eq!(owed_rows(&sql).await, 20_000, "ten thousand rows are owed to each destination");
    let recorder = Arc::new(Recorder::default());
    let relay_settings = RelaySettings { batch: 250, ..RelaySettings::default() };
    // Long enough for each replica to count the other and take half of the partitions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let relays = [Arc::new(first) as Arc<dyn OutboxStore>, Arc::new(second) as Arc<dyn OutboxStore>]
        .map(|store| relay(store, &recorder, relay_settings.clone()));

    let started = Instant::now();
    let mut connections = Vec::new();
    for _ in &relays {
        connections.push(schema.connect_raw().await);
    }
    let took: Vec<usize> = futures::future::join_all(
        relays
            .into_iter()
            .zip(connections)
            .map(|(relay, sql)| tokio::spawn(async move { drain_shared(&relay, &sql).await })),
    )
    .await
    .into_iter()
    .map(|r| r.expect("the relay task finished"))
    .collect();
    let elapsed = started.elapsed();

    assert!(took.iter().all(|&n| n > 0), "both relays took part: {took:?} (in {elapsed:?})");
    assert_eq!(took.iter().sum::<usize>(), 10_000, "each row was taken once: {took:?}");
    for (destination, published) in [("command", recorder.commands()), ("audit", recorder.audit())] {
        let repeated: Vec<_> = published.iter().filter(|(_, n)| **n != 1).collect();
        assert!(repeated.is_empty(), "rows published to {destination} more than once: {repeated:?}");
        assert_eq!(published.len(), 10_000, "every row reached the {destination} destination");
    }
    let subjects: HashMap<EventId, uuid::Uuid> =
        recorder.audit_log().iter().map(|e| (e.id, e.subject.parse().expect("a uuid subject"))).collect();
    let mut commands: HashMap<uuid::Uuid, Vec<uuid::Uuid>> = HashMap::new();
    for (_, id) in recorder.command_log() {
        commands.entry(subjects[&id]).or_default().push(id.as_uuid());
    }
    let mut audit: HashMap<uuid::Uuid, Vec<uuid::Uuid>> = HashMap::new();
    for event in recorder.audit_log() {
        audit.entry(subjects[&event.id]).or_default().push(event.id.as_uuid());
    }
    assert!(commands == written["command_outbox"], "each order's commands were published in commit order");
    assert!(audit == written["audit_outbox"], "each order's audit records were appended in commit order");
    assert_eq!(owed_rows(&sql).await, 0, "nothing is owed any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_one_order_are_published_in_commit_order() {
    let schema = TestSchema::new();
    let store = Arc::new(PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL"));
    stock(store.as_ref(), "ORD-1", 10).await;
    // Two orders whose lifecycles interleave, so rows of one order are not adjacent.
    let mut orders = vec![place(store.as_ref(), "alice", "ORD-1").await, place(store.as_ref(), "bob", "ORD-1").await];
    for step in 0..3 {
        for order in &mut orders {
            let at = now();
            let change = match step {
                0 => change_of(order, order.clone().settle_payment(&PaymentOutcome::Completed, at), at),
                1 => {
                    let (carrier, number) = tracking();
                    change_of(order, order.clone().mark_shipped(carrier, number, at), at)
                }
                _ => change_of(order, order.clone().mark_delivered(at), at),
            };
            let next = change.order.clone();
            assert_eq!(store.apply(change).await.expect("the change is applied"), ChangeOutcome::Applied);
            *order = next;
        }
    }
    let recorder = Arc::new(Recorder::default());
    let relay = relay(store, &recorder, RelaySettings { batch: 3, ..RelaySettings::default() });

    drain(&relay).await;

    let audit = recorder.audit_log();
    for order in &orders {
        let subject = order.id.to_string();
        let types: Vec<&str> = audit.iter().filter(|e| e.subject == subject).map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, LIFECYCLE_AUDIT, "order {subject}'s audit events arrive in lifecycle order");
    }
    let keys: Vec<RoutingKey> = recorder.command_log().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            RoutingKey::PaymentsRequested,
            RoutingKey::PaymentsRequested,
            RoutingKey::OrdersCreated,
            RoutingKey::OrdersCreated
        ],
        "the commands arrive in commit order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_stay_owed_while_the_destination_is_down_and_publish_after_recovery() {
    let schema = TestSchema::new();
    let store = Arc::new(PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL"));
    stock(store.as_ref(), "DOWN-1", 10).await;
    for customer in ["alice", "bob", "carol"] {
        place(store.as_ref(), customer, "DOWN-1").await;
    }
    let sql = schema.connect_raw().await;
    let rows = owed_rows(&sql).await;
    assert!(rows >= 3, "the placements wrote outbox rows");
    let recorder = Arc::new(Recorder { down: AtomicBool::new(true), ..Recorder::default() });
    let relay = relay(
        Arc::clone(&store) as Arc<dyn OutboxStore>,
        &recorder,
        RelaySettings { batch: 10, ..RelaySettings::default() },
    );

    for destination in [Destination::Command, Destination::Audit] {
        assert!(relay.publish_batch(destination).await.is_err(), "a round through a destination that is down fails");
    }
    let commands_owed = owed(store.as_ref(), Destination::Command).await;
    let audit_owed = owed(store.as_ref(), Destination::Audit).await;
    assert_eq!(
        i64::try_from(commands_owed.len() + audit_owed.len()).expect("small"),
        rows,
        "every row is still owed after the failed rounds"
    );
    assert!(
        relay.publish_batch(Destination::Command).await.is_err(),
        "the next round fails too while the destination is down"
    );
    assert!(recorder.commands().is_empty() && recorder.audit().is_empty(), "nothing was published");

    recorder.down.store(false, Ordering::SeqCst);
    drain(&relay).await;

    let commands = recorder.commands();
    let audit = recorder.audit();
    let expected_commands = commands_owed.len();
    let expected_audit = audit_owed.len();
    assert_eq!(commands.len(), expected_commands, "every command is published after recovery");
    assert_eq!(audit.len(), expected_audit, "every audit record is appended after recovery");
    assert!(commands.values().chain(audit.values()).all(|&n| n == 1), "nothing is published twice");
    assert_eq!(owed_rows(&sql).await, 0, "nothing is owed any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_wakes_on_notify_without_polling() {
    let schema = TestSchema::new();
    let store = Arc::new(PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL"));
    stock(store.as_ref(), "WAKE-1", 10).await;
    // The listener signals once when it (re)connects; wait until no signal is pending.
    let settled = Instant::now();
    loop {
        let started = Instant::now();
        store.wait_for_new(Destination::Audit, Duration::from_millis(300)).await;
        if started.elapsed() >= Duration::from_millis(250) {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(10), "wait_for_new keeps returning at once");
    }
    let placing = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = Arc::clone(&store);
        let placing = Arc::clone(&placing);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            placing.store(true, Ordering::SeqCst);
            place(store.as_ref(), "alice", "WAKE-1").await;
        })
    };

    let started = Instant::now();
    store.wait_for_new(Destination::Audit, Duration::from_secs(30)).await;
    let waited = started.elapsed();

    assert!(placing.load(Ordering::SeqCst), "wait_for_new returned before anything was written");
    assert!(waited < Duration::from_secs(10), "wait_for_new slept {waited:?} past the commit");
    writer.await.expect("the placement finished");
    assert!(!owed(store.as_ref(), Destination::Audit).await.is_empty(), "the rows are there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_rows_go_at_once_and_the_purge_takes_old_inbox_entries_only() {
    let schema = TestSchema::new();
    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
    stock(&store, "PURGE-1", 10).await;
    let sql = schema.connect_raw().await;
    let orders = [place(&store, "alice", "PURGE-1").await, place(&store, "bob", "PURGE-1").await];
    assert!(owed_rows(&sql).await > 0, "the placements owe rows");
    for destination in [Destination::Command, Destination::Audit] {
        let batch = store.take(destination, 100).await.expect("taken");
        let ids: Vec<EventId> = batch.messages().iter().map(OutboxMessage::id).collect();
        batch.settle(&ids).await.expect("settled");
    }
    assert_eq!(owed_rows(&sql).await, 0, "a row is deleted as soon as its destination has it");
    // Inbox entries: one processed long ago, one just now.
    for (order, message_id) in [(&orders[0], "msg-old"), (&orders[1], "msg-new")] {
        let at = now();
        let mut pay = change_of(order, order.clone().settle_payment(&PaymentOutcome::Completed, at), at);
        pay.inbox = Some(inbox(message_id, "payments"));
        store.apply(pay).await.expect("the payment is applied");
    }
    sql.execute("UPDATE inbox SET processed_at = now() - interval '2 hours' WHERE message_id = 'msg-old'", &[])
        .await
        .expect("inbox backdated");
    let owed_before = owed_rows(&sql).await;

    let deleted = store.purge(Duration::from_secs(3600)).await.expect("purged");

    let inbox_left: Vec<String> = sql
        .query("SELECT message_id FROM inbox ORDER BY message_id", &[])
        .await
        .expect("inbox read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(inbox_left, ["msg-new"], "only the inbox entry older than the retention went");
    assert_eq!(deleted, 1, "purge counts what it deleted");
    assert_eq!(owed_rows(&sql).await, owed_before, "the purge leaves owed rows alone");
    assert_eq!(store.purge(Duration::from_secs(3600)).await.expect("purged"), 0, "a second purge finds nothing");
    let timeline = store.timeline(orders[0].id).await.expect("timeline read").expect("the order has a timeline");
    assert!(!timeline.is_empty(), "publishing keeps the order's timeline");
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

fn flaky_relay(
    fixture: &dyn OutboxFixture,
    commands: Arc<FlakyPublisher>,
    audit: Arc<InMemoryAuditLog>,
) -> OutboxRelay {
    let settings = RelaySettings { batch: 2, ..RelaySettings::default() };
    OutboxRelay::new(fixture.outbox(), commands, audit, settings)
}

/// Runs the relay's rounds for `destination` until one takes nothing.
async fn drain_one(relay: &OutboxRelay, destination: Destination) {
    for _ in 0..100 {
        if relay.publish_batch(destination).await.expect("the round publishes") == 0 {
            return;
        }
    }
    panic!("the relay still took rows after 100 rounds");
}

fn audit_ids(audit: &InMemoryAuditLog) -> Vec<EventId> {
    audit.events().iter().map(|e| e.id).collect()
}

/// The relay publishes every row once to each of its destinations, commands and audit records each in
/// row order, and leaves nothing owed.
async fn the_relay_publishes_every_row_once_and_leaves_nothing_owed(fixture: Arc<dyn OutboxFixture>) {
    let placed = message(None, true);
    let payment = message(Some(RoutingKey::PaymentsRequested), false);
    let both = message(Some(RoutingKey::OrdersCreated), true);
    let later_audit = message(None, true);
    fixture.write(vec![placed.clone(), payment.clone()]).await;
    fixture.write(vec![both.clone()]).await;
    fixture.write(vec![later_audit.clone()]).await;
    let commands = Arc::new(FlakyPublisher::new(false));
    let audit = Arc::new(InMemoryAuditLog::new());
    let relay = flaky_relay(fixture.as_ref(), Arc::clone(&commands), Arc::clone(&audit));

    drain_one(&relay, Destination::Command).await;
    drain_one(&relay, Destination::Audit).await;

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
    for destination in [Destination::Command, Destination::Audit] {
        assert_eq!(owed(fixture.outbox().as_ref(), destination).await, vec![], "nothing is owed");
        assert_eq!(relay.publish_batch(destination).await.expect("an idle round"), 0, "an idle round does nothing");
    }
    assert_eq!(commands.published().len(), 2, "nothing is published twice");
    assert_eq!(audit.events().len(), 3, "nothing is appended twice");
}

/// While the command publisher fails, commands stay owed and the audit stream is not held back; once it
/// recovers, every owed command is published exactly once.
async fn rows_stay_owed_while_the_publisher_fails_and_publish_after_it_recovers(fixture: Arc<dyn OutboxFixture>) {
    let placed = message(None, true);
    let payment = message(Some(RoutingKey::PaymentsRequested), false);
    let created = message(Some(RoutingKey::OrdersCreated), false);
    fixture.write(vec![placed.clone(), payment.clone()]).await;
    fixture.write(vec![created.clone()]).await;
    let commands = Arc::new(FlakyPublisher::new(true));
    let audit = Arc::new(InMemoryAuditLog::new());
    let relay = flaky_relay(fixture.as_ref(), Arc::clone(&commands), Arc::clone(&audit));

    assert!(relay.publish_batch(Destination::Command).await.is_err(), "a round through a failing publisher fails");
    drain_one(&relay, Destination::Audit).await;
    assert!(relay.publish_batch(Destination::Command).await.is_err(), "the commands are still owed and tried again");
    assert!(commands.attempts.load(Ordering::SeqCst) >= 2, "the relay tried again");
    assert_eq!(commands.published(), vec![], "nothing reached the broker");
    assert_eq!(audit_ids(&audit), vec![placed.id()], "the audit stream was not held back by the broker");

    commands.failing.store(false, Ordering::SeqCst);
    drain_one(&relay, Destination::Command).await;
    drain_one(&relay, Destination::Audit).await;

    assert_eq!(
        commands.published(),
        vec![(RoutingKey::PaymentsRequested, payment.id()), (RoutingKey::OrdersCreated, created.id())],
        "after recovery every owed command is published once, in row order"
    );
    assert_eq!(audit_ids(&audit), vec![placed.id()], "the audit record is appended once");
    assert_eq!(owed(fixture.outbox().as_ref(), Destination::Command).await, vec![], "nothing is owed");
}

/// The spans this thread makes while it lives, caught by an in-memory exporter.
struct Traced {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _subscriber: tracing::subscriber::DefaultGuard,
}

impl Traced {
    fn start() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = telemetry::tracer_provider("relay", Some(exporter.clone()));
        let subscriber = tracing_subscriber::registry().with(telemetry::traces(&provider));
        Self { exporter, _subscriber: tracing::subscriber::set_default(subscriber), provider }
    }

    /// Every span ended so far.
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().expect("spans flushed");
        self.exporter.get_finished_spans().expect("spans")
    }
}

/// An audit round is one PRODUCER span, in the trace of its first sampled record and linked to the other
/// sampled records' writers; every record reaches the stream with its writer's trace context, and a round
/// of unsampled records has no span at all.
// Several workers: the span processor exports from a task of the runtime while the test waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_round_is_one_producer_span_under_its_first_sampled_record_linked_to_the_others() {
    const FIRST: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const SECOND: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const UNSAMPLED: &str = "00-5cf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00";
    let traced = Traced::start();
    let fixture = SalesOutbox::new(InMemorySalesStore::new());
    let written = |traceparents: &[Option<&str>]| -> Vec<OutboxMessage> {
        traceparents
            .iter()
            .map(|traceparent| {
                let mut row = message(None, true);
                row.event.traceparent = traceparent.map(str::to_owned);
                row
            })
            .collect()
    };
    let rows = written(&[Some(UNSAMPLED), Some(FIRST), None, Some(SECOND), Some(FIRST)]);
    fixture.write(rows.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let relay = relay(fixture.outbox(), &recorder, RelaySettings::default());

    assert_eq!(relay.publish_batch(Destination::Audit).await.expect("the round publishes"), 5);
    fixture.write(written(&[None, Some(UNSAMPLED)])).await;
    assert_eq!(relay.publish_batch(Destination::Audit).await.expect("the round publishes"), 2);
    let spans: Vec<SpanData> = traced.spans().into_iter().filter(|s| s.name == "publish audit").collect();
    let [span] = spans.as_slice() else { panic!("one span for the two rounds, got {spans:#?}") };
    assert_eq!(span.span_kind, SpanKind::Producer);
    assert_eq!(span.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "the first sampled trace");
    assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7", "under the span that wrote the record");
    let links: Vec<String> = span.links.iter().map(|l| l.span_context.span_id().to_string()).collect();
    assert_eq!(links, ["b7ad6b7169203331"], "linked once to each other sampled writer");
    let count = span.attributes.iter().find(|kv| kv.key.as_str() == "messaging.batch.message_count");
    assert_eq!(count.map(|kv| kv.value.to_string()).as_deref(), Some("5"));
    let carried: HashMap<EventId, Option<String>> =
        recorder.audit_log().into_iter().map(|e| (e.id, e.traceparent)).collect();
    for row in rows {
        let carried = carried.get(&row.event.id);
        assert_eq!(carried, Some(&row.event.traceparent), "each record carries its writer's context unchanged");
    }
}

/// A round of commands is one PRODUCER span per routing key, under its first sampled command's writer and
/// linked to the other sampled writers, naming the command when it is alone; that first command reaches
/// the broker with the span's trace context, every other with its writer's, and a key with no sampled
/// command has no span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_round_is_one_producer_span_per_routing_key_under_its_first_sampled_command() {
    const FIRST: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const SECOND: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const THIRD: &str = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
    const UNSAMPLED: &str = "00-5cf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00";
    let traced = Traced::start();
    let fixture = SalesOutbox::new(InMemorySalesStore::new());
    let command = |key: RoutingKey, traceparent: Option<&str>| {
        let mut row = message(Some(key), false);
        row.event.traceparent = traceparent.map(str::to_owned);
        row
    };
    let rows = vec![
        command(RoutingKey::PaymentsRequested, Some(UNSAMPLED)),
        command(RoutingKey::PaymentsRequested, Some(FIRST)),
        command(RoutingKey::OrdersCreated, Some(THIRD)),
        command(RoutingKey::PaymentsRequested, None),
        command(RoutingKey::PaymentsRequested, Some(SECOND)),
        command(RoutingKey::OrdersCancelRequested, Some(UNSAMPLED)),
    ];
    fixture.write(rows.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let relay = relay(fixture.outbox(), &recorder, RelaySettings::default());

    assert_eq!(relay.publish_batch(Destination::Command).await.expect("the round publishes"), 6);
    let spans = traced.spans();
    let named = |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let attribute = |span: &SpanData, key: &str| {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    };
    let [payments] = named("publish payments.requested")[..] else { panic!("one span for the key: {spans:#?}") };
    assert_eq!(payments.span_kind, SpanKind::Producer);
    assert_eq!(payments.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(payments.parent_span_id.to_string(), "00f067aa0ba902b7", "under the first sampled writer");
    let links: Vec<String> = payments.links.iter().map(|l| l.span_context.span_id().to_string()).collect();
    assert_eq!(links, ["b7ad6b7169203331"], "linked to the other sampled writer");
    assert_eq!(attribute(payments, "messaging.batch.message_count").as_deref(), Some("4"));
    let [created] = named("publish orders.created")[..] else { panic!("one span for the key: {spans:#?}") };
    assert_eq!(created.parent_span_id.to_string(), "c7ad6b7169203331");
    assert_eq!(attribute(created, "messaging.message.id"), Some(rows[2].event.id.to_string()), "the one command");
    assert_eq!(attribute(created, "messaging.batch.message_count"), None, "one command, not a batch");
    assert!(named("publish orders.cancel_requested").is_empty(), "no span where no command is sampled: {spans:#?}");
    let carried: HashMap<EventId, Option<String>> =
        recorder.commands_sent().into_iter().map(|e| (e.id, e.traceparent)).collect();
    let context =
        |span: &SpanData| Some(format!("00-{}-{}-01", span.span_context.trace_id(), span.span_context.span_id()));
    for (at, row) in rows.iter().enumerate() {
        let expected = match at {
            1 => context(payments),
            2 => context(created),
            _ => row.event.traceparent.clone(),
        };
        assert_eq!(carried.get(&row.event.id), Some(&expected), "command {at} carries the context it continues");
    }
}

/// The stores the contract checks above run on: both in-memory stores and both PostgreSQL stores, the
/// latter each in a schema of its own that lives as long as the test.
macro_rules! on_every_store {
    ($($check:ident),* $(,)?) => {
        mod in_memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(Arc::new(SalesOutbox::new(InMemorySalesStore::new()))).await;
                    super::$check(Arc::new(DeliveryOutbox::new(InMemoryDeliveryStore::new()))).await;
                }
            )*
        }
        mod on_postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let schema = TestSchema::new();
                    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
                    super::$check(Arc::new(SalesOutbox::new(store))).await;
                    let schema = TestSchema::new();
                    let store = PgDeliveryStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
                    super::$check(Arc::new(DeliveryOutbox::new(store))).await;
                }
            )*
        }
    };
}

on_every_store!(
    the_relay_publishes_every_row_once_and_leaves_nothing_owed,
    rows_stay_owed_while_the_publisher_fails_and_publish_after_it_recovers,
);
