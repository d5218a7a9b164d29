//! The Delivery store: shipments, inbox and outbox — every write is one atomic unit.

use async_trait::async_trait;
use orderflow_domain::{OrderId, Shipment, ShipmentId, ShipmentStatus, Timestamp, TrackingNumber};

use crate::messaging::InboxEntry;
use crate::outbox::{OutboxMessage, OutboxStore};
use crate::sales::{ChangeError, ChangeOutcome};
use crate::{Page, ReadError};

/// A new shipment or a change of one, with everything it writes, atomically.
#[derive(Debug, Clone)]
pub struct ShipmentChange {
    /// The shipment in its new state.
    pub shipment: Shipment,
    /// `None` to create it; otherwise the version the change was computed from.
    pub expected_version: Option<u32>,
    /// Messages to publish after commit.
    pub messages: Vec<OutboxMessage>,
    /// The message that caused the change, when a consumer made it.
    pub inbox: Option<InboxEntry>,
}

/// A shipment the autopilot may advance, with the trace context of the change that created it (what
/// its creation's messages carried), which the autopilot's step continues.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The shipment.
    pub shipment: Shipment,
    /// The creation's `traceparent`, when it had one.
    pub traceparent: Option<String>,
}

/// Filters of the shipment list.
#[derive(Debug, Clone, Default)]
pub struct ShipmentQuery {
    /// Only shipments in this status.
    pub status: Option<ShipmentStatus>,
    /// Only the shipment with this tracking number.
    pub tracking_number: Option<TrackingNumber>,
    /// Oldest first (the work queue's order) instead of newest first.
    pub oldest_first: bool,
    /// Page size.
    pub limit: usize,
    /// Continue after this shipment, in the list's order.
    pub after: Option<ShipmentId>,
}

/// Persistence of the Delivery service.
#[async_trait]
pub trait DeliveryStore: OutboxStore {
    /// Creates (`expected_version: None`) or changes a shipment with its messages and inbox entry.
    ///
    /// # Errors
    /// - [`ChangeError::Conflict`] when creating a shipment for an order that already has one, or when
    ///   the stored version is not `expected_version`;
    /// - [`ChangeError::NotFound`] when changing a shipment that does not exist;
    /// - [`ChangeError::Unexpected`] when the store fails.
    ///
    /// When the inbox already holds the message the result is `Ok(ChangeOutcome::AlreadyProcessed)`
    /// and nothing is written.
    async fn save(&self, change: ShipmentChange) -> Result<ChangeOutcome, ChangeError>;

    /// Saves several changes, each with the outcome [`DeliveryStore::save`] would give it, in one
    /// transaction where the store has them: one commit for the lot. A change that conflicts or finds no
    /// shipment leaves nothing behind (its inbox entry included) and the others still commit. The default
    /// saves them one by one.
    ///
    /// # Errors
    /// [`ChangeError::Unexpected`] when the store fails; then none of the changes is committed.
    async fn save_all(
        &self,
        changes: Vec<ShipmentChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            match self.save(change).await {
                Err(ChangeError::Unexpected(error)) => return Err(ChangeError::Unexpected(error)),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }

    /// One shipment.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn shipment(&self, id: ShipmentId) -> Result<Option<Shipment>, ReadError>;

    /// The shipment of an order.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn shipment_for_order(&self, order_id: OrderId) -> Result<Option<Shipment>, ReadError>;

    /// Shipments newest first, filtered.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn shipments(&self, query: ShipmentQuery) -> Result<Page<Shipment, ShipmentId>, ReadError>;

    /// At most `limit` shipments in `status` whose status last changed before `before`, the longest
    /// waiting first: what the autopilot advances, oldest due first, so none waits behind newer ones.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn due(&self, status: ShipmentStatus, before: Timestamp, limit: usize) -> Result<Vec<Due>, ReadError>;

    /// Ends the console session named `session` before its time, for every replica:
    /// [`DeliveryStore::signed_out`] says so from now on. `until` is when it would have ended anyway;
    /// records of sessions that had ended by `now` are forgotten.
    ///
    /// # Errors
    /// [`ChangeError::Unexpected`] when the store fails; then the session has not ended.
    async fn sign_out(&self, session: &str, until: Timestamp, now: Timestamp) -> Result<(), ChangeError>;

    /// Whether the console session named `session` was signed out.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn signed_out(&self, session: &str) -> Result<bool, ReadError>;
}
