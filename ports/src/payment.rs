//! The payment gateway port: charging and refunding orders.

use async_trait::async_trait;
use orderflow_domain::{Money, OrderId, PaymentOutcome};

use crate::BoxError;

/// Why the gateway gave no verdict. Always transient: the caller retries later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The gateway is down, timed out or answered garbage.
    #[error("payment gateway unavailable")]
    Unexpected(#[source] BoxError),
}

/// Takes and gives back money.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Charges `amount` for `order`. Idempotent per order: charging again returns the first verdict
    /// and never charges twice.
    ///
    /// # Errors
    /// [`PaymentError::Unexpected`] when no verdict could be had; nothing was charged.
    async fn charge(&self, order: OrderId, amount: Money) -> Result<PaymentOutcome, PaymentError>;

    /// Refunds the charge of `order`. Idempotent per order; refunding an order never charged is a no-op.
    ///
    /// # Errors
    /// [`PaymentError::Unexpected`] when the refund could not be confirmed.
    async fn refund(&self, order: OrderId) -> Result<(), PaymentError>;
}
