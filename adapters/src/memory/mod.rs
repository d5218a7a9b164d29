//! In-memory adapters: the same contracts as the real ones, for unit tests and `orderflow dev`.
//! Each store keeps its whole state behind one mutex and validates a write completely before mutating,
//! so a failed write leaves nothing behind — the in-memory equivalent of a transaction.

mod bus;
mod cache;
mod clock;
mod delivery;
mod notify;
mod outbox;
mod rate_limit;
mod sales;

pub use bus::{BusSettings, InMemoryAuditLog, InMemoryBus};
pub use cache::InMemoryOrderCache;
pub use clock::{ManualClock, TokioClock};
pub use delivery::InMemoryDeliveryStore;
pub use notify::{LogNotifier, RecordingNotifier};
pub use rate_limit::InMemoryRateLimiter;
pub use sales::InMemorySalesStore;

/// The error an in-memory adapter reports when its own bookkeeping is violated (a bug, never input).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Inconsistent(String);

fn inconsistent(what: impl Into<String>) -> orderflow_ports::BoxError {
    Box::new(Inconsistent(what.into()))
}

/// Locks a mutex, recovering the data if a panicking holder poisoned it: every writer validates before
/// it mutates, so the state is consistent even then.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
