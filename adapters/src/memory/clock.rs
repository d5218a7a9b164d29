//! Clocks for tests: time that moves only when the test moves it, so nothing waits for the wall clock.

use std::sync::Mutex;
use std::time::Duration;

use orderflow_domain::Timestamp;
use orderflow_ports::system::Clock;

/// A clock that stands still until [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// Stopped at `at`.
    pub fn at(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = super::lock(&self.0);
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *super::lock(&self.0)
    }
}

/// Wall time that follows tokio's clock from the moment it was made: in a test with tokio's time paused,
/// it moves exactly as far as the timers do, so "due after two seconds" and a two-second timer agree.
#[derive(Debug)]
pub struct TokioClock {
    wall: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the current wall time.
    pub fn starting_now() -> Self {
        Self { wall: chrono::Utc::now(), start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.wall + chrono::Duration::from_std(self.start.elapsed()).unwrap_or(chrono::Duration::MAX)
    }
}
