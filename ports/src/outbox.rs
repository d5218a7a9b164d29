//! The transactional outbox: messages written with the state change that caused them, and the relay that
//! publishes them afterwards through the command-publisher and audit-log ports.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::EventId;
use orderflow_messages::{CloudEvent, RoutingKey};

use crate::ReadError;
use crate::backoff::Backoff;
use crate::messaging::{AuditLog, CommandPublisher, PublishError};

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

/// Where an outbox row is published; each is claimed and marked separately so one broker being down does
/// not hold back (or repeat) the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// RabbitMQ (or the in-process bus).
    Command,
    /// The audit stream (Kafka, or the in-memory log).
    Audit,
}

/// The outbox side of a service's store. Each destination is claimed and marked on its own, so one
/// broker being down neither holds back nor repeats the other.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` rows still owed to `destination`, oldest first, for `lease`: rows another relay
    /// claimed for the same destination and whose lease has not expired are skipped, so several relays can
    /// share one table.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn claim(
        &self,
        destination: Destination,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, ReadError>;

    /// Records that `ids` reached `destination`; a row then owed to no destination may be deleted. Marking
    /// twice is harmless, and so is marking a row for both destinations at the same time.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; the rows stay owed and are published again later.
    async fn mark_published(&self, destination: Destination, ids: &[EventId]) -> Result<(), ReadError>;

    /// Gives up the claim on `ids` for `destination` (they were not published), so the next claim takes
    /// them again first and each order's rows keep their order.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; the claims then simply expire with their lease.
    async fn release(&self, destination: Destination, ids: &[EventId]) -> Result<(), ReadError>;

    /// Waits until rows for `destination` may have been written (or `max_wait` passes), so the relay
    /// neither polls hot nor adds latency.
    async fn wait_for_new(&self, destination: Destination, max_wait: Duration);

    /// The commands still owed to the broker: how many, and how long the oldest has waited. Read often
    /// (back-pressure samples it several times a second), so it must be cheap.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails.
    async fn command_backlog(&self) -> Result<Backlog, ReadError>;

    /// Deletes fully published rows and inbox entries older than `retention`; returns how many went.
    ///
    /// # Errors
    /// [`ReadError::Unexpected`] when the store fails; nothing is lost, the purge runs again later.
    async fn purge(&self, retention: Duration) -> Result<u64, ReadError>;
}

/// Outbox rows still owed to one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub rows: u64,
    /// How long the oldest has been waiting; zero when there is none.
    pub oldest: Duration,
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
    /// Pause after a round that claimed less than a full batch, so that under a steady stream of commits
    /// rows gather into fewer, larger rounds (each costs a claim and a mark) at the price of this much
    /// latency per hop.
    pub linger: Duration,
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
            linger: Duration::from_millis(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(600),
        }
    }
}

/// Publishes committed outbox rows, one loop per destination: commands in commit order, a claimed batch
/// sent at once and its confirms awaited together; audit records of different orders concurrently, each order's in order.
/// A destination's rows are marked published only after the broker acknowledged them. At least once: a
/// crash between publish and mark sends the rows again, and consumers de-duplicate on the message id.
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

    /// Runs until the task is dropped: both destinations' loops and the periodic purge.
    pub async fn run(self) {
        tokio::join!(
            self.run_destination(Destination::Command),
            self.run_destination(Destination::Audit),
            self.purge()
        );
    }

    async fn run_destination(&self, destination: Destination) {
        let mut backoff = Backoff::new(self.settings.backoff, self.settings.max_backoff);
        loop {
            match self.publish_batch(destination).await {
                Ok(0) => self.store.wait_for_new(destination, self.settings.idle_poll).await,
                Ok(claimed) => {
                    backoff.reset();
                    if claimed < self.settings.batch {
                        tokio::time::sleep(self.settings.linger).await;
                    }
                }
                Err(error) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %error, ?destination, retry_in = ?wait, "outbox relay round failed");
                    match destination {
                        Destination::Command => tokio::time::sleep(wait).await,
                        Destination::Audit => self.audit.wait_until_reachable(wait).await,
                    }
                }
            }
        }
    }

    async fn purge(&self) {
        let mut every = tokio::time::interval(self.settings.purge_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match self.store.purge(self.settings.retention).await {
                Ok(deleted) => tracing::debug!(deleted, "outbox and inbox purged"),
                Err(error) => tracing::warn!(%error, "outbox purge failed"),
            }
        }
    }

    /// Claims one batch for `destination`, publishes it and marks what the broker acknowledged; returns
    /// how many rows it claimed.
    ///
    /// # Errors
    /// The first publishing failure (after marking what went through) or a store failure. An order's rows
    /// after a failed one are not marked, so each order's messages reach a destination in commit order.
    pub async fn publish_batch(&self, destination: Destination) -> Result<usize, crate::BoxError> {
        let rows = self.store.claim(destination, self.settings.batch, self.settings.lease).await?;
        let (published, failure) = match destination {
            Destination::Command => self.publish_commands(&rows).await,
            Destination::Audit => self.append_audit(&rows).await,
        };
        if !published.is_empty() {
            self.store.mark_published(destination, &published).await?;
        }
        let Some(error) = failure else { return Ok(rows.len()) };
        // What did not go out is claimed again first next round, ahead of anything written since, so no
        // order's later message overtakes an earlier one.
        let unpublished: Vec<EventId> =
            rows.iter().map(OutboxMessage::id).filter(|id| !published.contains(id)).collect();
        if let Err(release) = self.store.release(destination, &unpublished).await {
            tracing::warn!(error = %release, "could not release unpublished outbox rows; their lease will expire");
        }
        Err(error.into())
    }

    /// The whole batch at once, in commit order on one channel, its confirms awaited together. What the
    /// broker confirmed is marked even if something before it failed: it is queued, and sending it again
    /// would only add a duplicate.
    async fn publish_commands(&self, rows: &[OutboxMessage]) -> (Vec<EventId>, Option<PublishError>) {
        let commands: Vec<(RoutingKey, &CloudEvent)> =
            rows.iter().filter_map(|row| row.command.map(|key| (key, &row.event))).collect();
        let outcome = self.commands.publish_all(&commands).await;
        let confirmed: HashSet<EventId> =
            commands.iter().zip(outcome.confirmed).filter(|(_, ok)| *ok).map(|((_, event), _)| event.id).collect();
        // A row claimed for commands without a routing key owes nothing to the broker.
        let published = rows
            .iter()
            .filter(|row| row.command.is_none() || confirmed.contains(&row.id()))
            .map(OutboxMessage::id)
            .collect();
        (published, outcome.failure)
    }

    /// Audit records of different orders concurrently, each order's one after the other: a record is sent
    /// only once the one before it in its order is acknowledged, so a failure can never let a later record
    /// of an order reach the stream ahead of an earlier one.
    async fn append_audit(&self, rows: &[OutboxMessage]) -> (Vec<EventId>, Option<PublishError>) {
        let mut orders: Vec<(&str, Vec<&OutboxMessage>)> = Vec::new();
        for row in rows {
            match orders.iter_mut().find(|(subject, _)| *subject == row.event.subject) {
                Some((_, rows)) => rows.push(row),
                None => orders.push((row.event.subject.as_str(), vec![row])),
            }
        }
        let appended = futures::future::join_all(orders.into_iter().map(|(_, rows)| async move {
            let mut published = Vec::with_capacity(rows.len());
            for row in rows {
                if let Err(error) = self.audit.append(&row.event).await {
                    return (published, Some(error));
                }
                published.push(row.id());
            }
            (published, None)
        }))
        .await;
        let mut published = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (ids, error) in appended {
            published.extend(ids);
            if let Some(error) = error {
                failure.get_or_insert(error);
            }
        }
        (published, failure)
    }
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
