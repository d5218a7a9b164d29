#![doc = include_str!("../README.md")]

pub mod events;
pub mod order;
pub mod shipment;
pub mod values;

#[cfg(test)]
mod properties;

pub use events::{OrderEvent, ShipmentEvent, ShipmentOrder};
pub use order::{Order, OrderLine, OrderRequest, OrderStatus, PaymentOutcome, PricingError, StockEffect};
pub use shipment::{Shipment, ShipmentStatus};
pub use values::*;

/// The result of asking a state machine to change: either it moved and says what happened, or the change
/// was already applied and nothing happens (redeliveries are normal, so this is not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<S, E> {
    /// The state moved; `event` records the change.
    Applied {
        /// The new state.
        state: S,
        /// What happened.
        event: E,
    },
    /// The change was already applied; the state is returned as it was.
    Unchanged(S),
}

/// A change a use case asks of a state machine: from the state as read and the time, its [`Step`], or the
/// rule the change breaks.
pub trait Transition<S, E>: Fn(S, Timestamp) -> Result<Step<S, E>, TransitionError> {}

impl<S, E, F: Fn(S, Timestamp) -> Result<Step<S, E>, TransitionError>> Transition<S, E> for F {}

/// A change a state machine does not allow, named for the rule it breaks. Consumers treat it as permanent
/// (straight to the DLQ); the HTTP APIs answer 409 with its words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// A payment verdict for an order no longer awaiting payment, other than the one it already has
    /// (e.g. a completed payment for an order the customer cancelled meanwhile).
    #[error("the order is {}: its payment can no longer be settled", status.as_str())]
    PaymentAlreadySettled {
        /// The order's status.
        status: OrderStatus,
    },
    /// The order has shipped, been delivered or failed payment: too late, or nothing left, to cancel.
    #[error("the order is {}: it can no longer be cancelled", status.as_str())]
    NotCancellable {
        /// The order's status.
        status: OrderStatus,
    },
    /// Delivery confirmed a cancellation the order never asked for.
    #[error("the order is {}: no cancellation was requested", status.as_str())]
    NoCancellationRequested {
        /// The order's status.
        status: OrderStatus,
    },
    /// A shipping report for an order that was never paid or ended otherwise.
    #[error("the order is {}: it was never paid, so nothing ships", status.as_str())]
    NotPaid {
        /// The order's status.
        status: OrderStatus,
    },
    /// The shipment was cancelled: nothing ships or arrives any more.
    #[error("the shipment was cancelled")]
    ShipmentCancelled,
    /// The parcel already left, with other details than these.
    #[error("the shipment already shipped with carrier {carrier} and tracking number {tracking_number}")]
    AlreadyShipped {
        /// The carrier it left with.
        carrier: Carrier,
        /// Its tracking number.
        tracking_number: TrackingNumber,
    },
    /// The parcel has not left yet, so it cannot have arrived.
    #[error("the shipment has not shipped yet")]
    NotShipped,
}

impl TransitionError {
    /// The order status the refusal names, for a refusal of the order state machine.
    pub fn order_status(&self) -> Option<OrderStatus> {
        match self {
            Self::PaymentAlreadySettled { status }
            | Self::NotCancellable { status }
            | Self::NoCancellationRequested { status }
            | Self::NotPaid { status } => Some(*status),
            Self::ShipmentCancelled | Self::AlreadyShipped { .. } | Self::NotShipped => None,
        }
    }
}
