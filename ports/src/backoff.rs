//! The wait between attempts at something that keeps failing: doubling steps with jitter, so replicas
//! that lost a server together do not all knock again at the same instant.

use std::time::Duration;

/// Exponential back-off with "equal jitter": each wait is half the current step plus a random share of
/// the other half; the step doubles after every failure up to a ceiling and starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps from `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max: max.max(first), step: first }
    }

    /// How long to wait before the next attempt; the step after it is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// After a success: the next failure waits the first step again.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_their_step_up_to_the_ceiling_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for step in [100, 200, 400, 800, 800, 800] {
            let wait = backoff.next_wait();
            let step = Duration::from_millis(step);
            assert!(wait >= step / 2 && wait <= step, "{wait:?} outside [{:?}, {step:?}]", step / 2);
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn waits_of_the_same_step_are_spread() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait()).collect();
        assert!(waits.len() > 10, "jitter spreads the retries of replicas that failed together: {waits:?}");
    }
}
