//! The Sales use cases, one method each: placing, reading and cancelling orders, the catalogue, taking
//! payments and applying Delivery's reports. The business rules live here; HTTP handlers and message
//! consumers only translate to and from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use orderflow_domain::{
    Carrier, EmailAddress, EventId, IdempotencyKey, Money, Order, OrderEvent, OrderId, OrderRequest, OrderStatus,
    PaymentOutcome, PricingError, ProductName, Sku, Step, StockEffect, Timestamp, TrackingNumber, Transition,
};
use orderflow_messages::{CloudEvent, Notice, Outgoing, Source};
use orderflow_ports::cache::OrderCache;
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::payment::{PaymentError, PaymentGateway};
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, IdempotencyRecord, OrderChange, OrderQuery, PlaceError, PlaceOutcome, Placement,
    Product, PutProductError, SalesStore,
};
use orderflow_ports::system::{Clock, IdGenerator};
use orderflow_ports::{Page, ReadError, committed, optimistically};

use tracing::{Instrument, Span};

use crate::pressure::BackPressure;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceOrderError {
    /// Pricing failed (unknown SKUs, mixed currencies, total too large).
    #[error(transparent)]
    Pricing(#[from] PricingError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] PlaceError),
    /// The catalogue could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Back-pressure: the back end is too far behind to take more orders now.
    #[error("overloaded: the command outbox is further behind than configured")]
    Overloaded,
}

pub use orderflow_ports::TransitionFailure;

/// Why a payment request or a report from Delivery was not settled.
#[derive(Debug, thiserror::Error)]
pub enum SettleFailure {
    /// The order could not be changed (missing, refused, contended or the store failed).
    #[error(transparent)]
    Transition(#[from] TransitionFailure),
    /// The payment gateway gave no verdict, or a refund was not confirmed.
    #[error("the payment gateway failed")]
    Gateway(#[from] PaymentError),
    /// A delivered report that cannot say how the parcel travelled arrived before the shipped report it
    /// implies; it is worth one more try once that report has had time to arrive.
    #[error("delivered before its shipped report: waiting one retry")]
    BeforeShipped,
}

impl SettleFailure {
    /// Whether trying again cannot help: the order does not exist or its state machine refused.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Transition(TransitionFailure::NotFound | TransitionFailure::NotAllowed(_)))
    }
}

/// A client's idempotency key for one placement.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The client that sent it (keys of different clients never collide).
    pub client: String,
    /// The key.
    pub key: IdempotencyKey,
    /// A fingerprint of the request: the same key with another request is refused.
    pub fingerprint: String,
}

/// A request to charge an order, as the payment command carries it.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    /// The order to charge.
    pub order_id: OrderId,
    /// How much.
    pub amount: Money,
    /// The message that asks for it.
    pub inbox: InboxEntry,
    /// The message's span: the charge and what its verdict sends belong to its trace.
    pub span: Span,
}

/// What Delivery reports about an order's shipment.
#[derive(Debug, Clone)]
pub enum Report {
    /// The parcel left with this carrier.
    Shipped {
        /// The order.
        order_id: OrderId,
        /// The carrier.
        carrier: Carrier,
        /// Its tracking number.
        tracking_number: TrackingNumber,
    },
    /// The parcel arrived; the report says how it travelled.
    Delivered {
        /// The order.
        order_id: OrderId,
        /// The carrier.
        carrier: Carrier,
        /// Its tracking number.
        tracking_number: TrackingNumber,
    },
    /// The parcel arrived, said by a first-version report that does not name the carrier.
    DeliveredUntracked {
        /// The order.
        order_id: OrderId,
        /// Whether this is the report's first arrival (it has not been retried yet).
        first_arrival: bool,
    },
    /// Delivery cancelled the shipment before it left.
    ShipmentCancelled {
        /// The order.
        order_id: OrderId,
    },
}

/// A report with the message that carried it.
#[derive(Debug, Clone)]
pub struct Reported {
    /// What Delivery says.
    pub report: Report,
    /// The message.
    pub inbox: InboxEntry,
    /// The message's span: what the change sends belongs to its trace.
    pub span: Span,
}

/// A transition of an existing order, for [`SalesService::transition_all`].
type BoxedTransition<'a> = Box<dyn Transition<Order, OrderEvent> + Send + Sync + 'a>;

/// One transition of a batch: the order, the message that asks for it, and the change.
struct BatchTransition<'a> {
    /// The order to change.
    id: OrderId,
    /// The order as the caller has just read it from the store, which saves reading it again; should it
    /// have changed since, the change conflicts and is recomputed from a fresh read.
    read: Option<Order>,
    /// The message that caused the change.
    inbox: Option<InboxEntry>,
    /// The span of the message that asks for it, which what the change sends continues.
    span: Span,
    /// The change.
    transition: BoxedTransition<'a>,
}

/// The Sales use cases, on the ports they run on.
#[derive(Clone)]
pub struct SalesService {
    store: Arc<dyn SalesStore>,
    cache: Arc<dyn OrderCache>,
    payments: Arc<dyn PaymentGateway>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    pressure: Arc<BackPressure>,
}

impl SalesService {
    /// The use cases on these ports; `pressure` says when to refuse new orders.
    pub fn new(
        store: Arc<dyn SalesStore>,
        cache: Arc<dyn OrderCache>,
        payments: Arc<dyn PaymentGateway>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        pressure: Arc<BackPressure>,
    ) -> Self {
        Self { store, cache, payments, clock, ids, pressure }
    }

    /// Deletes the idempotency keys older than [`IDEMPOTENCY_TTL`]: a request can no longer replay them, only
    /// take them over. Returns how many went.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn forget_expired_keys(&self) -> Result<u64, ReadError> {
        self.store.forget_idempotency_keys(self.clock.now() - IDEMPOTENCY_TTL).await
    }

    /// Forgets expired idempotency keys every `period`, at once first, until the process stops: the table
    /// then holds about a day of keys, not one for every keyed order ever placed. Each replica runs it;
    /// they skip the keys another is deleting.
    pub async fn keep_forgetting_expired_keys(self, period: std::time::Duration) {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match self.forget_expired_keys().await {
                Ok(forgotten) => tracing::debug!(forgotten, "expired idempotency keys deleted"),
                Err(error) => tracing::warn!(%error, "could not delete expired idempotency keys"),
            }
        }
    }

    /// Prices `request` from the catalogue and places it, honouring the client's idempotency key.
    ///
    /// # Errors
    /// See [`PlaceOrderError`]; nothing is stored in any error case.
    #[tracing::instrument(name = "place order", skip_all)]
    pub async fn place_order(
        &self,
        request: OrderRequest,
        idempotency: Option<Idempotency>,
    ) -> Result<PlaceOutcome, PlaceOrderError> {
        if self.pressure.overloaded() {
            return Err(PlaceOrderError::Overloaded);
        }
        let skus: Vec<Sku> = request.lines.iter().map(|(sku, _)| sku.clone()).collect();
        let prices: HashMap<Sku, _> =
            self.store.products_by_sku(&skus).await?.into_iter().map(|p| (p.sku, p.price)).collect();
        let now = self.clock.now();
        let id = OrderId::from_uuid(self.ids.new_id());
        let (order, event) = Order::place(id, request, |sku| prices.get(sku).copied(), now)?;
        let messages = self.messages(orderflow_messages::order_messages(&event, &order), now);
        let idempotency = idempotency.map(|i| IdempotencyRecord {
            client: i.client,
            key: i.key.as_str().to_owned(),
            request_hash: i.fingerprint,
            not_before: now - IDEMPOTENCY_TTL,
        });
        let (id, contact) = (order.id, order.contact_email.clone());
        let outcome = match self.store.place_order(Placement { order, messages, idempotency }).await {
            Err(PlaceError::InsufficientStock(short)) => {
                if let Some(contact) = contact {
                    self.notify_out_of_stock(id, &contact, &short, now).await;
                }
                return Err(PlaceError::InsufficientStock(short).into());
            }
            placed => placed?,
        };
        if let PlaceOutcome::Created(order) = &outcome {
            self.cache_put(order).await;
        }
        Ok(outcome)
    }

    /// Tells the contact of an order refused for stock. Only the notification is written (the order was
    /// not); should that fail, the client still has its answer, and only the e-mail is lost.
    async fn notify_out_of_stock(&self, id: OrderId, contact: &EmailAddress, short: &[Sku], now: Timestamp) {
        let notice = Notice::OutOfStock { skus: short.to_vec() };
        let messages = self.messages(vec![orderflow_messages::notification(id, contact, notice)], now);
        if let Err(error) = self.store.enqueue(messages).await {
            tracing::warn!(%error, order_id = %id, "could not write the out-of-stock notification");
        }
    }

    /// One order, from the cache when it holds it.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn order(&self, id: OrderId) -> Result<Option<Order>, ReadError> {
        let lookups = &orderflow_adapters::metrics::CACHE_LOOKUPS;
        match self.cache.get(id).await {
            Ok(Some(order)) => {
                lookups.with_label_values(&["hit"]).inc();
                return Ok(Some(order));
            }
            Ok(None) => lookups.with_label_values(&["miss"]).inc(),
            Err(error) => {
                lookups.with_label_values(&["error"]).inc();
                tracing::warn!(%error, "order cache unavailable; reading the store");
            }
        }
        let order = self.store.order(id).await?;
        if let Some(order) = &order {
            self.cache_put(order).await;
        }
        Ok(order)
    }

    /// Orders, newest first, filtered and paged as `query` says.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn orders(&self, query: OrderQuery) -> Result<Page<Order, OrderId>, ReadError> {
        self.store.orders(query).await
    }

    /// The order's audit events, oldest first; `None` when there is no such order.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn timeline(&self, id: OrderId) -> Result<Option<Vec<CloudEvent>>, ReadError> {
        self.store.timeline(id).await
    }

    /// Cancels the order: at once before payment; after payment it asks Delivery first
    /// (`cancellation_requested`). Refused once shipped.
    ///
    /// # Errors
    /// See [`TransitionFailure`].
    #[tracing::instrument(name = "cancel order", skip_all, fields(order_id = %id))]
    pub async fn cancel_order(&self, id: OrderId) -> Result<Order, TransitionFailure> {
        self.transition(id, None, |order, at| order.cancel(at)).await
    }

    /// The catalogue in SKU order, a page of `limit` after `after`.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn products(&self, limit: usize, after: Option<Sku>) -> Result<Page<Product, Sku>, ReadError> {
        self.store.products(limit, after).await
    }

    /// One product with its stock and reservations.
    ///
    /// # Errors
    /// [`ReadError`] when the store fails.
    pub async fn product(&self, sku: Sku) -> Result<Option<Product>, ReadError> {
        Ok(self.store.products_by_sku(std::slice::from_ref(&sku)).await?.into_iter().next())
    }

    /// Creates or updates a product; its reservations are kept.
    ///
    /// # Errors
    /// [`PutProductError::StockBelowReserved`] when open orders hold more than `stock`.
    pub async fn put_product(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
        stock: u32,
    ) -> Result<Product, PutProductError> {
        self.store.put_product(sku, name, price, stock).await
    }

    /// Charges the orders `requests` name and records each verdict, the batch committed together. Only an
    /// order still awaiting payment is charged: a request delivered again for a settled or cancelled order
    /// takes no money. Should the customer have cancelled while the charge ran, the money goes back.
    /// Results are in the requests' order.
    #[tracing::instrument(name = "take payments", skip_all, fields(count = requests.len()))]
    pub async fn take_payments(&self, requests: Vec<PaymentRequest>) -> Vec<Result<(), SettleFailure>> {
        let ids: Vec<OrderId> = requests.iter().map(|r| r.order_id).collect();
        let orders: HashMap<OrderId, Order> = match self.store.orders_by_id(&ids).await {
            Ok(orders) => orders.into_iter().map(|o| (o.id, o)).collect(),
            Err(e) => {
                let failed =
                    format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default());
                return requests
                    .iter()
                    .map(|_| Err(TransitionFailure::Unexpected(failed.clone().into()).into()))
                    .collect();
            }
        };
        let charges = requests.iter().map(|r| async {
            match orders.get(&r.order_id) {
                None => Err(SettleFailure::Transition(TransitionFailure::NotFound)),
                Some(order) if order.status != OrderStatus::PendingPayment => Ok(None),
                Some(order) => Ok(Some(self.payments.charge(order.id, r.amount).instrument(r.span.clone()).await?)),
            }
        });
        let charged = futures::future::join_all(charges).await;
        let mut results: Vec<Option<Result<(), SettleFailure>>> = Vec::with_capacity(requests.len());
        let mut batch = Vec::new();
        let mut settling = Vec::new();
        for (r, charge) in requests.into_iter().zip(charged) {
            match charge {
                Err(failure) => results.push(Some(Err(failure))),
                Ok(None) => results.push(Some(Ok(()))),
                Ok(Some(verdict)) => {
                    settling.push((results.len(), r.order_id, verdict.clone()));
                    results.push(None);
                    batch.push(BatchTransition {
                        id: r.order_id,
                        read: orders.get(&r.order_id).cloned(),
                        inbox: Some(r.inbox),
                        span: r.span,
                        transition: Box::new(move |o, at| o.settle_payment(&verdict, at)),
                    });
                }
            }
        }
        for ((i, id, verdict), settled) in settling.into_iter().zip(self.transition_all(batch).await) {
            results[i] = Some(match settled {
                Err(TransitionFailure::NotAllowed(_)) if verdict == PaymentOutcome::Completed => {
                    self.payments.refund(id).await.map_err(SettleFailure::from)
                }
                other => other.map(drop).map_err(SettleFailure::from),
            });
        }
        results.into_iter().map(|r| r.unwrap_or(Err(SettleFailure::Transition(TransitionFailure::Contended)))).collect()
    }

    /// Applies what Delivery reports, the shipped and delivered reports of a batch committed together.
    /// Results are in the reports' order.
    ///
    /// The reports travel on different queues, so one can overtake another: a delivered report names the
    /// carrier, so the order records both steps at once and the late shipped report changes nothing. A
    /// first-version delivered report cannot say how the parcel travelled; applied before its shipped
    /// report it would leave the trail without `order.shipped`, so on first arrival it waits one retry
    /// and after that it is applied whatever came, so the order still converges. A cancelled shipment
    /// is refunded after the cancellation commits (refunds are idempotent, so a failed one is retried
    /// with the report, whose transition is then a no-op).
    #[tracing::instrument(name = "apply reports", skip_all, fields(count = reports.len()))]
    pub async fn apply_reports(&self, reports: Vec<Reported>) -> Vec<Result<(), SettleFailure>> {
        let mut results: Vec<Option<Result<(), SettleFailure>>> = Vec::with_capacity(reports.len());
        let mut batch = Vec::new();
        let mut batched = Vec::new();
        for Reported { report, inbox, span } in reports {
            let (id, transition): (OrderId, BoxedTransition<'static>) = match report {
                Report::Shipped { order_id, carrier, tracking_number } => {
                    (order_id, Box::new(move |o, at| o.mark_shipped(carrier.clone(), tracking_number.clone(), at)))
                }
                Report::Delivered { order_id, carrier, tracking_number } => {
                    (order_id, Box::new(move |o, at| o.mark_delivered_by(carrier.clone(), tracking_number.clone(), at)))
                }
                Report::DeliveredUntracked { order_id, first_arrival } => {
                    let applied = self.delivered_untracked(order_id, first_arrival, inbox).instrument(span).await;
                    results.push(Some(applied));
                    continue;
                }
                Report::ShipmentCancelled { order_id } => {
                    let refunded = async {
                        self.transition(order_id, Some(&inbox), |o, at| o.confirm_shipment_cancelled(at)).await?;
                        self.payments.refund(order_id).await.map_err(SettleFailure::from)
                    };
                    results.push(Some(refunded.instrument(span).await));
                    continue;
                }
            };
            batched.push(results.len());
            results.push(None);
            batch.push(BatchTransition { id, read: None, inbox: Some(inbox), span, transition });
        }
        for (i, result) in batched.into_iter().zip(self.transition_all(batch).await) {
            results[i] = Some(result.map(drop).map_err(SettleFailure::from));
        }
        results.into_iter().map(|r| r.unwrap_or(Err(SettleFailure::Transition(TransitionFailure::Contended)))).collect()
    }

    /// A first-version delivered report (see [`SalesService::apply_reports`]).
    async fn delivered_untracked(
        &self,
        id: OrderId,
        first_arrival: bool,
        inbox: InboxEntry,
    ) -> Result<(), SettleFailure> {
        let early = AtomicBool::new(false);
        self.transition(id, Some(&inbox), |o, at| {
            let unshipped = matches!(o.status, OrderStatus::PendingShipment | OrderStatus::CancellationRequested);
            if unshipped && first_arrival {
                early.store(true, Ordering::Relaxed);
                return Ok(Step::Unchanged(o));
            }
            o.mark_delivered(at)
        })
        .await?;
        if early.load(Ordering::Relaxed) { Err(SettleFailure::BeforeShipped) } else { Ok(()) }
    }

    /// Applies `transition` to the order, committing the change with its stock effect, messages and
    /// inbox entry; recomputes when another writer changed the order meanwhile.
    async fn transition(
        &self,
        id: OrderId,
        inbox: Option<&InboxEntry>,
        transition: impl Transition<Order, OrderEvent>,
    ) -> Result<Order, TransitionFailure> {
        let transition = &transition;
        optimistically(|| async move {
            let order = self.store.order(id).await?.ok_or(TransitionFailure::NotFound)?;
            let (from, version) = (order.status, order.version);
            let now = self.clock.now();
            let (order, event) = match transition(order, now)? {
                Step::Unchanged(order) => {
                    // Read from the store: it may repair a cache a crash left behind (see below).
                    self.cache_put(&order).await;
                    return Ok(Some(order));
                }
                Step::Applied { state, event } => (state, event),
            };
            let change = OrderChange {
                stock: StockEffect::between(Some(from), order.status),
                messages: self.messages(orderflow_messages::order_messages(&event, &order), now),
                expected_version: version,
                inbox: inbox.cloned(),
                order: order.clone(),
            };
            let Some(outcome) = committed(self.store.apply(change).await)? else { return Ok(None) };
            let order = match outcome {
                ChangeOutcome::Applied => order,
                // A redelivery: the first delivery committed, but the process may have died before writing
                // the order through to the cache, which would then serve the old state until it expires.
                ChangeOutcome::AlreadyProcessed => self.store.order(id).await?.ok_or(TransitionFailure::NotFound)?,
            };
            self.cache_put(&order).await;
            Ok(Some(order))
        })
        .await
    }

    /// Applies each transition as [`SalesService::transition`] would, reading the orders in one query and
    /// committing the changes together. A change that conflicts (another writer, or a second change of an
    /// order in the same batch) is recomputed on its own; when the joint commit fails, every change is
    /// made on its own, so one that cannot be committed fails alone. Results are in the batch's order.
    async fn transition_all(&self, batch: Vec<BatchTransition<'_>>) -> Vec<Result<Order, TransitionFailure>> {
        let mut results: Vec<Option<Result<Order, TransitionFailure>>> = batch.iter().map(|_| None).collect();
        let unread: Vec<OrderId> = batch.iter().filter(|t| t.read.is_none()).map(|t| t.id).collect();
        let fetched = match unread.is_empty() {
            true => Ok(Vec::new()),
            false => self.store.orders_by_id(&unread).await,
        };
        // Written through to the cache together, after the batch (as `transition` does for one order).
        let mut to_cache = Vec::new();
        if let Ok(fetched) = fetched {
            let read: HashMap<OrderId, Order> = fetched.into_iter().map(|o| (o.id, o)).collect();
            let now = self.clock.now();
            let mut changes = Vec::new();
            let mut changed = Vec::new();
            for (i, t) in batch.iter().enumerate() {
                let Some(order) = t.read.clone().or_else(|| read.get(&t.id).cloned()) else {
                    results[i] = Some(Err(TransitionFailure::NotFound));
                    continue;
                };
                let (from, version) = (order.status, order.version);
                match (t.transition)(order, now) {
                    Err(refused) => results[i] = Some(Err(refused.into())),
                    Ok(Step::Unchanged(order)) => {
                        to_cache.push(order.clone());
                        results[i] = Some(Ok(order));
                    }
                    Ok(Step::Applied { state, event }) => {
                        changes.push(OrderChange {
                            stock: StockEffect::between(Some(from), state.status),
                            messages: t
                                .span
                                .in_scope(|| self.messages(orderflow_messages::order_messages(&event, &state), now)),
                            expected_version: version,
                            inbox: t.inbox.clone(),
                            order: state,
                        });
                        changed.push(i);
                    }
                }
            }
            let orders: Vec<Order> = changes.iter().map(|c| c.order.clone()).collect();
            if let Ok(outcomes) = self.store.apply_all(changes).await {
                for ((i, order), outcome) in changed.into_iter().zip(orders).zip(outcomes) {
                    results[i] = match outcome {
                        Ok(ChangeOutcome::Applied) => {
                            to_cache.push(order.clone());
                            Some(Ok(order))
                        }
                        Err(ChangeError::NotFound) => Some(Err(TransitionFailure::NotFound)),
                        // Already processed, or conflicting: the single path reads the order anew.
                        _ => None,
                    };
                }
            }
        }
        self.cache_put_all(&to_cache).await;
        let mut done = Vec::with_capacity(batch.len());
        for (t, result) in batch.iter().zip(results) {
            done.push(match result {
                Some(result) => result,
                None => self.transition(t.id, t.inbox.as_ref(), &*t.transition).instrument(t.span.clone()).await,
            });
        }
        done
    }

    /// The outbox messages of a change, continuing the trace of the current span.
    fn messages(&self, outgoing: Vec<Outgoing>, at: Timestamp) -> Vec<OutboxMessage> {
        let traceparent = orderflow_ports::trace::current_traceparent();
        outgoing
            .into_iter()
            .map(|o| {
                let id = EventId::from_uuid(self.ids.new_id());
                OutboxMessage::from_outgoing(o, id, Source::Sales, at, traceparent.clone())
            })
            .collect()
    }

    /// Writes a committed state through to the cache. A failure only costs a cache miss — unless a stale
    /// entry stays behind, so it is dropped.
    async fn cache_put(&self, order: &Order) {
        if let Err(error) = self.cache.put_if_newer(order).await {
            tracing::warn!(%error, order_id = %order.id, "could not cache the order");
            self.uncache(order).await;
        }
    }

    /// [`Self::cache_put`] for several orders, in one round trip.
    async fn cache_put_all(&self, orders: &[Order]) {
        if let Err(error) = self.cache.put_all_if_newer(orders).await {
            tracing::warn!(%error, orders = orders.len(), "could not cache the orders");
            for order in orders {
                self.uncache(order).await;
            }
        }
    }

    async fn uncache(&self, order: &Order) {
        if let Err(error) = self.cache.invalidate(order.id).await {
            tracing::warn!(%error, order_id = %order.id, "could not invalidate the cached order");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use orderflow_adapters::memory::{InMemoryOrderCache, InMemorySalesStore, ManualClock};
    use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
    use orderflow_adapters::system::UuidV7Ids;
    use orderflow_domain::{Address, Currency, CustomerId, Quantity, RawAddress};

    use super::*;
    use crate::pressure::PressureLimits;

    fn request() -> OrderRequest {
        let address = RawAddress {
            name: "Ada",
            line1: "1 Main St",
            line2: None,
            city: "Berlin",
            postal_code: "10115",
            country: "DE",
        };
        OrderRequest {
            customer_id: CustomerId::parse("cust-clock").unwrap(),
            lines: vec![(Sku::parse("SKU-CLOCK").unwrap(), Quantity::new(1).unwrap())],
            shipping_address: Address::parse(address).unwrap(),
            contact_email: None,
        }
    }

    /// A service on memory adapters whose clock the test moves, with `request`'s product in stock.
    async fn on_a_manual_clock() -> (SalesService, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(chrono::Utc::now()));
        let store = Arc::new(InMemorySalesStore::new());
        let price = Money::new(100, Currency::parse("EUR").unwrap()).unwrap();
        store
            .put_product(Sku::parse("SKU-CLOCK").unwrap(), ProductName::parse("Clock").unwrap(), price, 10)
            .await
            .unwrap();
        let service = SalesService::new(
            store,
            Arc::new(InMemoryOrderCache::new()),
            Arc::new(SimulatedPaymentGateway::new(PaymentSettings::default())),
            clock.clone(),
            Arc::new(UuidV7Ids),
            Arc::new(BackPressure::new(PressureLimits::default())),
        );
        (service, clock)
    }

    fn key(key: &str) -> Idempotency {
        Idempotency {
            client: "sales-client".into(),
            key: IdempotencyKey::parse(key).unwrap(),
            fingerprint: "same body".into(),
        }
    }

    #[tokio::test]
    async fn an_idempotency_key_replays_its_order_for_24_hours_and_places_a_new_one_after() {
        let (service, clock) = on_a_manual_clock().await;
        let key = key("retry-me");
        let place = || service.place_order(request(), Some(key.clone()));

        let PlaceOutcome::Created(first) = place().await.unwrap() else { panic!("the first placement creates") };
        clock.advance(Duration::from_secs(23 * 3600));
        let PlaceOutcome::Replayed(again) = place().await.unwrap() else { panic!("a day has not passed") };
        clock.advance(Duration::from_secs(2 * 3600));
        let PlaceOutcome::Created(later) = place().await.unwrap() else { panic!("the key expired after a day") };

        assert_eq!(again.id, first.id);
        assert_ne!(later.id, first.id);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_deleted_once_its_day_is_over_and_not_before() {
        let (service, clock) = on_a_manual_clock().await;
        let key = key("forget-me");
        service.place_order(request(), Some(key)).await.unwrap();
        service.place_order(request(), None).await.unwrap();

        assert_eq!(service.forget_expired_keys().await.unwrap(), 0, "a fresh key is kept");
        clock.advance(Duration::from_secs(23 * 3600));
        assert_eq!(service.forget_expired_keys().await.unwrap(), 0, "a day has not passed");
        clock.advance(Duration::from_secs(2 * 3600));
        assert_eq!(service.forget_expired_keys().await.unwrap(), 1, "the key's day is over");
        assert_eq!(service.forget_expired_keys().await.unwrap(), 0, "it went once");
    }
}
