//! Back-pressure: while the command outbox is further behind than configured, new orders are refused
//! (503 `overloaded`) rather than accepted and left waiting for a back end that cannot keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_adapters::metrics::OVERLOADED;
use orderflow_ports::outbox::{Backlog, OutboxStore};
use orderflow_ports::system::HealthCheck;

/// How often the backlog is read: often enough that a burst is stopped within a fraction of a second,
/// rarely enough to cost the database nothing worth measuring.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// When to refuse new orders. Each limit is off when `None`; both off (the default) turns back-pressure off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureLimits {
    /// `OUTBOX_BACKLOG_LIMIT`: refuse while more commands than this are owed to the broker.
    pub backlog: Option<u64>,
    /// `OUTBOX_MAX_AGE`: refuse while the oldest owed command has waited longer than this.
    pub max_age: Option<Duration>,
}

impl PressureLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.backlog.is_some() || self.max_age.is_some()
    }

    fn exceeded_by(&self, backlog: Backlog) -> bool {
        self.backlog.is_some_and(|limit| backlog.rows > limit) || self.max_age.is_some_and(|age| backlog.oldest > age)
    }
}

/// Whether Sales is overloaded, as last sampled. Readiness reports it as `outbox`.
#[derive(Debug, Default)]
pub struct BackPressure {
    limits: PressureLimits,
    overloaded: AtomicBool,
}

impl BackPressure {
    /// Back-pressure with `limits`; not overloaded until [`BackPressure::watch`] says so.
    pub fn new(limits: PressureLimits) -> Self {
        Self { limits, overloaded: AtomicBool::new(false) }
    }

    /// Whether new orders are to be refused now.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Samples `outbox` every [`SAMPLE_EVERY`] until the task is dropped. A backlog that cannot be read
    /// leaves the last verdict standing: the database being down is readiness' to report, not this.
    pub async fn watch(self: Arc<Self>, outbox: Arc<dyn OutboxStore>) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let backlog = match outbox.command_backlog().await {
                Ok(backlog) => backlog,
                Err(error) => {
                    tracing::debug!(%error, "could not read the outbox backlog");
                    continue;
                }
            };
            let overloaded = self.limits.exceeded_by(backlog);
            if self.overloaded.swap(overloaded, Ordering::Relaxed) != overloaded {
                if overloaded {
                    tracing::warn!(rows = backlog.rows, oldest = ?backlog.oldest, "overloaded: refusing new orders");
                } else {
                    tracing::info!(rows = backlog.rows, "caught up: accepting new orders again");
                }
                OVERLOADED.with_label_values(&[] as &[&str]).set(i64::from(overloaded));
            }
        }
    }
}

#[async_trait]
impl HealthCheck for BackPressure {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn check(&self) -> bool {
        !self.overloaded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backlog(rows: u64, oldest_ms: u64) -> Backlog {
        Backlog { rows, oldest: Duration::from_millis(oldest_ms) }
    }

    #[test]
    fn no_limit_is_never_exceeded() {
        assert!(!PressureLimits::default().exceeded_by(backlog(u64::MAX, u64::MAX)));
    }

    #[test]
    fn each_limit_is_exceeded_only_beyond_its_value() {
        let rows = PressureLimits { backlog: Some(100), max_age: None };
        assert!(!rows.exceeded_by(backlog(100, 60_000)));
        assert!(rows.exceeded_by(backlog(101, 0)));
        let age = PressureLimits { backlog: None, max_age: Some(Duration::from_secs(2)) };
        assert!(!age.exceeded_by(backlog(1_000_000, 2_000)));
        assert!(age.exceeded_by(backlog(1, 2_001)));
    }
}
