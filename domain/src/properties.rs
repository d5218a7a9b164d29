//! Property tests for the Order and Shipment state machines: duplicated and reordered events never break
//! the invariants (final states stay final, replays are no-ops, shipped/delivered converge, stock stays sane).

use chrono::Duration;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::events::{OrderEvent, ShipmentEvent, ShipmentLine, ShipmentOrder};
use crate::order::{Order, OrderRequest, OrderStatus, PaymentOutcome, StockEffect};
use crate::shipment::{Shipment, ShipmentStatus};
use crate::values::{
    Address, Carrier, Currency, CustomerId, Money, OrderId, Quantity, RawAddress, ShipmentId, Sku, Timestamp,
    TrackingNumber,
};
use crate::{Step, TransitionError};

type OrderResult = Result<Step<Order, OrderEvent>, TransitionError>;

/// Something that can happen to an order on the Sales side after it is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sales {
    PaymentCompleted,
    PaymentDeclined,
    Cancel,
    ShipmentCancelled,
    Shipped,
    /// The delivered report as Delivery sends it (`v2`, with the carrier).
    Delivered,
    /// A delivered report of the first version, without the carrier.
    DeliveredV1,
}

impl Sales {
    const ALL: [Self; 7] = [
        Self::PaymentCompleted,
        Self::PaymentDeclined,
        Self::Cancel,
        Self::ShipmentCancelled,
        Self::Shipped,
        Self::Delivered,
        Self::DeliveredV1,
    ];

    fn apply(self, order: Order, at: Timestamp) -> OrderResult {
        match self {
            Self::PaymentCompleted => order.settle_payment(&PaymentOutcome::Completed, at),
            Self::PaymentDeclined => order.settle_payment(&PaymentOutcome::Declined { reason: "limit".into() }, at),
            Self::Cancel => order.cancel(at),
            Self::ShipmentCancelled => order.confirm_shipment_cancelled(at),
            Self::Shipped => {
                let (carrier, tracking_number) = details();
                order.mark_shipped(carrier, tracking_number, at)
            }
            Self::Delivered => {
                let (carrier, tracking_number) = details();
                order.mark_delivered_by(carrier, tracking_number, at)
            }
            Self::DeliveredV1 => order.mark_delivered(at),
        }
    }
}

/// Something Delivery staff or Sales can do to a shipment.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    Ship,
    Deliver,
    Cancel,
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::default() + Duration::seconds(1_700_000_000 + seconds)
}

fn details() -> (Carrier, TrackingNumber) {
    (Carrier::parse("DHL").expect("carrier"), TrackingNumber::parse("TRK-1").expect("tracking number"))
}

fn address() -> Address {
    let raw = RawAddress {
        name: "Ada",
        line1: "1 Main St",
        city: "Berlin",
        postal_code: "10115",
        country: "DE",
        line2: None,
    };
    Address::parse(raw).expect("address")
}

/// A freshly placed order (`pending_payment`) for `quantity` units of one SKU.
fn placed(quantity: u32) -> Order {
    let eur = Money::new(1999, Currency::parse("EUR").expect("currency")).expect("price");
    let line = (Sku::parse("SKU-1").expect("sku"), Quantity::new(quantity.into()).expect("quantity"));
    let request =
        OrderRequest::new(CustomerId::parse("cust-42").expect("customer"), vec![line], address()).expect("request");
    let id = OrderId::from_uuid(uuid::Uuid::now_v7());
    Order::place(id, request, |_| Some(eur), at(0)).expect("placed").0
}

fn in_status(status: OrderStatus) -> Order {
    Order { status, ..placed(1) }
}

fn pending_shipment() -> Shipment {
    let order = ShipmentOrder {
        order_id: OrderId::from_uuid(uuid::Uuid::now_v7()),
        customer_id: CustomerId::parse("cust-42").expect("customer"),
        lines: vec![ShipmentLine { sku: Sku::parse("SKU-1").expect("sku"), quantity: Quantity::new(1).expect("qty") }],
        shipping_address: address(),
    };
    Shipment::create(ShipmentId::from_uuid(uuid::Uuid::now_v7()), order, at(0)).0
}

fn sales_event() -> impl Strategy<Value = Sales> {
    proptest::sample::select(Sales::ALL.to_vec())
}

fn delivery_event() -> impl Strategy<Value = Delivery> {
    prop_oneof![Just(Delivery::Ship), Just(Delivery::Deliver), Just(Delivery::Cancel)]
}

/// Applies one event and checks the per-step invariants. Returns the order afterwards (the old one when the
/// event was refused) and the stock effect of the step (`None` when nothing moved), or the refusal.
fn step_checked(order: Order, event: Sales, at: Timestamp) -> (Order, Result<StockEffect, TransitionError>) {
    step_recorded(order, event, at, &mut Vec::new())
}

/// [`step_checked`], appending the audit records of an applied step to `trail`.
fn step_recorded(
    order: Order,
    event: Sales,
    at: Timestamp,
    trail: &mut Vec<&'static str>,
) -> (Order, Result<StockEffect, TransitionError>) {
    let before = order.clone();
    match event.apply(order, at) {
        Ok(Step::Applied { state, event: happened }) => {
            trail.extend(happened.steps());
            assert!(!before.status.is_final(), "{event:?} left the final status {:?}", before.status);
            assert_ne!(state.status, before.status, "{event:?} was applied but the status did not move");
            assert_eq!(state.version, before.version + 1, "{event:?} must bump the version once");
            let effect = StockEffect::between(Some(before.status), state.status);
            (state, Ok(effect))
        }
        Ok(Step::Unchanged(state)) => {
            assert_eq!(state, before, "{event:?} reported no change but changed the order");
            (state, Ok(StockEffect::None))
        }
        Err(error) => {
            assert_eq!(error.order_status(), Some(before.status), "{event:?} named the wrong status: {error}");
            (before, Err(error))
        }
    }
}

proptest! {
    #[test]
    fn random_event_sequences_never_leave_a_final_status_and_keep_the_reservation_consistent(
        events in prop::collection::vec(sales_event(), 0..16),
    ) {
        let mut order = placed(2);
        prop_assert_eq!(StockEffect::between(None, order.status), StockEffect::Reserve);
        let (mut held, mut released, mut committed) = (1_i32, false, false);
        for (i, event) in (1..).zip(events) {
            let (next, effect) = step_checked(order, event, at(i));
            match effect {
                Ok(StockEffect::Reserve) => held += 1,
                Ok(StockEffect::Release) => (held, released) = (held - 1, true),
                Ok(StockEffect::Commit) => (held, committed) = (held - 1, true),
                Ok(StockEffect::None) | Err(_) => {}
            }
            order = next;
            prop_assert!(held == 0 || held == 1, "held {} after {:?}", held, event);
            prop_assert_eq!(held == 1, order.status.holds_reservation(), "held {} in {:?}", held, order.status);
            prop_assert!(!(released && committed), "stock was both released and committed");
        }
    }

    #[test]
    fn any_arrival_order_of_duplicated_shipped_and_delivered_reports_ends_delivered_with_a_complete_trail(
        start in prop_oneof![Just(OrderStatus::PendingShipment), Just(OrderStatus::CancellationRequested)],
        events in (1..=3_usize, 1..=3_usize).prop_flat_map(|(shipped, delivered)| {
            let mut events = vec![Sales::Shipped; shipped];
            events.extend(vec![Sales::Delivered; delivered]);
            Just(events).prop_shuffle()
        }),
    ) {
        let mut order = in_status(start);
        let (mut commits, mut trail) = (0, Vec::new());
        for (i, event) in (1..).zip(events) {
            let status = order.status;
            let (next, effect) = step_recorded(order, event, at(i), &mut trail);
            prop_assert!(effect.is_ok(), "{:?} refused in {:?}: {:?}", event, status, effect);
            commits += usize::from(effect == Ok(StockEffect::Commit));
            order = next;
        }
        prop_assert_eq!(order.status, OrderStatus::Delivered);
        prop_assert_eq!(commits, 1, "stock must be committed exactly once");
        prop_assert_eq!(trail, ["shipped", "delivered"]);
    }

    #[test]
    fn random_shipment_commands_never_leave_a_final_status_and_deliver_only_after_shipping(
        commands in prop::collection::vec(delivery_event(), 0..12),
    ) {
        let mut shipment = pending_shipment();
        for (i, command) in (1..).zip(commands) {
            let before = shipment.clone();
            let result: Result<Step<Shipment, ShipmentEvent>, TransitionError> = match command {
                Delivery::Ship => {
                    let (carrier, tracking_number) = details();
                    shipment.ship(carrier, tracking_number, at(i))
                }
                Delivery::Deliver => shipment.deliver(at(i)),
                Delivery::Cancel => Ok(shipment.cancel(at(i))),
            };
            shipment = match result {
                Ok(Step::Applied { state, .. }) => {
                    let final_before = matches!(before.status, ShipmentStatus::Delivered | ShipmentStatus::Cancelled);
                    prop_assert!(!final_before, "{:?} left the final status {:?}", command, before.status);
                    prop_assert_eq!(state.version, before.version + 1);
                    if state.status == ShipmentStatus::Delivered {
                        prop_assert_eq!(before.status, ShipmentStatus::Shipped, "delivered without shipping");
                    }
                    state
                }
                Ok(Step::Unchanged(state)) => {
                    prop_assert_eq!(&state, &before);
                    state
                }
                Err(refusal) => {
                    let named = match refusal {
                        TransitionError::ShipmentCancelled => ShipmentStatus::Cancelled,
                        TransitionError::NotShipped => ShipmentStatus::Pending,
                        TransitionError::AlreadyShipped { .. } => before.status,
                        other => return Err(TestCaseError::fail(format!("{other} refused a shipment"))),
                    };
                    prop_assert_eq!(named, before.status, "{} for a {:?} shipment", refusal, before.status);
                    if let TransitionError::AlreadyShipped { .. } = refusal {
                        prop_assert!(matches!(before.status, ShipmentStatus::Shipped | ShipmentStatus::Delivered));
                    }
                    before
                }
            };
        }
    }

    #[test]
    fn reserved_stock_never_exceeds_stock_and_neither_goes_negative(
        initial_stock in 0..20_i64,
        ops in prop::collection::vec(
            prop_oneof![
                (1..=5_u32).prop_map(Op::Place),
                (any::<prop::sample::Index>(), sales_event()).prop_map(|(i, e)| Op::Event(i, e)),
            ],
            0..24,
        ),
    ) {
        let (mut stock, mut reserved) = (initial_stock, 0_i64);
        let mut orders: Vec<(Order, i64)> = Vec::new();
        for (i, op) in (1..).zip(ops) {
            let (effect, qty) = match op {
                Op::Place(qty) => {
                    let order = placed(qty);
                    let qty = i64::from(qty);
                    // Insufficient stock rejects the order synchronously: nothing is stored.
                    if stock - reserved < qty {
                        continue;
                    }
                    let effect = StockEffect::between(None, order.status);
                    orders.push((order, qty));
                    (effect, qty)
                }
                Op::Event(_, _) if orders.is_empty() => continue,
                Op::Event(index, event) => {
                    let slot = index.index(orders.len());
                    let (order, qty) = orders[slot].clone();
                    let (next, effect) = step_checked(order, event, at(i));
                    orders[slot].0 = next;
                    (effect.unwrap_or(StockEffect::None), qty)
                }
            };
            match effect {
                StockEffect::Reserve => reserved += qty,
                StockEffect::Release => reserved -= qty,
                StockEffect::Commit => (stock, reserved) = (stock - qty, reserved - qty),
                StockEffect::None => {}
            }
            prop_assert!(stock >= 0 && reserved >= 0 && reserved <= stock, "stock {} reserved {}", stock, reserved);
            let held: i64 = orders.iter().filter(|(o, _)| o.status.holds_reservation()).map(|(_, q)| q).sum();
            prop_assert_eq!(reserved, held, "reserved must equal what the live orders hold");
        }
    }
}

/// A step of the stock model: place a new order, or send an event to one of the placed orders.
#[derive(Debug, Clone)]
enum Op {
    Place(u32),
    Event(prop::sample::Index, Sales),
}

#[test]
fn replaying_any_event_in_any_status_is_never_applied_twice() {
    for status in OrderStatus::ALL {
        for event in Sales::ALL {
            let order = in_status(status);
            let first = event.apply(order.clone(), at(1));
            let replay_on = match &first {
                Ok(Step::Applied { state, .. }) => state.clone(),
                Ok(Step::Unchanged(_)) | Err(_) => order,
            };
            let second = event.apply(replay_on.clone(), at(2));
            match (&first, second) {
                (Err(first), Err(second)) => assert_eq!(first, &second, "{event:?} in {status:?}"),
                (_, Ok(Step::Unchanged(state))) => assert_eq!(state, replay_on, "{event:?} in {status:?}"),
                (_, other) => panic!("replaying {event:?} from {status:?} gave {other:?} after {first:?}"),
            }
        }
    }
}

#[test]
fn replaying_a_shipment_command_is_a_no_op() {
    let shipped = |s: Shipment| {
        let (carrier, tracking_number) = details();
        s.ship(carrier, tracking_number, at(1))
    };
    let Ok(Step::Applied { state: once, .. }) = shipped(pending_shipment()) else { panic!("first ship must apply") };
    assert!(matches!(shipped(once.clone()), Ok(Step::Unchanged(_))));
    let Ok(Step::Applied { state: delivered, .. }) = once.deliver(at(2)) else { panic!("deliver must apply") };
    assert!(matches!(delivered.clone().deliver(at(3)), Ok(Step::Unchanged(_))));
    assert!(matches!(shipped(delivered), Ok(Step::Unchanged(_))));
    let Step::Applied { state: cancelled, .. } = pending_shipment().cancel(at(1)) else { panic!("cancel must apply") };
    assert!(matches!(cancelled.cancel(at(2)), Step::Unchanged(_)));
}
