//! The two outbox tables both services share the shape of (`command_outbox`, `audit_outbox`): writing
//! rows, handing them to relays by partition under transaction-scoped advisory locks, deleting what was
//! published, purging the inbox, and the `LISTEN` connection that wakes the relay.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use orderflow_domain::EventId;
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::backoff::Backoff;
use orderflow_ports::outbox::{Backlog, Destination, OutboxBatch, OutboxMessage};
use orderflow_ports::{BoxError, ReadError};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Database, HeldTransaction, LOST, Tx, from_json, unexpected};

/// How many partitions the outbox tables split orders into (`outbox_partitions()` in the migrations): the
/// most relays that can publish one destination at the same time.
const PARTITIONS: u32 = 32;

/// Outbox messages as column arrays, to insert any number of them in one statement.
pub(super) struct OutboxColumns<'a> {
    ids: Vec<uuid::Uuid>,
    subjects: Vec<&'a str>,
    events: Vec<String>,
    keys: Vec<Option<&'a str>>,
    audits: Vec<bool>,
}

/// The end of a statement that writes [`OutboxColumns`] bound at `$n … $n+4` to the outbox tables, after
/// the caller's own `WITH` items (`WITH …, {write_rows(n)}`): a row in `command_outbox` for each command
/// and in `audit_outbox` for each audited message, in the messages' order for the `seq` identities.
pub(super) fn write_rows(n: usize) -> String {
    format!(
        "outbox_rows AS (
             SELECT * FROM unnest(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::bool[]) WITH ORDINALITY
                 AS m(id, subject, event, routing_key, audit, n)),
         command_rows AS (
             INSERT INTO command_outbox (id, partition, routing_key, event)
             SELECT id, outbox_partition(subject), routing_key, event FROM outbox_rows
             WHERE routing_key IS NOT NULL ORDER BY n)
         INSERT INTO audit_outbox (id, partition, event)
         SELECT id, outbox_partition(subject), event FROM outbox_rows WHERE audit ORDER BY n",
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
            subjects: messages.iter().map(|m| m.event.subject.as_str()).collect(),
            events: messages.iter().map(|m| serde_json::to_string(&m.event)).collect::<Result<_, _>>()?,
            keys: messages.iter().map(|m| m.command.map(RoutingKey::as_str)).collect(),
            audits: messages.iter().map(|m| m.audit).collect(),
        })
    }

    /// The five parameters, in the order [`write_rows`] expects.
    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.ids, &self.subjects, &self.events, &self.keys, &self.audits]
    }
}

/// Writes outbox rows inside the caller's transaction.
pub(super) async fn insert(tx: &Tx<'_>, messages: &[OutboxMessage]) -> Result<(), BoxError> {
    if messages.is_empty() {
        return Ok(());
    }
    let columns = OutboxColumns::of(messages)?;
    let sql = format!("WITH {}", write_rows(1));
    let statement = tx.prepare_cached(&sql).await?;
    tx.execute(&statement, &columns.params()).await?;
    Ok(())
}

/// Records the message that causes a change, inside its transaction; `false` when the inbox already
/// holds it (a redelivery: the change must not be applied again). No message, nothing to record.
pub(super) async fn claim_inbox(
    tx: &Tx<'_>,
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
    tx: &Tx<'_>,
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
    tx: &Tx<'_>,
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

fn routing_key(raw: String) -> Result<RoutingKey, BoxError> {
    from_json::<RoutingKey>(serde_json::Value::String(raw))
}

/// The outbox table of a destination.
const fn table(destination: Destination) -> &'static str {
    match destination {
        Destination::Command => "command_outbox",
        Destination::Audit => "audit_outbox",
    }
}

/// Takes up to `limit` rows owed to `destination`, oldest first, from the partitions this relay can lock:
/// at most its share of them (all partitions over the relays running), trying them from a different one
/// each round so that no partition waits on a relay that keeps missing it. The locks are the
/// transaction's: they last until the batch settles, or until its connection closes.
pub(super) async fn take(
    db: &Database,
    destination: Destination,
    limit: usize,
) -> Result<Box<dyn OutboxBatch>, ReadError> {
    let failed = |e: tokio_postgres::Error| ReadError::Unexpected(unexpected(e));
    // Held from before its BEGIN is sent, so that a take dropped midway closes the connection.
    let tx = HeldTransaction(Some(db.client().await.map_err(ReadError::Unexpected)?));
    let Some(client) = tx.0.as_ref() else { return Err(ReadError::Unexpected(LOST.into())) };
    let table = table(destination);
    let key_column = match destination {
        Destination::Command => "routing_key",
        Destination::Audit => "NULL::text",
    };
    // The rows are read by a statement of their own, after the locks are held: a statement's snapshot is
    // taken when it starts, and one that locked a partition as it went could still see rows the relay
    // before it had published and deleted. The partitions got travel from one statement to the next in a
    // setting local to the transaction.
    let lock = format!(
        "SELECT set_config('orderflow.partitions', coalesce(string_agg(p::text, ','), ''), true) FROM (
             SELECT p FROM (SELECT ($1::int + i) % {PARTITIONS} AS p FROM generate_series(0, {PARTITIONS} - 1) AS i) c
             WHERE pg_try_advisory_xact_lock(hashtext(current_schema() || '.{table}'), p)
             LIMIT $2) held"
    );
    let read = format!(
        "SELECT seq, event, {key_column} FROM {table}
         WHERE partition = ANY(string_to_array(current_setting('orderflow.partitions'), ',')::smallint[])
         ORDER BY seq LIMIT $1"
    );
    let lock = client.prepare_cached(&lock).await.map_err(failed)?;
    let read = client.prepare_cached(&read).await.map_err(failed)?;
    let first = i32::try_from(db.relay_round.fetch_add(1, Ordering::Relaxed) % PARTITIONS).unwrap_or(0);
    let relays = u32::try_from(db.relays.load(Ordering::Relaxed)).unwrap_or(u32::MAX).clamp(1, PARTITIONS);
    let share = i64::from(PARTITIONS.div_ceil(relays));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // The three statements travel together, in this order, in one round trip.
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&first, &share];
    let read_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&limit];
    let (begun, locked, rows) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&lock, &lock_params),
        client.query(&read, &read_params)
    );
    begun.map_err(failed)?;
    locked.map_err(failed)?;
    let rows = rows.map_err(failed)?;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        seqs.push(row.get::<_, i64>(0));
        let event: CloudEvent = serde_json::from_str(row.get(1)).map_err(|e| ReadError::Unexpected(e.into()))?;
        let command = row.get::<_, Option<String>>(2).map(routing_key).transpose().map_err(ReadError::Unexpected)?;
        messages.push(OutboxMessage { event, command, audit: destination == Destination::Audit });
    }
    Ok(Box::new(PgBatch { tx, table, seqs, messages, deleted: Arc::clone(&db.deleted) }))
}

/// Rows taken by [`take`], with the transaction that holds their partitions. Dropped unsettled, the
/// transaction rolls back: the rows stay owed and the partitions are free.
struct PgBatch {
    tx: HeldTransaction,
    table: &'static str,
    seqs: Vec<i64>,
    messages: Vec<OutboxMessage>,
    /// Counts the rows deleted, for [`vacuum`].
    deleted: Arc<AtomicUsize>,
}

#[async_trait]
impl OutboxBatch for PgBatch {
    fn messages(&self) -> &[OutboxMessage] {
        &self.messages
    }

    async fn settle(self: Box<Self>, ids: &[EventId]) -> Result<(), ReadError> {
        let Self { tx, table, seqs, messages, deleted } = *self;
        let published: Vec<i64> =
            seqs.iter().zip(&messages).filter(|(_, m)| ids.contains(&m.id())).map(|(seq, _)| *seq).collect();
        let mut sql = String::new();
        if !published.is_empty() {
            // The sequence numbers are the store's own integers, so they can be written into the text: the
            // delete and the commit then go in one round trip.
            let list = published.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let _ = write!(sql, "DELETE FROM {table} WHERE seq IN ({list}); ");
        }
        sql.push_str("COMMIT");
        tx.finish(&sql).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
        deleted.fetch_add(published.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// How many commands are owed and the age of the oldest.
pub(super) async fn command_backlog(db: &Database) -> Result<Backlog, ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let statement = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM command_outbox),
                    COALESCE((SELECT extract(epoch FROM now() - created_at) FROM command_outbox
                              ORDER BY seq LIMIT 1), 0)::float8",
        )
        .await
        .map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let row = client.query_one(&statement, &[]).await.map_err(|e| ReadError::Unexpected(unexpected(e)))?;
    let rows = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    let oldest = Duration::try_from_secs_f64(row.get::<_, f64>(1)).unwrap_or_default();
    Ok(Backlog { rows, oldest })
}

/// Deletes inbox rows older than `retention`; returns how many went.
pub(super) async fn purge(db: &Database, retention: Duration) -> Result<u64, ReadError> {
    let client = db.client().await.map_err(ReadError::Unexpected)?;
    let ms = f64::from(u32::try_from(retention.as_millis()).unwrap_or(u32::MAX));
    client
        .execute("DELETE FROM inbox WHERE processed_at < now() - $1 * interval '1 millisecond'", &[&ms])
        .await
        .map_err(|e| ReadError::Unexpected(unexpected(e)))
}

/// Rows deleted from the outbox tables after which [`vacuum`] removes them.
const VACUUM_AFTER: usize = 4_000;

/// Without truncating: a table the relays emptied fills again at once, and truncating takes a lock that
/// writers would queue behind.
const VACUUM: &str = "VACUUM (SKIP_LOCKED, TRUNCATE false) command_outbox, audit_outbox";

/// Vacuums both outbox tables once this process's relays have deleted [`VACUUM_AFTER`] rows since the
/// last time. A take reads its table from the lowest `seq` up, through the index entries of every row
/// deleted since the last vacuum, and autovacuum wakes at most once a minute: late in a minute of load a
/// take walked tens of thousands of dead entries (1.7 ms a take). A replica whose vacuum finds the table
/// being vacuumed by another skips it; one whose role does not own the tables gets a warning and no
/// vacuum, and autovacuum goes on as before.
pub(super) async fn vacuum(pool: deadpool_postgres::Pool, deleted: Arc<AtomicUsize>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let count = deleted.load(Ordering::Relaxed);
        if count < VACUUM_AFTER {
            continue;
        }
        deleted.fetch_sub(count, Ordering::Relaxed);
        let vacuumed = match pool.get().await {
            Ok(client) => client.batch_execute(VACUUM).await.map_err(unexpected),
            Err(error) => Err(unexpected(error)),
        };
        if let Err(error) = vacuumed {
            tracing::debug!(%error, "could not vacuum the outbox tables; autovacuum will");
        }
    }
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
/// as metrics.
pub(super) async fn observe(pool: deadpool_postgres::Pool, schema: String) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let Ok(client) = pool.get().await else { continue };
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM command_outbox),
                        (SELECT count(*) FROM audit_outbox),
                        COALESCE(extract(epoch FROM now() -
                            (SELECT created_at FROM command_outbox ORDER BY seq LIMIT 1)), 0)::bigint,
                        COALESCE(extract(epoch FROM now() -
                            (SELECT created_at FROM audit_outbox ORDER BY seq LIMIT 1)), 0)::bigint",
                &[],
            )
            .await;
        if let Ok(row) = row {
            let (backlog, oldest) = (&crate::metrics::OUTBOX_BACKLOG, &crate::metrics::OUTBOX_OLDEST_SECONDS);
            for (i, destination) in ["command", "audit"].into_iter().enumerate() {
                backlog.with_label_values(&[schema.as_str(), destination]).set(row.get(i));
                oldest.with_label_values(&[schema.as_str(), destination]).set(row.get(i + 2));
            }
        }
    }
}

/// The application name of the connection each relay listens on, by which relays count each other.
pub(super) fn relay_application(schema: &str) -> String {
    format!("orderflow relay {schema}")
}

/// Every second, counts the relays of the schema (their listening connections, whichever process they
/// belong to), so that each takes its share of the partitions. Until the first count, and whenever it
/// fails, the last count stands (at start: alone, taking every partition).
pub(super) async fn count_relays(pool: deadpool_postgres::Pool, application: String, relays: Arc<AtomicUsize>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Ok(client) = pool.get().await else { continue };
        let counted = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                &[&application],
            )
            .await;
        if let Ok(row) = counted {
            relays.store(usize::try_from(row.get::<_, i64>(0)).unwrap_or(1).max(1), Ordering::Relaxed);
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
            async fn take(
                &self,
                destination: orderflow_ports::outbox::Destination,
                limit: usize,
            ) -> Result<Box<dyn orderflow_ports::outbox::OutboxBatch>, orderflow_ports::ReadError> {
                super::outbox::take(&self.db, destination, limit).await
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
