//! The transactional outbox: messages written with the state change that caused them, for the relay (in
//! `orderflow-runtime`) to publish afterwards through the command-publisher and audit-log ports.

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::EventId;
use orderflow_messages::{CloudEvent, RoutingKey};

use crate::ReadError;

/// A message to publish once the transaction that wrote it has committed.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The envelope, as it will be sent.
    pub event: CloudEvent,
    /// The routing key when it is a command to a service.
    pub command: Option<RoutingKey>,
    /// Whether it goes to the audit stream.
    pub audit: bool,
}

impl OutboxMessage {
    /// The event id, which is also the message id.
    pub fn id(&self) -> EventId {
        self.event.id
    }
}

/// Where an outbox row is published. Each destination owes its own rows, taken and settled on its own,
/// so one broker being down neither holds back nor repeats the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// RabbitMQ (or the in-process bus).
    Command,
    /// The audit stream (Kafka, or the in-memory log).
    Audit,
}

/// The outbox side of a service's store. Rows owed to a destination are handed out in batches; while a
/// batch is held, no other relay — of this process or of another replica — is given rows of the same
/// orders for that destination, so each order's rows reach it in commit order however many relays share
/// the store.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Takes up to `limit` rows owed to `destination`, oldest first, of the orders no other relay holds
    /// (a store may split orders into partitions and give each relay a fair share of them). The rows stay
    /// owed until the batch is settled; dropping it unsettled (a crash, a cancelled task) leaves them owed
    /// and lets other relays take them.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn take(&self, destination: Destination, limit: usize) -> Result<Box<dyn OutboxBatch>, ReadError>;

    /// Waits until rows for `destination` may have been written (or `max_wait` passes), so the relay
    /// neither polls hot nor adds latency.
    async fn wait_for_new(&self, destination: Destination, max_wait: Duration);

    /// The commands still owed to the broker: how many, and how long the oldest has waited. Read often
    /// (back-pressure samples it several times a second), so it must be cheap.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn command_backlog(&self) -> Result<Backlog, ReadError>;

    /// Deletes inbox entries older than `retention`; returns how many went.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; nothing is lost, the purge runs again later.
    async fn purge(&self, retention: Duration) -> Result<u64, ReadError>;
}

/// Rows taken from the outbox for one destination, held against every other relay until settled.
#[async_trait]
pub trait OutboxBatch: Send {
    /// The rows, oldest first.
    fn messages(&self) -> &[OutboxMessage];

    /// Records that the rows with `ids` reached the destination (they are owed to it no more) and lets
    /// other relays take the batch's orders again. Rows of the batch not in `ids` stay owed and are taken
    /// again ahead of anything written after them.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; then every row of the batch stays owed and is
    /// published again later (consumers de-duplicate).
    async fn settle(self: Box<Self>, ids: &[EventId]) -> Result<(), ReadError>;
}

/// Outbox rows still owed to one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub rows: u64,
    /// How long the oldest has been waiting; zero when there is none.
    pub oldest: Duration,
}

impl OutboxMessage {
    /// Wraps what a domain event sends into an outbox message with a fresh event id.
    pub fn from_outgoing(
        outgoing: orderflow_messages::Outgoing,
        id: EventId,
        source: orderflow_messages::Source,
        at: orderflow_domain::Timestamp,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            event: CloudEvent::wrap(id, source, outgoing.body, at, traceparent),
            command: outgoing.command,
            audit: outgoing.audit,
        }
    }
}
