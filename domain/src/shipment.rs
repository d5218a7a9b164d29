//! The Shipment state machine of the Delivery service: pending, shipped, delivered, or cancelled.

use serde::{Deserialize, Serialize};

use crate::events::{
    ShipmentCancelled, ShipmentCreated, ShipmentDelivered, ShipmentEvent, ShipmentOrder, ShipmentShipped,
};
use crate::values::{Carrier, InvalidValue, ShipmentId, Timestamp, TrackingNumber};
use crate::{Step, TransitionError};

/// Where a shipment is. `delivered` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Created from a paid order; waiting for staff to hand it to a carrier.
    Pending,
    /// With the carrier.
    Shipped,
    /// Arrived. Final.
    Delivered,
    /// Cancelled before it shipped. Final.
    Cancelled,
}

impl ShipmentStatus {
    /// Every status.
    pub const ALL: [Self; 4] = [Self::Pending, Self::Shipped, Self::Delivered, Self::Cancelled];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `status` for an unknown name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| InvalidValue::new("status", "is not a shipment status"))
    }
}

/// A parcel for one paid order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// Its id.
    pub id: ShipmentId,
    /// What Sales asked to ship.
    pub order: ShipmentOrder,
    /// Where it is.
    pub status: ShipmentStatus,
    /// Set once shipped.
    pub carrier: Option<Carrier>,
    /// Set once shipped.
    pub tracking_number: Option<TrackingNumber>,
    /// When Delivery learned of the order.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Bumped by every transition; stores use it for optimistic concurrency.
    pub version: u32,
}

impl Shipment {
    /// Creates the shipment for a paid order.
    pub fn create(id: ShipmentId, order: ShipmentOrder, at: Timestamp) -> (Self, ShipmentEvent) {
        let event = ShipmentEvent::Created(ShipmentCreated { shipment_id: id, order_id: order.order_id });
        let shipment = Self {
            id,
            order,
            status: ShipmentStatus::Pending,
            carrier: None,
            tracking_number: None,
            created_at: at,
            updated_at: at,
            version: 1,
        };
        (shipment, event)
    }

    /// Staff hand the parcel to a carrier. Repeating it with the same details is a no-op.
    ///
    /// # Errors
    /// [`TransitionError::ShipmentCancelled`] when cancelled, [`TransitionError::AlreadyShipped`] when it
    /// left with other details.
    pub fn ship(
        self,
        carrier: Carrier,
        tracking_number: TrackingNumber,
        at: Timestamp,
    ) -> Result<Step<Self, ShipmentEvent>, TransitionError> {
        match self.status {
            ShipmentStatus::Pending => {
                let event = ShipmentEvent::Shipped(ShipmentShipped {
                    shipment_id: self.id,
                    order_id: self.order.order_id,
                    carrier: carrier.clone(),
                    tracking_number: tracking_number.clone(),
                });
                let mut next = self;
                next.carrier = Some(carrier);
                next.tracking_number = Some(tracking_number);
                Ok(next.moved(ShipmentStatus::Shipped, event, at))
            }
            ShipmentStatus::Shipped | ShipmentStatus::Delivered
                if self.carrier.as_ref() == Some(&carrier)
                    && self.tracking_number.as_ref() == Some(&tracking_number) =>
            {
                Ok(Step::Unchanged(self))
            }
            ShipmentStatus::Cancelled => Err(TransitionError::ShipmentCancelled),
            ShipmentStatus::Shipped | ShipmentStatus::Delivered => Err(TransitionError::AlreadyShipped {
                carrier: self.carrier.unwrap_or(carrier),
                tracking_number: self.tracking_number.unwrap_or(tracking_number),
            }),
        }
    }

    /// Staff confirm the parcel arrived.
    ///
    /// # Errors
    /// [`TransitionError::NotShipped`] while pending, [`TransitionError::ShipmentCancelled`] when cancelled.
    pub fn deliver(self, at: Timestamp) -> Result<Step<Self, ShipmentEvent>, TransitionError> {
        match (self.status, self.carrier.clone(), self.tracking_number.clone()) {
            // Shipping sets both, so a shipped shipment always has them.
            (ShipmentStatus::Shipped, Some(carrier), Some(tracking_number)) => {
                let event = ShipmentEvent::Delivered(ShipmentDelivered {
                    shipment_id: self.id,
                    order_id: self.order.order_id,
                    carrier,
                    tracking_number,
                });
                Ok(self.moved(ShipmentStatus::Delivered, event, at))
            }
            (ShipmentStatus::Delivered, ..) => Ok(Step::Unchanged(self)),
            (ShipmentStatus::Cancelled, ..) => Err(TransitionError::ShipmentCancelled),
            (ShipmentStatus::Pending | ShipmentStatus::Shipped, ..) => Err(TransitionError::NotShipped),
        }
    }

    /// Sales asks to cancel. Too late once shipped: the request is acknowledged and ignored, and Sales
    /// learns the truth from the shipped event.
    pub fn cancel(self, at: Timestamp) -> Step<Self, ShipmentEvent> {
        match self.status {
            ShipmentStatus::Pending => {
                let event =
                    ShipmentEvent::Cancelled(ShipmentCancelled { shipment_id: self.id, order_id: self.order.order_id });
                self.moved(ShipmentStatus::Cancelled, event, at)
            }
            _ => Step::Unchanged(self),
        }
    }

    fn moved(mut self, to: ShipmentStatus, event: ShipmentEvent, at: Timestamp) -> Step<Self, ShipmentEvent> {
        self.status = to;
        self.updated_at = at.max(self.updated_at);
        self.version += 1;
        Step::Applied { state: self, event }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::events::ShipmentLine;
    use crate::values::{Address, CustomerId, OrderId, Quantity, RawAddress, Sku};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn in_status(status: ShipmentStatus) -> Shipment {
        let order = ShipmentOrder {
            order_id: OrderId::from_uuid(uuid::Uuid::now_v7()),
            customer_id: CustomerId::parse("c").unwrap(),
            lines: vec![ShipmentLine { sku: Sku::parse("A").unwrap(), quantity: Quantity::new(1).unwrap() }],
            shipping_address: Address::parse(RawAddress {
                name: "n",
                line1: "l",
                line2: None,
                city: "c",
                postal_code: "p",
                country: "DE",
            })
            .unwrap(),
        };
        let (mut s, _) = Shipment::create(ShipmentId::from_uuid(uuid::Uuid::now_v7()), order, at(0));
        s.status = status;
        if matches!(status, ShipmentStatus::Shipped | ShipmentStatus::Delivered) {
            let (c, t) = details();
            s.carrier = Some(c);
            s.tracking_number = Some(t);
        }
        s
    }

    fn details() -> (Carrier, TrackingNumber) {
        (Carrier::parse("DHL").unwrap(), TrackingNumber::parse("T-1").unwrap())
    }

    fn status_after(step: Step<Shipment, ShipmentEvent>) -> Option<ShipmentStatus> {
        match step {
            Step::Applied { state, .. } => Some(state.status),
            Step::Unchanged(_) => None,
        }
    }

    #[test]
    fn a_new_shipment_is_pending() {
        assert_eq!(in_status(ShipmentStatus::Pending).status, ShipmentStatus::Pending);
    }

    #[test]
    fn shipping_records_carrier_and_tracking_number() {
        let (c, t) = details();
        match in_status(ShipmentStatus::Pending).ship(c.clone(), t, at(1)).unwrap() {
            Step::Applied { state, event } => {
                assert_eq!(state.status, ShipmentStatus::Shipped);
                assert_eq!(state.carrier, Some(c));
                assert!(matches!(event, ShipmentEvent::Shipped(_)));
            }
            Step::Unchanged(_) => panic!("expected a change"),
        }
    }

    #[test]
    fn shipping_again_with_the_same_details_is_a_no_op() {
        let (c, t) = details();
        assert_eq!(status_after(in_status(ShipmentStatus::Shipped).ship(c, t, at(1)).unwrap()), None);
    }

    #[test]
    fn shipping_again_with_other_details_is_rejected() {
        let other = TrackingNumber::parse("T-2").unwrap();
        assert!(in_status(ShipmentStatus::Shipped).ship(details().0, other, at(1)).is_err());
    }

    #[test]
    fn shipping_a_cancelled_shipment_is_rejected() {
        let (c, t) = details();
        assert!(in_status(ShipmentStatus::Cancelled).ship(c, t, at(1)).is_err());
    }

    #[test]
    fn delivering_requires_shipping_first() {
        for status in ShipmentStatus::ALL {
            let result = in_status(status).deliver(at(1));
            match status {
                ShipmentStatus::Shipped => assert_eq!(status_after(result.unwrap()), Some(ShipmentStatus::Delivered)),
                ShipmentStatus::Delivered => assert_eq!(status_after(result.unwrap()), None),
                _ => assert!(result.is_err(), "{status:?}"),
            }
        }
    }

    #[test]
    fn only_a_pending_shipment_can_be_cancelled_and_later_requests_are_ignored() {
        for status in ShipmentStatus::ALL {
            let after = status_after(in_status(status).cancel(at(1)));
            let expected = (status == ShipmentStatus::Pending).then_some(ShipmentStatus::Cancelled);
            assert_eq!(after, expected, "{status:?}");
        }
    }
}
