#![doc = include_str!("../README.md")]

use orderflow_domain::events::{OrderEvent, ShipmentEvent};
use orderflow_domain::{
    Address, Carrier, CustomerId, EmailAddress, EventId, Money, Order, OrderId, ShipmentId, Sku, Timestamp,
    TrackingNumber,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use orderflow_domain::events::{
    OrderCancellationRequested, OrderCancelled, OrderDelivered, OrderPaid, OrderPaymentFailed, OrderPlaced,
    OrderShipped, ShipmentCancelled, ShipmentCreated, ShipmentDelivered, ShipmentLine, ShipmentShipped,
};

/// Which service emitted an event: the CloudEvents `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Sales API and its workers.
    Sales,
    /// The Delivery API and its workers.
    Delivery,
}

impl Source {
    /// The `source` attribute value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sales => "sales-api",
            Self::Delivery => "delivery-api",
        }
    }
}

/// The RabbitMQ routing keys (and queue names) of the commands between the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoutingKey {
    /// Sales → its payment worker.
    #[serde(rename = "payments.requested")]
    PaymentsRequested,
    /// Sales → Delivery: a paid order to ship.
    #[serde(rename = "orders.created")]
    OrdersCreated,
    /// Sales → Delivery: the customer wants to cancel.
    #[serde(rename = "orders.cancel_requested")]
    OrdersCancelRequested,
    /// Delivery → Sales.
    #[serde(rename = "orders.shipped")]
    OrdersShipped,
    /// Delivery → Sales.
    #[serde(rename = "orders.delivered")]
    OrdersDelivered,
    /// Delivery → Sales: the shipment was cancelled before it left.
    #[serde(rename = "shipments.cancelled")]
    ShipmentsCancelled,
    /// Sales → its notification worker: tell the customer what happened to an order.
    #[serde(rename = "notifications.requested")]
    NotificationsRequested,
}

impl RoutingKey {
    /// Every routing key.
    pub const ALL: [Self; 7] = [
        Self::PaymentsRequested,
        Self::OrdersCreated,
        Self::OrdersCancelRequested,
        Self::OrdersShipped,
        Self::OrdersDelivered,
        Self::ShipmentsCancelled,
        Self::NotificationsRequested,
    ];

    /// The routing key, which is also the queue's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PaymentsRequested => "payments.requested",
            Self::OrdersCreated => "orders.created",
            Self::OrdersCancelRequested => "orders.cancel_requested",
            Self::OrdersShipped => "orders.shipped",
            Self::OrdersDelivered => "orders.delivered",
            Self::ShipmentsCancelled => "shipments.cancelled",
            Self::NotificationsRequested => "notifications.requested",
        }
    }

    /// The queues the Sales service consumes.
    pub const SALES: [Self; 5] = [
        Self::PaymentsRequested,
        Self::OrdersShipped,
        Self::OrdersDelivered,
        Self::ShipmentsCancelled,
        Self::NotificationsRequested,
    ];
    /// The queues Sales sends to itself, which Delivery neither declares nor uses.
    pub const SALES_INTERNAL: [Self; 2] = [Self::PaymentsRequested, Self::NotificationsRequested];
    /// The queues the Delivery service consumes.
    pub const DELIVERY: [Self; 2] = [Self::OrdersCreated, Self::OrdersCancelRequested];
}

/// A payload with a versioned CloudEvents type name. The `.vN` suffix changes whenever the payload's
/// schema changes incompatibly; consumers dead-letter types they do not know.
pub trait Payload: Serialize + DeserializeOwned {
    /// The CloudEvents `type`, e.g. `orderflow.order.placed.v1`.
    const TYPE: &'static str;
}

macro_rules! payload {
    ($(#[$doc:meta])* $name:ident = $ty:literal { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $fty,)*
        }

        impl Payload for $name {
            const TYPE: &'static str = $ty;
        }
    };
}

/// Declares the versioned type of the domain's event data.
macro_rules! versioned {
    ($($name:ident = $ty:literal),+ $(,)?) => {
        $(
            impl Payload for $name {
                const TYPE: &'static str = $ty;
            }
        )+
    };
}

versioned!(
    OrderPlaced = "orderflow.order.placed.v1",
    OrderPaid = "orderflow.order.paid.v1",
    OrderPaymentFailed = "orderflow.order.payment_failed.v1",
    OrderCancellationRequested = "orderflow.order.cancellation_requested.v1",
    OrderCancelled = "orderflow.order.cancelled.v1",
    OrderShipped = "orderflow.order.shipped.v1",
    OrderDelivered = "orderflow.order.delivered.v1",
    ShipmentCreated = "orderflow.shipment.created.v1",
    ShipmentShipped = "orderflow.shipment.shipped.v1",
    ShipmentDelivered = "orderflow.shipment.delivered.v2",
    ShipmentCancelled = "orderflow.shipment.cancelled.v1",
);

payload!(
    /// Command: take payment for an order.
    PaymentRequested = "orderflow.payment.requested.v1" {
        /// The order to charge for.
        order_id: OrderId,
        /// How much.
        amount: Money,
    }
);
payload!(
    /// Command to Delivery: ship this paid order.
    OrderCreated = "orderflow.order.created.v1" {
        /// The order.
        order_id: OrderId,
        /// Who placed it.
        customer_id: CustomerId,
        /// What to pack.
        lines: Vec<ShipmentLine>,
        /// Where to send it.
        shipping_address: Address,
    }
);
payload!(
    /// Command to Delivery: the customer wants to cancel this order.
    CancelRequested = "orderflow.order.cancel_requested.v1" {
        /// The order.
        order_id: OrderId,
    }
);
payload!(
    /// The first version of [`ShipmentDelivered`], without the carrier: no longer sent, still read, so
    /// reports queued before an upgrade are applied after it.
    ShipmentDeliveredV1 = "orderflow.shipment.delivered.v1" {
        /// The shipment.
        shipment_id: ShipmentId,
        /// Its order.
        order_id: OrderId,
    }
);

/// What a notification tells the customer, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    /// The payment went through: the order is confirmed.
    Confirmed {
        /// What was charged.
        amount: Money,
    },
    /// The payment was declined.
    PaymentFailed {
        /// The gateway's reason.
        reason: String,
    },
    /// The order was refused: these SKUs are short of stock. Nothing was stored; the order id was never used.
    OutOfStock {
        /// The SKUs short of stock.
        skus: Vec<Sku>,
    },
    /// The order is cancelled (and any payment refunded).
    Cancelled,
    /// The parcel left.
    Shipped {
        /// Who carries it.
        carrier: Carrier,
        /// The carrier's tracking number.
        tracking_number: TrackingNumber,
    },
    /// The parcel arrived.
    Delivered,
}

payload!(
    /// Command to Sales' notification worker: tell the order's contact what happened.
    NotificationRequested = "orderflow.notification.requested.v1" {
        /// The order.
        order_id: OrderId,
        /// Whom to tell.
        contact_email: EmailAddress,
        /// What to tell.
        notice: Notice,
    }
);

impl From<OrderCreated> for orderflow_domain::events::ShipmentOrder {
    fn from(order: OrderCreated) -> Self {
        Self {
            order_id: order.order_id,
            customer_id: order.customer_id,
            lines: order.lines,
            shipping_address: order.shipping_address,
        }
    }
}

/// An event ready to be wrapped: its type, the order it concerns, and its JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBody {
    /// The CloudEvents `type`.
    pub event_type: &'static str,
    /// The order it concerns (the CloudEvents `subject` and the Kafka key).
    pub order_id: OrderId,
    /// The payload.
    pub data: serde_json::Value,
}

impl EventBody {
    /// Serialises a payload.
    pub fn of<P: Payload>(order_id: OrderId, payload: &P) -> Self {
        // Payloads are plain structs of strings and numbers: serialising them cannot fail.
        let data = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
        Self { event_type: P::TYPE, order_id, data }
    }
}

/// A message an event causes: a command on a routing key, an audit record, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// What to send.
    pub body: EventBody,
    /// The routing key when it is also a command to a service.
    pub command: Option<RoutingKey>,
    /// Whether it goes to the audit stream.
    pub audit: bool,
}

/// The audit records of an order event, oldest step first.
fn order_bodies(event: &OrderEvent) -> Vec<EventBody> {
    let body = match event {
        OrderEvent::Placed(p) => EventBody::of(p.order_id, p),
        OrderEvent::Paid(p) => EventBody::of(p.order_id, p),
        OrderEvent::PaymentFailed(p) => EventBody::of(p.order_id, p),
        OrderEvent::CancellationRequested(p) => EventBody::of(p.order_id, p),
        OrderEvent::Cancelled(p) => EventBody::of(p.order_id, p),
        OrderEvent::Shipped(p) => EventBody::of(p.order_id, p),
        OrderEvent::Delivered(p) => EventBody::of(p.order_id, p),
        OrderEvent::ShippedAndDelivered(shipped, delivered) => {
            return vec![EventBody::of(shipped.order_id, shipped), EventBody::of(delivered.order_id, delivered)];
        }
    };
    vec![body]
}

/// The messages an order event sends: always its audit records, plus the command it triggers. `order` is
/// the order after the event (a paid order's shipment needs its lines and address).
pub fn order_messages(event: &OrderEvent, order: &Order) -> Vec<Outgoing> {
    let command = match event {
        OrderEvent::Placed(p) => Some((
            RoutingKey::PaymentsRequested,
            EventBody::of(p.order_id, &PaymentRequested { order_id: p.order_id, amount: p.total }),
        )),
        OrderEvent::Paid(p) => Some((
            RoutingKey::OrdersCreated,
            EventBody::of(
                p.order_id,
                &OrderCreated {
                    order_id: order.id,
                    customer_id: order.customer_id.clone(),
                    lines: order
                        .lines
                        .iter()
                        .map(|l| ShipmentLine { sku: l.sku.clone(), quantity: l.quantity })
                        .collect(),
                    shipping_address: order.shipping_address.clone(),
                },
            ),
        )),
        OrderEvent::CancellationRequested(p) => Some((
            RoutingKey::OrdersCancelRequested,
            EventBody::of(p.order_id, &CancelRequested { order_id: p.order_id }),
        )),
        _ => None,
    };
    let mut out: Vec<Outgoing> =
        order_bodies(event).into_iter().map(|body| Outgoing { body, command: None, audit: true }).collect();
    out.extend(command.map(|(key, body)| Outgoing { body, command: Some(key), audit: false }));
    if let Some(contact_email) = &order.contact_email {
        out.extend(notices(event).into_iter().map(|notice| notification(order.id, contact_email, notice)));
    }
    out
}

/// What an order event tells the customer, oldest step first: nothing for the steps they caused
/// themselves or that change nothing for them (placing, asking to cancel).
fn notices(event: &OrderEvent) -> Vec<Notice> {
    let shipped =
        |p: &OrderShipped| Notice::Shipped { carrier: p.carrier.clone(), tracking_number: p.tracking_number.clone() };
    match event {
        OrderEvent::Placed(_) | OrderEvent::CancellationRequested(_) => vec![],
        OrderEvent::Paid(p) => vec![Notice::Confirmed { amount: p.amount }],
        OrderEvent::PaymentFailed(p) => vec![Notice::PaymentFailed { reason: p.reason.clone() }],
        OrderEvent::Cancelled(_) => vec![Notice::Cancelled],
        OrderEvent::Shipped(p) => vec![shipped(p)],
        OrderEvent::Delivered(_) => vec![Notice::Delivered],
        OrderEvent::ShippedAndDelivered(p, _) => vec![shipped(p), Notice::Delivered],
    }
}

/// The notification command telling `contact_email` of `notice` about order `order_id`.
pub fn notification(order_id: OrderId, contact_email: &EmailAddress, notice: Notice) -> Outgoing {
    let request = NotificationRequested { order_id, contact_email: contact_email.clone(), notice };
    Outgoing {
        body: EventBody::of(order_id, &request),
        command: Some(RoutingKey::NotificationsRequested),
        audit: false,
    }
}

/// The JSON Schema of every payload, by CloudEvents type.
#[cfg(feature = "schema")]
pub fn payload_schemas() -> std::collections::BTreeMap<&'static str, schemars::Schema> {
    fn of<P: Payload + schemars::JsonSchema>() -> (&'static str, schemars::Schema) {
        (P::TYPE, schemars::schema_for!(P))
    }
    [
        of::<OrderPlaced>(),
        of::<OrderPaid>(),
        of::<OrderPaymentFailed>(),
        of::<OrderCancellationRequested>(),
        of::<OrderCancelled>(),
        of::<OrderShipped>(),
        of::<OrderDelivered>(),
        of::<PaymentRequested>(),
        of::<OrderCreated>(),
        of::<CancelRequested>(),
        of::<NotificationRequested>(),
        of::<ShipmentCreated>(),
        of::<ShipmentShipped>(),
        of::<ShipmentDelivered>(),
        of::<ShipmentDeliveredV1>(),
        of::<ShipmentCancelled>(),
    ]
    .into_iter()
    .collect()
}

/// The message a shipment event sends: audited, and a command to Sales for every change after creation.
pub fn shipment_message(event: &ShipmentEvent) -> Outgoing {
    let (body, command) = match event {
        ShipmentEvent::Created(p) => (EventBody::of(p.order_id, p), None),
        ShipmentEvent::Shipped(p) => (EventBody::of(p.order_id, p), Some(RoutingKey::OrdersShipped)),
        ShipmentEvent::Delivered(p) => (EventBody::of(p.order_id, p), Some(RoutingKey::OrdersDelivered)),
        ShipmentEvent::Cancelled(p) => (EventBody::of(p.order_id, p), Some(RoutingKey::ShipmentsCancelled)),
    };
    Outgoing { body, command, audit: true }
}

/// The CloudEvents 1.0 envelope (structured JSON mode) every message travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// The event id; doubles as the message id consumers de-duplicate on.
    pub id: EventId,
    /// `sales-api` or `delivery-api`.
    pub source: String,
    /// The versioned payload type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The order id.
    pub subject: String,
    /// When the change committed.
    pub time: Timestamp,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The payload.
    pub data: serde_json::Value,
    /// W3C trace context of the request that caused it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl CloudEvent {
    /// Wraps an event body.
    pub fn wrap(id: EventId, source: Source, body: EventBody, time: Timestamp, traceparent: Option<String>) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id,
            source: source.as_str().to_owned(),
            event_type: body.event_type.to_owned(),
            subject: body.order_id.to_string(),
            time,
            datacontenttype: "application/json".to_owned(),
            data: body.data,
            traceparent,
        }
    }

    /// Reads the payload, checking the type first.
    ///
    /// # Errors
    /// [`DecodeError`] when the type differs or the data does not match the payload schema.
    pub fn payload<P: Payload>(&self) -> Result<P, DecodeError> {
        if self.event_type != P::TYPE {
            return Err(DecodeError::UnknownType(self.event_type.clone()));
        }
        serde_json::from_value(self.data.clone()).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// Why a message could not be read. Always permanent: retrying will not fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a CloudEvent or the payload does not fit its schema.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The consumer does not know this type (or this version of it).
    #[error("unknown event type {0}")]
    UnknownType(String),
}

impl CloudEvent {
    /// Parses a message body.
    ///
    /// # Errors
    /// [`DecodeError::Malformed`] when it is not a CloudEvents 1.0 JSON document.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if event.specversion != "1.0" {
            return Err(DecodeError::Malformed(format!("unsupported specversion {}", event.specversion)));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudEvent {
        let order_id = OrderId::from_uuid(uuid::Uuid::now_v7());
        let body = EventBody::of(order_id, &OrderCancelled { order_id });
        CloudEvent::wrap(EventId::from_uuid(uuid::Uuid::now_v7()), Source::Sales, body, chrono::Utc::now(), None)
    }

    #[test]
    fn envelopes_round_trip_and_carry_the_versioned_type() {
        let event = sample();
        let bytes = serde_json::to_vec(&event).unwrap();
        let back = CloudEvent::decode(&bytes).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.event_type, "orderflow.order.cancelled.v1");
        assert_eq!(back.source, "sales-api");
        assert!(back.payload::<OrderCancelled>().is_ok());
    }

    #[test]
    fn a_payload_of_another_type_is_refused() {
        assert_eq!(
            sample().payload::<OrderDelivered>().unwrap_err(),
            DecodeError::UnknownType("orderflow.order.cancelled.v1".into())
        );
    }

    #[test]
    fn garbage_and_other_spec_versions_are_malformed() {
        assert!(matches!(CloudEvent::decode(b"{not json"), Err(DecodeError::Malformed(_))));
        let mut event = serde_json::to_value(sample()).unwrap();
        event["specversion"] = "0.3".into();
        assert!(matches!(CloudEvent::decode(event.to_string().as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[cfg(feature = "schema")]
    #[test]
    fn every_payload_has_a_schema_that_accepts_a_real_event() {
        let schemas = payload_schemas();
        assert_eq!(schemas.len(), 16, "every payload, including the still-read v1 of shipment.delivered");
        let cancelled = &schemas["orderflow.order.cancelled.v1"];
        let json = serde_json::to_value(cancelled).unwrap();
        assert_eq!(json["required"], serde_json::json!(["order_id"]));
        assert_eq!(json["additionalProperties"], false);
        let placed = serde_json::to_value(&schemas["orderflow.order.placed.v1"]).unwrap().to_string();
        assert!(placed.contains("^[A-Z0-9][A-Z0-9._-]{0,63}$"), "the SKU pattern is in the schema: {placed}");
    }

    #[test]
    fn routing_keys_serialise_as_their_queue_names() {
        for key in RoutingKey::ALL {
            assert_eq!(serde_json::to_value(key).unwrap(), key.as_str());
        }
    }
}
