#![doc = include_str!("../README.md")]

pub mod auth;
pub mod backoff;
pub mod cache;
pub mod delivery;
pub mod messaging;
pub mod notify;
pub mod outbox;
pub mod payment;
pub mod rate_limit;
pub mod sales;
pub mod system;
pub mod trace;
pub mod webhooks;

use sales::{ChangeError, ChangeOutcome};

/// The boxed cause carried by every `Unexpected` variant.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error and its causes on one line: a driver's top-level message alone rarely says what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Why a use case's change of an existing order or shipment did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    /// No such order or shipment (or, for an order, no shipment yet).
    #[error("not found")]
    NotFound,
    /// The state machine refused.
    #[error(transparent)]
    NotAllowed(#[from] orderflow_domain::TransitionError),
    /// Other writers kept changing it.
    #[error("it kept changing concurrently")]
    Contended,
    /// The store failed.
    #[error("the store failed")]
    Unexpected(#[source] BoxError),
}

/// What an optimistic attempt makes of committing its change: the outcome, or `None` when another writer
/// changed the state since the attempt read it (so [`optimistically`] runs it anew).
///
/// # Errors
/// [`TransitionFailure::NotFound`] when the state is gone; [`TransitionFailure::Unexpected`] when the store
/// failed.
pub fn committed(result: Result<ChangeOutcome, ChangeError>) -> Result<Option<ChangeOutcome>, TransitionFailure> {
    match result {
        Ok(outcome) => Ok(Some(outcome)),
        Err(ChangeError::Conflict { .. }) => Ok(None),
        Err(ChangeError::NotFound) => Err(TransitionFailure::NotFound),
        Err(error) => Err(TransitionFailure::unexpected(error)),
    }
}

impl TransitionFailure {
    /// A store's failure to commit a change, once the outcomes a use case handles itself (a conflict, a
    /// missing row) are ruled out.
    #[must_use]
    pub fn unexpected(error: ChangeError) -> Self {
        match error {
            ChangeError::Unexpected(e) => Self::Unexpected(e),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}

impl From<ReadError> for TransitionFailure {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

/// How often a change is recomputed when another writer got there first.
const ATTEMPTS: usize = 8;

/// Makes an optimistic change: `attempt` reads, computes and commits against the version it read, and
/// answers `Ok(None)` when another writer changed it meanwhile; it is then run anew, up to eight times.
///
/// # Errors
/// What an attempt fails with, or [`TransitionFailure::Contended`] when every attempt lost its race.
pub async fn optimistically<T, F>(mut attempt: impl FnMut() -> F) -> Result<T, TransitionFailure>
where
    F: Future<Output = Result<Option<T>, TransitionFailure>>,
{
    for _ in 0..ATTEMPTS {
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
    }
    Err(TransitionFailure::Contended)
}

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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use futures::executor::block_on;

    use super::*;

    #[test]
    fn a_change_that_keeps_losing_its_race_is_contended_after_eight_attempts() {
        let attempts = Cell::new(0);
        let outcome: Result<(), _> = block_on(optimistically(|| {
            attempts.set(attempts.get() + 1);
            async { Ok(None) }
        }));
        assert!(matches!(outcome, Err(TransitionFailure::Contended)), "{outcome:?}");
        assert_eq!(attempts.get(), 8);
    }

    #[test]
    fn the_first_attempt_that_settles_ends_the_retries_with_its_answer() {
        let attempts = Cell::new(0);
        let outcome = block_on(optimistically(|| {
            attempts.set(attempts.get() + 1);
            let settled = attempts.get() == 3;
            async move { Ok(settled.then_some("committed")) }
        }));
        assert_eq!(outcome.ok(), Some("committed"));
        assert_eq!(attempts.get(), 3);
    }

    #[test]
    fn a_commit_that_lost_its_race_asks_for_another_attempt_and_one_that_landed_ends_it() {
        assert!(matches!(committed(Err(ChangeError::Conflict { expected: 3 })), Ok(None)));
        assert!(matches!(committed(Ok(ChangeOutcome::Applied)), Ok(Some(ChangeOutcome::Applied))));
        assert!(matches!(committed(Ok(ChangeOutcome::AlreadyProcessed)), Ok(Some(ChangeOutcome::AlreadyProcessed))));
    }

    #[test]
    fn a_commit_of_a_vanished_state_is_not_found_and_a_failed_store_unexpected() {
        assert!(matches!(committed(Err(ChangeError::NotFound)), Err(TransitionFailure::NotFound)));
        let failed = committed(Err(ChangeError::Unexpected("connection reset".into())));
        assert!(
            matches!(&failed, Err(TransitionFailure::Unexpected(e)) if e.to_string() == "connection reset"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_failed_attempt_is_not_retried() {
        let attempts = Cell::new(0);
        let outcome: Result<(), _> = block_on(optimistically(|| {
            attempts.set(attempts.get() + 1);
            async { Err(TransitionFailure::NotFound) }
        }));
        assert!(matches!(outcome, Err(TransitionFailure::NotFound)), "{outcome:?}");
        assert_eq!(attempts.get(), 1);
    }
}
