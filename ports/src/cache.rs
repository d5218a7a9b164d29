//! The order read cache port.

use async_trait::async_trait;
use orderflow_domain::{Order, OrderId};

use crate::BoxError;

/// Why the cache could not answer; callers fall back to the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache is unreachable or failed.
    #[error("cache unavailable")]
    Unexpected(#[source] BoxError),
}

/// Caches single-order reads. Writers store every committed state with [`OrderCache::put_if_newer`], so
/// a reader can never overwrite a newer state with an older one it read before a change.
#[async_trait]
pub trait OrderCache: Send + Sync {
    /// The cached order, if any.
    ///
    /// # Errors
    /// [`CacheError::Unexpected`] when the cache cannot answer.
    async fn get(&self, id: OrderId) -> Result<Option<Order>, CacheError>;

    /// Stores `order` unless the cache already holds the same or a higher version of it.
    ///
    /// # Errors
    /// [`CacheError::Unexpected`] when the cache cannot be written; the caller should then
    /// [`OrderCache::invalidate`] or accept that reads fall back to the store.
    async fn put_if_newer(&self, order: &Order) -> Result<(), CacheError>;

    /// Stores each of `orders` as [`OrderCache::put_if_newer`] would; a cache that can takes them in one
    /// round trip (a batch of deliveries commits many orders at once).
    ///
    /// # Errors
    /// [`CacheError::Unexpected`] when the cache cannot be written; any of the orders may then be stored
    /// or not.
    async fn put_all_if_newer(&self, orders: &[Order]) -> Result<(), CacheError> {
        for order in orders {
            self.put_if_newer(order).await?;
        }
        Ok(())
    }

    /// Drops the entry for `id`.
    ///
    /// # Errors
    /// [`CacheError::Unexpected`] when the cache cannot be written.
    async fn invalidate(&self, id: OrderId) -> Result<(), CacheError>;
}
