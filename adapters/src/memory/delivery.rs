//! The in-memory Delivery store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orderflow_domain::{OrderId, Shipment, ShipmentId, ShipmentStatus, Timestamp};
use orderflow_ports::delivery::{DeliveryStore, Due, ShipmentChange, ShipmentQuery};
use orderflow_ports::sales::{ChangeError, ChangeOutcome};
use orderflow_ports::{Page, ReadError};

use super::lock;
use super::outbox::{Outbox, outbox_store};
use super::sales::page;

#[derive(Default)]
struct State {
    shipments: BTreeMap<ShipmentId, Shipment>,
    by_order: HashMap<OrderId, ShipmentId>,
    inbox: HashSet<(String, String)>,
    /// The trace context each shipment's creation carried.
    traces: HashMap<ShipmentId, String>,
    /// Console sessions signed out, with when each would have ended.
    signed_out: HashMap<String, Timestamp>,
}

/// Delivery persistence in memory.
#[derive(Default)]
pub struct InMemoryDeliveryStore {
    state: Mutex<State>,
    outbox: Arc<Outbox>,
}

impl InMemoryDeliveryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

outbox_store!(InMemoryDeliveryStore);

#[async_trait]
impl DeliveryStore for InMemoryDeliveryStore {
    async fn save(&self, change: ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
        let mut state = lock(&self.state);
        let inbox = change.inbox.map(|e| (e.message_id, e.consumer));
        if inbox.as_ref().is_some_and(|entry| state.inbox.contains(entry)) {
            return Ok(ChangeOutcome::AlreadyProcessed);
        }
        let shipment = change.shipment;
        match change.expected_version {
            None if state.by_order.contains_key(&shipment.order.order_id) => {
                return Err(ChangeError::Conflict { expected: 0 });
            }
            None => {}
            Some(expected) => match state.shipments.get(&shipment.id) {
                None => return Err(ChangeError::NotFound),
                Some(stored) if stored.version != expected => return Err(ChangeError::Conflict { expected }),
                Some(_) => {}
            },
        }
        if let Some(entry) = inbox {
            state.inbox.insert(entry);
        }
        if change.expected_version.is_none()
            && let Some(traceparent) = change.messages.first().and_then(|m| m.event.traceparent.clone())
        {
            state.traces.insert(shipment.id, traceparent);
        }
        state.by_order.insert(shipment.order.order_id, shipment.id);
        state.shipments.insert(shipment.id, shipment);
        self.outbox.push(change.messages);
        drop(state);
        Ok(ChangeOutcome::Applied)
    }

    async fn shipment(&self, id: ShipmentId) -> Result<Option<Shipment>, ReadError> {
        Ok(lock(&self.state).shipments.get(&id).cloned())
    }

    async fn shipment_for_order(&self, order_id: OrderId) -> Result<Option<Shipment>, ReadError> {
        let state = lock(&self.state);
        Ok(state.by_order.get(&order_id).and_then(|id| state.shipments.get(id)).cloned())
    }

    async fn shipments(&self, query: ShipmentQuery) -> Result<Page<Shipment, ShipmentId>, ReadError> {
        let state = lock(&self.state);
        let beyond = query.after.map_or(Bound::Unbounded, Bound::Excluded);
        let in_order: Box<dyn Iterator<Item = (&ShipmentId, &Shipment)>> = if query.oldest_first {
            Box::new(state.shipments.range((beyond, Bound::Unbounded)))
        } else {
            Box::new(state.shipments.range((Bound::Unbounded, beyond)).rev())
        };
        let mut items: Vec<Shipment> = in_order
            .map(|(_, s)| s)
            .filter(|s| query.status.is_none_or(|status| s.status == status))
            .filter(|s| query.tracking_number.as_ref().is_none_or(|t| s.tracking_number.as_ref() == Some(t)))
            .take(query.limit + 1)
            .cloned()
            .collect();
        Ok(page(&mut items, query.limit, |s| s.id))
    }

    async fn due(&self, status: ShipmentStatus, before: Timestamp, limit: usize) -> Result<Vec<Due>, ReadError> {
        let state = lock(&self.state);
        let mut due: Vec<&Shipment> =
            state.shipments.values().filter(|s| s.status == status && s.updated_at < before).collect();
        due.sort_by_key(|s| (s.updated_at, s.id));
        due.truncate(limit);
        Ok(due
            .into_iter()
            .map(|s| Due { shipment: s.clone(), traceparent: state.traces.get(&s.id).cloned() })
            .collect())
    }

    async fn sign_out(&self, session: &str, until: Timestamp, now: Timestamp) -> Result<(), ChangeError> {
        let mut state = lock(&self.state);
        state.signed_out.retain(|_, ends| *ends >= now);
        state.signed_out.insert(session.to_owned(), until);
        Ok(())
    }

    async fn signed_out(&self, session: &str) -> Result<bool, ReadError> {
        Ok(lock(&self.state).signed_out.contains_key(session))
    }
}
