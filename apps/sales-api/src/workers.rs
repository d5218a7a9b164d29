//! The Sales consumers: the payment worker (`payments.requested`), the handler of what Delivery
//! reports (`orders.shipped`, `orders.delivered`, `shipments.cancelled`) and the notification worker
//! (`notifications.requested`). Each decodes its messages into a use case's input and settles each by the
//! use case's verdict; the rules live in the use cases.

use async_trait::async_trait;
use orderflow_messages::{CloudEvent, DecodeError, Payload};
use orderflow_messages::{
    NotificationRequested, PaymentRequested, ShipmentCancelled, ShipmentDelivered, ShipmentDeliveredV1, ShipmentShipped,
};
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::messaging::{Delivery, HandlerOutcome, MessageHandler};

use crate::notifications::{NotificationRequest, Notifications, NotifyFailure};
use crate::service::{PaymentRequest, Report, Reported, SalesService, SettleFailure};

/// What every consumer does first: parse the envelope and name the inbox entry it will write.
pub(crate) fn open(delivery: &Delivery) -> Result<(CloudEvent, InboxEntry), HandlerOutcome> {
    let event = CloudEvent::decode(&delivery.body).map_err(|e| HandlerOutcome::Permanent(e.to_string()))?;
    let inbox = delivery.inbox_entry(&event);
    Ok((event, inbox))
}

/// How the broker is to settle a message whose work ended so.
fn outcome_of(result: Result<(), SettleFailure>) -> HandlerOutcome {
    match result {
        Ok(()) => HandlerOutcome::Done,
        Err(failure) if failure.is_permanent() => HandlerOutcome::Permanent(failure.to_string()),
        Err(failure) => HandlerOutcome::Transient(failure.to_string()),
    }
}

/// Runs a use case on the deliveries that decode, in one call, and answers every delivery in order: those
/// that did not decode are refused for good.
async fn settle<T, F>(
    deliveries: &[Delivery],
    decode: impl Fn(&Delivery) -> Result<T, HandlerOutcome>,
    run: impl FnOnce(Vec<T>) -> F,
) -> Vec<HandlerOutcome>
where
    F: Future<Output = Vec<Result<(), SettleFailure>>>,
{
    let decoded: Vec<Result<T, HandlerOutcome>> = deliveries.iter().map(decode).collect();
    let mut inputs = Vec::new();
    let mut outcomes: Vec<Option<HandlerOutcome>> = Vec::with_capacity(decoded.len());
    for result in decoded {
        match result {
            Ok(input) => {
                inputs.push(input);
                outcomes.push(None);
            }
            Err(outcome) => outcomes.push(Some(outcome)),
        }
    }
    let mut results = run(inputs).await.into_iter();
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| results.next().map_or(HandlerOutcome::Transient("not handled".into()), outcome_of))
        })
        .collect()
}

fn permanent(error: DecodeError) -> HandlerOutcome {
    HandlerOutcome::Permanent(error.to_string())
}

/// Charges placed orders and records the verdict.
pub struct PaymentWorker {
    /// The use cases.
    pub service: SalesService,
}

#[async_trait]
impl MessageHandler for PaymentWorker {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let decode = |delivery: &Delivery| {
            let (event, inbox) = open(delivery)?;
            let request = event.payload::<PaymentRequested>().map_err(permanent)?;
            Ok(PaymentRequest {
                order_id: request.order_id,
                amount: request.amount,
                inbox,
                span: delivery.span.clone(),
            })
        };
        settle(deliveries, decode, |requests| self.service.take_payments(requests)).await
    }
}

/// Applies Delivery's reports to orders.
pub struct DeliveryReports {
    /// The use cases.
    pub service: SalesService,
}

impl DeliveryReports {
    fn decode(delivery: &Delivery) -> Result<Reported, HandlerOutcome> {
        let (event, inbox) = open(delivery)?;
        let report = match event.event_type.as_str() {
            ShipmentShipped::TYPE => {
                let p = event.payload::<ShipmentShipped>().map_err(permanent)?;
                Report::Shipped { order_id: p.order_id, carrier: p.carrier, tracking_number: p.tracking_number }
            }
            ShipmentDelivered::TYPE => {
                let p = event.payload::<ShipmentDelivered>().map_err(permanent)?;
                Report::Delivered { order_id: p.order_id, carrier: p.carrier, tracking_number: p.tracking_number }
            }
            ShipmentDeliveredV1::TYPE => {
                let p = event.payload::<ShipmentDeliveredV1>().map_err(permanent)?;
                Report::DeliveredUntracked { order_id: p.order_id, first_arrival: delivery.retries == 0 }
            }
            ShipmentCancelled::TYPE => {
                let p = event.payload::<ShipmentCancelled>().map_err(permanent)?;
                Report::ShipmentCancelled { order_id: p.order_id }
            }
            other => return Err(HandlerOutcome::Permanent(format!("unknown event type {other}"))),
        };
        Ok(Reported { report, inbox, span: delivery.span.clone() })
    }
}

#[async_trait]
impl MessageHandler for DeliveryReports {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        settle(deliveries, Self::decode, |reports| self.service.apply_reports(reports)).await
    }
}

/// Tells customers what happened to their orders.
pub struct NotificationWorker {
    /// The use case.
    pub notifications: std::sync::Arc<Notifications>,
}

#[async_trait]
impl MessageHandler for NotificationWorker {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let request = match open(delivery).and_then(|(event, inbox)| {
            let p = event.payload::<NotificationRequested>().map_err(permanent)?;
            Ok(NotificationRequest { order_id: p.order_id, contact_email: p.contact_email, notice: p.notice, inbox })
        }) {
            Ok(request) => request,
            Err(outcome) => return outcome,
        };
        match self.notifications.notify(&request).await {
            Ok(()) => HandlerOutcome::Done,
            Err(failure @ NotifyFailure::Refused(_)) => HandlerOutcome::Permanent(failure.to_string()),
            Err(failure @ NotifyFailure::Transient(_)) => HandlerOutcome::Transient(failure.to_string()),
        }
    }
}
