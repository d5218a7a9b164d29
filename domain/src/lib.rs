#![doc = include_str!("../README.md")]

pub mod events;
pub mod order;
pub mod shipment;
pub mod values;

#[cfg(test)]
mod properties;

pub use events::{
    CloudEvent, DecodeError, EventBody, OrderEvent, Outgoing, Payload, RoutingKey, ShipmentEvent, Source,
};
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

/// A change the state machine does not allow. Consumers treat it as permanent (straight to the DLQ);
/// the HTTP APIs answer 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// `action` is not possible in `status`.
    #[error("cannot {action} when the status is {status}")]
    NotAllowed {
        /// The current status (wire name).
        status: &'static str,
        /// What was attempted.
        action: &'static str,
    },
}
