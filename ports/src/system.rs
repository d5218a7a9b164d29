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
