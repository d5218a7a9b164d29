//! The in-memory order read cache.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use orderflow_domain::{Order, OrderId};
use orderflow_ports::cache::{CacheError, OrderCache};

use super::lock;

/// Caches orders in a map; versions decide which write wins.
#[derive(Default)]
pub struct InMemoryOrderCache {
    orders: Mutex<HashMap<OrderId, Order>>,
}

impl InMemoryOrderCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OrderCache for InMemoryOrderCache {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, CacheError> {
        Ok(lock(&self.orders).get(&id).cloned())
    }

    async fn put_if_newer(&self, order: &Order) -> Result<(), CacheError> {
        let mut orders = lock(&self.orders);
        if orders.get(&order.id).is_none_or(|cached| cached.version < order.version) {
            orders.insert(order.id, order.clone());
        }
        Ok(())
    }

    async fn invalidate(&self, id: OrderId) -> Result<(), CacheError> {
        lock(&self.orders).remove(&id);
        Ok(())
    }
}
