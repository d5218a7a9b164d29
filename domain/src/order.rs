//! The Order state machine of the Sales service: placing, paying, cancelling, shipping, delivering.

use serde::{Deserialize, Serialize};

use crate::events::{
    OrderCancellationRequested, OrderCancelled, OrderDelivered, OrderEvent, OrderPaid, OrderPaymentFailed, OrderPlaced,
    OrderShipped,
};
use crate::values::{
    Address, Carrier, CustomerId, EmailAddress, InvalidValue, Money, OrderId, Quantity, Sku, Timestamp, TrackingNumber,
};
use crate::{Step, TransitionError};

/// Where an order is in its lifecycle. `payment_failed`, `cancelled` and `delivered` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stock is reserved; the payment worker has not answered yet.
    PendingPayment,
    /// Paid; waiting for Delivery to ship.
    PendingShipment,
    /// The payment was declined; stock released. Final.
    PaymentFailed,
    /// The customer asked to cancel after payment; waiting for Delivery to confirm.
    CancellationRequested,
    /// Cancelled; stock released and any payment refunded. Final.
    Cancelled,
    /// Handed to a carrier.
    Shipped,
    /// Delivered to the customer. Final.
    Delivered,
}

impl OrderStatus {
    /// Every status, for tests and filters.
    pub const ALL: [Self; 7] = [
        Self::PendingPayment,
        Self::PendingShipment,
        Self::PaymentFailed,
        Self::CancellationRequested,
        Self::Cancelled,
        Self::Shipped,
        Self::Delivered,
    ];

    /// The wire name, e.g. `pending_payment`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::PendingShipment => "pending_shipment",
            Self::PaymentFailed => "payment_failed",
            Self::CancellationRequested => "cancellation_requested",
            Self::Cancelled => "cancelled",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
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
            .ok_or_else(|| InvalidValue::new("status", "is not an order status"))
    }

    /// Whether no further transition can leave this status.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::PaymentFailed | Self::Cancelled | Self::Delivered)
    }

    /// Whether the order's stock is still held in reserve (not yet shipped, not released).
    pub const fn holds_reservation(self) -> bool {
        matches!(self, Self::PendingPayment | Self::PendingShipment | Self::CancellationRequested)
    }
}

/// One line of an order, priced from the catalogue when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OrderLine {
    /// The product.
    pub sku: Sku,
    /// How many units.
    pub quantity: Quantity,
    /// Catalogue price of one unit at the time of placing.
    pub unit_price: Money,
}

/// A validated request to place an order, before prices are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// Who orders.
    pub customer_id: CustomerId,
    /// Distinct SKUs with their quantities, in the client's order.
    pub lines: Vec<(Sku, Quantity)>,
    /// Where to ship.
    pub shipping_address: Address,
    /// Whom to tell what becomes of the order, when anyone.
    pub contact_email: Option<EmailAddress>,
}

impl OrderRequest {
    /// The most lines one order may have.
    pub const MAX_LINES: usize = 100;

    /// Checks the shape of a request: 1 to [`Self::MAX_LINES`] lines, each SKU once.
    ///
    /// # Errors
    /// [`InvalidValue`] on `lines` when empty or too long, on `lines[i].sku` for a repeated SKU.
    pub fn new(
        customer_id: CustomerId,
        lines: Vec<(Sku, Quantity)>,
        shipping_address: Address,
    ) -> Result<Self, InvalidValue> {
        if lines.is_empty() {
            return Err(InvalidValue::new("lines", "must contain at least one line"));
        }
        if lines.len() > Self::MAX_LINES {
            return Err(InvalidValue::new("lines", format!("must contain at most {} lines", Self::MAX_LINES)));
        }
        for (i, (sku, _)) in lines.iter().enumerate() {
            if lines[..i].iter().any(|(seen, _)| seen == sku) {
                return Err(InvalidValue::new(
                    format!("lines[{i}].sku"),
                    format!("{sku} appears more than once; combine the quantities in one line"),
                ));
            }
        }
        Ok(Self { customer_id, lines, shipping_address, contact_email: None })
    }

    /// The same request, with an address to notify.
    #[must_use]
    pub fn with_contact_email(self, contact_email: Option<EmailAddress>) -> Self {
        Self { contact_email, ..self }
    }
}

/// Why an order cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// These SKUs are not in the catalogue.
    #[error("unknown SKUs: {0:?}")]
    UnknownSkus(Vec<Sku>),
    /// The lines are priced in more than one currency, so there is no single total.
    #[error("the products are priced in different currencies")]
    MixedCurrencies,
    /// The total does not fit the money range.
    #[error("the order total is too large")]
    TotalTooLarge,
}

/// The payment worker's verdict on an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// The amount was captured.
    Completed,
    /// The gateway refused the payment.
    Declined {
        /// The gateway's reason.
        reason: String,
    },
}

/// What a transition does to the order's reserved stock; the store applies it in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockEffect {
    /// Nothing changes.
    None,
    /// Hold the lines' quantities.
    Reserve,
    /// Give the held quantities back.
    Release,
    /// The goods left the warehouse: the held quantities leave stock for good.
    Commit,
}

impl StockEffect {
    /// The effect of moving from `from` to `to` (`from` is `None` when the order is new).
    pub fn between(from: Option<OrderStatus>, to: OrderStatus) -> Self {
        match (from.map(OrderStatus::holds_reservation), to) {
            (None, _) => Self::Reserve,
            (Some(true), OrderStatus::Shipped | OrderStatus::Delivered) => Self::Commit,
            (Some(true), OrderStatus::PaymentFailed | OrderStatus::Cancelled) => Self::Release,
            _ => Self::None,
        }
    }
}

/// A Sales order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// Who placed it.
    pub customer_id: CustomerId,
    /// Where it is in its lifecycle.
    pub status: OrderStatus,
    /// What was ordered, with catalogue prices.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total: Money,
    /// Where it goes.
    pub shipping_address: Address,
    /// Whom to notify of its changes, when the client gave an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<EmailAddress>,
    /// When it was placed.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Bumped by every transition; stores use it for optimistic concurrency.
    pub version: u32,
}

impl Order {
    /// Prices a request from the catalogue and creates the order in `pending_payment`.
    ///
    /// # Errors
    /// [`PricingError`] when a SKU is unknown, currencies differ or the total overflows.
    pub fn place(
        id: OrderId,
        request: OrderRequest,
        price_of: impl Fn(&Sku) -> Option<Money>,
        at: Timestamp,
    ) -> Result<(Self, OrderEvent), PricingError> {
        let unknown: Vec<Sku> =
            request.lines.iter().filter(|(s, _)| price_of(s).is_none()).map(|(s, _)| s.clone()).collect();
        if !unknown.is_empty() {
            return Err(PricingError::UnknownSkus(unknown));
        }
        let mut lines = Vec::with_capacity(request.lines.len());
        let mut total: Option<Money> = None;
        for (sku, quantity) in request.lines {
            let unit_price = price_of(&sku).ok_or_else(|| PricingError::UnknownSkus(vec![sku.clone()]))?;
            let amount = unit_price.times(quantity).ok_or(PricingError::TotalTooLarge)?;
            total = Some(match total {
                None => amount,
                Some(t) if t.currency != amount.currency => return Err(PricingError::MixedCurrencies),
                Some(t) => t.plus(amount).ok_or(PricingError::TotalTooLarge)?,
            });
            lines.push(OrderLine { sku, quantity, unit_price });
        }
        let total = total.ok_or(PricingError::TotalTooLarge)?;
        if total.amount_minor > Money::MAX_MINOR {
            return Err(PricingError::TotalTooLarge);
        }
        let order = Self {
            id,
            customer_id: request.customer_id,
            status: OrderStatus::PendingPayment,
            lines,
            total,
            shipping_address: request.shipping_address,
            contact_email: request.contact_email,
            created_at: at,
            updated_at: at,
            version: 1,
        };
        let event = OrderEvent::Placed(OrderPlaced {
            order_id: id,
            customer_id: order.customer_id.clone(),
            lines: order.lines.clone(),
            total,
            shipping_address: order.shipping_address.clone(),
        });
        Ok((order, event))
    }

    /// Records the payment worker's verdict. A decline for an order the customer cancelled meanwhile
    /// changes nothing: there is nothing to give back.
    ///
    /// # Errors
    /// [`TransitionError::PaymentAlreadySettled`] when the order is not awaiting payment and the verdict is
    /// not the one already recorded (e.g. a completed payment for an order the customer cancelled meanwhile).
    pub fn settle_payment(
        self,
        outcome: &PaymentOutcome,
        at: Timestamp,
    ) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match (self.status, outcome) {
            (OrderStatus::PendingPayment, PaymentOutcome::Completed) => {
                let event = OrderEvent::Paid(OrderPaid { order_id: self.id, amount: self.total });
                Ok(self.moved(OrderStatus::PendingShipment, event, at))
            }
            (OrderStatus::PendingPayment, PaymentOutcome::Declined { reason }) => {
                let event = OrderEvent::PaymentFailed(OrderPaymentFailed { order_id: self.id, reason: reason.clone() });
                Ok(self.moved(OrderStatus::PaymentFailed, event, at))
            }
            (
                OrderStatus::PendingShipment
                | OrderStatus::CancellationRequested
                | OrderStatus::Shipped
                | OrderStatus::Delivered,
                PaymentOutcome::Completed,
            )
            | (OrderStatus::PaymentFailed | OrderStatus::Cancelled, PaymentOutcome::Declined { .. }) => {
                Ok(Step::Unchanged(self))
            }
            (status, _) => Err(TransitionError::PaymentAlreadySettled { status }),
        }
    }

    /// The customer cancels. Before payment this is immediate; after payment it asks Delivery first.
    ///
    /// # Errors
    /// [`TransitionError::NotCancellable`] once the order has shipped, been delivered or failed payment.
    pub fn cancel(self, at: Timestamp) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match self.status {
            OrderStatus::PendingPayment => {
                let event = OrderEvent::Cancelled(OrderCancelled { order_id: self.id });
                Ok(self.moved(OrderStatus::Cancelled, event, at))
            }
            OrderStatus::PendingShipment => {
                let event = OrderEvent::CancellationRequested(OrderCancellationRequested { order_id: self.id });
                Ok(self.moved(OrderStatus::CancellationRequested, event, at))
            }
            OrderStatus::CancellationRequested | OrderStatus::Cancelled => Ok(Step::Unchanged(self)),
            status => Err(TransitionError::NotCancellable { status }),
        }
    }

    /// Delivery confirms it cancelled the shipment.
    ///
    /// # Errors
    /// [`TransitionError::NoCancellationRequested`] unless a cancellation was requested (or already completed).
    pub fn confirm_shipment_cancelled(self, at: Timestamp) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match self.status {
            OrderStatus::CancellationRequested => {
                let event = OrderEvent::Cancelled(OrderCancelled { order_id: self.id });
                Ok(self.moved(OrderStatus::Cancelled, event, at))
            }
            OrderStatus::Cancelled => Ok(Step::Unchanged(self)),
            status => Err(TransitionError::NoCancellationRequested { status }),
        }
    }

    /// Delivery reports the parcel left with a carrier. A cancel that lost the race ends here too.
    ///
    /// # Errors
    /// [`TransitionError::NotPaid`] for an order that was never paid or ended otherwise.
    pub fn mark_shipped(
        self,
        carrier: Carrier,
        tracking_number: TrackingNumber,
        at: Timestamp,
    ) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match self.status {
            OrderStatus::PendingShipment | OrderStatus::CancellationRequested => {
                let event = OrderEvent::Shipped(OrderShipped { order_id: self.id, carrier, tracking_number });
                Ok(self.moved(OrderStatus::Shipped, event, at))
            }
            OrderStatus::Shipped | OrderStatus::Delivered => Ok(Step::Unchanged(self)),
            status => Err(TransitionError::NotPaid { status }),
        }
    }

    /// Delivery reports the parcel arrived, and how it travelled. When this report overtakes the shipped
    /// one, the order records both steps, shipped first, so its history is complete whatever the arrival
    /// order; the late shipped report is then a no-op.
    ///
    /// # Errors
    /// [`TransitionError::NotPaid`] for an order that was never paid or ended otherwise.
    pub fn mark_delivered_by(
        self,
        carrier: Carrier,
        tracking_number: TrackingNumber,
        at: Timestamp,
    ) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match self.status {
            OrderStatus::PendingShipment | OrderStatus::CancellationRequested => {
                let shipped = OrderShipped { order_id: self.id, carrier, tracking_number };
                let event = OrderEvent::ShippedAndDelivered(shipped, OrderDelivered { order_id: self.id });
                Ok(self.moved(OrderStatus::Delivered, event, at))
            }
            _ => self.mark_delivered(at),
        }
    }

    /// Delivery reports the parcel arrived, without saying how (a `v1` report); also accepted before
    /// `shipped` arrives, when the order's history then lacks the shipping step.
    ///
    /// # Errors
    /// [`TransitionError::NotPaid`] for an order that was never paid or ended otherwise.
    pub fn mark_delivered(self, at: Timestamp) -> Result<Step<Self, OrderEvent>, TransitionError> {
        match self.status {
            OrderStatus::PendingShipment | OrderStatus::CancellationRequested | OrderStatus::Shipped => {
                let event = OrderEvent::Delivered(OrderDelivered { order_id: self.id });
                Ok(self.moved(OrderStatus::Delivered, event, at))
            }
            OrderStatus::Delivered => Ok(Step::Unchanged(self)),
            status => Err(TransitionError::NotPaid { status }),
        }
    }

    fn moved(mut self, to: OrderStatus, event: OrderEvent, at: Timestamp) -> Step<Self, OrderEvent> {
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
    use crate::values::{Currency, RawAddress};

    fn at(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }

    fn request(lines: &[(&str, i64)]) -> OrderRequest {
        let address = Address::parse(RawAddress {
            name: "Ada",
            line1: "1 Main St",
            line2: None,
            city: "Berlin",
            postal_code: "10115",
            country: "DE",
        })
        .unwrap();
        OrderRequest::new(
            CustomerId::parse("cust-42").unwrap(),
            lines.iter().map(|(s, q)| (Sku::parse(s).unwrap(), Quantity::new(*q).unwrap())).collect(),
            address,
        )
        .unwrap()
    }

    pub(crate) fn placed() -> Order {
        let id = OrderId::from_uuid(uuid::Uuid::now_v7());
        Order::place(id, request(&[("SKU-1", 2), ("SKU-2", 1)]), |_| Some(eur(1999)), at(0)).unwrap().0
    }

    fn in_status(status: OrderStatus) -> Order {
        Order { status, ..placed() }
    }

    fn carrier() -> (Carrier, TrackingNumber) {
        (Carrier::parse("DHL").unwrap(), TrackingNumber::parse("TRK-1").unwrap())
    }

    fn applied_to(step: Result<Step<Order, OrderEvent>, TransitionError>) -> OrderStatus {
        match step.unwrap() {
            Step::Applied { state, .. } => state.status,
            Step::Unchanged(o) => panic!("expected a change, order stayed {:?}", o.status),
        }
    }

    fn unchanged(step: Result<Step<Order, OrderEvent>, TransitionError>) -> bool {
        matches!(step, Ok(Step::Unchanged(_)))
    }

    #[test]
    fn placing_prices_lines_from_the_catalogue_and_reserves() {
        let order = placed();
        assert_eq!(order.status, OrderStatus::PendingPayment);
        assert_eq!(order.total, eur(3 * 1999));
        assert_eq!(StockEffect::between(None, order.status), StockEffect::Reserve);
    }

    #[test]
    fn placing_with_unknown_skus_lists_them_all() {
        let id = OrderId::from_uuid(uuid::Uuid::now_v7());
        let err = Order::place(
            id,
            request(&[("SKU-1", 1), ("NOPE", 1), ("NADA", 1)]),
            |s| (s.as_str() == "SKU-1").then(|| eur(1)),
            at(0),
        )
        .unwrap_err();
        assert_eq!(err, PricingError::UnknownSkus(vec![Sku::parse("NOPE").unwrap(), Sku::parse("NADA").unwrap()]));
    }

    #[test]
    fn placing_with_mixed_currencies_is_rejected() {
        let id = OrderId::from_uuid(uuid::Uuid::now_v7());
        let usd = Money::new(5, Currency::parse("USD").unwrap()).unwrap();
        let err = Order::place(
            id,
            request(&[("SKU-1", 1), ("SKU-2", 1)]),
            |s| Some(if s.as_str() == "SKU-1" { eur(5) } else { usd }),
            at(0),
        )
        .unwrap_err();
        assert_eq!(err, PricingError::MixedCurrencies);
    }

    #[test]
    fn a_request_must_have_lines_and_each_sku_once() {
        let r = request(&[("SKU-1", 1)]);
        assert_eq!(
            OrderRequest::new(r.customer_id.clone(), vec![], r.shipping_address.clone()).unwrap_err().field,
            "lines"
        );
        let dup = vec![(Sku::parse("A").unwrap(), Quantity::new(1).unwrap()); 2];
        assert_eq!(OrderRequest::new(r.customer_id, dup, r.shipping_address).unwrap_err().field, "lines[1].sku");
    }

    #[test]
    fn a_completed_payment_moves_to_pending_shipment() {
        assert_eq!(
            applied_to(placed().settle_payment(&PaymentOutcome::Completed, at(1))),
            OrderStatus::PendingShipment
        );
    }

    #[test]
    fn a_declined_payment_fails_the_order_and_releases_stock() {
        let declined = PaymentOutcome::Declined { reason: "limit".into() };
        assert_eq!(applied_to(placed().settle_payment(&declined, at(1))), OrderStatus::PaymentFailed);
        assert_eq!(
            StockEffect::between(Some(OrderStatus::PendingPayment), OrderStatus::PaymentFailed),
            StockEffect::Release
        );
    }

    #[test]
    fn a_repeated_payment_verdict_is_a_no_op() {
        for status in [
            OrderStatus::PendingShipment,
            OrderStatus::CancellationRequested,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ] {
            assert!(unchanged(in_status(status).settle_payment(&PaymentOutcome::Completed, at(1))), "{status:?}");
        }
        let declined = PaymentOutcome::Declined { reason: "x".into() };
        assert!(unchanged(in_status(OrderStatus::PaymentFailed).settle_payment(&declined, at(1))));
    }

    #[test]
    fn a_completed_payment_for_a_cancelled_order_is_rejected() {
        let err = in_status(OrderStatus::Cancelled).settle_payment(&PaymentOutcome::Completed, at(1)).unwrap_err();
        assert_eq!(err, TransitionError::PaymentAlreadySettled { status: OrderStatus::Cancelled });
    }

    #[test]
    fn cancelling_before_payment_is_immediate() {
        assert_eq!(applied_to(placed().cancel(at(1))), OrderStatus::Cancelled);
    }

    #[test]
    fn cancelling_after_payment_asks_delivery_first() {
        assert_eq!(
            applied_to(in_status(OrderStatus::PendingShipment).cancel(at(1))),
            OrderStatus::CancellationRequested
        );
        assert_eq!(
            applied_to(in_status(OrderStatus::CancellationRequested).confirm_shipment_cancelled(at(2))),
            OrderStatus::Cancelled
        );
    }

    #[test]
    fn cancelling_twice_is_a_no_op() {
        assert!(unchanged(in_status(OrderStatus::CancellationRequested).cancel(at(1))));
        assert!(unchanged(in_status(OrderStatus::Cancelled).cancel(at(1))));
    }

    #[test]
    fn cancelling_a_shipped_order_is_rejected() {
        for status in [OrderStatus::Shipped, OrderStatus::Delivered, OrderStatus::PaymentFailed] {
            assert_eq!(in_status(status).cancel(at(1)), Err(TransitionError::NotCancellable { status }), "{status:?}");
        }
    }

    #[test]
    fn a_shipment_cancellation_is_only_accepted_after_a_request() {
        for status in OrderStatus::ALL {
            let result = in_status(status).confirm_shipment_cancelled(at(1));
            match status {
                OrderStatus::CancellationRequested => assert_eq!(applied_to(result), OrderStatus::Cancelled),
                OrderStatus::Cancelled => assert!(unchanged(result)),
                _ => assert!(result.is_err(), "{status:?}"),
            }
        }
    }

    #[test]
    fn shipping_wins_a_race_with_a_cancellation() {
        let (c, t) = carrier();
        assert_eq!(
            applied_to(in_status(OrderStatus::CancellationRequested).mark_shipped(c, t, at(1))),
            OrderStatus::Shipped
        );
    }

    #[test]
    fn shipping_is_only_accepted_after_payment() {
        for status in OrderStatus::ALL {
            let (c, t) = carrier();
            let result = in_status(status).mark_shipped(c, t, at(1));
            match status {
                OrderStatus::PendingShipment | OrderStatus::CancellationRequested => {
                    assert_eq!(applied_to(result), OrderStatus::Shipped);
                }
                OrderStatus::Shipped | OrderStatus::Delivered => assert!(unchanged(result)),
                _ => assert!(result.is_err(), "{status:?}"),
            }
        }
    }

    #[test]
    fn delivery_before_shipping_converges_to_delivered() {
        let delivered = match in_status(OrderStatus::PendingShipment).mark_delivered(at(1)).unwrap() {
            Step::Applied { state, .. } => state,
            Step::Unchanged(_) => panic!("expected delivery"),
        };
        let (c, t) = carrier();
        assert!(unchanged(delivered.mark_shipped(c, t, at(2))));
    }

    #[test]
    fn a_delivered_report_that_overtakes_the_shipped_one_records_shipped_then_delivered() {
        let (c, t) = carrier();
        let (delivered, event) =
            match in_status(OrderStatus::PendingShipment).mark_delivered_by(c.clone(), t.clone(), at(1)) {
                Ok(Step::Applied { state, event }) => (state, event),
                other => panic!("expected delivery, got {other:?}"),
            };
        assert_eq!(delivered.status, OrderStatus::Delivered);
        assert_eq!(event.steps(), ["shipped", "delivered"]);
        assert!(unchanged(delivered.mark_shipped(c, t, at(2))), "the late shipped report changes nothing");
    }

    #[test]
    fn a_delivered_report_after_the_shipped_one_records_delivered_alone() {
        let (c, t) = carrier();
        let event = match in_status(OrderStatus::Shipped).mark_delivered_by(c, t, at(1)) {
            Ok(Step::Applied { event, .. }) => event,
            other => panic!("expected delivery, got {other:?}"),
        };
        assert!(matches!(event, OrderEvent::Delivered(_)), "{event:?}");
    }

    #[test]
    fn a_delivered_report_with_its_carrier_is_only_accepted_after_payment() {
        for status in OrderStatus::ALL {
            let (c, t) = carrier();
            let result = in_status(status).mark_delivered_by(c, t, at(1));
            match status {
                OrderStatus::PendingShipment | OrderStatus::CancellationRequested | OrderStatus::Shipped => {
                    assert_eq!(applied_to(result), OrderStatus::Delivered);
                }
                OrderStatus::Delivered => assert!(unchanged(result)),
                _ => assert!(result.is_err(), "{status:?}"),
            }
        }
    }

    #[test]
    fn delivery_is_only_accepted_after_payment() {
        for status in OrderStatus::ALL {
            let result = in_status(status).mark_delivered(at(1));
            match status {
                OrderStatus::PendingShipment | OrderStatus::CancellationRequested | OrderStatus::Shipped => {
                    assert_eq!(applied_to(result), OrderStatus::Delivered);
                }
                OrderStatus::Delivered => assert!(unchanged(result)),
                _ => assert!(result.is_err(), "{status:?}"),
            }
        }
    }

    #[test]
    fn stock_is_committed_once_whichever_of_shipped_or_delivered_comes_first() {
        assert_eq!(StockEffect::between(Some(OrderStatus::PendingShipment), OrderStatus::Shipped), StockEffect::Commit);
        assert_eq!(
            StockEffect::between(Some(OrderStatus::PendingShipment), OrderStatus::Delivered),
            StockEffect::Commit
        );
        assert_eq!(StockEffect::between(Some(OrderStatus::Shipped), OrderStatus::Delivered), StockEffect::None);
    }

    #[test]
    fn statuses_round_trip_through_their_wire_names() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(OrderStatus::parse("lost").is_err());
    }
}
