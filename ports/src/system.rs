//! Time and identity: the two things a pure domain may not produce itself.

use orderflow_domain::Timestamp;
use uuid::Uuid;

/// Supplies the current time, so tests can control it.
pub trait Clock: Send + Sync {
    /// Now, in UTC.
    fn now(&self) -> Timestamp;
}

/// Supplies fresh ids (UUIDv7, so they sort by creation time and keep B-tree inserts local).
pub trait IdGenerator: Send + Sync {
    /// A new, never-before-seen id.
    fn new_id(&self) -> Uuid;
}

/// A dependency `/health/ready` reports on.
#[async_trait::async_trait]
pub trait HealthCheck: Send + Sync {
    /// The name readiness reports it under (`database`, `broker`, `audit`, `cache`, `issuer`).
    fn name(&self) -> &'static str;

    /// Whether it answers now. Implementations bound the time they take (a second or two).
    async fn check(&self) -> bool;
}
