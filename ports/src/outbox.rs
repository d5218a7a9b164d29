//! The transactional outbox: messages written with the state change that caused them, and the relay that
//! publishes them afterwards through the command-publisher and audit-log ports.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::{CloudEvent, EventId, RoutingKey};

use crate::ReadError;
use crate::messaging::{AuditLog, CommandPublisher};

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

/// Where an outbox row is published; each is marked separately so one broker being down does not hold
/// back (or repeat) the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// RabbitMQ (or the in-process bus).
    Command,
    /// The audit stream (Kafka, or the in-memory log).
    Audit,
}

/// An outbox row claimed for publishing, with the destinations still owed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedMessage {
    /// The message.
    pub message: OutboxMessage,
    /// Destinations not yet marked published.
    pub pending: Vec<Destination>,
}

/// The outbox side of a service's store.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` rows with unpublished destinations, oldest first, for `lease`: rows claimed by
    /// another relay whose lease has not expired are skipped, so several relays can share one table.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<ClaimedMessage>, ReadError>;

    /// Records that `id` reached `destination`. Marking twice is harmless.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; the row stays owed and is published again later.
    async fn mark_published(&self, id: EventId, destination: Destination) -> Result<(), ReadError>;

    /// Waits until new rows may have been written (or `max_wait` passes), so the relay neither polls hot
    /// nor adds latency.
    async fn wait_for_new(&self, max_wait: Duration);

    /// Deletes fully published rows and inbox entries older than `retention`; returns how many went.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; nothing is lost, the purge runs again later.
    async fn purge(&self, retention: Duration) -> Result<u64, ReadError>;
}

/// Settings of an [`OutboxRelay`].
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per round.
    pub batch: usize,
    /// How long a claim keeps other relays off a row.
    pub lease: Duration,
    /// Longest sleep between rounds when nothing signals new rows.
    pub idle_poll: Duration,
    /// First back-off after a failed publish; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Cap of the back-off.
    pub max_backoff: Duration,
    /// How long published rows and inbox entries are kept (the inbox must outlive any redelivery).
    pub retention: Duration,
    /// How often the relay purges.
    pub purge_every: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 256,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(600),
        }
    }
}

/// Publishes committed outbox rows: commands first in row order, then audit records, marking each
/// destination only after the publisher confirmed it. At-least-once: a crash between publish and mark
/// sends the row again, and consumers de-duplicate on the message id.
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    commands: Arc<dyn CommandPublisher>,
    audit: Arc<dyn AuditLog>,
    settings: RelaySettings,
}

impl OutboxRelay {
    /// Builds a relay over a store and the two publishers.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        commands: Arc<dyn CommandPublisher>,
        audit: Arc<dyn AuditLog>,
        settings: RelaySettings,
    ) -> Self {
        Self { store, commands, audit, settings }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut backoff = self.settings.backoff;
        let mut next_purge = tokio::time::Instant::now() + self.settings.purge_every;
        loop {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += self.settings.purge_every;
                match self.store.purge(self.settings.retention).await {
                    Ok(deleted) => tracing::debug!(deleted, "outbox and inbox purged"),
                    Err(error) => tracing::warn!(%error, "outbox purge failed"),
                }
            }
            match self.publish_batch().await {
                Ok(0) => self.store.wait_for_new(self.settings.idle_poll).await,
                Ok(_) => backoff = self.settings.backoff,
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff, "outbox relay round failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    /// Claims one batch and publishes it; returns how many rows it claimed.
    ///
    /// # Errors
    /// The first failure; rows not yet marked stay owed. Later rows of the same order are not published
    /// past a failed one, so each order's messages keep their commit order.
    pub async fn publish_batch(&self) -> Result<usize, crate::BoxError> {
        let claimed = self.store.claim(self.settings.batch, self.settings.lease).await?;
        let count = claimed.len();
        for row in claimed {
            for destination in row.pending {
                match destination {
                    Destination::Command => {
                        if let Some(key) = row.message.command {
                            self.commands.publish(key, &row.message.event).await?;
                        }
                    }
                    Destination::Audit => self.audit.append(&row.message.event).await?,
                }
                self.store.mark_published(row.message.id(), destination).await?;
            }
        }
        Ok(count)
    }
}

impl OutboxMessage {
    /// Wraps what a domain event sends into an outbox message with a fresh event id.
    pub fn from_outgoing(
        outgoing: orderflow_domain::Outgoing,
        id: EventId,
        source: orderflow_domain::Source,
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
