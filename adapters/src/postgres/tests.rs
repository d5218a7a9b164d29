//! The PostgreSQL adapters against a real server: the shared contract suites, then what only a real
//! database can show (concurrency, crashes, several relays). Each test gets its own schema, dropped after.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::{Money, Order, OrderId, ProductName, Shipment, ShipmentId, ShipmentStatus, Sku, Timestamp};
use orderflow_messages::CloudEvent;
use orderflow_ports::delivery::{DeliveryStore, Due, ShipmentChange, ShipmentQuery};
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::notify::NotifyError;
use orderflow_ports::outbox::{Backlog, Destination, OutboxBatch, OutboxMessage, OutboxStore};
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, EnqueueError, NotifyOnceError, OrderChange, OrderQuery, PlaceError, PlaceOutcome,
    Placement, Product, PutProductError, SalesStore,
};
use orderflow_ports::webhooks::{
    Attempt, DueDelivery, Settlement, WebhookDelivery, WebhookEndpoint, WebhookError, WebhookStore,
};
use orderflow_ports::{Page, ReadError};
use uuid::Uuid;

use super::{PgDeliveryStore, PgSalesStore};

pub(crate) use crate::contract::postgres::{TestSchema, database_url};

/// A store that keeps its test schema alive as long as itself.
pub(crate) struct Isolated<S> {
    pub(crate) store: S,
    _schema: TestSchema,
}

pub(crate) async fn sales_store() -> Isolated<PgSalesStore> {
    let schema = TestSchema::new();
    let store = PgSalesStore::connect(&schema.settings()).await.expect("connect to PostgreSQL (is it running?)");
    Isolated { store, _schema: schema }
}

pub(crate) async fn delivery_store() -> Isolated<PgDeliveryStore> {
    let schema = TestSchema::new();
    let store = PgDeliveryStore::connect(&schema.settings()).await.expect("connect to PostgreSQL (is it running?)");
    Isolated { store, _schema: schema }
}

#[async_trait]
impl<S: OutboxStore> OutboxStore for Isolated<S> {
    async fn take(&self, destination: Destination, limit: usize) -> Result<Box<dyn OutboxBatch>, ReadError> {
        self.store.take(destination, limit).await
    }
    async fn wait_for_new(&self, destination: Destination, max_wait: Duration) {
        self.store.wait_for_new(destination, max_wait).await;
    }
    async fn command_backlog(&self) -> Result<Backlog, ReadError> {
        self.store.command_backlog().await
    }
    async fn purge(&self, retention: Duration) -> Result<u64, ReadError> {
        self.store.purge(retention).await
    }
}

#[async_trait]
impl<S: SalesStore> SalesStore for Isolated<S> {
    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, ReadError> {
        self.store.forget_idempotency_keys(before).await
    }
    async fn place_order(&self, placement: Placement) -> Result<PlaceOutcome, PlaceError> {
        self.store.place_order(placement).await
    }
    async fn apply(&self, change: OrderChange) -> Result<ChangeOutcome, ChangeError> {
        self.store.apply(change).await
    }
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), EnqueueError> {
        self.store.enqueue(messages).await
    }
    async fn notify_once(
        &self,
        entry: &InboxEntry,
        send: futures::future::BoxFuture<'_, Result<(), NotifyError>>,
    ) -> Result<ChangeOutcome, NotifyOnceError> {
        self.store.notify_once(entry, send).await
    }
    // The batch paths are forwarded too: the suite must run PostgreSQL's, not the trait's one-by-one
    // defaults.
    async fn apply_all(
        &self,
        changes: Vec<OrderChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        self.store.apply_all(changes).await
    }
    async fn orders_by_id(&self, ids: &[OrderId]) -> Result<Vec<Order>, ReadError> {
        self.store.orders_by_id(ids).await
    }
    async fn order(&self, id: OrderId) -> Result<Option<Order>, ReadError> {
        self.store.order(id).await
    }
    async fn orders(&self, query: OrderQuery) -> Result<Page<Order, OrderId>, ReadError> {
        self.store.orders(query).await
    }
    async fn timeline(&self, id: OrderId) -> Result<Option<Vec<CloudEvent>>, ReadError> {
        self.store.timeline(id).await
    }
    async fn products_by_sku(&self, skus: &[Sku]) -> Result<Vec<Product>, ReadError> {
        self.store.products_by_sku(skus).await
    }
    async fn products(&self, limit: usize, after: Option<Sku>) -> Result<Page<Product, Sku>, ReadError> {
        self.store.products(limit, after).await
    }
    async fn put_product(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
        stock: u32,
    ) -> Result<Product, PutProductError> {
        self.store.put_product(sku, name, price, stock).await
    }
}

#[async_trait]
impl<S: WebhookStore> WebhookStore for Isolated<S> {
    async fn add_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), WebhookError> {
        self.store.add_endpoint(endpoint).await
    }
    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        self.store.endpoints().await
    }
    async fn remove_endpoint(&self, id: Uuid) -> Result<bool, WebhookError> {
        self.store.remove_endpoint(id).await
    }
    async fn deliveries(&self, endpoint: Uuid, limit: usize) -> Result<Option<Vec<WebhookDelivery>>, WebhookError> {
        self.store.deliveries(endpoint, limit).await
    }
    async fn redeliver(&self, endpoint: Uuid, delivery: Uuid, now: Timestamp) -> Result<bool, WebhookError> {
        self.store.redeliver(endpoint, delivery, now).await
    }
    async fn take_due(&self, now: Timestamp, lease: Duration, limit: usize) -> Result<Vec<DueDelivery>, WebhookError> {
        self.store.take_due(now, lease, limit).await
    }
    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, WebhookError> {
        self.store.purge_delivered(before).await
    }
    async fn settle(
        &self,
        delivery: &WebhookDelivery,
        attempt: Attempt,
        settlement: Settlement,
        disable: Option<String>,
    ) -> Result<(), WebhookError> {
        self.store.settle(delivery, attempt, settlement, disable).await
    }
}

#[async_trait]
impl<S: DeliveryStore> DeliveryStore for Isolated<S> {
    async fn save(&self, change: ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
        self.store.save(change).await
    }
    async fn save_all(
        &self,
        changes: Vec<ShipmentChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        self.store.save_all(changes).await
    }
    async fn shipment(&self, id: ShipmentId) -> Result<Option<Shipment>, ReadError> {
        self.store.shipment(id).await
    }
    async fn shipment_for_order(&self, order_id: OrderId) -> Result<Option<Shipment>, ReadError> {
        self.store.shipment_for_order(order_id).await
    }
    async fn shipments(&self, query: ShipmentQuery) -> Result<Page<Shipment, ShipmentId>, ReadError> {
        self.store.shipments(query).await
    }
    async fn due(&self, status: ShipmentStatus, before: Timestamp, limit: usize) -> Result<Vec<Due>, ReadError> {
        self.store.due(status, before, limit).await
    }
    async fn sign_out(&self, session: &str, until: Timestamp, now: Timestamp) -> Result<(), ChangeError> {
        self.store.sign_out(session, until, now).await
    }
    async fn signed_out(&self, session: &str) -> Result<bool, ReadError> {
        self.store.signed_out(session).await
    }
}

mod sales_contract {
    crate::sales_store_contract!(|| async { super::sales_store().await });
}

mod webhook_contract {
    crate::webhook_store_contract!(|| async { super::sales_store().await });
}

mod delivery_contract {
    crate::delivery_store_contract!(|| async { super::delivery_store().await });
}

mod sales_outbox_contract {
    crate::outbox_store_contract!(|| async { crate::contract::outbox::SalesOutbox::new(super::sales_store().await) });
}

mod delivery_outbox_contract {
    crate::outbox_store_contract!(|| async {
        crate::contract::outbox::DeliveryOutbox::new(super::delivery_store().await)
    });
}
mod concurrency;
mod crash;
mod migrations;
mod vacuum;
