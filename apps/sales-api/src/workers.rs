//! The Sales consumers: the payment worker (`payments.requested`) and the handler of what Delivery
//! reports (`orders.shipped`, `orders.delivered`, `shipments.cancelled`).

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use orderflow_domain::events::{
    PaymentRequested, ShipmentCancelled, ShipmentDelivered, ShipmentDeliveredV1, ShipmentShipped,
};
use orderflow_domain::{CloudEvent, OrderStatus, Payload, PaymentOutcome, Step};
use orderflow_ports::messaging::{Delivery, HandlerOutcome, MessageHandler};
use orderflow_ports::sales::InboxEntry;

use crate::service::{SalesService, TransitionFailure};

/// What every consumer does first: parse the envelope and name the inbox entry it will write.
pub(crate) fn open(delivery: &Delivery) -> Result<(CloudEvent, InboxEntry), HandlerOutcome> {
    let event = CloudEvent::decode(&delivery.body).map_err(|e| HandlerOutcome::Permanent(e.to_string()))?;
    let inbox = delivery.inbox_entry(&event);
    Ok((event, inbox))
}

fn outcome_of(result: Result<orderflow_domain::Order, TransitionFailure>) -> HandlerOutcome {
    match result {
        Ok(_) => HandlerOutcome::Done,
        Err(e @ (TransitionFailure::NotFound | TransitionFailure::NotAllowed(_))) => {
            HandlerOutcome::Permanent(e.to_string())
        }
        Err(e) => HandlerOutcome::Transient(e.to_string()),
    }
}

/// Charges placed orders and records the verdict.
pub struct PaymentWorker {
    /// The use cases.
    pub service: SalesService,
}

#[async_trait]
impl MessageHandler for PaymentWorker {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let (event, inbox) = match open(delivery) {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };
        let request: PaymentRequested = match event.payload() {
            Ok(request) => request,
            Err(e) => return HandlerOutcome::Permanent(e.to_string()),
        };
        let order = match self.service.store.order(request.order_id).await {
            Ok(Some(order)) => order,
            Ok(None) => return HandlerOutcome::Permanent(format!("no order {}", request.order_id)),
            Err(e) => return HandlerOutcome::Transient(e.to_string()),
        };
        // Only an order still awaiting payment is charged: a redelivered request for a settled or
        // cancelled order must not take money.
        if order.status != OrderStatus::PendingPayment {
            return HandlerOutcome::Done;
        }
        let outcome = match self.service.payments.charge(order.id, request.amount).await {
            Ok(outcome) => outcome,
            Err(e) => return HandlerOutcome::Transient(e.to_string()),
        };
        let id = order.id;
        let settled = self
            .service
            .transition_read(order, Some(inbox), event.traceparent.clone(), |o, at| o.settle_payment(&outcome, at))
            .await;
        match settled {
            // The customer cancelled while the charge was running: give the money back.
            Err(TransitionFailure::NotAllowed(_)) if outcome == PaymentOutcome::Completed => {
                match self.service.payments.refund(id).await {
                    Ok(()) => HandlerOutcome::Done,
                    Err(e) => HandlerOutcome::Transient(e.to_string()),
                }
            }
            other => outcome_of(other),
        }
    }
}

/// Applies Delivery's reports to orders.
pub struct DeliveryReports {
    /// The use cases.
    pub service: SalesService,
}

#[async_trait]
impl MessageHandler for DeliveryReports {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let (event, inbox) = match open(delivery) {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };
        let service = &self.service;
        let trace = event.traceparent.clone();
        match event.event_type.as_str() {
            ShipmentShipped::TYPE => match event.payload::<ShipmentShipped>() {
                Ok(p) => outcome_of(
                    service
                        .transition(p.order_id, Some(inbox), trace, |o, at| {
                            o.mark_shipped(p.carrier.clone(), p.tracking_number.clone(), at)
                        })
                        .await,
                ),
                Err(e) => HandlerOutcome::Permanent(e.to_string()),
            },
            // The two reports travel on different queues, so `delivered` can overtake `shipped`. The current
            // report carries the carrier, so the order records both steps at once and the late `shipped` is a
            // no-op.
            ShipmentDelivered::TYPE => match event.payload::<ShipmentDelivered>() {
                Ok(p) => outcome_of(
                    service
                        .transition(p.order_id, Some(inbox), trace, |o, at| {
                            o.mark_delivered_by(p.carrier.clone(), p.tracking_number.clone(), at)
                        })
                        .await,
                ),
                Err(e) => HandlerOutcome::Permanent(e.to_string()),
            },
            ShipmentDeliveredV1::TYPE => match event.payload::<ShipmentDeliveredV1>() {
                Ok(p) => {
                    // A first-version report (queued before an upgrade) cannot say how the parcel travelled:
                    // applied before `shipped` it would leave the trail without `order.shipped`. On first
                    // arrival it waits one retry for its `shipped`; after that it is applied whatever came,
                    // so the order still converges.
                    let overtook = AtomicBool::new(false);
                    let applied = service
                        .transition(p.order_id, Some(inbox), trace, |o, at| {
                            let unshipped =
                                matches!(o.status, OrderStatus::PendingShipment | OrderStatus::CancellationRequested);
                            if unshipped && delivery.retries == 0 {
                                overtook.store(true, Ordering::Relaxed);
                                return Ok(Step::Unchanged(o));
                            }
                            o.mark_delivered(at)
                        })
                        .await;
                    match outcome_of(applied) {
                        HandlerOutcome::Done if overtook.load(Ordering::Relaxed) => {
                            HandlerOutcome::Transient("delivered before its shipped report: waiting one retry".into())
                        }
                        other => other,
                    }
                }
                Err(e) => HandlerOutcome::Permanent(e.to_string()),
            },
            ShipmentCancelled::TYPE => match event.payload::<ShipmentCancelled>() {
                Ok(p) => {
                    let cancelled = service
                        .transition(p.order_id, Some(inbox), trace, |o, at| o.confirm_shipment_cancelled(at))
                        .await;
                    match outcome_of(cancelled) {
                        // The refund follows the commit and is idempotent, so a failed refund is simply
                        // retried with the message (the transition is then a no-op).
                        HandlerOutcome::Done => match service.payments.refund(p.order_id).await {
                            Ok(()) => HandlerOutcome::Done,
                            Err(e) => HandlerOutcome::Transient(e.to_string()),
                        },
                        other => other,
                    }
                }
                Err(e) => HandlerOutcome::Permanent(e.to_string()),
            },
            other => HandlerOutcome::Permanent(format!("unknown event type {other}")),
        }
    }
}
