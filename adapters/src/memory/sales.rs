//! The in-memory Sales store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderflow_domain::{Money, Order, OrderId, ProductName, Sku, StockEffect, Timestamp};
use orderflow_messages::CloudEvent;
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::notify::NotifyError;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, EnqueueError, NotifyOnceError, OrderChange, OrderQuery, PlaceError, PlaceOutcome,
    Placement, Product, PutProductError, SalesStore,
};
use orderflow_ports::webhooks::{
    Attempt, DeliveryStatus, DueDelivery, Settlement, WebhookDelivery, WebhookEndpoint, WebhookError, WebhookStore,
};
use orderflow_ports::{Page, ReadError};
use uuid::Uuid;

use super::outbox::{Outbox, outbox_store};
use super::{inconsistent, lock};

struct KeyRecord {
    request_hash: String,
    order: Order,
    recorded_at: Timestamp,
}

#[derive(Default)]
struct State {
    orders: BTreeMap<OrderId, Order>,
    products: BTreeMap<Sku, Product>,
    keys: HashMap<(String, String), KeyRecord>,
    inbox: HashSet<(String, String)>,
    /// Inbox entries claimed by a notification being sent.
    sending: HashSet<(String, String)>,
    timelines: HashMap<OrderId, Vec<CloudEvent>>,
    webhooks: Webhooks,
}

impl State {
    fn record(&mut self, order_id: OrderId, messages: &[OutboxMessage]) {
        let timeline = self.timelines.entry(order_id).or_default();
        timeline.extend(messages.iter().filter(|m| m.audit).map(|m| m.event.clone()));
        for event in messages.iter().filter(|m| m.audit).map(|m| &m.event) {
            self.webhooks.owe(order_id, event);
        }
    }
}

/// Webhook endpoints and the deliveries owed to them, in the order they were owed.
#[derive(Default)]
struct Webhooks {
    endpoints: Vec<WebhookEndpoint>,
    deliveries: Vec<OwedDelivery>,
}

struct OwedDelivery {
    delivery: WebhookDelivery,
    next_attempt_at: Timestamp,
}

impl Webhooks {
    /// Owes `event` of order `order_id` to every enabled endpoint that subscribes to its type.
    fn owe(&mut self, order_id: OrderId, event: &CloudEvent) {
        let body = serde_json::json!({ "type": event.event_type, "timestamp": event.time, "data": event.data });
        for endpoint in &self.endpoints {
            let subscribed = endpoint.event_types.as_ref().is_none_or(|types| types.contains(&event.event_type));
            if endpoint.disabled.is_none() && subscribed {
                self.deliveries.push(OwedDelivery {
                    delivery: WebhookDelivery {
                        id: Uuid::new_v4(),
                        endpoint_id: endpoint.id,
                        event_id: event.id,
                        event_type: event.event_type.clone(),
                        order_id,
                        body: body.to_string(),
                        status: DeliveryStatus::Pending,
                        attempts: Vec::new(),
                        created_at: event.time,
                    },
                    next_attempt_at: event.time,
                });
            }
        }
    }
}

/// Sales persistence in memory.
#[derive(Default)]
pub struct InMemorySalesStore {
    state: Mutex<State>,
    outbox: Arc<Outbox>,
}

impl InMemorySalesStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

outbox_store!(InMemorySalesStore);

#[async_trait]
impl SalesStore for InMemorySalesStore {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), EnqueueError> {
        self.outbox.push(messages);
        Ok(())
    }

    async fn notify_once(
        &self,
        entry: &InboxEntry,
        send: futures::future::BoxFuture<'_, Result<(), NotifyError>>,
    ) -> Result<ChangeOutcome, NotifyOnceError> {
        let key = (entry.message_id.clone(), entry.consumer.clone());
        {
            let mut state = lock(&self.state);
            if state.inbox.contains(&key) {
                return Ok(ChangeOutcome::AlreadyProcessed);
            }
            // The lock cannot be held across the send, so a concurrent delivery is told to come back.
            if !state.sending.insert(key.clone()) {
                return Err(NotifyOnceError::InFlight);
            }
        }
        let sent = send.await;
        let mut state = lock(&self.state);
        state.sending.remove(&key);
        sent?;
        state.inbox.insert(key);
        Ok(ChangeOutcome::Applied)
    }

    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, ReadError> {
        let mut state = lock(&self.state);
        let held = state.keys.len();
        state.keys.retain(|_, record| record.recorded_at >= before);
        Ok(u64::try_from(held - state.keys.len()).unwrap_or(u64::MAX))
    }

    async fn place_order(&self, placement: Placement) -> Result<PlaceOutcome, PlaceError> {
        let mut state = lock(&self.state);
        if let Some(key) = &placement.idempotency {
            let id = (key.client.clone(), key.key.clone());
            match state.keys.get(&id) {
                Some(record) if record.recorded_at >= key.not_before => {
                    return if record.request_hash == key.request_hash {
                        Ok(PlaceOutcome::Replayed(record.order.clone()))
                    } else {
                        Err(PlaceError::KeyReused)
                    };
                }
                _ => {}
            }
        }
        let order = placement.order;
        let mut unknown = Vec::new();
        let mut short = Vec::new();
        for line in &order.lines {
            match state.products.get(&line.sku) {
                None => unknown.push(line.sku.clone()),
                Some(p) if p.stock - p.reserved < line.quantity.get() => short.push(line.sku.clone()),
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            return Err(PlaceError::UnknownSkus(unknown));
        }
        if !short.is_empty() {
            return Err(PlaceError::InsufficientStock(short));
        }
        for line in &order.lines {
            if let Some(p) = state.products.get_mut(&line.sku) {
                p.reserved += line.quantity.get();
            }
        }
        if let Some(key) = placement.idempotency {
            let record =
                KeyRecord { request_hash: key.request_hash, order: order.clone(), recorded_at: order.created_at };
            state.keys.insert((key.client, key.key), record);
        }
        state.orders.insert(order.id, order.clone());
        state.record(order.id, &placement.messages);
        self.outbox.push(placement.messages);
        drop(state);
        Ok(PlaceOutcome::Created(order))
    }

    async fn apply(&self, change: OrderChange) -> Result<ChangeOutcome, ChangeError> {
        let mut state = lock(&self.state);
        let inbox = change.inbox.map(|e| (e.message_id, e.consumer));
        if inbox.as_ref().is_some_and(|entry| state.inbox.contains(entry)) {
            return Ok(ChangeOutcome::AlreadyProcessed);
        }
        let order = change.order;
        let stored = state.orders.get(&order.id).ok_or(ChangeError::NotFound)?;
        if stored.version != change.expected_version {
            return Err(ChangeError::Conflict { expected: change.expected_version });
        }
        let mut products = state.products.clone();
        for line in &order.lines {
            let q = line.quantity.get();
            let p = products
                .get_mut(&line.sku)
                .ok_or_else(|| ChangeError::Unexpected(inconsistent(format!("product {} vanished", line.sku))))?;
            let (stock, reserved) = match change.stock {
                StockEffect::None => (Some(p.stock), Some(p.reserved)),
                StockEffect::Reserve => (Some(p.stock), p.reserved.checked_add(q).filter(|r| *r <= p.stock)),
                StockEffect::Release => (Some(p.stock), p.reserved.checked_sub(q)),
                StockEffect::Commit => (p.stock.checked_sub(q), p.reserved.checked_sub(q)),
            };
            match (stock, reserved) {
                (Some(stock), Some(reserved)) => (p.stock, p.reserved) = (stock, reserved),
                _ => {
                    return Err(ChangeError::Unexpected(inconsistent(format!("stock of {} out of balance", line.sku))));
                }
            }
        }
        state.products = products;
        if let Some(entry) = inbox {
            state.inbox.insert(entry);
        }
        state.orders.insert(order.id, order.clone());
        state.record(order.id, &change.messages);
        self.outbox.push(change.messages);
        drop(state);
        Ok(ChangeOutcome::Applied)
    }

    async fn order(&self, id: OrderId) -> Result<Option<Order>, ReadError> {
        Ok(lock(&self.state).orders.get(&id).cloned())
    }

    async fn orders(&self, query: OrderQuery) -> Result<Page<Order, OrderId>, ReadError> {
        let state = lock(&self.state);
        let upper = query.after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut items: Vec<Order> = state
            .orders
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, o)| o)
            .filter(|o| query.customer_id.as_deref().is_none_or(|c| o.customer_id.as_str() == c))
            .filter(|o| query.status.is_none_or(|s| o.status == s))
            .take(query.limit + 1)
            .cloned()
            .collect();
        Ok(page(&mut items, query.limit, |o| o.id))
    }

    async fn timeline(&self, id: OrderId) -> Result<Option<Vec<CloudEvent>>, ReadError> {
        let state = lock(&self.state);
        Ok(state.orders.contains_key(&id).then(|| state.timelines.get(&id).cloned().unwrap_or_default()))
    }

    async fn products_by_sku(&self, skus: &[Sku]) -> Result<Vec<Product>, ReadError> {
        let state = lock(&self.state);
        Ok(skus.iter().filter_map(|s| state.products.get(s).cloned()).collect())
    }

    async fn products(&self, limit: usize, after: Option<Sku>) -> Result<Page<Product, Sku>, ReadError> {
        let state = lock(&self.state);
        let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut items: Vec<Product> =
            state.products.range((lower, std::ops::Bound::Unbounded)).take(limit + 1).map(|(_, p)| p.clone()).collect();
        Ok(page(&mut items, limit, |p| p.sku.clone()))
    }

    async fn put_product(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
        stock: u32,
    ) -> Result<Product, PutProductError> {
        let mut state = lock(&self.state);
        let reserved = state.products.get(&sku).map_or(0, |p| p.reserved);
        if stock < reserved {
            return Err(PutProductError::StockBelowReserved { stock, reserved });
        }
        let product = Product { sku: sku.clone(), name, price, stock, reserved };
        state.products.insert(sku, product.clone());
        Ok(product)
    }
}

/// Cuts a list fetched with one extra item into a page, keyed by the last item kept.
pub(super) fn page<T, K>(items: &mut Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> Page<T, K> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(key) } else { None };
    Page { items: std::mem::take(items), next }
}

#[async_trait]
impl WebhookStore for InMemorySalesStore {
    async fn add_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), WebhookError> {
        lock(&self.state).webhooks.endpoints.push(endpoint.clone());
        Ok(())
    }

    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        Ok(lock(&self.state).webhooks.endpoints.clone())
    }

    async fn remove_endpoint(&self, id: Uuid) -> Result<bool, WebhookError> {
        let webhooks = &mut lock(&self.state).webhooks;
        let before = webhooks.endpoints.len();
        webhooks.endpoints.retain(|e| e.id != id);
        webhooks.deliveries.retain(|d| d.delivery.endpoint_id != id);
        Ok(webhooks.endpoints.len() < before)
    }

    async fn deliveries(&self, endpoint: Uuid, limit: usize) -> Result<Option<Vec<WebhookDelivery>>, WebhookError> {
        let state = lock(&self.state);
        if !state.webhooks.endpoints.iter().any(|e| e.id == endpoint) {
            return Ok(None);
        }
        let of_endpoint = state.webhooks.deliveries.iter().rev().filter(|d| d.delivery.endpoint_id == endpoint);
        Ok(Some(of_endpoint.take(limit).map(|d| d.delivery.clone()).collect()))
    }

    async fn redeliver(&self, endpoint: Uuid, delivery: Uuid, now: Timestamp) -> Result<bool, WebhookError> {
        let mut state = lock(&self.state);
        let found = state
            .webhooks
            .deliveries
            .iter_mut()
            .find(|d| d.delivery.endpoint_id == endpoint && d.delivery.id == delivery);
        Ok(found
            .map(|d| {
                d.delivery.status = DeliveryStatus::Pending;
                d.next_attempt_at = now;
            })
            .is_some())
    }

    async fn take_due(
        &self,
        now: Timestamp,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, WebhookError> {
        let until = now + chrono::Duration::from_std(lease).map_err(|e| WebhookError::Unexpected(e.into()))?;
        let mut state = lock(&self.state);
        let Webhooks { endpoints, deliveries } = &mut state.webhooks;
        let mut waiting = HashSet::new();
        let mut due = Vec::new();
        for owed in deliveries.iter_mut().filter(|d| d.delivery.status == DeliveryStatus::Pending) {
            // The oldest pending delivery of each endpoint and order goes first; the ones after it wait.
            if !waiting.insert((owed.delivery.endpoint_id, owed.delivery.order_id)) || owed.next_attempt_at > now {
                continue;
            }
            let Some(endpoint) = endpoints.iter().find(|e| e.id == owed.delivery.endpoint_id && e.disabled.is_none())
            else {
                continue;
            };
            owed.next_attempt_at = until;
            due.push(DueDelivery {
                delivery: owed.delivery.clone(),
                url: endpoint.url.clone(),
                secret: endpoint.secret.clone(),
                failing_since: endpoint.failing_since,
            });
            if due.len() == limit {
                break;
            }
        }
        Ok(due)
    }

    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, WebhookError> {
        let deliveries = &mut lock(&self.state).webhooks.deliveries;
        let before_count = deliveries.len();
        deliveries.retain(|d| d.delivery.status != DeliveryStatus::Delivered || d.next_attempt_at >= before);
        Ok((before_count - deliveries.len()) as u64)
    }

    async fn settle(
        &self,
        delivery: &WebhookDelivery,
        attempt: Attempt,
        settlement: Settlement,
        disable: Option<String>,
    ) -> Result<(), WebhookError> {
        let mut state = lock(&self.state);
        let Webhooks { endpoints, deliveries } = &mut state.webhooks;
        if let Some(owed) = deliveries.iter_mut().find(|d| d.delivery.id == delivery.id) {
            (owed.delivery.status, owed.next_attempt_at) = match settlement {
                Settlement::Delivered => (DeliveryStatus::Delivered, attempt.at),
                Settlement::RetryAt(at) => (DeliveryStatus::Pending, at),
                Settlement::DeadLettered => (DeliveryStatus::DeadLettered, attempt.at),
            };
            owed.delivery.attempts.push(attempt.clone());
        }
        if let Some(endpoint) = endpoints.iter_mut().find(|e| e.id == delivery.endpoint_id) {
            endpoint.failing_since = match settlement {
                Settlement::Delivered => None,
                _ => endpoint.failing_since.or(Some(attempt.at)),
            };
            endpoint.disabled = endpoint.disabled.take().or(disable);
        }
        Ok(())
    }
}
