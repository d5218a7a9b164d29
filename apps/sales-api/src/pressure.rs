//! Back-pressure: while the command outbox or the queues Sales consumes are further behind than
//! configured, new orders are refused (503 `overloaded`) rather than accepted and left waiting for a back
//! end that cannot keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_adapters::metrics::OVERLOADED;
use orderflow_messages::RoutingKey;
use orderflow_ports::messaging::CommandConsumer;
use orderflow_ports::outbox::{Backlog, OutboxStore};
use orderflow_ports::system::HealthCheck;

/// How often the backlog is read: often enough that a burst is stopped within a fraction of a second,
/// rarely enough to cost the database nothing worth measuring.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// When to refuse new orders. Each limit is off when `None`; all off (the default) turns back-pressure off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureLimits {
    /// `OUTBOX_BACKLOG_LIMIT`: refuse while more commands than this are owed to the broker.
    pub backlog: Option<u64>,
    /// `OUTBOX_MAX_AGE`: refuse while the oldest owed command has waited longer than this.
    pub max_age: Option<Duration>,
    /// `QUEUE_BACKLOG_LIMIT`: refuse while more messages than this wait, all queues Sales consumes
    /// together, for Sales' consumers. The outbox limits see a broker that does not take commands; this
    /// one sees a back end that takes them slower than the front door accepts orders.
    pub queued: Option<u64>,
}

/// What back-pressure last read: the command outbox and the messages waiting in Sales' queues; each
/// `None` when its limits are off.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    backlog: Option<Backlog>,
    queued: Option<u64>,
}

impl PressureLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.outbox() || self.queued.is_some()
    }

    fn outbox(&self) -> bool {
        self.backlog.is_some() || self.max_age.is_some()
    }

    fn exceeded_by(&self, reading: Reading) -> bool {
        let outbox = reading.backlog.is_some_and(|backlog| {
            self.backlog.is_some_and(|limit| backlog.rows > limit)
                || self.max_age.is_some_and(|age| backlog.oldest > age)
        });
        let queued = reading.queued.zip(self.queued).is_some_and(|(queued, limit)| queued > limit);
        outbox || queued
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
        // Served from the start, so dashboards and alerts read 0 rather than nothing.
        OVERLOADED.with_label_values(&[] as &[&str]).set(0);
        Self { limits, overloaded: AtomicBool::new(false) }
    }

    /// Whether new orders are to be refused now.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Samples `outbox` and the `queues` of `consumer` (what the limits ask for) every [`SAMPLE_EVERY`]
    /// until the task is dropped. A backlog that cannot be read leaves the last verdict standing: the
    /// database or the broker being down is readiness' to report, not this.
    pub async fn watch(
        self: Arc<Self>,
        outbox: Arc<dyn OutboxStore>,
        consumer: Arc<dyn CommandConsumer>,
        queues: Vec<RoutingKey>,
    ) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(reading) = self.read(outbox.as_ref(), consumer.as_ref(), &queues).await else { continue };
            let overloaded = self.limits.exceeded_by(reading);
            if self.overloaded.swap(overloaded, Ordering::Relaxed) != overloaded {
                let rows = reading.backlog.map(|b| b.rows);
                let oldest = reading.backlog.map(|b| b.oldest);
                if overloaded {
                    tracing::warn!(?rows, ?oldest, queued = ?reading.queued, "overloaded: refusing new orders");
                } else {
                    tracing::info!(?rows, queued = ?reading.queued, "caught up: accepting new orders again");
                }
                OVERLOADED.with_label_values(&[] as &[&str]).set(i64::from(overloaded));
            }
        }
    }

    async fn read(
        &self,
        outbox: &dyn OutboxStore,
        consumer: &dyn CommandConsumer,
        queues: &[RoutingKey],
    ) -> Option<Reading> {
        let mut reading = Reading::default();
        if self.limits.outbox() {
            match outbox.command_backlog().await {
                Ok(backlog) => reading.backlog = Some(backlog),
                Err(error) => {
                    tracing::debug!(%error, "could not read the outbox backlog");
                    return None;
                }
            }
        }
        if self.limits.queued.is_some() {
            let mut queued = 0;
            for &queue in queues {
                match consumer.waiting(queue).await {
                    Ok(waiting) => queued += waiting,
                    Err(error) => {
                        tracing::debug!(%error, queue = queue.as_str(), "could not read a queue's depth");
                        return None;
                    }
                }
            }
            reading.queued = Some(queued);
        }
        Some(reading)
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

    fn backlog(rows: u64, oldest_ms: u64) -> Reading {
        Reading { backlog: Some(Backlog { rows, oldest: Duration::from_millis(oldest_ms) }), queued: None }
    }

    fn queued(messages: u64) -> Reading {
        Reading { backlog: None, queued: Some(messages) }
    }

    #[test]
    fn no_limit_is_never_exceeded() {
        assert!(!PressureLimits::default().exceeded_by(backlog(u64::MAX, u64::MAX)));
        assert!(!PressureLimits::default().exceeded_by(queued(u64::MAX)));
    }

    #[test]
    fn each_limit_is_exceeded_only_beyond_its_value() {
        let rows = PressureLimits { backlog: Some(100), ..PressureLimits::default() };
        assert!(!rows.exceeded_by(backlog(100, 60_000)));
        assert!(rows.exceeded_by(backlog(101, 0)));
        let age = PressureLimits { max_age: Some(Duration::from_secs(2)), ..PressureLimits::default() };
        assert!(!age.exceeded_by(backlog(1_000_000, 2_000)));
        assert!(age.exceeded_by(backlog(1, 2_001)));
        let waiting = PressureLimits { queued: Some(50), ..PressureLimits::default() };
        assert!(!waiting.exceeded_by(queued(50)));
        assert!(waiting.exceeded_by(queued(51)));
        assert!(!waiting.exceeded_by(backlog(u64::MAX, u64::MAX)), "the outbox limits are off");
    }
}
