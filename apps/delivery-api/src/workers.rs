//! The Delivery background work: the consumer of Sales' commands and the optional autopilot.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::events::{CancelRequested, OrderCreated};
use orderflow_domain::{Carrier, CloudEvent, Payload, ShipmentStatus, Step, TrackingNumber};
use orderflow_ports::delivery::ShipmentQuery;
use orderflow_ports::messaging::{Delivery, HandlerOutcome, MessageHandler};

use crate::service::{DeliveryService, NewShipment, ShipmentFailure, Target};

/// Handles `orders.created` and `orders.cancel_requested`.
pub struct OrderCommands {
    /// The use cases.
    pub service: DeliveryService,
}

#[async_trait]
impl MessageHandler for OrderCommands {
    /// Creates the shipments of the batch's paid orders in one transaction; cancel requests (and anything
    /// unreadable) are handled one by one.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let mut outcomes: Vec<Option<HandlerOutcome>> = deliveries.iter().map(|_| None).collect();
        let mut created = Vec::new();
        let mut batched = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            let creation = CloudEvent::decode(&delivery.body).ok().filter(|e| e.event_type == OrderCreated::TYPE);
            match creation.map(|event| (event.payload::<OrderCreated>(), event)) {
                Some((Ok(order), event)) => {
                    let inbox = Some(delivery.inbox_entry(&event));
                    created.push(NewShipment { order, inbox, traceparent: event.traceparent });
                    batched.push(i);
                }
                _ => outcomes[i] = Some(self.handle(delivery).await),
            }
        }
        for (i, result) in batched.into_iter().zip(self.service.create_all(created).await) {
            outcomes[i] = Some(outcome_of(result));
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| HandlerOutcome::Transient("not handled".into()))).collect()
    }

    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let event = match CloudEvent::decode(&delivery.body) {
            Ok(event) => event,
            Err(e) => return HandlerOutcome::Permanent(e.to_string()),
        };
        let inbox = delivery.inbox_entry(&event);
        let trace = event.traceparent.clone();
        let result = match event.event_type.as_str() {
            OrderCreated::TYPE => match event.payload::<OrderCreated>() {
                Ok(order) => self.service.create(order, Some(inbox), trace).await.map(drop),
                Err(e) => return HandlerOutcome::Permanent(e.to_string()),
            },
            CancelRequested::TYPE => match event.payload::<CancelRequested>() {
                // A cancel request can overtake its order's creation (they travel on different queues):
                // not found is transient, so the retry finds the shipment.
                Ok(request) => self
                    .service
                    .transition(Target::Order(request.order_id), Some(inbox), trace, |s, at| Ok(s.cancel(at)))
                    .await
                    .map(drop),
                Err(e) => return HandlerOutcome::Permanent(e.to_string()),
            },
            other => return HandlerOutcome::Permanent(format!("unknown event type {other}")),
        };
        outcome_of(result)
    }
}

fn outcome_of(result: Result<(), ShipmentFailure>) -> HandlerOutcome {
    match result {
        Ok(()) => HandlerOutcome::Done,
        Err(e @ ShipmentFailure::NotAllowed(_)) => HandlerOutcome::Permanent(e.to_string()),
        Err(e) => HandlerOutcome::Transient(e.to_string()),
    }
}

/// Shipments the autopilot advances per transaction.
const BATCH: usize = 256;

/// Ships and delivers shipments by itself after set delays, for demos and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct AutopilotSettings {
    /// How long a shipment stays pending.
    pub ship_after: Duration,
    /// How long a shipped shipment takes to arrive.
    pub deliver_after: Duration,
}

/// Runs the autopilot until the task is dropped. It reads due shipments from the store rather than
/// keeping timers, so nothing is forgotten across restarts.
pub async fn autopilot(service: DeliveryService, settings: AutopilotSettings) {
    let tick = settings.ship_after.min(settings.deliver_after).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        for (status, after) in
            [(ShipmentStatus::Pending, settings.ship_after), (ShipmentStatus::Shipped, settings.deliver_after)]
        {
            if let Err(error) = advance(&service, status, after).await {
                tracing::warn!(%error, "autopilot round failed");
            }
        }
    }
}

/// Advances every shipment that has been in `status` for `after`, a page at a time, each page in one
/// transaction.
async fn advance(service: &DeliveryService, status: ShipmentStatus, after: Duration) -> Result<(), ShipmentFailure> {
    let cutoff = service.clock.now() - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    let query = ShipmentQuery { status: Some(status), updated_before: Some(cutoff), limit: BATCH, after: None };
    let due = service.store.shipments(query).await?;
    let carrier = Carrier::parse("autopilot").map_err(|e| ShipmentFailure::Unexpected(Box::new(e)))?;
    service
        .transition_all(due.items, |shipment, at| match status {
            ShipmentStatus::Pending => {
                let tracking = format!("AUTO-{}", shipment.id.as_uuid().simple());
                match TrackingNumber::parse(&tracking) {
                    Ok(tracking) => shipment.ship(carrier.clone(), tracking, at),
                    Err(_) => Ok(Step::Unchanged(shipment)),
                }
            }
            _ => shipment.deliver(at),
        })
        .await?;
    Ok(())
}
