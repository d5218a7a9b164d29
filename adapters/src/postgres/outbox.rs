//! The outbox table both services share the shape of: claiming with leases and `SKIP LOCKED`, marking
//! each destination, purging, and the `LISTEN` connection that wakes the relay.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use futures::StreamExt;
use orderflow_domain::EventId;
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::backoff::Backoff;
use orderflow_ports::outbox::{Backlog, Destination, OutboxMessage};
use orderflow_ports::{BoxError, ReadError};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Database, from_json, unexpected};

/// Outbox messages as column arrays, to insert any number of them in one statement.
pub(super) struct OutboxColumns<'a> {
    ids: Vec<uuid::Uuid>,
    events: Vec<serde_json::Value>,
    keys: Vec<Option<&'a str>>,
    commands: Vec<bool>,
    audits: Vec<bool>,
}

/// The columns an outbox insert fills, in the order [`select_columns`] yields them.
pub(super) const INSERT_COLUMNS: &str = "(id, event, routing_key, command_pending, audit_pending)";

/// The `SELECT` that feeds `INSERT INTO outbox` [`INSERT_COLUMNS`] from [`OutboxColumns`] bound at
/// `$n … $n+4`, keeping the messages' order for the `seq` identity.
pub(super) fn select_columns(n: usize) -> String {
    format!(
        "SELECT id, event, routing_key, command_pending, audit_pending
         FROM unnest(${}::uuid[], ${}::jsonb[], ${}::text[], ${}::bool[], ${}::bool[]) WITH ORDINALITY
             AS m(id, event, routing_key, command_pending, audit_pending, n)
         ORDER BY n",
        n,
        n + 1,
        n + 2,
        n + 3,
        n + 4
    )
}

impl<'a> OutboxColumns<'a> {
    pub(super) fn of(messages: &'a [OutboxMessage]) -> Result<Self, BoxError> {
        Ok(Self {
            ids: messages.iter().map(|m| m.id().as_uuid()).collect(),
            events: messages.iter().map(|m| serde_json::to_value(&m.event)).collect::<Result<_, _>>()?,
            keys: messages.iter().map(|m| m.command.map(RoutingKey::as_str)).collect(),
            commands: messages.iter().map(|m| m.command.is_some()).collect(),
            audits: messages.iter().map(|m| m.audit).collect(),
        })
    }

    /// The five parameters, in the order [`select_columns`] expects.
    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.ids, &self.events, &self.keys, &self.commands, &self.audits]
    }
}

/// Writes outbox rows inside the caller's transaction.
pub(super) async fn insert(tx: &ClientWrapper, messages: &[OutboxMessage]) -> Result<(), BoxError> {
    if messages.is_empty() {
        return Ok(());
    }
    let columns = OutboxColumns::of(messages)?;
    let sql =
        format!("INSERT INTO outbox (id, event, routing_key, command_pending, audit_pending) {}", select_columns(1));
    let statement = tx.prepare_cached(&sql).await?;
    tx.execute(&statement, &columns.params()).await?;
    Ok(())
}

/// Records the message that causes a change, inside its transaction; `false` when the inbox already
/// holds it (a redelivery: the change must not be applied again). No message, nothing to record.
pub(super) async fn claim_inbox(
    tx: &ClientWrapper,
    entry: Option<&orderflow_ports::messaging::InboxEntry>,
) -> Result<bool, tokio_postgres::Error> {
    let Some(entry) = entry else { return Ok(true) };
    let statement = tx
        .prepare_cached("INSERT INTO inbox (message_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1")
        .await?;
    let fresh = tx.query_opt(&statement, &[&entry.message_id, &entry.consumer]).await?;
    Ok(fresh.is_some())
}

/// The entries among `entries` the inbox already holds (redeliveries), in one statement.
pub(super) async fn inbox_seen<'a>(
    tx: &ClientWrapper,
    entries: impl Iterator<Item = &'a orderflow_ports::messaging::InboxEntry>,
) -> Result<std::collections::HashSet<orderflow_ports::messaging::InboxEntry>, tokio_postgres::Error> {
    let (message_ids, consumers): (Vec<&str>, Vec<&str>) =
        entries.map(|e| (e.message_id.as_str(), e.consumer.as_str())).unzip();
    if message_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let statement = tx
        .prepare_cached(
            // `= ANY` lets the planner look the ids up in the primary key; a join with `unnest` alone
            // (estimated at 100 rows) scans the whole inbox while its statistics are young.
            "SELECT i.message_id, i.consumer FROM inbox i
             JOIN unnest($1::text[], $2::text[]) AS m(message_id, consumer) USING (message_id, consumer)
             WHERE i.message_id = ANY($1)",
        )
        .await?;
    let rows = tx.query(&statement, &[&message_ids, &consumers]).await?;
    Ok(rows
        .iter()
        .map(|r| orderflow_ports::messaging::InboxEntry { message_id: r.get(0), consumer: r.get(1) })
        .collect())
}

/// Records `entries` in the inbox in one statement. One that another transaction recorded meanwhile
/// means the same message was processed concurrently: an error, so the caller's transaction rolls back.
pub(super) async fn record_inbox<'a>(
    tx: &ClientWrapper,
    entries: impl Iterator<Item = &'a orderflow_ports::messaging::InboxEntry>,
) -> Result<(), BoxError> {
    let (message_ids, consumers): (Vec<&str>, Vec<&str>) =
        entries.map(|e| (e.message_id.as_str(), e.consumer.as_str())).unzip();
    if message_ids.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO inbox (message_id, consumer) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let recorded = tx.execute(&statement, &[&message_ids, &consumers]).await?;
    if usize::try_from(recorded)? != message_ids.len() {
        return Err("a message of the batch was processed concurrently".into());
    }
    Ok(())
}

fn routing_key(raw: Option<String>) -> Result<Option<RoutingKey>, BoxError> {
    raw.map(|k| from_json::<RoutingKey>(serde_json::Value::String(k))).transpose()
}

/// The columns of one destination: whether a row is owed to it, and until when a relay holds it.
const fn columns(destination: Destination) -> (&'static str, &'static str) {
    match destination {
        Destination::Command => ("command_pending", "command_claimed_until"),
        Destination::Audit => ("audit_pending", "audit_claimed_until"),
    }
}

/// Claims up to `limit` rows owed to `destination` for `lease`, oldest first; rows another relay holds for
/// the same destination are skipped.
pub(super) async fn claim(
    db: &Database,
    destination: Destination,
    limit: usize,
    lease: Duration,
) -> Result<Vec<OutboxMessage>, ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let lease_ms = f64::from(u32::try_from(lease.as_millis()).unwrap_or(u32::MAX));
    let (pending, claimed_until) = columns(destination);
    let sql = format!(
        "WITH next AS (
             SELECT seq FROM outbox
             WHERE {pending} AND ({claimed_until} IS NULL OR {claimed_until} < now())
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE outbox o SET {claimed_until} = now() + $2 * interval '1 millisecond'
         FROM next WHERE o.seq = next.seq
         RETURNING o.seq, o.event, o.routing_key, o.audit_pending"
    );
    let statement = client.prepare_cached(&sql).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let rows =
        client.query(&statement, &[&limit, &lease_ms]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.get(0);
        let event: CloudEvent = from_json(row.get(1)).map_err(ReadError::Unexpected)?;
        let command = routing_key(row.get(2)).map_err(ReadError::Unexpected)?;
        // `audit` says whether the row is (still) owed to the audit stream; a relay claiming commands
        // does not need to know whether an audit record already went out.
        claimed.push((seq, OutboxMessage { event, command, audit: row.get(3) }));
    }
    // UPDATE … RETURNING does not keep the CTE's order.
    claimed.sort_by_key(|(seq, _)| *seq);
    Ok(claimed.into_iter().map(|(_, message)| message).collect())
}

/// Marks `ids` published to `destination`: a row the other destination still needs is updated, and a
/// row that owes nothing more is deleted. Deleting costs PostgreSQL far less than the update it replaces
/// (no new row version, no new index entries in the outbox's five indexes).
///
/// Two statements, in this order, so that relays of the two destinations marking one row at the same time
/// never leave it behind: each update sees the other's committed update, and the delete that runs last
/// (a statement of its own, so with a fresh snapshot) finds both flags cleared.
pub(super) async fn mark(db: &Database, destination: Destination, ids: &[EventId]) -> Result<(), ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let ids: Vec<uuid::Uuid> = ids.iter().map(EventId::as_uuid).collect();
    let (update, delete) = match destination {
        Destination::Command => (
            "UPDATE outbox SET command_pending = false WHERE id = ANY($1) AND audit_pending",
            "DELETE FROM outbox WHERE id = ANY($1) AND NOT audit_pending",
        ),
        Destination::Audit => (
            "UPDATE outbox SET audit_pending = false WHERE id = ANY($1) AND command_pending",
            "DELETE FROM outbox WHERE id = ANY($1) AND NOT command_pending",
        ),
    };
    for sql in [update, delete] {
        let statement = client.prepare_cached(sql).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
        client.execute(&statement, &[&ids]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    }
    Ok(())
}

/// Clears the claim of `ids` for `destination`, so the next claim takes them again first.
pub(super) async fn release(db: &Database, destination: Destination, ids: &[EventId]) -> Result<(), ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let ids: Vec<uuid::Uuid> = ids.iter().map(EventId::as_uuid).collect();
    let (_, claimed_until) = columns(destination);
    let sql = format!("UPDATE outbox SET {claimed_until} = NULL WHERE id = ANY($1)");
    let statement = client.prepare_cached(&sql).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    client.execute(&statement, &[&ids]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    Ok(())
}

/// How many commands are owed and the age of the oldest, from the partial index of owed rows.
pub(super) async fn command_backlog(db: &Database) -> Result<Backlog, ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let statement = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM outbox WHERE command_pending),
                    COALESCE((SELECT extract(epoch FROM now() - created_at) FROM outbox WHERE command_pending
                              ORDER BY seq LIMIT 1), 0)::float8",
        )
        .await
        .map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let row = client.query_one(&statement, &[]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let rows = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let oldest = Duration::try_from_secs_f64(row.get::<_, f64>(1)).unwrap_or_default();
    Ok(Backlog { rows, oldest })
}

/// Deletes published outbox rows and inbox rows older than `retention`; returns how many rows went.
pub(super) async fn purge(db: &Database, retention: Duration) -> Result<u64, ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let ms = f64::from(u32::try_from(retention.as_millis()).unwrap_or(u32::MAX));
    let mut deleted = 0;
    for sql in [
        "DELETE FROM outbox WHERE NOT (command_pending OR audit_pending)
             AND published_at < now() - $1 * interval '1 millisecond'",
        "DELETE FROM inbox WHERE processed_at < now() - $1 * interval '1 millisecond'",
    ] {
        deleted += client.execute(sql, &[&ms]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    }
    Ok(deleted)
}

/// Sends `NOTIFY channel` whenever asked, at most once per few milliseconds: a burst of commits costs
/// one notification, and none of them waits for it.
pub(super) async fn announce(pool: deadpool_postgres::Pool, channel: String, asked: Arc<Notify>) {
    loop {
        asked.notified().await;
        match pool.get().await {
            Ok(client) => {
                let notified = match client.prepare_cached("SELECT pg_notify($1, '')").await {
                    Ok(statement) => client.execute(&statement, &[&channel]).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = notified {
                    tracing::warn!(%error, "could not announce outbox rows; relays will find them by polling");
                }
            }
            Err(error) => tracing::warn!(%error, "could not announce outbox rows; relays will find them by polling"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every few seconds, publishes the outbox backlog per destination and the age of its oldest owed row
/// as metrics (one query over the partial indexes of owed rows).
pub(super) async fn observe(pool: deadpool_postgres::Pool, schema: String) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let Ok(client) = pool.get().await else { continue };
        let row = client
            .query_one(
                // Each destination through its partial index: an OR of the two scans the whole table,
                // published rows included, and grows slower with every order.
                "SELECT (SELECT count(*) FROM outbox WHERE command_pending),
                        (SELECT count(*) FROM outbox WHERE audit_pending),
                        COALESCE(extract(epoch FROM now() - LEAST(
                            (SELECT created_at FROM outbox WHERE command_pending ORDER BY seq LIMIT 1),
                            (SELECT created_at FROM outbox WHERE audit_pending ORDER BY seq LIMIT 1))), 0)::bigint",
                &[],
            )
            .await;
        if let Ok(row) = row {
            let metrics = &crate::metrics::OUTBOX_BACKLOG;
            metrics.with_label_values(&[schema.as_str(), "command"]).set(row.get(0));
            metrics.with_label_values(&[schema.as_str(), "audit"]).set(row.get(1));
            crate::metrics::OUTBOX_OLDEST_SECONDS.with_label_values(&[schema.as_str()]).set(row.get(2));
        }
    }
}

/// Keeps a connection listening on `channel` and wakes `notify` on every notification; reconnects with
/// back-off when the connection drops. The relay also polls, so a missed notification costs latency only.
pub(super) async fn listen(config: tokio_postgres::Config, channel: String, notify: Arc<(Notify, Notify)>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed();
                let statement = format!("LISTEN \"{channel}\"");
                let listening = {
                    // The connection must be polled for the LISTEN to complete.
                    let mut listen = std::pin::pin!(client.batch_execute(&statement));
                    loop {
                        tokio::select! {
                            result = &mut listen => break result.is_ok(),
                            message = messages.next() => if message.is_none() { break false },
                        }
                    }
                };
                if listening {
                    backoff.reset();
                    // A row may have been written while we were not listening.
                    wake_both(&notify);
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => wake_both(&notify),
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "outbox listener connection failed");
                                break;
                            }
                        }
                    }
                }
                drop(client);
            }
            Err(error) => tracing::warn!(%error, "outbox listener cannot connect"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Wakes the relay loops of both destinations.
pub(super) fn wake_both(notify: &(Notify, Notify)) {
    notify.0.notify_one();
    notify.1.notify_one();
}

/// Implements `OutboxStore` for a store with a `db: Database` field.
macro_rules! pg_outbox_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl orderflow_ports::outbox::OutboxStore for $store {
            async fn claim(
                &self,
                destination: orderflow_ports::outbox::Destination,
                limit: usize,
                lease: std::time::Duration,
            ) -> Result<Vec<orderflow_ports::outbox::OutboxMessage>, orderflow_ports::ReadError> {
                super::outbox::claim(&self.db, destination, limit, lease).await
            }

            async fn mark_published(
                &self,
                destination: orderflow_ports::outbox::Destination,
                ids: &[orderflow_domain::EventId],
            ) -> Result<(), orderflow_ports::ReadError> {
                super::outbox::mark(&self.db, destination, ids).await
            }

            async fn release(
                &self,
                destination: orderflow_ports::outbox::Destination,
                ids: &[orderflow_domain::EventId],
            ) -> Result<(), orderflow_ports::ReadError> {
                super::outbox::release(&self.db, destination, ids).await
            }

            async fn wait_for_new(
                &self,
                destination: orderflow_ports::outbox::Destination,
                max_wait: std::time::Duration,
            ) {
                let written = match destination {
                    orderflow_ports::outbox::Destination::Command => &self.db.outbox_written.0,
                    orderflow_ports::outbox::Destination::Audit => &self.db.outbox_written.1,
                };
                let _ = tokio::time::timeout(max_wait, written.notified()).await;
            }

            async fn command_backlog(&self) -> Result<orderflow_ports::outbox::Backlog, orderflow_ports::ReadError> {
                super::outbox::command_backlog(&self.db).await
            }

            async fn purge(&self, retention: std::time::Duration) -> Result<u64, orderflow_ports::ReadError> {
                super::outbox::purge(&self.db, retention).await
            }
        }
    };
}
pub(super) use pg_outbox_store;
