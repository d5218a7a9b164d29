//! The Sales consumers: the payment worker (`payments.requested`) and the handler of what Delivery
//! reports (`orders.shipped`, `orders.delivered`, `shipments.cancelled`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use orderflow_domain::events::{
    PaymentRequested, ShipmentCancelled, ShipmentDelivered, ShipmentDeliveredV1, ShipmentShipped,
};
use orderflow_domain::{CloudEvent, OrderStatus, Payload, PaymentOutcome, Step};
use orderflow_ports::messaging::{Delivery, HandlerOutcome, MessageHandler};
use orderflow_ports::sales::InboxEntry;

use crate::service::{BatchTransition, SalesService, Transition, TransitionFailure};

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

/// A payment request as the worker reads it.
struct Request {
    event: CloudEvent,
    inbox: InboxEntry,
    request: PaymentRequested,
}

#[async_trait]
impl MessageHandler for PaymentWorker {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    /// Reads the batch's orders in one query, charges those still awaiting payment concurrently, and
    /// records the verdicts together.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let mut outcomes: Vec<Option<HandlerOutcome>> = deliveries.iter().map(|_| None).collect();
        let mut requests = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            let opened = open(delivery).and_then(|(event, inbox)| match event.payload::<PaymentRequested>() {
                Ok(request) => Ok(Request { event, inbox, request }),
                Err(e) => Err(HandlerOutcome::Permanent(e.to_string())),
            });
            match opened {
                Ok(request) => requests.push((i, request)),
                Err(outcome) => outcomes[i] = Some(outcome),
            }
        }
        let ids: Vec<_> = requests.iter().map(|(_, r)| r.request.order_id).collect();
        let orders: HashMap<_, _> = match self.service.store.orders_by_id(&ids).await {
            Ok(orders) => orders.into_iter().map(|o| (o.id, o)).collect(),
            Err(e) => {
                return outcomes.into_iter().map(|o| o.unwrap_or(HandlerOutcome::Transient(e.to_string()))).collect();
            }
        };
        let charges = requests.iter().map(|(_, r)| async {
            match orders.get(&r.request.order_id) {
                None => Err(HandlerOutcome::Permanent(format!("no order {}", r.request.order_id))),
                // Only an order still awaiting payment is charged: a redelivered request for a settled or
                // cancelled order must not take money.
                Some(order) if order.status != OrderStatus::PendingPayment => Err(HandlerOutcome::Done),
                Some(order) => self
                    .service
                    .payments
                    .charge(order.id, r.request.amount)
                    .await
                    .map_err(|e| HandlerOutcome::Transient(e.to_string())),
            }
        });
        let charged = futures::future::join_all(charges).await;
        let mut settling = Vec::new();
        let mut batch = Vec::new();
        for ((i, r), charge) in requests.into_iter().zip(charged) {
            match charge {
                Err(outcome) => outcomes[i] = Some(outcome),
                Ok(verdict) => {
                    let settle = verdict.clone();
                    batch.push(BatchTransition {
                        id: r.request.order_id,
                        read: orders.get(&r.request.order_id).cloned(),
                        inbox: Some(r.inbox),
                        traceparent: r.event.traceparent,
                        transition: Box::new(move |o, at| o.settle_payment(&settle, at)),
                    });
                    settling.push((i, r.request.order_id, verdict));
                }
            }
        }
        let settled = self.service.transition_all(batch).await;
        for ((i, id, verdict), result) in settling.into_iter().zip(settled) {
            outcomes[i] = Some(match result {
                // The customer cancelled while the charge was running: give the money back.
                Err(TransitionFailure::NotAllowed(_)) if verdict == PaymentOutcome::Completed => {
                    match self.service.payments.refund(id).await {
                        Ok(()) => HandlerOutcome::Done,
                        Err(e) => HandlerOutcome::Transient(e.to_string()),
                    }
                }
                other => outcome_of(other),
            });
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| HandlerOutcome::Transient("not handled".into()))).collect()
    }
}

/// Applies Delivery's reports to orders.
pub struct DeliveryReports {
    /// The use cases.
    pub service: SalesService,
}

impl DeliveryReports {
    /// The transition a shipped or delivered report asks for, which a batch commits together; `None` for
    /// the reports handled one by one.
    fn transition_of(
        event: &CloudEvent,
        inbox: &InboxEntry,
    ) -> Option<Result<BatchTransition<'static>, HandlerOutcome>> {
        let permanent = |e: orderflow_domain::DecodeError| HandlerOutcome::Permanent(e.to_string());
        let (id, transition): (_, Transition<'static>) = match event.event_type.as_str() {
            ShipmentShipped::TYPE => match event.payload::<ShipmentShipped>() {
                Ok(p) => (
                    p.order_id,
                    Box::new(move |o, at| o.mark_shipped(p.carrier.clone(), p.tracking_number.clone(), at)),
                ),
                Err(e) => return Some(Err(permanent(e))),
            },
            // The two reports travel on different queues, so `delivered` can overtake `shipped`. The current
            // report carries the carrier, so the order records both steps at once and the late `shipped` is a
            // no-op.
            ShipmentDelivered::TYPE => match event.payload::<ShipmentDelivered>() {
                Ok(p) => (
                    p.order_id,
                    Box::new(move |o, at| o.mark_delivered_by(p.carrier.clone(), p.tracking_number.clone(), at)),
                ),
                Err(e) => return Some(Err(permanent(e))),
            },
            _ => return None,
        };
        Some(Ok(BatchTransition {
            id,
            read: None,
            inbox: Some(inbox.clone()),
            traceparent: event.traceparent.clone(),
            transition,
        }))
    }

    /// The reports a batch does not commit together: first-version delivered reports, cancellations
    /// (refunded after the commit) and anything unreadable.
    async fn alone(&self, event: CloudEvent, inbox: InboxEntry, delivery: &Delivery) -> HandlerOutcome {
        let service = &self.service;
        let trace = event.traceparent.clone();
        match event.event_type.as_str() {
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

#[async_trait]
impl MessageHandler for DeliveryReports {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let mut outcomes: Vec<Option<HandlerOutcome>> = deliveries.iter().map(|_| None).collect();
        let mut batch = Vec::new();
        let mut batched = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            let (event, inbox) = match open(delivery) {
                Ok(opened) => opened,
                Err(outcome) => {
                    outcomes[i] = Some(outcome);
                    continue;
                }
            };
            match Self::transition_of(&event, &inbox) {
                Some(Ok(transition)) => {
                    batch.push(transition);
                    batched.push(i);
                }
                Some(Err(outcome)) => outcomes[i] = Some(outcome),
                None => outcomes[i] = Some(self.alone(event, inbox, delivery).await),
            }
        }
        for (i, result) in batched.into_iter().zip(self.service.transition_all(batch).await) {
            outcomes[i] = Some(outcome_of(result));
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| HandlerOutcome::Transient("not handled".into()))).collect()
    }
}
