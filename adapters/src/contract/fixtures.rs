//! Builders the contract checks share: valid values, orders placed through the domain, their changes and
//! outbox messages, so each check reads as arrange / act / assert.

use std::collections::HashMap;

use chrono::{SubsecRound, Utc};
use orderflow_domain::{
    Address, Currency, CustomerId, EmailAddress, EventId, Money, Order, OrderEvent, OrderId, OrderRequest, ProductName,
    Quantity, RawAddress, Sku, Step, StockEffect, Timestamp, TransitionError,
};
use orderflow_messages::OrderCancelled;
use orderflow_messages::{CloudEvent, EventBody, RoutingKey, Source};
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxStore};
use orderflow_ports::sales::{IdempotencyRecord, OrderChange, Placement};
use uuid::Uuid;

/// The audit event types of an order's whole life, in the order they must reach the audit trail.
pub const LIFECYCLE_AUDIT: [&str; 4] = [
    "orderflow.order.placed.v1",
    "orderflow.order.paid.v1",
    "orderflow.order.shipped.v1",
    "orderflow.order.delivered.v1",
];

/// Now, at the microsecond precision every store keeps (PostgreSQL's `timestamptz`), so what is written
/// reads back equal.
pub fn now() -> orderflow_domain::Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// A SKU; panics on an invalid one.
pub fn sku(raw: &str) -> Sku {
    Sku::parse(raw).expect("a valid SKU")
}

/// An amount in euro cents.
pub fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").expect("EUR is a currency")).expect("a valid amount")
}

/// A product name.
pub fn name(raw: &str) -> ProductName {
    ProductName::parse(raw).expect("a valid product name")
}

/// A valid shipping address.
pub fn address() -> Address {
    Address::parse(RawAddress {
        name: "Ada Lovelace",
        line1: "1 Main St",
        line2: None,
        city: "Berlin",
        postal_code: "10115",
        country: "DE",
    })
    .expect("a valid address")
}

/// A fresh, time-ordered event id.
pub fn event_id() -> EventId {
    EventId::from_uuid(Uuid::now_v7())
}

/// `base` plus `seconds`.
pub fn later(base: Timestamp, seconds: i64) -> Timestamp {
    base + chrono::Duration::seconds(seconds)
}

/// Wraps what a Sales event sends after it happened to `order` into outbox messages.
pub fn sales_messages(event: &OrderEvent, order: &Order, at: Timestamp) -> Vec<OutboxMessage> {
    orderflow_messages::order_messages(event, order)
        .into_iter()
        .map(|o| OutboxMessage::from_outgoing(o, event_id(), Source::Sales, at, None))
        .collect()
}

/// A standalone outbox message about a random order, sent to `command` and/or the audit stream; for
/// outbox checks that only care about rows and destinations.
pub fn message(command: Option<RoutingKey>, audit: bool) -> OutboxMessage {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let body = EventBody::of(order_id, &OrderCancelled { order_id });
    OutboxMessage { event: CloudEvent::wrap(event_id(), Source::Sales, body, now(), None), command, audit }
}

/// Every row a store's outbox owes right now, to either destination, in the order the fixtures made them
/// (their ids are UUIDv7s); they are settled as published, so the next call returns only rows written
/// after this one.
pub async fn drain_outbox(store: &dyn OutboxStore) -> Vec<EventId> {
    let mut rows = Vec::new();
    for destination in [Destination::Command, Destination::Audit] {
        let batch = store.take(destination, 1000).await.expect("outbox rows taken");
        let ids = message_ids(batch.messages());
        batch.settle(&ids).await.expect("the batch settled");
        rows.extend(ids);
    }
    rows.sort();
    rows.dedup();
    rows
}

/// The ids of the rows `store` owes `destination` right now, oldest first (taken and handed back
/// unsettled).
pub async fn owed(store: &dyn OutboxStore, destination: Destination) -> Vec<EventId> {
    let batch = store.take(destination, 1000).await.expect("outbox rows taken");
    let ids = message_ids(batch.messages());
    batch.settle(&[]).await.expect("the batch handed back");
    ids
}

/// The ids of messages, in order.
pub fn message_ids(messages: &[OutboxMessage]) -> Vec<EventId> {
    messages.iter().map(OutboxMessage::id).collect()
}

/// An order to place: lines, customer, time and an optional idempotency key, priced from a price map
/// (SKUs not in the map cost 10.00 EUR).
#[derive(Debug, Clone)]
pub struct OrderDraft {
    customer: String,
    lines: Vec<(Sku, Quantity)>,
    prices: HashMap<Sku, Money>,
    at: Timestamp,
    key: Option<IdempotencyRecord>,
    contact: Option<EmailAddress>,
}

impl OrderDraft {
    /// An order of `customer`, placed now, with no lines yet.
    pub fn new(customer: &str) -> Self {
        Self {
            customer: customer.to_owned(),
            lines: Vec::new(),
            prices: HashMap::new(),
            at: now(),
            key: None,
            contact: None,
        }
    }

    /// Adds `quantity` of `sku`.
    #[must_use]
    pub fn line(mut self, sku_code: &str, quantity: i64) -> Self {
        self.lines.push((sku(sku_code), Quantity::new(quantity).expect("a valid quantity")));
        self
    }

    /// Prices `sku` at `price`.
    #[must_use]
    pub fn price(mut self, sku_code: &str, price: Money) -> Self {
        self.prices.insert(sku(sku_code), price);
        self
    }

    /// Places it at `at`.
    #[must_use]
    pub const fn at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }

    /// Sends it with `client`'s `Idempotency-Key: key` for a body hashing to `hash`; keys recorded before
    /// `not_before` count as expired.
    #[must_use]
    pub fn key(mut self, client: &str, key: &str, hash: &str, not_before: Timestamp) -> Self {
        self.key = Some(IdempotencyRecord {
            client: client.to_owned(),
            key: key.to_owned(),
            request_hash: hash.to_owned(),
            not_before,
        });
        self
    }

    /// Asks for notifications to `email`.
    #[must_use]
    pub fn contact(mut self, email: &str) -> Self {
        self.contact = Some(EmailAddress::parse(email).expect("a valid e-mail address"));
        self
    }

    /// The placement: a fresh order in `pending_payment` with its payment command and audit record.
    pub fn placement(self) -> Placement {
        let request =
            OrderRequest::new(CustomerId::parse(&self.customer).expect("a valid customer"), self.lines, address())
                .expect("a valid order request")
                .with_contact_email(self.contact);
        let prices = self.prices;
        let (order, event) = Order::place(
            OrderId::from_uuid(Uuid::now_v7()),
            request,
            |s| Some(prices.get(s).copied().unwrap_or_else(|| eur(1000))),
            self.at,
        )
        .expect("the draft prices");
        let messages = sales_messages(&event, &order, self.at);
        Placement { order, messages, idempotency: self.key }
    }
}

/// The change a transition of `before` makes, with its stock effect and messages; panics when the
/// transition is refused or changes nothing, since a check built it to move the order.
pub fn change_of(before: &Order, step: Result<Step<Order, OrderEvent>, TransitionError>, at: Timestamp) -> OrderChange {
    match step.expect("the transition is allowed") {
        Step::Applied { state, event } => OrderChange {
            stock: StockEffect::between(Some(before.status), state.status),
            messages: sales_messages(&event, &state, at),
            expected_version: before.version,
            order: state,
            inbox: None,
        },
        Step::Unchanged(order) => panic!("the transition left order {} unchanged", order.id),
    }
}

/// An inbox entry for `message_id` processed by `consumer`.
pub fn inbox(message_id: &str, consumer: &str) -> InboxEntry {
    InboxEntry { message_id: message_id.to_owned(), consumer: consumer.to_owned() }
}
