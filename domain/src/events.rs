//! Domain events: what happened to an order or a shipment, with the data each change records. The domain
//! only emits them; which messages they cause, on which queues and with which versioned type names, is
//! the message contracts' business (`orderflow-messages`).

use serde::{Deserialize, Serialize};

use crate::order::OrderLine;
use crate::values::{Address, Carrier, CustomerId, Money, OrderId, Quantity, ShipmentId, Sku, TrackingNumber};

macro_rules! event_data {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $fty,)*
        }
    };
}

event_data!(
    /// An order was placed and its stock reserved.
    OrderPlaced {
        /// The order.
        order_id: OrderId,
        /// Who placed it.
        customer_id: CustomerId,
        /// Priced lines.
        lines: Vec<OrderLine>,
        /// Sum of the lines.
        total: Money,
        /// Where it goes.
        shipping_address: Address,
    }
);
event_data!(
    /// The order's payment was captured.
    OrderPaid {
        /// The order.
        order_id: OrderId,
        /// What was captured.
        amount: Money,
    }
);
event_data!(
    /// The payment was declined; the order is final and its stock released.
    OrderPaymentFailed {
        /// The order.
        order_id: OrderId,
        /// The gateway's reason.
        reason: String,
    }
);
event_data!(
    /// The customer asked to cancel a paid order; Delivery decides whether it is still possible.
    OrderCancellationRequested {
        /// The order.
        order_id: OrderId,
    }
);
event_data!(
    /// The order is cancelled; stock released and any payment refunded.
    OrderCancelled {
        /// The order.
        order_id: OrderId,
    }
);
event_data!(
    /// The order left with a carrier.
    OrderShipped {
        /// The order.
        order_id: OrderId,
        /// Who carries it.
        carrier: Carrier,
        /// The carrier's tracking number.
        tracking_number: TrackingNumber,
    }
);
event_data!(
    /// The order was delivered.
    OrderDelivered {
        /// The order.
        order_id: OrderId,
    }
);
event_data!(
    /// Delivery created a shipment for a paid order.
    ShipmentCreated {
        /// The shipment.
        shipment_id: ShipmentId,
        /// Its order.
        order_id: OrderId,
    }
);
event_data!(
    /// The shipment left with a carrier (also the `orders.shipped` command to Sales).
    ShipmentShipped {
        /// The shipment.
        shipment_id: ShipmentId,
        /// Its order.
        order_id: OrderId,
        /// Who carries it.
        carrier: Carrier,
        /// The carrier's tracking number.
        tracking_number: TrackingNumber,
    }
);
event_data!(
    /// The shipment arrived (also the `orders.delivered` command to Sales). It repeats how the parcel
    /// travelled, so Sales can record the shipping step too when this report overtakes the shipped one.
    ShipmentDelivered {
        /// The shipment.
        shipment_id: ShipmentId,
        /// Its order.
        order_id: OrderId,
        /// Who carried it.
        carrier: Carrier,
        /// The carrier's tracking number.
        tracking_number: TrackingNumber,
    }
);
event_data!(
    /// The shipment was cancelled before it left (also the `shipments.cancelled` command to Sales).
    ShipmentCancelled {
        /// The shipment.
        shipment_id: ShipmentId,
        /// Its order.
        order_id: OrderId,
    }
);

/// One line of a shipment: what to pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ShipmentLine {
    /// The product.
    pub sku: Sku,
    /// How many.
    pub quantity: Quantity,
}

/// A paid order as Delivery ships it: who, what to pack, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentOrder {
    /// The order.
    pub order_id: OrderId,
    /// Who placed it.
    pub customer_id: CustomerId,
    /// What to pack.
    pub lines: Vec<ShipmentLine>,
    /// Where to send it.
    pub shipping_address: Address,
}

/// Something that happened to an order; each goes to the audit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// See [`OrderPlaced`].
    Placed(OrderPlaced),
    /// See [`OrderPaid`].
    Paid(OrderPaid),
    /// See [`OrderPaymentFailed`].
    PaymentFailed(OrderPaymentFailed),
    /// See [`OrderCancellationRequested`].
    CancellationRequested(OrderCancellationRequested),
    /// See [`OrderCancelled`].
    Cancelled(OrderCancelled),
    /// See [`OrderShipped`].
    Shipped(OrderShipped),
    /// See [`OrderDelivered`].
    Delivered(OrderDelivered),
    /// A delivered report that overtook its shipped one: both steps, recorded in the order they happened.
    ShippedAndDelivered(OrderShipped, OrderDelivered),
}

/// Something that happened to a shipment; each goes to the audit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipmentEvent {
    /// See [`ShipmentCreated`].
    Created(ShipmentCreated),
    /// See [`ShipmentShipped`].
    Shipped(ShipmentShipped),
    /// See [`ShipmentDelivered`].
    Delivered(ShipmentDelivered),
    /// See [`ShipmentCancelled`].
    Cancelled(ShipmentCancelled),
}

impl OrderEvent {
    /// The steps of the order's history this event records, oldest first: one, or two when a delivered
    /// report overtook its shipped one.
    pub fn steps(&self) -> Vec<&'static str> {
        match self {
            Self::Placed(_) => vec!["placed"],
            Self::Paid(_) => vec!["paid"],
            Self::PaymentFailed(_) => vec!["payment_failed"],
            Self::CancellationRequested(_) => vec!["cancellation_requested"],
            Self::Cancelled(_) => vec!["cancelled"],
            Self::Shipped(_) => vec!["shipped"],
            Self::Delivered(_) => vec!["delivered"],
            Self::ShippedAndDelivered(..) => vec!["shipped", "delivered"],
        }
    }
}
