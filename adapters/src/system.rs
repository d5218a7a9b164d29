//! The real clock and id generator.

use orderflow_domain::Timestamp;
use orderflow_ports::system::{Clock, IdGenerator};
use uuid::Uuid;

/// Reads the system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Microsecond precision: what PostgreSQL keeps, so a state read back equals the state written.
    fn now(&self) -> Timestamp {
        chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6)
    }
}

/// Generates UUIDv7 ids: time-ordered, so new rows land at the end of B-tree indexes and lists sort by
/// creation without a second column.
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Ids;

impl IdGenerator for UuidV7Ids {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}
