//! The Delivery background work: the consumer of Sales' commands and the optional autopilot.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_messages::{CancelRequested, OrderCreated};
use orderflow_messages::{CloudEvent, Payload};
use orderflow_ports::messaging::{Delivery, HandlerOutcome, MessageHandler};
use tokio::time::Instant;
use tracing::Instrument;

use crate::service::{Advanced, AutoStep, DeliveryService, NewShipment, TransitionFailure};

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
                    created.push(NewShipment { order: order.into(), inbox, span: delivery.span.clone() });
                    batched.push(i);
                }
                _ => outcomes[i] = Some(self.handle(delivery).instrument(delivery.span.clone()).await),
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
        let result = match event.event_type.as_str() {
            OrderCreated::TYPE => match event.payload::<OrderCreated>() {
                Ok(order) => self.service.create(order.into(), Some(inbox)).await.map(drop),
                Err(e) => return HandlerOutcome::Permanent(e.to_string()),
            },
            CancelRequested::TYPE => match event.payload::<CancelRequested>() {
                Ok(request) => self.service.cancel_for_order(request.order_id, inbox).await.map(drop),
                Err(e) => return HandlerOutcome::Permanent(e.to_string()),
            },
            other => return HandlerOutcome::Permanent(format!("unknown event type {other}")),
        };
        outcome_of(result)
    }
}

/// How the broker is to settle a message whose work ended so: only a refusal of the state machine is
/// final; a shipment not found yet (a cancel request that overtook the creation) is retried.
fn outcome_of(result: Result<(), TransitionFailure>) -> HandlerOutcome {
    match result {
        Ok(()) => HandlerOutcome::Done,
        Err(e @ TransitionFailure::NotAllowed(_)) => HandlerOutcome::Permanent(e.to_string()),
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
/// keeping timers, so nothing is forgotten across restarts. It looks when what it knows of falls due — a
/// shipment this process created (the service signals it) or shipped — and polls besides, for shipments
/// it cannot know of (created before a restart, by another replica, shipped by staff).
pub async fn autopilot(service: DeliveryService, settings: AutopilotSettings) {
    let shorter = settings.ship_after.min(settings.deliver_after);
    let looks = Looks {
        poll: shorter.clamp(Duration::from_millis(20), Duration::from_secs(1)),
        gap: (shorter / 4).clamp(Duration::from_millis(10), Duration::from_millis(250)),
    };
    let mut ship = Stage::new(AutoStep::Ship, settings.ship_after, looks);
    let mut deliver = Stage::new(AutoStep::Deliver, settings.deliver_after, looks);
    loop {
        let wake = ship.next_look().min(deliver.next_look());
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = service.next_creation() => {
                ship.falls_due_after_now();
                continue;
            }
        }
        if ship.next_look() <= Instant::now()
            && let Some(shipped) = ship.look(&service).await
            && shipped > 0
        {
            deliver.falls_due_after_now();
        }
        if deliver.next_look() <= Instant::now() {
            deliver.look(&service).await;
        }
    }
}

/// How often a stage looks for due shipments.
#[derive(Debug, Clone, Copy)]
struct Looks {
    /// At least this often, for shipments this process cannot know of.
    poll: Duration,
    /// At most this often, so that under load a look takes a batch.
    gap: Duration,
}

/// One step of the autopilot: the shipments it advances, how long they wait, and when they fall due.
struct Stage {
    step: AutoStep,
    after: Duration,
    looks: Looks,
    /// When shipments known to this process fall due, earliest first.
    due: VecDeque<Instant>,
    last_look: Instant,
}

impl Stage {
    fn new(step: AutoStep, after: Duration, looks: Looks) -> Self {
        Self { step, after, looks, due: VecDeque::new(), last_look: Instant::now() }
    }

    /// A shipment entered this stage now: it falls due `after` from now. The store's filter is strict
    /// ("changed before"), so the look comes a millisecond after.
    fn falls_due_after_now(&mut self) {
        self.due.push_back(Instant::now() + self.after + Duration::from_millis(1));
    }

    /// When to look next: when the earliest known shipment falls due, or at the next poll, but not
    /// sooner than the gap after the last look.
    fn next_look(&self) -> Instant {
        let polled = self.last_look + self.looks.poll;
        let known = self.due.front().map_or(polled, |due| (*due).min(polled));
        known.max(self.last_look + self.looks.gap)
    }

    /// Advances the stage's due shipments; how many changed, or `None` when the look failed.
    async fn look(&mut self, service: &DeliveryService) -> Option<usize> {
        self.last_look = Instant::now();
        let now = self.last_look;
        self.due.retain(|due| *due > now);
        match service.advance_due(self.step, self.after, BATCH).await {
            Ok(Advanced { changed, more }) => {
                if more {
                    // A full page: the rest is due already.
                    self.due.push_front(now);
                }
                Some(changed)
            }
            Err(error) => {
                tracing::warn!(%error, "autopilot round failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use orderflow_adapters::memory::{InMemoryDeliveryStore, TokioClock};
    use orderflow_adapters::system::UuidV7Ids;
    use orderflow_domain::ShipmentOrder;
    use orderflow_domain::{Address, CustomerId, OrderId, Quantity, RawAddress, Shipment, Sku};
    use orderflow_messages::ShipmentLine;

    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
    use orderflow_ports::outbox::{Destination, OutboxStore};
    use orderflow_ports::trace;
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    use super::{AutopilotSettings, autopilot};
    use crate::service::{AutoStep, DeliveryService, Target};

    fn paid_order() -> ShipmentOrder {
        ShipmentOrder {
            order_id: OrderId::from_uuid(uuid::Uuid::now_v7()),
            customer_id: CustomerId::parse("autopilot-test").expect("valid"),
            lines: vec![ShipmentLine {
                sku: Sku::parse("SKU-1").expect("valid"),
                quantity: Quantity::new(1).expect("valid"),
            }],
            shipping_address: Address::parse(RawAddress {
                name: "Ada",
                line1: "1 Poll Street",
                line2: None,
                city: "Berlin",
                postal_code: "10115",
                country: "DE",
            })
            .expect("valid"),
        }
    }

    async fn status_of(service: &DeliveryService, shipment: &Shipment) -> String {
        let found = service.find(Target::Shipment(shipment.id)).await.expect("read").expect("exists");
        found.status.as_str().to_owned()
    }

    /// With delays of one second the autopilot polls every second; a shipment created between two polls
    /// is shipped when it falls due and delivered a second later, not at the polls after.
    #[tokio::test(start_paused = true)]
    async fn the_autopilot_advances_a_shipment_when_it_falls_due_not_at_the_next_poll() {
        let service = DeliveryService::new(
            Arc::new(InMemoryDeliveryStore::new()),
            Arc::new(TokioClock::starting_now()),
            Arc::new(UuidV7Ids),
        );
        let second = std::time::Duration::from_secs(1);
        tokio::spawn(autopilot(service.clone(), AutopilotSettings { ship_after: second, deliver_after: second }));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let shipment = service.create(paid_order(), None).await.expect("created");
        tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
        let at_due = status_of(&service, &shipment).await;
        tokio::time::sleep(second).await;
        let a_second_later = status_of(&service, &shipment).await;

        assert_eq!(at_due, "shipped", "shipped at 1.3 s, when due, not at the poll at 2 s");
        assert_eq!(a_second_later, "delivered", "delivered at 2.3 s, when due, not at the poll at 3 s");
    }

    /// Shipping two shipments of sampled traces in one round is one span, under the first shipment's
    /// creation and linked to the other's, and each `orders.shipped` continues its own shipment's trace.
    // Several workers: the span processor exports from a task of the runtime while the test waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_autopilot_round_is_one_span_joining_its_shipments_traces_and_each_report_continues_its_own() {
        const FIRST: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const SECOND: &str = "0af7651916cd43dd8448eb211c80319c";
        let exporter = InMemorySpanExporter::default();
        let provider = orderflow_runtime::telemetry::tracer_provider("delivery", Some(exporter.clone()));
        let subscriber = tracing_subscriber::registry().with(orderflow_runtime::telemetry::traces(&provider));
        let _traced = tracing::subscriber::set_default(subscriber);
        let store = Arc::new(InMemoryDeliveryStore::new());
        let service = DeliveryService::new(store.clone(), Arc::new(TokioClock::starting_now()), Arc::new(UuidV7Ids));
        for trace_id in [FIRST, SECOND] {
            let request = tracing::info_span!("request");
            trace::continue_trace(&request, Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")));
            service.create(paid_order(), None).instrument(request).await.expect("created");
        }
        let created = store.take(Destination::Audit, 10).await.expect("taken");
        let creations: Vec<String> = created.messages().iter().filter_map(|m| m.event.traceparent.clone()).collect();
        let ids: Vec<_> = created.messages().iter().map(|m| m.id()).collect();
        created.settle(&ids).await.expect("settled");

        let advanced = service.advance_due(AutoStep::Ship, std::time::Duration::ZERO, 10).await.expect("advanced");
        assert_eq!(advanced.changed, 2);
        provider.force_flush().expect("spans flushed");

        let spans: Vec<SpanData> = exporter.get_finished_spans().expect("spans");
        let rounds: Vec<&SpanData> = spans.iter().filter(|s| s.name == "autopilot ship").collect();
        let [round] = rounds.as_slice() else { panic!("one span for the round, got {spans:#?}") };
        let [first, second] = creations.as_slice() else { panic!("two creations: {creations:?}") };
        assert_eq!(round.span_context.trace_id().to_string(), FIRST, "in the first shipment's trace");
        assert!(first.contains(&round.parent_span_id.to_string()), "under its creation: {first}");
        let links: Vec<String> = round.links.iter().map(|l| l.span_context.span_id().to_string()).collect();
        assert!(links.len() == 1 && second.contains(&links[0]), "linked to the second creation: {links:?}");
        let sent = store.take(Destination::Command, 10).await.expect("taken");
        let reports: Vec<Option<String>> = sent.messages().iter().map(|m| m.event.traceparent.clone()).collect();
        assert_eq!(reports, [Some(first.clone()), Some(second.clone())], "each report continues its creation");
    }
}
