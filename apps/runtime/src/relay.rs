//! The outbox relay: publishes what each committed transaction owes, through the command-publisher and
//! audit-log ports, in commit order per order, settling a row only once its destination acknowledged it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use orderflow_domain::EventId;
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::BoxError;
use orderflow_ports::backoff::Backoff;
use orderflow_ports::messaging::{AuditLog, CommandPublisher, PublishError};
use orderflow_ports::outbox::{Destination, OutboxMessage, OutboxStore};
use orderflow_ports::trace;
use tokio::sync::watch;
use tracing::Instrument;

/// Settings of an [`OutboxRelay`].
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows taken per round.
    pub batch: usize,
    /// Longest sleep between rounds when nothing signals new rows.
    pub idle_poll: Duration,
    /// Pause after a round that took less than a full batch, so that under a steady stream of commits
    /// rows gather into fewer, larger rounds (each costs a take and a settle) at the price of this much
    /// latency per hop.
    pub linger: Duration,
    /// First back-off after a failed publish; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Cap of the back-off.
    pub max_backoff: Duration,
    /// How long inbox entries are kept (they must outlive any redelivery).
    pub retention: Duration,
    /// How often the relay purges.
    pub purge_every: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 256,
            idle_poll: Duration::from_secs(1),
            linger: Duration::from_millis(20),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(600),
        }
    }
}

/// Publishes committed outbox rows, one loop per destination: commands of a batch sent at once in commit
/// order and their confirms awaited together; audit records of different orders concurrently, each order's
/// in order. A row is settled only after the broker acknowledged it. At least once: a crash between
/// publishing and settling sends the rows again, and consumers de-duplicate on the message id. Any number
/// of relays may share a store: it hands each order's rows to one relay at a time.
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    commands: Arc<dyn CommandPublisher>,
    audit: Arc<dyn AuditLog>,
    settings: RelaySettings,
    on_published: Option<fn(Destination, &CloudEvent)>,
}

impl OutboxRelay {
    /// Builds a relay over a store and the two publishers.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        commands: Arc<dyn CommandPublisher>,
        audit: Arc<dyn AuditLog>,
        settings: RelaySettings,
    ) -> Self {
        Self { store, commands, audit, settings, on_published: None }
    }

    /// Has the relay call `observe` for each row its destination acknowledged (to measure how long rows
    /// wait, say).
    #[must_use]
    pub fn on_published(self, observe: fn(Destination, &CloudEvent)) -> Self {
        Self { on_published: Some(observe), ..self }
    }

    /// Runs both destinations' loops and the periodic purge until `stop` turns true (or its sender is
    /// gone). A round under way when the stop comes is finished, and then whatever is still owed in this
    /// relay's share is published in full rounds (what the last requests and messages committed), so a
    /// replica shut down this way leaves nothing half-published; a failure ends that drain and leaves the
    /// rest to the other relays.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        tokio::join!(
            self.run_destination(Destination::Command, stop.clone()),
            self.run_destination(Destination::Audit, stop.clone()),
            self.purge(stop)
        );
    }

    async fn run_destination(&self, destination: Destination, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.settings.backoff, self.settings.max_backoff);
        loop {
            let round = self.publish_batch(destination).await;
            if stopped(&stop) {
                match round {
                    Ok(taken) if taken == self.settings.batch => continue,
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(error = %error, ?destination, "outbox relay stopped with rows still owed");
                        return;
                    }
                }
            }
            match round {
                Ok(0) => until_stopped(self.store.wait_for_new(destination, self.settings.idle_poll), &mut stop).await,
                Ok(taken) => {
                    backoff.reset();
                    if taken < self.settings.batch {
                        until_stopped(tokio::time::sleep(self.settings.linger), &mut stop).await;
                    }
                }
                Err(error) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %error, ?destination, retry_in = ?wait, "outbox relay round failed");
                    let waited = async {
                        match destination {
                            Destination::Command => tokio::time::sleep(wait).await,
                            Destination::Audit => self.audit.wait_until_reachable(wait).await,
                        }
                    };
                    until_stopped(waited, &mut stop).await;
                }
            }
        }
    }

    async fn purge(&self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.settings.purge_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            until_stopped(every.tick().map(drop), &mut stop).await;
            if stopped(&stop) {
                return;
            }
            match self.store.purge(self.settings.retention).await {
                Ok(deleted) => tracing::debug!(deleted, "inbox purged"),
                Err(error) => tracing::warn!(%error, "inbox purge failed"),
            }
        }
    }

    /// Takes one batch for `destination`, publishes it and settles what the broker acknowledged; returns
    /// how many rows it took.
    ///
    /// # Errors
    /// The first publishing failure (after settling what went through) or a store failure. An order's rows
    /// after a failed one are not settled, so each order's messages reach a destination in commit order:
    /// the next batch starts with the failed row.
    pub async fn publish_batch(&self, destination: Destination) -> Result<usize, BoxError> {
        let batch = self.store.take(destination, self.settings.batch).await?;
        let rows = batch.messages();
        let taken = rows.len();
        let (published, failure) = match destination {
            Destination::Command => self.publish_commands(rows).await,
            Destination::Audit => self.append_audit(rows).await,
        };
        if let Some(observe) = self.on_published {
            let acknowledged: HashSet<&EventId> = published.iter().collect();
            rows.iter()
                .filter(|row| acknowledged.contains(&row.event.id))
                .for_each(|row| observe(destination, &row.event));
        }
        batch.settle(&published).await?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(taken),
        }
    }

    /// The whole batch at once, in commit order on one channel, its confirms awaited together. What the
    /// broker confirmed is settled even if something before it failed: it is queued, and sending it again
    /// would only add a duplicate. Each routing key of the round is one PRODUCER span, not one a command:
    /// a command carries its writer's trace context, which already names its order's trace, except the
    /// first of its span's trace, which carries the span's own. At a low rate most rounds hold one
    /// command, whose trace then reads writer → publish → process.
    async fn publish_commands(&self, rows: &[OutboxMessage]) -> (Vec<EventId>, Option<PublishError>) {
        let mut commands: Vec<(RoutingKey, &CloudEvent)> =
            rows.iter().filter_map(|row| row.command.map(|key| (key, &row.event))).collect();
        let spans = producer_spans(&commands);
        let heads: Vec<(usize, CloudEvent)> = spans
            .iter()
            .filter_map(|(key, span)| {
                let at = commands
                    .iter()
                    .position(|(k, e)| k == key && e.traceparent.as_deref().is_some_and(trace::sampled))?;
                let mut head = commands[at].1.clone();
                head.traceparent = Some(trace::traceparent_of(span)?);
                Some((at, head))
            })
            .collect();
        for (at, head) in &heads {
            commands[*at].1 = head;
        }
        let outcome = self.commands.publish_all(&commands).await;
        let mut confirmed = HashSet::new();
        for ((key, event), ok) in commands.iter().zip(outcome.confirmed) {
            match ok {
                true => _ = confirmed.insert(event.id),
                false => {
                    if let Some((_, span)) = spans.iter().find(|(k, _)| k == key) {
                        trace::mark_failed(span, &unacknowledged(outcome.failure.as_ref()));
                    }
                }
            }
        }
        // A row taken for commands without a routing key owes nothing to the broker.
        let published = rows
            .iter()
            .filter(|row| row.command.is_none() || confirmed.contains(&row.id()))
            .map(OutboxMessage::id)
            .collect();
        (published, outcome.failure)
    }

    /// Audit records of different orders concurrently, each order's one after the other: a record is sent
    /// only once the one before it in its order is acknowledged, so a failure can never let a later record
    /// of an order reach the stream ahead of an earlier one. The round is one PRODUCER span, not one a
    /// record: a record's trace context is its writer's, which already names its order's trace.
    async fn append_audit(&self, rows: &[OutboxMessage]) -> (Vec<EventId>, Option<PublishError>) {
        let events: Vec<&CloudEvent> = rows.iter().map(|row| &row.event).collect();
        let span = trace::producer_span("audit", &events);
        let (published, failure) =
            self.append_in_order(rows).instrument(span.clone().unwrap_or_else(tracing::Span::none)).await;
        if let (Some(span), Some(error)) = (&span, &failure) {
            trace::mark_failed(span, &unacknowledged(Some(error)));
        }
        (published, failure)
    }

    async fn append_in_order(&self, rows: &[OutboxMessage]) -> (Vec<EventId>, Option<PublishError>) {
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

/// The PRODUCER span of each routing key among `commands` that has a command of a sampled trace.
fn producer_spans(commands: &[(RoutingKey, &CloudEvent)]) -> Vec<(RoutingKey, tracing::Span)> {
    let mut keys: Vec<RoutingKey> = Vec::new();
    for (key, _) in commands {
        if !keys.contains(key) {
            keys.push(*key);
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let events: Vec<&CloudEvent> = commands.iter().filter(|(k, _)| *k == key).map(|(_, e)| *e).collect();
            trace::producer_span(key.as_str(), &events).map(|span| (key, span))
        })
        .collect()
}

/// What a span records of a message the destination did not acknowledge.
fn unacknowledged(error: Option<&PublishError>) -> String {
    match error.and_then(std::error::Error::source) {
        Some(cause) => format!("not acknowledged: {cause}"),
        None => "not acknowledged".to_owned(),
    }
}

/// Waits for `wait`, or less if the relay is asked to stop meanwhile.
async fn until_stopped(wait: impl Future<Output = ()>, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = wait => {}
        _ = stop.changed() => {}
    }
}

/// Whether the relay was asked to stop, or can no longer be (its stop's sender is gone).
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}
