//! The Delivery use cases, one method each: creating shipments for paid orders, reading them, shipping,
//! delivering and cancelling them, and the autopilot's step — each a domain transition committed with its
//! outbox messages. Handlers and consumers only translate to and from them.

use std::sync::Arc;
use std::time::Duration;

use orderflow_domain::{
    Carrier, EventId, OrderId, Shipment, ShipmentEvent, ShipmentId, ShipmentOrder, ShipmentStatus, Step, Timestamp,
    TrackingNumber, Transition,
};
use orderflow_messages::{Outgoing, Source};
use orderflow_ports::delivery::{DeliveryStore, Due, ShipmentChange, ShipmentQuery};
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{ChangeError, ChangeOutcome};
use orderflow_ports::system::{Clock, IdGenerator};
use orderflow_ports::trace;
use orderflow_ports::{Page, ReadError, committed, optimistically};
use tokio::sync::Notify;
use tracing::{Instrument, Span};

pub use orderflow_ports::TransitionFailure;

/// Which shipment a change is about.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// By its id (staff, autopilot).
    Shipment(ShipmentId),
    /// By its order (Sales' commands).
    Order(OrderId),
}

/// The Delivery use cases, on the ports they run on.
#[derive(Clone)]
pub struct DeliveryService {
    store: Arc<dyn DeliveryStore>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    /// Signalled after new shipments were committed, so the autopilot can look when they fall due rather
    /// than at its next poll.
    created: Arc<Notify>,
}

/// What the autopilot does to a shipment that has waited long enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoStep {
    /// Hand a pending shipment to the `autopilot` carrier.
    Ship,
    /// Deliver a shipped one.
    Deliver,
}

impl AutoStep {
    /// The span of this step's round over shipments created in the traces `creations`, `None` when none
    /// of them is sampled: one span a round, under the first sampled creation and linked to the others.
    fn span<'a>(self, creations: impl IntoIterator<Item = Option<&'a str>>) -> Option<Span> {
        let name = match self {
            Self::Ship => "autopilot ship",
            Self::Deliver => "autopilot deliver",
        };
        trace::joint_span(creations, || tracing::info_span!(parent: None, "autopilot", otel.name = name))
    }
}

/// What one autopilot step over due shipments did.
#[derive(Debug, Clone, Copy)]
pub struct Advanced {
    /// Shipments that changed.
    pub changed: usize,
    /// Whether a full page was due, so more may be.
    pub more: bool,
}

/// A paid order to create the shipment of, with the message that asks for it.
pub struct NewShipment {
    /// What Sales asked to ship.
    pub order: ShipmentOrder,
    /// The message that asks for it.
    pub inbox: Option<InboxEntry>,
    /// The message's span: what the creation sends belongs to its trace.
    pub span: Span,
}

impl DeliveryService {
    /// The use cases on these ports.
    pub fn new(store: Arc<dyn DeliveryStore>, clock: Arc<dyn Clock>, ids: Arc<dyn IdGenerator>) -> Self {
        Self { store, clock, ids, created: Arc::default() }
    }

    /// Resolves after the next shipments were created.
    pub async fn next_creation(&self) {
        self.created.notified().await;
    }

    /// Shipments, filtered and paged as `query` says.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn shipments(&self, query: ShipmentQuery) -> Result<Page<Shipment, ShipmentId>, ReadError> {
        self.store.shipments(query).await
    }

    /// Ends the console session named `session` for every replica; `until` is when it would have ended.
    ///
    /// # Errors
    /// [`ChangeError::Unexpected`] when the store fails: the session has not ended.
    pub async fn sign_out(&self, session: &str, until: Timestamp) -> Result<(), ChangeError> {
        self.store.sign_out(session, until, self.clock.now()).await
    }

    /// Whether the console session named `session` was signed out.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn signed_out(&self, session: &str) -> Result<bool, ReadError> {
        self.store.signed_out(session).await
    }

    /// Hands the parcel to `carrier`; repeating it with the same details changes nothing.
    ///
    /// # Errors
    /// See [`TransitionFailure`].
    #[tracing::instrument(name = "ship", skip_all, fields(shipment_id = %id))]
    pub async fn ship(
        &self,
        id: ShipmentId,
        carrier: Carrier,
        tracking: TrackingNumber,
    ) -> Result<Shipment, TransitionFailure> {
        self.transition(Target::Shipment(id), None, |s, at| s.ship(carrier.clone(), tracking.clone(), at)).await
    }

    /// Records that the parcel arrived.
    ///
    /// # Errors
    /// See [`TransitionFailure`].
    #[tracing::instrument(name = "deliver", skip_all, fields(shipment_id = %id))]
    pub async fn deliver(&self, id: ShipmentId) -> Result<Shipment, TransitionFailure> {
        self.transition(Target::Shipment(id), None, |s, at| s.deliver(at)).await
    }

    /// Cancels the shipment of an order, as Sales asks when the customer cancels after paying; refused
    /// once the parcel left. The request can overtake the order's creation (they travel on different
    /// queues): then the shipment is not found yet, which is worth retrying.
    ///
    /// # Errors
    /// See [`TransitionFailure`].
    #[tracing::instrument(name = "cancel shipment", skip_all, fields(order_id = %order))]
    pub async fn cancel_for_order(&self, order: OrderId, inbox: InboxEntry) -> Result<Shipment, TransitionFailure> {
        self.transition(Target::Order(order), Some(inbox), |s, at| Ok(s.cancel(at))).await
    }

    /// The autopilot's step: advances, in one transaction, up to `limit` shipments that have waited
    /// `waited` in the state `step` leaves, shipping with the `autopilot` carrier or delivering.
    ///
    /// # Errors
    /// [`TransitionFailure::Unexpected`] when the store fails; then nothing changed.
    pub async fn advance_due(
        &self,
        step: AutoStep,
        waited: Duration,
        limit: usize,
    ) -> Result<Advanced, TransitionFailure> {
        let cutoff = self.clock.now() - chrono::Duration::from_std(waited).unwrap_or(chrono::Duration::MAX);
        let status = match step {
            AutoStep::Ship => ShipmentStatus::Pending,
            AutoStep::Deliver => ShipmentStatus::Shipped,
        };
        let due = self.store.due(status, cutoff, limit).await?;
        let more = due.len() == limit;
        let carrier = Carrier::parse("autopilot").map_err(|e| TransitionFailure::Unexpected(Box::new(e)))?;
        let changed = self
            .transition_all(step, due, |shipment, at| match step {
                AutoStep::Ship => {
                    let tracking = format!("AUTO-{}", shipment.id.as_uuid().simple());
                    match TrackingNumber::parse(&tracking) {
                        Ok(tracking) => shipment.ship(carrier.clone(), tracking, at),
                        Err(_) => Ok(Step::Unchanged(shipment)),
                    }
                }
                AutoStep::Deliver => shipment.deliver(at),
            })
            .await?;
        Ok(Advanced { changed, more })
    }

    /// Creates the shipment of a paid order; a second request for the same order changes nothing.
    ///
    /// # Errors
    /// [`TransitionFailure::Unexpected`] when the store fails.
    #[tracing::instrument(name = "create shipment", skip_all, fields(order_id = %order.order_id))]
    pub async fn create(&self, order: ShipmentOrder, inbox: Option<InboxEntry>) -> Result<Shipment, TransitionFailure> {
        // No read first: the store refuses a second shipment for the order, and a redelivered message is
        // recognised by the inbox — both cases then return the shipment that exists.
        let now = self.clock.now();
        let (shipment, event) = Shipment::create(ShipmentId::from_uuid(self.ids.new_id()), order, now);
        let change = ShipmentChange {
            shipment: shipment.clone(),
            expected_version: None,
            messages: self.messages(orderflow_messages::shipment_message(&event), now),
            inbox,
        };
        match self.store.save(change).await {
            Ok(ChangeOutcome::Applied) => {
                self.created.notify_one();
                Ok(shipment)
            }
            // Created before (by this message or another): that shipment stands.
            Ok(ChangeOutcome::AlreadyProcessed) | Err(ChangeError::Conflict { .. }) => {
                self.store.shipment_for_order(shipment.order.order_id).await?.ok_or(TransitionFailure::NotFound)
            }
            Err(e) => Err(TransitionFailure::unexpected(e)),
        }
    }

    /// Creates the shipments of several paid orders, as [`DeliveryService::create`] would each, committed
    /// together; when the joint commit fails, each is created on its own, so one that cannot be fails
    /// alone. Results are in the batch's order.
    #[tracing::instrument(name = "create shipments", skip_all, fields(count = orders.len()))]
    pub async fn create_all(&self, orders: Vec<NewShipment>) -> Vec<Result<(), TransitionFailure>> {
        let now = self.clock.now();
        let changes: Vec<ShipmentChange> = orders
            .iter()
            .map(|new| {
                let (shipment, event) =
                    Shipment::create(ShipmentId::from_uuid(self.ids.new_id()), new.order.clone(), now);
                let messages = new.span.in_scope(|| self.messages(orderflow_messages::shipment_message(&event), now));
                ShipmentChange { shipment, expected_version: None, messages, inbox: new.inbox.clone() }
            })
            .collect();
        if let Ok(outcomes) = self.store.save_all(changes).await {
            if outcomes.iter().any(|outcome| matches!(outcome, Ok(ChangeOutcome::Applied))) {
                self.created.notify_one();
            }
            return outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    // Created before (by this message or another): that shipment stands.
                    Ok(_) | Err(ChangeError::Conflict { .. }) => Ok(()),
                    Err(e) => Err(TransitionFailure::unexpected(e)),
                })
                .collect();
        }
        let mut results = Vec::with_capacity(orders.len());
        for new in orders {
            results.push(self.create(new.order, new.inbox).instrument(new.span).await.map(drop));
        }
        results
    }

    /// One shipment by id or by order.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn find(&self, target: Target) -> Result<Option<Shipment>, ReadError> {
        match target {
            Target::Shipment(id) => self.store.shipment(id).await,
            Target::Order(id) => self.store.shipment_for_order(id).await,
        }
    }

    /// Applies `transition` to a shipment and commits it with its messages and inbox entry.
    async fn transition(
        &self,
        target: Target,
        inbox: Option<InboxEntry>,
        transition: impl Transition<Shipment, ShipmentEvent>,
    ) -> Result<Shipment, TransitionFailure> {
        let (inbox, transition) = (&inbox, &transition);
        optimistically(|| async move {
            let shipment = self.find(target).await?.ok_or(TransitionFailure::NotFound)?;
            let version = shipment.version;
            let now = self.clock.now();
            let (shipment, event) = match transition(shipment, now)? {
                Step::Unchanged(shipment) => return Ok(Some(shipment)),
                Step::Applied { state, event } => (state, event),
            };
            let change = ShipmentChange {
                shipment: shipment.clone(),
                expected_version: Some(version),
                messages: self.messages(orderflow_messages::shipment_message(&event), now),
                inbox: inbox.clone(),
            };
            let Some(outcome) = committed(self.store.save(change).await)? else { return Ok(None) };
            match outcome {
                ChangeOutcome::Applied => Ok(Some(shipment)),
                ChangeOutcome::AlreadyProcessed => {
                    self.find(target).await?.ok_or(TransitionFailure::NotFound).map(Some)
                }
            }
        })
        .await
    }

    /// Applies `transition` to each of the `due` shipments as they were read and commits every change in
    /// one transaction. A shipment someone changed since is left as it is (whoever asks again sees it
    /// anew); a transition the state machine refuses is skipped. What a step sends continues the trace of
    /// its shipment's creation; the round is one span joining those traces. Returns how many shipments
    /// changed.
    async fn transition_all(
        &self,
        step: AutoStep,
        due: Vec<Due>,
        transition: impl Transition<Shipment, ShipmentEvent>,
    ) -> Result<usize, TransitionFailure> {
        let now = self.clock.now();
        let changes: Vec<ShipmentChange> = due
            .into_iter()
            .filter_map(|Due { shipment, traceparent }| {
                let version = shipment.version;
                let Ok(Step::Applied { state, event }) = transition(shipment, now) else { return None };
                let messages = self.messages_continuing(orderflow_messages::shipment_message(&event), now, traceparent);
                Some(ShipmentChange { shipment: state, expected_version: Some(version), messages, inbox: None })
            })
            .collect();
        if changes.is_empty() {
            return Ok(0);
        }
        let creations = changes.iter().flat_map(|c| c.messages.iter().map(|m| m.event.traceparent.as_deref()));
        let span = step.span(creations).unwrap_or_else(Span::none);
        let outcomes = self.store.save_all(changes).instrument(span).await.map_err(TransitionFailure::unexpected)?;
        Ok(outcomes.iter().filter(|outcome| matches!(outcome, Ok(ChangeOutcome::Applied))).count())
    }

    /// The outbox message of a change, continuing the trace of the current span.
    fn messages(&self, outgoing: Outgoing, at: Timestamp) -> Vec<OutboxMessage> {
        self.messages_continuing(outgoing, at, trace::current_traceparent())
    }

    /// The outbox message of a change, continuing `traceparent`.
    fn messages_continuing(
        &self,
        outgoing: Outgoing,
        at: Timestamp,
        traceparent: Option<String>,
    ) -> Vec<OutboxMessage> {
        let id = EventId::from_uuid(self.ids.new_id());
        vec![OutboxMessage::from_outgoing(outgoing, id, Source::Delivery, at, traceparent)]
    }
}
