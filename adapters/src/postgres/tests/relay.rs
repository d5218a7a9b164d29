//! The outbox relay against the real server: two relays sharing one table, commit order per order, a
//! destination that is down, the `LISTEN/NOTIFY` wake-up, and purging.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::{Carrier, EventId, Order, PaymentOutcome, TrackingNumber};
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::messaging::{AuditLog, CommandPublisher, PublishError};
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxRelay, OutboxStore, RelaySettings};
use orderflow_ports::sales::{ChangeOutcome, PlaceOutcome, SalesStore};
use tokio_postgres::NoTls;

use super::{TestSchema, database_url};
use crate::contract::fixtures::{OrderDraft, change_of, eur, inbox, message, name, now, sku};
use crate::postgres::{PgSalesStore, PgSettings};

/// A plain connection of its own whose tables are the test schema's.
async fn connect_raw(schema: &str) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = database_url().parse().expect("a valid URL");
    config.options(format!("-c search_path={schema}"));
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Both destinations in one test double: counts what reaches each, keeps the order of arrival, and refuses
/// everything while `down` is set.
#[derive(Default)]
struct Recorder {
    down: AtomicBool,
    commands: Mutex<HashMap<EventId, u32>>,
    audit: Mutex<HashMap<EventId, u32>>,
    command_log: Mutex<Vec<(RoutingKey, EventId)>>,
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
        self.command_log.lock().expect("not poisoned").clone()
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
        self.command_log.lock().expect("not poisoned").push((key, event.id));
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

/// Runs publish rounds for both destinations until they claim nothing; returns how many rows the relay
/// claimed for the audit stream (every row here goes there).
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

async fn owed_rows(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM outbox WHERE command_pending OR audit_pending", &[])
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
async fn two_relays_publish_each_of_ten_thousand_rows_exactly_once() {
    let schema = TestSchema::new();
    let settings = PgSettings { pool_size: 4, ..schema.settings() };
    let first = PgSalesStore::connect(&settings).await.expect("connect to PostgreSQL");
    let second =
        PgSalesStore::connect(&PgSettings { migrate: false, ..settings }).await.expect("connect a second replica");
    let sql = connect_raw(&schema.name).await;
    let template = serde_json::to_value(&message(Some(RoutingKey::OrdersCreated), true).event).expect("event JSON");
    sql.execute(
        "INSERT INTO outbox (id, event, routing_key, command_pending, audit_pending)
         SELECT u, jsonb_set($1::jsonb, '{id}', to_jsonb(u::text)), 'orders.created', true, true
         FROM (SELECT gen_random_uuid() AS u FROM generate_series(1, 10000)) AS ids",
        &[&template],
    )
    .await
    .expect("ten thousand rows written");
    let written: HashSet<uuid::Uuid> =
        sql.query("SELECT id FROM outbox", &[]).await.expect("ids read").iter().map(|r| r.get(0)).collect();
    assert_eq!(written.len(), 10_000, "ten thousand distinct rows are owed");
    let recorder = Arc::new(Recorder::default());
    let relay_settings = RelaySettings { batch: 250, lease: Duration::from_secs(60), ..RelaySettings::default() };
    let relays = [Arc::new(first) as Arc<dyn OutboxStore>, Arc::new(second) as Arc<dyn OutboxStore>]
        .map(|store| relay(store, &recorder, relay_settings.clone()));

    let started = Instant::now();
    let claimed: Vec<usize> =
        futures::future::join_all(relays.into_iter().map(|relay| tokio::spawn(async move { drain(&relay).await })))
            .await
            .into_iter()
            .map(|r| r.expect("the relay task finished"))
            .collect();
    let took = started.elapsed();

    assert!(claimed.iter().all(|&n| n > 0), "both relays took part: {claimed:?} (in {took:?})");
    assert_eq!(claimed.iter().sum::<usize>(), 10_000, "each row was claimed once: {claimed:?}");
    for (destination, published) in [("command", recorder.commands()), ("audit", recorder.audit())] {
        let ids: HashSet<uuid::Uuid> = published.keys().map(EventId::as_uuid).collect();
        assert_eq!(ids, written, "every row reached the {destination} destination");
        let repeated: Vec<_> = published.iter().filter(|(_, n)| **n != 1).collect();
        assert!(repeated.is_empty(), "rows published to {destination} more than once: {repeated:?}");
    }
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
        assert_eq!(
            types,
            [
                "orderflow.order.placed.v1",
                "orderflow.order.paid.v1",
                "orderflow.order.shipped.v1",
                "orderflow.order.delivered.v1"
            ],
            "order {subject}'s audit events arrive in lifecycle order"
        );
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
    let sql = connect_raw(&schema.name).await;
    let rows = owed_rows(&sql).await;
    assert!(rows >= 3, "the placements wrote outbox rows");
    let recorder = Arc::new(Recorder { down: AtomicBool::new(true), ..Recorder::default() });
    let lease = Duration::from_millis(100);
    let past_lease = Duration::from_millis(300);
    let relay = relay(
        Arc::clone(&store) as Arc<dyn OutboxStore>,
        &recorder,
        RelaySettings { batch: 10, lease, ..RelaySettings::default() },
    );

    for destination in [Destination::Command, Destination::Audit] {
        assert!(relay.publish_batch(destination).await.is_err(), "a round through a destination that is down fails");
    }
    tokio::time::sleep(past_lease).await;
    let commands_owed = store.claim(Destination::Command, 100, lease).await.expect("claimed");
    let audit_owed = store.claim(Destination::Audit, 100, lease).await.expect("claimed");
    let mut claimable: Vec<_> = commands_owed.iter().chain(&audit_owed).map(|m| m.id()).collect();
    claimable.sort();
    claimable.dedup();
    assert_eq!(i64::try_from(claimable.len()).expect("small"), rows, "every row is claimable again after the lease");
    assert!(commands_owed.iter().all(|m| m.command.is_some()), "only commands are owed to the broker");
    assert!(audit_owed.iter().all(|m| m.audit), "only audited rows are owed to the audit stream");
    tokio::time::sleep(past_lease).await;
    assert!(
        relay.publish_batch(Destination::Command).await.is_err(),
        "the next round fails too while the destination is down"
    );
    assert!(recorder.commands().is_empty() && recorder.audit().is_empty(), "nothing was published");

    recorder.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(past_lease).await;
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
    assert!(
        !store.claim(Destination::Audit, 10, Duration::from_secs(60)).await.expect("claimed").is_empty(),
        "the rows are there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_rows_go_at_once_and_the_purge_takes_old_inbox_entries_and_leftover_rows_only() {
    let schema = TestSchema::new();
    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
    stock(&store, "PURGE-1", 10).await;
    let sql = connect_raw(&schema.name).await;
    let orders = [
        place(&store, "old-published", "PURGE-1").await,
        place(&store, "new-published", "PURGE-1").await,
        place(&store, "old-owed", "PURGE-1").await,
    ];
    let rows_of = |order: &Order| {
        let id = order.id.to_string();
        let sql = &sql;
        async move {
            sql.query("SELECT id FROM outbox WHERE event->>'subject' = $1", &[&id])
                .await
                .expect("outbox read")
                .iter()
                .map(|r| r.get::<_, uuid::Uuid>(0))
                .collect::<Vec<_>>()
        }
    };
    let old_published = rows_of(&orders[0]).await;
    let new_published = rows_of(&orders[1]).await;
    let old_owed = rows_of(&orders[2]).await;
    assert!(!old_published.is_empty() && !new_published.is_empty() && !old_owed.is_empty(), "each order has rows");
    for id in old_published.iter().chain(&new_published) {
        for destination in [Destination::Command, Destination::Audit] {
            store.mark_published(destination, &[EventId::from_uuid(*id)]).await.expect("marked");
        }
    }
    assert!(rows_of(&orders[0]).await.is_empty(), "a row every destination has is deleted at once");
    assert!(rows_of(&orders[1]).await.is_empty(), "a row every destination has is deleted at once");
    // A row published long ago and left behind (as versions that kept published rows did).
    let leftover = message(Some(RoutingKey::OrdersCreated), true);
    sql.execute(
        "INSERT INTO outbox (id, event, routing_key, command_pending, audit_pending, published_at)
         VALUES ($1, $2, $3, false, false, now())",
        &[&leftover.id().as_uuid(), &serde_json::to_value(&leftover.event).expect("event JSON"), &"orders.created"],
    )
    .await
    .expect("row written");
    // A row published to one destination only, long ago.
    let half = message(Some(RoutingKey::OrdersCreated), true);
    sql.execute(
        "INSERT INTO outbox (id, event, routing_key, command_pending, audit_pending) VALUES ($1, $2, $3, true, true)",
        &[&half.id().as_uuid(), &serde_json::to_value(&half.event).expect("event JSON"), &"orders.created"],
    )
    .await
    .expect("row written");
    store.mark_published(Destination::Command, &[half.id()]).await.expect("marked");
    // Inbox entries: one processed long ago, one just now.
    for (order, message_id) in [(&orders[0], "msg-old"), (&orders[1], "msg-new")] {
        let at = now();
        let mut pay = change_of(order, order.clone().settle_payment(&PaymentOutcome::Completed, at), at);
        pay.inbox = Some(inbox(message_id, "payments"));
        store.apply(pay).await.expect("the payment is applied");
    }
    let old_rows: Vec<uuid::Uuid> =
        old_owed.iter().copied().chain([half.id().as_uuid(), leftover.id().as_uuid()]).collect();
    sql.execute(
        "UPDATE outbox SET created_at = now() - interval '2 hours',
             published_at = CASE WHEN published_at IS NULL THEN NULL ELSE now() - interval '2 hours' END
         WHERE id = ANY($1)",
        &[&old_rows],
    )
    .await
    .expect("rows backdated");
    sql.execute("UPDATE inbox SET processed_at = now() - interval '2 hours' WHERE message_id = 'msg-old'", &[])
        .await
        .expect("inbox backdated");
    let before: HashSet<uuid::Uuid> =
        sql.query("SELECT id FROM outbox", &[]).await.expect("ids read").iter().map(|r| r.get(0)).collect();

    let deleted = store.purge(Duration::from_secs(3600)).await.expect("purged");

    let after: HashSet<uuid::Uuid> =
        sql.query("SELECT id FROM outbox", &[]).await.expect("ids read").iter().map(|r| r.get(0)).collect();
    let expected: HashSet<uuid::Uuid> = before.iter().filter(|id| **id != leftover.id().as_uuid()).copied().collect();
    assert_eq!(after, expected, "only the row published before the retention went");
    let inbox_left: Vec<String> = sql
        .query("SELECT message_id FROM inbox ORDER BY message_id", &[])
        .await
        .expect("inbox read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(inbox_left, ["msg-new"], "only the inbox entry older than the retention went");
    assert_eq!(deleted, 2, "purge counts what it deleted: the leftover row and the old inbox entry");
    assert_eq!(store.purge(Duration::from_secs(3600)).await.expect("purged"), 0, "a second purge finds nothing");
    let timeline = store.timeline(orders[0].id).await.expect("timeline read").expect("the order has a timeline");
    assert!(!timeline.is_empty(), "purging the outbox keeps the order's timeline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_both_relays_mark_at_the_same_time_are_all_deleted() {
    let schema = TestSchema::new();
    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL");
    let sql = connect_raw(&schema.name).await;
    for round in 0..5 {
        let rows: Vec<OutboxMessage> = (0..100).map(|_| message(Some(RoutingKey::OrdersCreated), true)).collect();
        for row in &rows {
            sql.execute(
                "INSERT INTO outbox (id, event, routing_key, command_pending, audit_pending)
                 VALUES ($1, $2, $3, true, true)",
                &[&row.id().as_uuid(), &serde_json::to_value(&row.event).expect("event JSON"), &"orders.created"],
            )
            .await
            .expect("row written");
        }
        let ids: Vec<EventId> = rows.iter().map(OutboxMessage::id).collect();
        // Each relay marks its own way through the rows, so they meet on every row in both orders.
        let reversed: Vec<EventId> = ids.iter().rev().copied().collect();
        let marks = ids.chunks(10).zip(reversed.chunks(10)).map(|(forward, backward)| {
            let store = &store;
            async move {
                tokio::join!(
                    store.mark_published(Destination::Command, forward),
                    store.mark_published(Destination::Audit, backward)
                )
            }
        });
        for (command, audit) in futures::future::join_all(marks).await {
            command.expect("command marked");
            audit.expect("audit marked");
        }
        for destination in [Destination::Command, Destination::Audit] {
            store.mark_published(destination, &reversed).await.expect("marked again");
        }
        let left: i64 = sql.query_one("SELECT count(*) FROM outbox", &[]).await.expect("counted").get(0);
        assert_eq!(left, 0, "round {round}: a row both destinations have is gone");
    }
}
