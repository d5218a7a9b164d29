//! The `AuditLog` contract: every appended event can be read back once, keyed by its order id (the
//! CloudEvent subject), and one order's events come back in the order they were appended, whatever other
//! orders appended in between or at the same time. Each check appends through an [`AuditFixture`] and
//! reads back through it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_domain::OrderId;
use orderflow_messages::CancelRequested;
use orderflow_messages::{CloudEvent, EventBody, Source};
use orderflow_ports::messaging::AuditLog;
use uuid::Uuid;

use super::fixtures::{event_id, now};

/// One audit record as read back: its key and its event.
#[derive(Debug, Clone, PartialEq)]
pub struct Audited {
    /// The key the record is stored under.
    pub key: Option<String>,
    /// The event.
    pub event: CloudEvent,
}

/// An audit log of one check, and a way to read what it holds.
#[async_trait]
pub trait AuditFixture: Send + Sync {
    /// The log under test, empty at first; the fixture cleans up when dropped.
    fn log(&self) -> Arc<dyn AuditLog>;

    /// Everything appended so far, or only the records of the order with id `subject`: each order's
    /// records oldest first (records of different orders in any order).
    async fn read(&self, subject: Option<&str>) -> Vec<Audited>;
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn new_order() -> OrderId {
    OrderId::from_uuid(Uuid::now_v7())
}

fn event(order_id: OrderId, traceparent: Option<&str>) -> CloudEvent {
    let body = EventBody::of(order_id, &CancelRequested { order_id });
    CloudEvent::wrap(event_id(), Source::Sales, body, now(), traceparent.map(str::to_owned))
}

async fn append(log: &dyn AuditLog, event: &CloudEvent) {
    log.append(event).await.expect("the event is appended");
}

/// Groups records by their event's subject, checking each is keyed by it.
fn by_order(records: &[Audited]) -> BTreeMap<String, Vec<CloudEvent>> {
    let mut orders: BTreeMap<String, Vec<CloudEvent>> = BTreeMap::new();
    for record in records {
        assert_eq!(record.key.as_deref(), Some(record.event.subject.as_str()), "keyed by its order id");
        orders.entry(record.event.subject.clone()).or_default().push(record.event.clone());
    }
    orders
}

/// Every event appended for several orders, rounds interleaved, reads back once, equal (trace context
/// included), keyed by its order id, each order's events in the order appended.
pub async fn every_appended_event_reads_back_once_keyed_by_its_order_in_append_order(fixture: Arc<dyn AuditFixture>) {
    let log = fixture.log();
    let orders: Vec<OrderId> = (0..4).map(|_| new_order()).collect();
    let mut appended: BTreeMap<String, Vec<CloudEvent>> = BTreeMap::new();
    for round in 0..5 {
        for order in &orders {
            let event = event(*order, (round % 2 == 0).then_some(TRACEPARENT));
            append(log.as_ref(), &event).await;
            appended.entry(event.subject.clone()).or_default().push(event);
        }
    }

    let records = fixture.read(None).await;

    assert_eq!(records.len(), 20, "each event once");
    assert_eq!(by_order(&records), appended, "each order's events, in the order appended");
}

/// Reading one order's records gives all of them, oldest first, and none of another order's.
pub async fn one_orders_records_read_back_alone_in_append_order(fixture: Arc<dyn AuditFixture>) {
    let log = fixture.log();
    let order = new_order();
    let mut appended = Vec::new();
    for _ in 0..10 {
        let event = event(order, None);
        append(log.as_ref(), &event).await;
        appended.push(event);
        append(log.as_ref(), &event_for_another_order()).await;
    }

    let records = fixture.read(Some(&order.to_string())).await;

    assert!(records.iter().all(|r| r.key == Some(order.to_string())), "only the order's records: {records:?}");
    assert_eq!(records.into_iter().map(|r| r.event).collect::<Vec<_>>(), appended);
}

fn event_for_another_order() -> CloudEvent {
    event(new_order(), None)
}

/// Orders appending at the same time, each one event after another, each read back in its own order.
pub async fn concurrent_appends_of_different_orders_keep_each_orders_order(fixture: Arc<dyn AuditFixture>) {
    let log = fixture.log();
    let appenders: Vec<_> = (0..8)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let order = new_order();
                let mut appended = Vec::new();
                for _ in 0..10 {
                    let event = event(order, None);
                    append(log.as_ref(), &event).await;
                    appended.push(event);
                }
                (order.to_string(), appended)
            })
        })
        .collect();
    let mut appended = BTreeMap::new();
    for appender in appenders {
        let (order, events) = appender.await.expect("the appender did not panic");
        appended.insert(order, events);
    }

    let records = fixture.read(None).await;

    assert_eq!(records.len(), 80, "each event once");
    assert_eq!(by_order(&records), appended);
}

/// The in-memory audit log as an [`AuditFixture`], read through
/// [`InMemoryAuditLog::events`](crate::memory::InMemoryAuditLog::events); its records are keyed by their
/// subject.
#[derive(Default)]
pub struct InMemoryAuditFixture {
    log: Arc<crate::memory::InMemoryAuditLog>,
}

#[async_trait]
impl AuditFixture for InMemoryAuditFixture {
    fn log(&self) -> Arc<dyn AuditLog> {
        Arc::clone(&self.log) as Arc<dyn AuditLog>
    }

    async fn read(&self, subject: Option<&str>) -> Vec<Audited> {
        self.log
            .events()
            .into_iter()
            .filter(|event| subject.is_none_or(|s| s == event.subject))
            .map(|event| Audited { key: Some(event.subject.clone()), event })
            .collect()
    }
}
