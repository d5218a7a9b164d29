//! The Sales store: orders, the product catalogue with stock, idempotency keys, inbox and outbox — every
//! write is one atomic unit.

use async_trait::async_trait;
use orderflow_domain::{Money, Order, OrderId, OrderStatus, ProductName, Sku, StockEffect, Timestamp};
use orderflow_messages::CloudEvent;

use crate::messaging::InboxEntry;
use crate::notify::NotifyError;
use crate::outbox::{OutboxMessage, OutboxStore};
use crate::{BoxError, Page, ReadError};

/// What the store records of a client's `Idempotency-Key`, scoped to the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The client (token subject) the key belongs to; two clients may use the same key.
    pub client: String,
    /// The header value.
    pub key: String,
    /// A hash of the request body: the same key with another body is refused.
    pub request_hash: String,
    /// Keys recorded before this instant count as expired and may be reused.
    pub not_before: Timestamp,
}

/// Everything placing one order writes, atomically.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The new order (status `pending_payment`).
    pub order: Order,
    /// Its messages: the payment command and the audit record.
    pub messages: Vec<OutboxMessage>,
    /// The client's idempotency key, when it sent one.
    pub idempotency: Option<IdempotencyRecord>,
}

/// What placing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceOutcome {
    /// The order was created.
    Created(Order),
    /// The key was already used with the same body: this is the order it created, as first returned.
    Replayed(Order),
}

/// Why an order was not placed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    /// Not enough unreserved stock for these SKUs.
    #[error("insufficient stock for {0:?}")]
    InsufficientStock(Vec<Sku>),
    /// A SKU was removed from the catalogue between pricing and placing.
    #[error("unknown SKUs {0:?}")]
    UnknownSkus(Vec<Sku>),
    /// The key was used before with a different body.
    #[error("idempotency key reused with a different request")]
    KeyReused,
    /// Another request with this key is still being processed.
    #[error("a request with this idempotency key is in flight")]
    KeyInFlight,
    /// The store failed.
    #[error("placing the order failed")]
    Unexpected(#[source] BoxError),
}

/// One state change of an existing order, with everything it writes, atomically.
#[derive(Debug, Clone)]
pub struct OrderChange {
    /// The order in its new state (its `version` already bumped).
    pub order: Order,
    /// The version the change was computed from; the store refuses the change if it moved on.
    pub expected_version: u32,
    /// What happens to the order's reserved stock.
    pub stock: StockEffect,
    /// Messages to publish after commit.
    pub messages: Vec<OutboxMessage>,
    /// The message that caused the change, when a consumer made it.
    pub inbox: Option<InboxEntry>,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Written.
    Applied,
    /// The inbox already held the message: it was processed before and nothing was written.
    AlreadyProcessed,
}

/// Why a change was not applied. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// There is no such order (or shipment).
    #[error("not found")]
    NotFound,
    /// Someone else changed it since it was read: read again and recompute.
    #[error("concurrent change (expected version {expected})")]
    Conflict {
        /// The version the change expected.
        expected: u32,
    },
    /// The store failed.
    #[error("applying the change failed")]
    Unexpected(#[source] BoxError),
}

/// Why [`SalesStore::enqueue`] wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The store failed.
    #[error("writing the messages failed")]
    Unexpected(#[source] BoxError),
}

/// Why [`SalesStore::notify_once`] did not record its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyOnceError {
    /// The sending failed; nothing was recorded, so a redelivery sends again.
    #[error(transparent)]
    Send(#[from] NotifyError),
    /// Another delivery of the same message is being sent right now; try again later.
    #[error("the message is being sent by another delivery")]
    InFlight,
    /// The store failed; nothing was recorded.
    #[error("recording the notification failed")]
    Unexpected(#[source] BoxError),
}

/// Filters of the order list.
#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Page size.
    pub limit: usize,
    /// Continue after this order (lists are newest first).
    pub after: Option<OrderId>,
}

/// A product with its stock, as the catalogue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The SKU.
    pub sku: Sku,
    /// Display name.
    pub name: ProductName,
    /// Unit price.
    pub price: Money,
    /// Units on hand (not yet shipped).
    pub stock: u32,
    /// Units held by open orders; `reserved <= stock` always.
    pub reserved: u32,
}

/// Why a product update was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutProductError {
    /// The new stock is below what open orders already hold.
    #[error("stock {stock} is below the {reserved} units reserved by open orders")]
    StockBelowReserved {
        /// The requested stock.
        stock: u32,
        /// Units currently reserved.
        reserved: u32,
    },
    /// The store failed.
    #[error("updating the product failed")]
    Unexpected(#[source] BoxError),
}

/// Persistence of the Sales service.
#[async_trait]
pub trait SalesStore: OutboxStore {
    /// Places an order in one transaction: checks the idempotency key, reserves every line's stock
    /// (locking products in SKU order, so concurrent placements cannot deadlock), writes the order, its
    /// lines, its messages, its timeline entries and the key.
    ///
    /// # Errors
    /// - [`PlaceError::KeyReused`] when the key (unexpired) was used with another `request_hash`;
    /// - [`PlaceError::KeyInFlight`] when a request with the key has not finished (an implementation may
    ///   instead wait for it and replay);
    /// - [`PlaceError::InsufficientStock`] listing every SKU short of stock;
    /// - [`PlaceError::UnknownSkus`] when a product no longer exists;
    /// - [`PlaceError::Unexpected`] when the store fails.
    ///
    /// In every error case nothing is written.
    async fn place_order(&self, placement: Placement) -> Result<PlaceOutcome, PlaceError>;

    /// Applies one change of an existing order together with its stock effect, messages, timeline
    /// entries (its audit messages) and inbox entry.
    ///
    /// # Errors
    /// - [`ChangeError::NotFound`] when the order does not exist;
    /// - [`ChangeError::Conflict`] when its stored version is not `expected_version`;
    /// - [`ChangeError::Unexpected`] when the store fails.
    ///
    /// When the inbox already holds the message the result is `Ok(ChangeOutcome::AlreadyProcessed)`
    /// and nothing is written.
    async fn apply(&self, change: OrderChange) -> Result<ChangeOutcome, ChangeError>;

    /// Applies several changes, each with the outcome [`SalesStore::apply`] would give it alone, and
    /// returns the outcomes in their order. A store may commit them in one transaction. A second change
    /// of an order the batch already changes is reported as a [`ChangeError::Conflict`] (it was computed
    /// from the version the first one replaces): the caller recomputes it. The default applies them one
    /// after another.
    ///
    /// # Errors
    /// [`ChangeError::Unexpected`] when the store fails. Some of the changes may then be committed (each
    /// one whole, never a part of one); applying them again is safe, as the inbox entry or the version
    /// check makes a repeat a no-op or a conflict.
    async fn apply_all(
        &self,
        changes: Vec<OrderChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut changing = std::collections::HashSet::new();
        for change in changes {
            if !changing.insert(change.order.id) {
                outcomes.push(Err(ChangeError::Conflict { expected: change.expected_version }));
                continue;
            }
            match self.apply(change).await {
                Err(ChangeError::Unexpected(error)) => return Err(ChangeError::Unexpected(error)),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }

    /// Writes messages that belong to no stored change to the outbox, all or none: the notification of
    /// an order refused for stock, which stored nothing else.
    ///
    /// # Errors
    /// [`EnqueueError::Unexpected`] when the store fails; nothing is written.
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), EnqueueError>;

    /// Sends a notification once per message: unless the inbox holds `entry`, awaits `send` and records
    /// `entry` if it succeeded. The entry is claimed before `send` starts and kept only if it succeeds,
    /// so concurrent deliveries of one message send it once; a crash after sending and before recording
    /// sends it again on redelivery (the e-mail's `Message-ID` lets the mailbox tell).
    ///
    /// # Errors
    /// - [`NotifyOnceError::Send`] when `send` failed: nothing is recorded;
    /// - [`NotifyOnceError::InFlight`] when another delivery of the message holds the claim and the store
    ///   cannot wait for it (a store may instead wait and then answer as the other delivery ended);
    /// - [`NotifyOnceError::Unexpected`] when the store fails.
    ///
    /// When the inbox already holds the entry the result is `Ok(ChangeOutcome::AlreadyProcessed)` and
    /// `send` is not awaited.
    async fn notify_once(
        &self,
        entry: &InboxEntry,
        send: futures::future::BoxFuture<'_, Result<(), NotifyError>>,
    ) -> Result<ChangeOutcome, NotifyOnceError>;

    /// One order.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn order(&self, id: OrderId) -> Result<Option<Order>, ReadError>;

    /// The orders with these ids, in no particular order (missing ones are left out). The default reads
    /// them one by one.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn orders_by_id(&self, ids: &[OrderId]) -> Result<Vec<Order>, ReadError> {
        let mut orders = Vec::with_capacity(ids.len());
        for &id in ids {
            orders.extend(self.order(id).await?);
        }
        Ok(orders)
    }

    /// Orders newest first, filtered.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn orders(&self, query: OrderQuery) -> Result<Page<Order, OrderId>, ReadError>;

    /// An order's audit events, oldest first; `None` when the order does not exist.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn timeline(&self, id: OrderId) -> Result<Option<Vec<CloudEvent>>, ReadError>;

    /// The products with these SKUs (missing ones are left out).
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn products_by_sku(&self, skus: &[Sku]) -> Result<Vec<Product>, ReadError>;

    /// The catalogue in SKU order.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn products(&self, limit: usize, after: Option<Sku>) -> Result<Page<Product, Sku>, ReadError>;

    /// Creates or updates a product's name, price and stock on hand; its reservations are kept.
    ///
    /// # Errors
    /// - [`PutProductError::StockBelowReserved`] when `stock` is below the units reserved;
    /// - [`PutProductError::Unexpected`] when the store fails.
    async fn put_product(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
        stock: u32,
    ) -> Result<Product, PutProductError>;

    /// Deletes the idempotency keys recorded before `before`: past their time to live a key is only ever
    /// taken over, and each holds its order's first answer. Returns how many went.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, ReadError>;
}
