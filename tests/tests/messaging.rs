//! The message paths between the services, fed directly on the bus: poison and unknown messages are
//! dead-lettered without retries, duplicates are applied once, and out-of-order reports converge.

mod support;

use chrono::Utc;
use orderflow::dev::DevOptions;
use orderflow_adapters::memory::BusSettings;
use orderflow_domain::{Carrier, EventId, OrderId, ShipmentId, TrackingNumber};
use orderflow_messages::{CloudEvent, EventBody, Payload, RoutingKey, Source};
use orderflow_messages::{ShipmentDelivered, ShipmentDeliveredV1, ShipmentShipped};
use orderflow_ports::messaging::DeadLetter;
use support::{Harness, SKU, eventually};
use uuid::Uuid;

/// A stack whose bus hands each queue's messages to its consumer one at a time, in order, so that a
/// sentinel sent last proves that everything sent before it on that queue has been handled.
async fn sequential_stack() -> anyhow::Result<Harness> {
    let mut options = DevOptions::for_tests();
    options.bus = BusSettings { prefetch: 1, ..options.bus };
    let h = Harness::start_with(options).await?;
    h.put_product(SKU, 1999, 10).await?;
    Ok(h)
}

/// Waits until a message with `message_id` is dead-lettered and returns it.
async fn dead_letter(h: &Harness, message_id: &str) -> anyhow::Result<DeadLetter> {
    eventually(&format!("{message_id} in the dead letters"), || async {
        Ok(h.stack.bus.dead_letters().into_iter().find(|d| d.message_id.as_deref() == Some(message_id)))
    })
    .await
}

/// Sends an unparseable message on `queue` and waits for it to be dead-lettered: on a sequential bus,
/// everything sent on `queue` before it has then been handled.
async fn drain(h: &Harness, queue: RoutingKey) -> anyhow::Result<()> {
    let sentinel = format!("sentinel-{}", Uuid::now_v7());
    h.stack.bus.send_raw(queue, Some(sentinel.clone()), b"sentinel".to_vec());
    dead_letter(h, &sentinel).await.map(drop)
}

/// The message ids of the dead letters that are not sentinels.
fn unexpected_dead_letters(h: &Harness) -> Vec<String> {
    h.stack
        .bus
        .dead_letters()
        .into_iter()
        .filter_map(|d| d.message_id)
        .filter(|id| !id.starts_with("sentinel-"))
        .collect()
}

/// A report of Delivery's about `order`, as it would send it.
fn report(order: OrderId, payload: &impl Payload) -> CloudEvent {
    let body = EventBody::of(order, payload);
    CloudEvent::wrap(EventId::from_uuid(Uuid::now_v7()), Source::Delivery, body, Utc::now(), None)
}

/// The carrier and tracking number of the test's parcels.
fn parcel() -> (Carrier, TrackingNumber) {
    (Carrier::parse("DHL").expect("carrier"), TrackingNumber::parse("TRACK-0002").expect("tracking number"))
}

fn shipped_event(order: OrderId, shipment: ShipmentId) -> anyhow::Result<CloudEvent> {
    let (carrier, tracking_number) = parcel();
    Ok(report(order, &ShipmentShipped { shipment_id: shipment, order_id: order, carrier, tracking_number }))
}

fn delivered_event(order: OrderId, shipment: ShipmentId) -> CloudEvent {
    let (carrier, tracking_number) = parcel();
    report(order, &ShipmentDelivered { shipment_id: shipment, order_id: order, carrier, tracking_number })
}

fn delivered_v1_event(order: OrderId, shipment: ShipmentId) -> CloudEvent {
    report(order, &ShipmentDeliveredV1 { shipment_id: shipment, order_id: order })
}

fn send(h: &Harness, queue: RoutingKey, message_id: &str, event: &CloudEvent) -> anyhow::Result<()> {
    h.stack.bus.send_raw(queue, Some(message_id.to_owned()), serde_json::to_vec(event)?);
    Ok(())
}

/// A paid order with its pending shipment, as domain ids.
async fn paid_order(h: &Harness, customer: &str) -> anyhow::Result<(String, OrderId, ShipmentId)> {
    let (order, shipment) = h.paid_order_with_shipment(customer, SKU, 2).await?;
    let order_id = OrderId::from_uuid(Uuid::parse_str(&order)?);
    let shipment_id = ShipmentId::from_uuid(Uuid::parse_str(&shipment)?);
    Ok((order, order_id, shipment_id))
}

fn count(timeline: &[String], event_type: &str) -> usize {
    timeline.iter().filter(|t| *t == event_type).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_without_retries() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.stack.bus.send_raw(RoutingKey::OrdersShipped, Some("poison-1".to_owned()), b"{ this is not json".to_vec());
    let letter = dead_letter(&h, "poison-1").await?;
    assert_eq!(letter.retries, 0, "bad JSON is permanent: {}", letter.error);
    assert_eq!(letter.original_queue, RoutingKey::OrdersShipped);
    assert_eq!(letter.body, b"{ this is not json");
    assert!(!letter.error.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_of_an_unknown_type_is_dead_lettered_without_retries() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let order = OrderId::from_uuid(Uuid::now_v7());
    let mut event = delivered_event(order, ShipmentId::from_uuid(Uuid::now_v7()));
    event.event_type = "orderflow.shipment.teleported.v1".to_owned();
    send(&h, RoutingKey::OrdersDelivered, "unknown-type-1", &event)?;
    let letter = dead_letter(&h, "unknown-type-1").await?;
    assert_eq!(letter.retries, 0, "an unknown type is permanent: {}", letter.error);
    assert_eq!(letter.original_queue, RoutingKey::OrdersDelivered);
    assert!(letter.error.contains("orderflow.shipment.teleported.v1"), "{}", letter.error);

    // A future version of a known type is unknown too.
    let mut future = delivered_event(order, ShipmentId::from_uuid(Uuid::now_v7()));
    future.event_type = "orderflow.shipment.delivered.v3".to_owned();
    send(&h, RoutingKey::OrdersDelivered, "unknown-version-1", &future)?;
    assert_eq!(dead_letter(&h, "unknown-version-1").await?.retries, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payload_that_does_not_fit_its_schema_is_dead_lettered_without_retries() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut event = delivered_event(OrderId::from_uuid(Uuid::now_v7()), ShipmentId::from_uuid(Uuid::now_v7()));
    event.data = serde_json::json!({ "order_id": "not-a-uuid" });
    send(&h, RoutingKey::OrdersDelivered, "malformed-1", &event)?;
    assert_eq!(dead_letter(&h, "malformed-1").await?.retries, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_about_an_unknown_order_is_dead_lettered_without_retries() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let event = shipped_event(OrderId::from_uuid(Uuid::now_v7()), ShipmentId::from_uuid(Uuid::now_v7()))?;
    send(&h, RoutingKey::OrdersShipped, "no-such-order-1", &event)?;
    assert_eq!(dead_letter(&h, "no-such-order-1").await?.retries, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicated_shipped_report_is_applied_once() -> anyhow::Result<()> {
    let h = sequential_stack().await?;
    let (id, order, shipment) = paid_order(&h, "cust-duplicate").await?;

    let event = shipped_event(order, shipment)?;
    let message_id = event.id.to_string();
    send(&h, RoutingKey::OrdersShipped, &message_id, &event)?;
    send(&h, RoutingKey::OrdersShipped, &message_id, &event)?;
    drain(&h, RoutingKey::OrdersShipped).await?;

    let shipped = h.order(&id).await?;
    assert_eq!(shipped["status"], "shipped");
    let timeline = h.timeline(&id).await?;
    assert_eq!(count(&timeline, "orderflow.order.shipped.v1"), 1, "{timeline:?}");
    assert_eq!(timeline, ["orderflow.order.placed.v1", "orderflow.order.paid.v1", "orderflow.order.shipped.v1"]);
    assert!(unexpected_dead_letters(&h).is_empty(), "a duplicate is not an error: {:?}", unexpected_dead_letters(&h));
    assert_eq!(h.stock(SKU).await?, (8, 0), "the stock is taken once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_republished_shipped_report_with_a_new_message_id_is_a_no_op() -> anyhow::Result<()> {
    let h = sequential_stack().await?;
    let (id, order, shipment) = paid_order(&h, "cust-republished").await?;

    send(&h, RoutingKey::OrdersShipped, "first-copy", &shipped_event(order, shipment)?)?;
    send(&h, RoutingKey::OrdersShipped, "second-copy", &shipped_event(order, shipment)?)?;
    drain(&h, RoutingKey::OrdersShipped).await?;

    let timeline = h.timeline(&id).await?;
    assert_eq!(count(&timeline, "orderflow.order.shipped.v1"), 1, "{timeline:?}");
    assert!(unexpected_dead_letters(&h).is_empty(), "{:?}", unexpected_dead_letters(&h));
    assert_eq!(h.stock(SKU).await?, (8, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_report_overtaking_the_shipped_one_records_both_steps_in_order() -> anyhow::Result<()> {
    let h = sequential_stack().await?;
    let (id, order, shipment) = paid_order(&h, "cust-overtaken").await?;

    let delivered = delivered_event(order, shipment);
    send(&h, RoutingKey::OrdersDelivered, &delivered.id.to_string(), &delivered)?;
    h.wait_for_status(&id, "delivered").await?;
    let shipped = shipped_event(order, shipment)?;
    send(&h, RoutingKey::OrdersShipped, &shipped.id.to_string(), &shipped)?;
    drain(&h, RoutingKey::OrdersShipped).await?;
    drain(&h, RoutingKey::OrdersDelivered).await?;

    let order_json = h.order(&id).await?;
    assert_eq!(order_json["status"], "delivered");
    let timeline = h.timeline(&id).await?;
    let tail: Vec<&str> = timeline.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(tail, ["orderflow.order.shipped.v1", "orderflow.order.delivered.v1"], "{timeline:?}");
    assert_eq!(count(&timeline, "orderflow.order.shipped.v1"), 1, "{timeline:?}");
    assert_eq!(count(&timeline, "orderflow.order.delivered.v1"), 1, "{timeline:?}");
    assert!(unexpected_dead_letters(&h).is_empty(), "the late report is a no-op: {:?}", unexpected_dead_letters(&h));
    assert_eq!(h.stock(SKU).await?, (8, 0), "delivered orders have taken their stock");
    let audit = eventually("the delivered event in the audit stream", || async {
        let events = h.stack.audit.events();
        Ok(events.iter().any(|e| e.subject == id && e.event_type == "orderflow.order.delivered.v1").then_some(events))
    })
    .await?;
    let trail: Vec<&CloudEvent> =
        audit.iter().filter(|e| e.subject == id && e.event_type.starts_with("orderflow.order.s")).collect();
    assert_eq!(trail.len(), 1, "one order.shipped in the audit stream: {trail:?}");
    assert_eq!(trail[0].data["carrier"], "DHL", "the shipped step carries the delivered report's carrier");
    assert_eq!(trail[0].data["tracking_number"], "TRACK-0002");
    let position = |t: &str| audit.iter().position(|e| e.subject == id && e.event_type == t);
    assert!(
        position("orderflow.order.shipped.v1") < position("orderflow.order.delivered.v1"),
        "shipped before delivered in the audit stream"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_version_delivered_report_without_its_shipped_one_still_ends_delivered() -> anyhow::Result<()> {
    let h = sequential_stack().await?;
    let (id, order, shipment) = paid_order(&h, "cust-overtaken-v1").await?;

    let delivered = delivered_v1_event(order, shipment);
    send(&h, RoutingKey::OrdersDelivered, &delivered.id.to_string(), &delivered)?;
    h.wait_for_status(&id, "delivered").await?;
    drain(&h, RoutingKey::OrdersDelivered).await?;

    let timeline = h.timeline(&id).await?;
    assert_eq!(count(&timeline, "orderflow.order.delivered.v1"), 1, "{timeline:?}");
    assert_eq!(count(&timeline, "orderflow.order.shipped.v1"), 0, "a v1 report cannot say how it travelled");
    assert!(unexpected_dead_letters(&h).is_empty(), "{:?}", unexpected_dead_letters(&h));
    assert_eq!(h.stock(SKU).await?, (8, 0), "delivered orders have taken their stock");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_report_inside_a_batch_is_dead_lettered_alone_and_the_rest_apply() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let mut orders = Vec::new();
    for customer in ["cust-batch-1", "cust-batch-2", "cust-batch-3"] {
        orders.push(paid_order(&h, customer).await?);
    }
    let unknown = shipped_event(OrderId::from_uuid(Uuid::now_v7()), ShipmentId::from_uuid(Uuid::now_v7()))?;

    // Sent in one go, so the consumer takes them together: good reports around two poisoned ones.
    send(&h, RoutingKey::OrdersShipped, "batch-good-1", &shipped_event(orders[0].1, orders[0].2)?)?;
    h.stack.bus.send_raw(RoutingKey::OrdersShipped, Some("batch-poison".to_owned()), b"{ not json".to_vec());
    send(&h, RoutingKey::OrdersShipped, "batch-good-2", &shipped_event(orders[1].1, orders[1].2)?)?;
    send(&h, RoutingKey::OrdersShipped, "batch-unknown-order", &unknown)?;
    send(&h, RoutingKey::OrdersShipped, "batch-good-3", &shipped_event(orders[2].1, orders[2].2)?)?;

    assert_eq!(dead_letter(&h, "batch-poison").await?.retries, 0);
    assert_eq!(dead_letter(&h, "batch-unknown-order").await?.retries, 0);
    for (id, ..) in &orders {
        h.wait_for_status(id, "shipped").await?;
        assert_eq!(count(&h.timeline(id).await?, "orderflow.order.shipped.v1"), 1);
    }
    let mut dead = unexpected_dead_letters(&h);
    dead.sort();
    assert_eq!(dead, ["batch-poison", "batch-unknown-order"], "only the poisoned reports are dead-lettered");
    assert_eq!(h.stock(SKU).await?, (4, 0), "each shipped order took its 2 units once");
    Ok(())
}
