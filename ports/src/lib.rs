#![doc = include_str!("../README.md")]

pub mod auth;
pub mod backoff;
pub mod cache;
pub mod delivery;
pub mod messaging;
pub mod outbox;
pub mod payment;
pub mod rate_limit;
pub mod sales;
pub mod system;

/// The boxed cause carried by every `Unexpected` variant.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// The key to continue after, when there may be more.
    pub next: Option<K>,
}

/// Why a read failed. Reads have no business failures: a missing row is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store failed (connection lost, timeout…).
    #[error("store read failed")]
    Unexpected(#[source] BoxError),
}
