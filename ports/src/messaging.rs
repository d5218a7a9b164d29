//! Messaging ports: publishing commands and audit records, and consuming commands with an explicit
//! outcome the consumer maps to ack, retry or dead-letter.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_domain::Timestamp;
use orderflow_messages::{CloudEvent, RoutingKey};
use tracing::Instrument;

use crate::BoxError;

/// The message that caused a change, recorded with it so a redelivery is recognised (both services' inbox).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboxEntry {
    /// The message id.
    pub message_id: String,
    /// The consumer (queue) that processed it; the same message may legitimately reach several.
    pub consumer: String,
}

/// Why a publish failed. Always worth retrying later: the outbox keeps the row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker refused, timed out or is unreachable.
    #[error("publish failed")]
    Unexpected(#[source] BoxError),
}

/// Sends commands between the services (RabbitMQ in production).
#[async_trait]
pub trait CommandPublisher: Send + Sync {
    /// Publishes `event` on `key`, returning once the broker has confirmed it (durably queued).
    ///
    /// # Errors
    /// [`PublishError::Unexpected`] when the broker did not confirm; the caller must not assume delivery.
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError>;

    /// Publishes `events` in their order and reports which the broker confirmed. Sent together and
    /// confirmed together, a batch costs one confirm round (one fsync on a quorum queue), not one per event.
    /// Events of one order stay in order: they travel one channel. The default sends one after another and
    /// stops at the first failure.
    async fn publish_all(&self, events: &[(RoutingKey, &CloudEvent)]) -> Published {
        let mut published = Published { confirmed: vec![false; events.len()], failure: None };
        for ((key, event), confirmed) in events.iter().zip(&mut published.confirmed) {
            match self.publish(*key, event).await {
                Ok(()) => *confirmed = true,
                Err(error) => {
                    published.failure = Some(error);
                    break;
                }
            }
        }
        published
    }
}

/// What became of a batch given to [`CommandPublisher::publish_all`].
#[derive(Debug)]
pub struct Published {
    /// Per event, in the batch's order: whether the broker confirmed it.
    pub confirmed: Vec<bool>,
    /// The first failure, when some event was not confirmed.
    pub failure: Option<PublishError>,
}

/// Appends events to the audit stream analysts read (Kafka in production).
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `event`, keyed by its subject (the order id) so each order's history stays ordered;
    /// returns once delivery is acknowledged.
    ///
    /// # Errors
    /// [`PublishError::Unexpected`] when delivery was not acknowledged.
    async fn append(&self, event: &CloudEvent) -> Result<(), PublishError>;

    /// Waits `at_most` after a failed append, returning early once the stream looks reachable again, so
    /// appends resume soon after an outage ends rather than after a whole back-off. The default waits
    /// `at_most`.
    async fn wait_until_reachable(&self, at_most: std::time::Duration) {
        tokio::time::sleep(at_most).await;
    }
}

/// A command as a consumer receives it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from.
    pub queue: RoutingKey,
    /// The broker's message id (the event id when sent by orderflow).
    pub message_id: Option<String>,
    /// The raw body; decoding it is the handler's job, so bad bodies become permanent failures.
    pub body: Vec<u8>,
    /// How many times it has been retried so far.
    pub retries: u32,
    /// Its CONSUMER span (see [`crate::trace::consumer_span`]): the handler does the delivery's work
    /// inside it, so what the work sends continues the producer's trace.
    pub span: tracing::Span,
}

impl Delivery {
    /// The inbox entry that records this delivery's effect: its message id (or, from a producer that set
    /// none, the event id inside) for the consumer of its queue.
    pub fn inbox_entry(&self, event: &CloudEvent) -> InboxEntry {
        InboxEntry {
            message_id: self.message_id.clone().unwrap_or_else(|| event.id.to_string()),
            consumer: self.queue.as_str().to_owned(),
        }
    }
}

/// What a handler made of a delivery; the consumer acks, retries or dead-letters accordingly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// The effect is committed (or was already): ack.
    Done,
    /// A passing fault (database down, timeout): retry at the next back-off level, dead-letter after the last.
    Transient(String),
    /// Retrying cannot help (bad JSON, unknown type, illegal transition): dead-letter at once.
    Permanent(String),
}

/// Handles the commands of one queue.
#[async_trait]
pub trait MessageHandler: Send + Sync {
    /// Processes one delivery. Must be idempotent: deliveries are at-least-once.
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome;

    /// Processes deliveries of one queue that arrived together, returning one outcome per delivery in
    /// their order. A handler that commits several in one transaction overrides this, and must give each
    /// the outcome it would have had alone: one that fails (a poison message) must not fail the others,
    /// which is usually done by handling the batch one by one when the joint commit fails. The default
    /// handles them concurrently, each on its own and inside its span.
    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let handled = deliveries.iter().map(|delivery| self.handle(delivery).instrument(delivery.span.clone()));
        futures::future::join_all(handled).await
    }
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The broker failed in a way the consumer could not recover from.
    #[error("consumer failed")]
    Unexpected(#[source] BoxError),
}

/// Delivers the commands of a queue to a handler (RabbitMQ in production, an in-process bus in tests and
/// `orderflow dev`), with retries at growing delays and a dead-letter queue.
#[async_trait]
pub trait CommandConsumer: Send + Sync {
    /// Consumes `queue` until the consumer is shut down, acking only after the handler returned
    /// [`HandlerOutcome::Done`].
    ///
    /// # Errors
    /// [`ConsumeError::Unexpected`] when the broker cannot be used any more.
    async fn consume(&self, queue: RoutingKey, handler: Arc<dyn MessageHandler>) -> Result<(), ConsumeError>;

    /// Stops every `consume` of this consumer from taking new deliveries and returns once the deliveries
    /// already being handled are settled (acked, retried or dead-lettered); `consume` calls then return.
    async fn shutdown(&self);

    /// How many messages wait in `queue` for a consumer: queued and not yet delivered. Deliveries being
    /// handled, messages waiting out a retry delay and dead letters do not count.
    ///
    /// # Errors
    /// [`ConsumeError::Unexpected`] when the broker cannot be asked.
    async fn waiting(&self, queue: RoutingKey) -> Result<u64, ConsumeError>;
}

/// A dead-lettered message, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub message_id: Option<String>,
    /// The queue it failed on.
    pub original_queue: RoutingKey,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered.
    pub failed_at: Timestamp,
    /// Retries before it was given up.
    pub retries: u32,
    /// The body as received.
    pub body: Vec<u8>,
}

/// A dead-letter queue as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterQueue {
    /// The queue whose failures it holds.
    pub queue: RoutingKey,
    /// Messages waiting in it.
    pub depth: u64,
}

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The broker failed.
    #[error("dead-letter operation failed")]
    Unexpected(#[source] BoxError),
}

/// Operators' view of the dead-letter queues: list, peek, replay, purge.
#[async_trait]
pub trait DeadLetterAdmin: Send + Sync {
    /// The dead-letter queues of `queues`, with their depths.
    ///
    /// # Errors
    /// [`AdminError::Unexpected`] when the broker fails.
    async fn queues(&self, queues: &[RoutingKey]) -> Result<Vec<DeadLetterQueue>, AdminError>;

    /// Up to `limit` dead letters of `queue`, oldest first, left in place.
    ///
    /// # Errors
    /// [`AdminError::Unexpected`] when the broker fails.
    async fn peek(&self, queue: RoutingKey, limit: usize) -> Result<Vec<DeadLetter>, AdminError>;

    /// Moves up to `limit` dead letters of `queue` back to it with their retry count reset, each removed
    /// from the dead-letter queue only after the broker confirmed its republication; returns how many.
    ///
    /// # Errors
    /// [`AdminError::Unexpected`] when the broker fails; messages not yet moved stay dead-lettered.
    async fn replay(&self, queue: RoutingKey, limit: usize) -> Result<usize, AdminError>;

    /// Deletes every dead letter of `queue`; returns how many.
    ///
    /// # Errors
    /// [`AdminError::Unexpected`] when the broker fails.
    async fn purge(&self, queue: RoutingKey) -> Result<u64, AdminError>;
}
