//! The Sales use cases: placing, reading and cancelling orders, and applying what the payment worker and
//! Delivery report — each a domain transition committed with its outbox messages.

use std::collections::HashMap;
use std::sync::Arc;

use orderflow_domain::{
    EventId, Order, OrderEvent, OrderId, OrderRequest, Outgoing, PricingError, Sku, Source, Step, StockEffect,
    Timestamp, TransitionError,
};
use orderflow_ports::cache::OrderCache;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::payment::PaymentGateway;
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, IdempotencyKey, InboxEntry, OrderChange, PlaceError, PlaceOutcome, Placement,
    SalesStore,
};
use orderflow_ports::system::{Clock, IdGenerator};
use orderflow_ports::{BoxError, ReadError};

use crate::pressure::BackPressure;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// How often a change is recomputed when another writer got there first.
const MAX_ATTEMPTS: usize = 8;

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

/// Why a transition of an existing order did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    /// No such order.
    #[error("no such order")]
    NotFound,
    /// The state machine refused.
    #[error(transparent)]
    NotAllowed(#[from] TransitionError),
    /// Other writers kept changing the order.
    #[error("the order kept changing concurrently")]
    Contended,
    /// The store failed.
    #[error("the store failed")]
    Unexpected(#[source] BoxError),
}

impl From<ReadError> for TransitionFailure {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Unexpected(e) => Self::Unexpected(e),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}

/// A transition of an existing order, for [`SalesService::transition_all`].
pub type Transition<'a> =
    Box<dyn Fn(Order, Timestamp) -> Result<Step<Order, OrderEvent>, TransitionError> + Send + Sync + 'a>;

/// One transition of a batch: the order, the message that asks for it, and the change.
pub struct BatchTransition<'a> {
    /// The order to change.
    pub id: OrderId,
    /// The order as the caller has just read it from the store, which saves reading it again; should it
    /// have changed since, the change conflicts and is recomputed from a fresh read.
    pub read: Option<Order>,
    /// The message that caused the change.
    pub inbox: Option<InboxEntry>,
    /// The trace the change continues.
    pub traceparent: Option<String>,
    /// The change.
    pub transition: Transition<'a>,
}

/// The ports the Sales use cases run on.
#[derive(Clone)]
pub struct SalesService {
    /// Orders, catalogue, outbox.
    pub store: Arc<dyn SalesStore>,
    /// Single-order read cache.
    pub cache: Arc<dyn OrderCache>,
    /// Takes and refunds payments.
    pub payments: Arc<dyn PaymentGateway>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Fresh ids.
    pub ids: Arc<dyn IdGenerator>,
    /// Whether new orders are to be refused for now.
    pub pressure: Arc<BackPressure>,
}

impl SalesService {
    /// Prices `request` from the catalogue and places it, honouring the client's idempotency key.
    ///
    /// # Errors
    /// See [`PlaceOrderError`]; nothing is stored in any error case.
    pub async fn place_order(
        &self,
        request: OrderRequest,
        idempotency: Option<(String, String, String)>,
        traceparent: Option<String>,
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
        let messages = self.messages(event.outgoing(&order), now, traceparent);
        let idempotency = idempotency.map(|(client, key, request_hash)| IdempotencyKey {
            client,
            key,
            request_hash,
            not_before: now - IDEMPOTENCY_TTL,
        });
        let outcome = self.store.place_order(Placement { order, messages, idempotency }).await?;
        if let PlaceOutcome::Created(order) = &outcome {
            self.cache_put(order).await;
        }
        Ok(outcome)
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

    /// Applies `transition` to the order, committing the change with its stock effect, messages and
    /// inbox entry; recomputes when another writer changed the order meanwhile.
    ///
    /// # Errors
    /// See [`TransitionFailure`].
    pub async fn transition(
        &self,
        id: OrderId,
        inbox: Option<InboxEntry>,
        traceparent: Option<String>,
        transition: impl Fn(Order, Timestamp) -> Result<Step<Order, OrderEvent>, TransitionError>,
    ) -> Result<Order, TransitionFailure> {
        for _ in 0..MAX_ATTEMPTS {
            let order = self.store.order(id).await?.ok_or(TransitionFailure::NotFound)?;
            let (from, version) = (order.status, order.version);
            let now = self.clock.now();
            let (order, event) = match transition(order, now)? {
                Step::Unchanged(order) => {
                    // Read from the store: it may repair a cache a crash left behind (see below).
                    self.cache_put(&order).await;
                    return Ok(order);
                }
                Step::Applied { state, event } => (state, event),
            };
            let change = OrderChange {
                stock: StockEffect::between(Some(from), order.status),
                messages: self.messages(event.outgoing(&order), now, traceparent.clone()),
                expected_version: version,
                inbox: inbox.clone(),
                order: order.clone(),
            };
            match self.store.apply(change).await {
                Ok(ChangeOutcome::Applied) => {
                    self.cache_put(&order).await;
                    return Ok(order);
                }
                // A redelivery: the first delivery committed, but the process may have died before writing
                // the order through to the cache, which would then serve the old state until it expires.
                Ok(ChangeOutcome::AlreadyProcessed) => {
                    let order = self.store.order(id).await?.ok_or(TransitionFailure::NotFound)?;
                    self.cache_put(&order).await;
                    return Ok(order);
                }
                Err(ChangeError::Conflict { .. }) => {}
                Err(ChangeError::NotFound) => return Err(TransitionFailure::NotFound),
                Err(ChangeError::Unexpected(e)) => return Err(TransitionFailure::Unexpected(e)),
                Err(other) => return Err(TransitionFailure::Unexpected(Box::new(other))),
            }
        }
        Err(TransitionFailure::Contended)
    }

    /// Applies each transition as [`SalesService::transition`] would, reading the orders in one query and
    /// committing the changes together. A change that conflicts (another writer, or a second change of an
    /// order in the same batch) is recomputed on its own; when the joint commit fails, every change is
    /// made on its own, so one that cannot be committed fails alone. Results are in the batch's order.
    pub async fn transition_all(&self, batch: Vec<BatchTransition<'_>>) -> Vec<Result<Order, TransitionFailure>> {
        let mut results: Vec<Option<Result<Order, TransitionFailure>>> = batch.iter().map(|_| None).collect();
        let unread: Vec<OrderId> = batch.iter().filter(|t| t.read.is_none()).map(|t| t.id).collect();
        let fetched = match unread.is_empty() {
            true => Ok(Vec::new()),
            false => self.store.orders_by_id(&unread).await,
        };
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
                        self.cache_put(&order).await;
                        results[i] = Some(Ok(order));
                    }
                    Ok(Step::Applied { state, event }) => {
                        changes.push(OrderChange {
                            stock: StockEffect::between(Some(from), state.status),
                            messages: self.messages(event.outgoing(&state), now, t.traceparent.clone()),
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
                            self.cache_put(&order).await;
                            Some(Ok(order))
                        }
                        Err(ChangeError::NotFound) => Some(Err(TransitionFailure::NotFound)),
                        // Already processed, or conflicting: the single path reads the order anew.
                        _ => None,
                    };
                }
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        for (t, result) in batch.iter().zip(results) {
            done.push(match result {
                Some(result) => result,
                None => self.transition(t.id, t.inbox.clone(), t.traceparent.clone(), &*t.transition).await,
            });
        }
        done
    }

    fn messages(&self, outgoing: Vec<Outgoing>, at: Timestamp, traceparent: Option<String>) -> Vec<OutboxMessage> {
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
            if let Err(error) = self.cache.invalidate(order.id).await {
                tracing::warn!(%error, order_id = %order.id, "could not invalidate the cached order");
            }
        }
    }
}
