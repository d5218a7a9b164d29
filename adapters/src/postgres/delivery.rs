//! The Delivery store on PostgreSQL.

use async_trait::async_trait;
use orderflow_domain::{Carrier, OrderId, Shipment, ShipmentId, ShipmentStatus, Timestamp, TrackingNumber};
use orderflow_ports::delivery::{DeliveryStore, Due, ShipmentChange, ShipmentQuery};
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{ChangeError, ChangeOutcome};
use orderflow_ports::{BoxError, Page, ReadError};
use tokio_postgres::Row;

use super::outbox::{self, pg_outbox_store};
use super::{Database, PgSettings, PgSetupError, Plans, Service, Tx, from_json};

/// Delivery persistence in PostgreSQL.
#[derive(Clone)]
pub struct PgDeliveryStore {
    db: Database,
}

impl PgDeliveryStore {
    /// Connects, applies migrations when asked, and starts listening for outbox writes.
    ///
    /// # Errors
    /// [`PgSetupError`] when the settings are unusable or the database refuses.
    pub async fn connect(settings: &PgSettings) -> Result<Self, PgSetupError> {
        Ok(Self { db: Database::open(settings, Service::Delivery).await? })
    }
}

pg_outbox_store!(PgDeliveryStore);

const COLUMNS: &str = "id, status, carrier, tracking_number, order_data, version, created_at, updated_at";

fn shipment_from(row: &Row) -> Result<Shipment, BoxError> {
    Ok(Shipment {
        id: ShipmentId::from_uuid(row.get(0)),
        status: ShipmentStatus::parse(row.get(1))?,
        carrier: row.get::<_, Option<&str>>(2).map(Carrier::parse).transpose()?,
        tracking_number: row.get::<_, Option<&str>>(3).map(TrackingNumber::parse).transpose()?,
        order: from_json(row.get(4))?,
        version: u32::try_from(row.get::<_, i32>(5))?,
        created_at: row.get(6),
        updated_at: row.get(7),
    })
}

fn failed(error: impl Into<BoxError>) -> ChangeError {
    ChangeError::Unexpected(error.into())
}

fn read_failed(error: impl Into<BoxError>) -> ReadError {
    ReadError::Unexpected(error.into())
}

/// The trace context a creation's messages carry, which the shipment keeps for the autopilot.
fn creation_trace(change: &ShipmentChange) -> Option<String> {
    change.messages.first().and_then(|m| m.event.traceparent.clone())
}

/// Writes one change inside `tx`: the inbox entry, the shipment, its outbox rows. A conflict or a missing
/// shipment is reported before anything but the inbox entry is written.
async fn write(tx: &Tx<'_>, change: &ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
    if !outbox::claim_inbox(tx, change.inbox.as_ref()).await.map_err(failed)? {
        return Ok(ChangeOutcome::AlreadyProcessed);
    }
    let s = &change.shipment;
    let version = i32::try_from(s.version).map_err(failed)?;
    let carrier = s.carrier.as_ref().map(Carrier::as_str);
    let tracking = s.tracking_number.as_ref().map(TrackingNumber::as_str);
    let written = match change.expected_version {
        None => {
            let order = serde_json::to_value(&s.order).map_err(failed)?;
            let statement = tx
                .prepare_cached(
                    "INSERT INTO shipments (id, order_id, status, carrier, tracking_number, order_data, version,
                                            created_at, updated_at, traceparent)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (order_id) DO NOTHING",
                )
                .await
                .map_err(failed)?;
            tx.execute(
                &statement,
                &[
                    &s.id.as_uuid(),
                    &s.order.order_id.as_uuid(),
                    &s.status.as_str(),
                    &carrier,
                    &tracking,
                    &order,
                    &version,
                    &s.created_at,
                    &s.updated_at,
                    &creation_trace(change),
                ],
            )
            .await
            .map_err(failed)?
        }
        Some(expected) => {
            let expected = i32::try_from(expected).map_err(failed)?;
            let statement = tx
                .prepare_cached(
                    "UPDATE shipments SET status = $2, carrier = $3, tracking_number = $4, version = $5,
                         updated_at = $6
                     WHERE id = $1 AND version = $7",
                )
                .await
                .map_err(failed)?;
            tx.execute(
                &statement,
                &[&s.id.as_uuid(), &s.status.as_str(), &carrier, &tracking, &version, &s.updated_at, &expected],
            )
            .await
            .map_err(failed)?
        }
    };
    if written == 0 {
        let exists = tx.query_opt("SELECT 1 FROM shipments WHERE id = $1", &[&s.id.as_uuid()]).await.map_err(failed)?;
        return Err(match (change.expected_version, exists) {
            (Some(_), None) => ChangeError::NotFound,
            (expected, _) => ChangeError::Conflict { expected: expected.unwrap_or(0) },
        });
    }
    outbox::insert(tx, &change.messages).await.map_err(ChangeError::Unexpected)?;
    Ok(ChangeOutcome::Applied)
}

/// Writes a batch of changes inside `tx` with one statement per kind of row, whatever its size: the
/// redeliveries found, the creations, the version-checked updates, then the outbox rows and inbox entries
/// of what applied. Fills in every change's outcome; `Err` leaves `tx` to roll back.
async fn write_batch(
    tx: &Tx<'_>,
    changes: &[ShipmentChange],
    outcomes: &mut [Option<Result<ChangeOutcome, ChangeError>>],
) -> Result<bool, BoxError> {
    let seen = outbox::inbox_seen(tx, changes.iter().filter_map(|c| c.inbox.as_ref())).await?;
    // A second change of a shipment (or a second creation for an order) was computed from what the first
    // replaces: a conflict, recomputed by the caller.
    let (mut shipments, mut orders) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    let (mut creations, mut updates) = (Vec::new(), Vec::new());
    for (i, change) in changes.iter().enumerate() {
        let s = &change.shipment;
        outcomes[i] = if change.inbox.as_ref().is_some_and(|e| seen.contains(e)) {
            Some(Ok(ChangeOutcome::AlreadyProcessed))
        } else if !(shipments.insert(s.id) && (change.expected_version.is_some() || orders.insert(s.order.order_id))) {
            Some(Err(ChangeError::Conflict { expected: change.expected_version.unwrap_or(0) }))
        } else {
            match change.expected_version {
                None => creations.push(i),
                Some(_) => updates.push(i),
            }
            None
        };
    }
    let mut applied = Vec::new();
    if !creations.is_empty() {
        let column = |f: &dyn Fn(&ShipmentChange) -> Option<String>| -> Vec<Option<String>> {
            creations.iter().map(|&i| f(&changes[i])).collect()
        };
        let ids: Vec<uuid::Uuid> = creations.iter().map(|&i| changes[i].shipment.id.as_uuid()).collect();
        let order_ids: Vec<uuid::Uuid> =
            creations.iter().map(|&i| changes[i].shipment.order.order_id.as_uuid()).collect();
        let statuses = column(&|c| Some(c.shipment.status.as_str().to_owned()));
        let carriers = column(&|c| c.shipment.carrier.as_ref().map(|v| v.as_str().to_owned()));
        let tracking = column(&|c| c.shipment.tracking_number.as_ref().map(|v| v.as_str().to_owned()));
        let orders: Vec<serde_json::Value> =
            creations.iter().map(|&i| serde_json::to_value(&changes[i].shipment.order)).collect::<Result<_, _>>()?;
        let versions: Vec<i32> =
            creations.iter().map(|&i| i32::try_from(changes[i].shipment.version)).collect::<Result<_, _>>()?;
        let created_at: Vec<_> = creations.iter().map(|&i| changes[i].shipment.created_at).collect();
        let updated_at: Vec<_> = creations.iter().map(|&i| changes[i].shipment.updated_at).collect();
        let traces = column(&creation_trace);
        let statement = tx
            .prepare_cached(
                "INSERT INTO shipments (id, order_id, status, carrier, tracking_number, order_data, version,
                                        created_at, updated_at, traceparent)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                                      $7::int[], $8::timestamptz[], $9::timestamptz[], $10::text[])
                 ON CONFLICT (order_id) DO NOTHING
                 RETURNING id",
            )
            .await?;
        let rows = tx
            .query(
                &statement,
                &[
                    &ids,
                    &order_ids,
                    &statuses,
                    &carriers,
                    &tracking,
                    &orders,
                    &versions,
                    &created_at,
                    &updated_at,
                    &traces,
                ],
            )
            .await?;
        let created: std::collections::HashSet<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
        for i in creations {
            match created.contains(&changes[i].shipment.id.as_uuid()) {
                true => applied.push(i),
                // The order has its shipment already.
                false => outcomes[i] = Some(Err(ChangeError::Conflict { expected: 0 })),
            }
        }
    }
    if !updates.is_empty() {
        // Rows are locked in id order, as every batch locks them.
        updates.sort_by_key(|&i| changes[i].shipment.id);
        let ids: Vec<uuid::Uuid> = updates.iter().map(|&i| changes[i].shipment.id.as_uuid()).collect();
        let statuses: Vec<&str> = updates.iter().map(|&i| changes[i].shipment.status.as_str()).collect();
        let carriers: Vec<Option<&str>> =
            updates.iter().map(|&i| changes[i].shipment.carrier.as_ref().map(Carrier::as_str)).collect();
        let tracking: Vec<Option<&str>> =
            updates.iter().map(|&i| changes[i].shipment.tracking_number.as_ref().map(TrackingNumber::as_str)).collect();
        let versions: Vec<i32> =
            updates.iter().map(|&i| i32::try_from(changes[i].shipment.version)).collect::<Result<_, _>>()?;
        let updated_at: Vec<_> = updates.iter().map(|&i| changes[i].shipment.updated_at).collect();
        let expected: Vec<i32> = updates
            .iter()
            .map(|&i| i32::try_from(changes[i].expected_version.unwrap_or(0)))
            .collect::<Result<_, _>>()?;
        let statement = tx
            .prepare_cached(
                // `= ANY` lets the planner use the primary key whatever the statistics say of unnest.
                "UPDATE shipments s SET status = c.status, carrier = c.carrier, tracking_number = c.tracking,
                     version = c.version, updated_at = c.updated_at
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::timestamptz[],
                             $7::int[]) AS c(id, status, carrier, tracking, version, updated_at, expected)
                 WHERE s.id = ANY($1) AND s.id = c.id AND s.version = c.expected
                 RETURNING s.id",
            )
            .await?;
        let rows =
            tx.query(&statement, &[&ids, &statuses, &carriers, &tracking, &versions, &updated_at, &expected]).await?;
        let updated: std::collections::HashSet<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let (done, refused): (Vec<usize>, Vec<usize>) =
            updates.into_iter().partition(|&i| updated.contains(&changes[i].shipment.id.as_uuid()));
        applied.extend(done);
        let keys: Vec<_> = refused
            .iter()
            .map(|&i| (changes[i].shipment.id.as_uuid(), changes[i].expected_version.unwrap_or(0)))
            .collect();
        if !keys.is_empty() {
            for (i, refusal) in refused.into_iter().zip(super::refusals(tx, "shipments", &keys).await?) {
                outcomes[i] = Some(Err(refusal));
            }
        }
    }
    // What applied, in the batch's order: its outbox rows and inbox entries, in one round trip.
    applied.sort_unstable();
    let messages: Vec<OutboxMessage> = applied.iter().flat_map(|&i| changes[i].messages.iter().cloned()).collect();
    let (inserted, recorded) = tokio::join!(
        biased;
        outbox::insert(tx, &messages),
        outbox::record_inbox(tx, applied.iter().filter_map(|&i| changes[i].inbox.as_ref()))
    );
    inserted?;
    recorded?;
    for i in applied {
        outcomes[i] = Some(Ok(ChangeOutcome::Applied));
    }
    Ok(!messages.is_empty())
}

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    async fn save(&self, change: ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
        let outcome =
            self.db.transaction(Plans::Cached, ChangeError::Unexpected, async |tx| write(tx, &change).await).await?;
        if outcome == ChangeOutcome::Applied && !change.messages.is_empty() {
            self.db.outbox_committed();
        }
        Ok(outcome)
    }

    async fn save_all(
        &self,
        changes: Vec<ShipmentChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        self.db.commit_batch(&changes, write_batch).await
    }

    async fn shipment(&self, id: ShipmentId) -> Result<Option<Shipment>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM shipments WHERE id = $1"))
            .await
            .map_err(read_failed)?;
        let row = client.query_opt(&statement, &[&id.as_uuid()]).await.map_err(read_failed)?;
        row.as_ref().map(shipment_from).transpose().map_err(ReadError::Unexpected)
    }

    async fn shipment_for_order(&self, order_id: OrderId) -> Result<Option<Shipment>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM shipments WHERE order_id = $1"))
            .await
            .map_err(read_failed)?;
        let row = client.query_opt(&statement, &[&order_id.as_uuid()]).await.map_err(read_failed)?;
        row.as_ref().map(shipment_from).transpose().map_err(ReadError::Unexpected)
    }

    async fn shipments(&self, query: ShipmentQuery) -> Result<Page<Shipment, ShipmentId>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let limit = i64::try_from(query.limit + 1).map_err(read_failed)?;
        // Ids are UUIDv7: their order is the order shipments were created in.
        let (after, order) = if query.oldest_first { (">", "ASC") } else { ("<", "DESC") };
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM shipments
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id {after} $2)
                       AND ($3::text IS NULL OR tracking_number = $3)
                     ORDER BY id {order} LIMIT $4"
                ),
                &[
                    &query.status.map(ShipmentStatus::as_str),
                    &query.after.map(|a| a.as_uuid()),
                    &query.tracking_number.as_ref().map(TrackingNumber::as_str),
                    &limit,
                ],
            )
            .await
            .map_err(read_failed)?;
        let mut items = rows.iter().map(shipment_from).collect::<Result<Vec<_>, _>>().map_err(ReadError::Unexpected)?;
        let more = items.len() > query.limit;
        items.truncate(query.limit);
        let next = if more { items.last().map(|s| s.id) } else { None };
        Ok(Page { items, next })
    }

    async fn due(&self, status: ShipmentStatus, before: Timestamp, limit: usize) -> Result<Vec<Due>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let limit = i64::try_from(limit).map_err(read_failed)?;
        // Served by the index on (status, updated_at).
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, traceparent FROM shipments WHERE status = $1 AND updated_at < $2
                 ORDER BY updated_at, id LIMIT $3"
            ))
            .await
            .map_err(read_failed)?;
        let rows = client.query(&statement, &[&status.as_str(), &before, &limit]).await.map_err(read_failed)?;
        rows.iter()
            .map(|row| Ok(Due { shipment: shipment_from(row)?, traceparent: row.try_get("traceparent")? }))
            .collect::<Result<Vec<_>, BoxError>>()
            .map_err(ReadError::Unexpected)
    }

    async fn sign_out(&self, session: &str, until: Timestamp, now: Timestamp) -> Result<(), ChangeError> {
        let client = self.db.client().await.map_err(ChangeError::Unexpected)?;
        client
            .execute(
                "WITH ended AS (DELETE FROM console_sign_outs WHERE until < $3)
                 INSERT INTO console_sign_outs (session, until) VALUES ($1, $2)
                 ON CONFLICT (session) DO UPDATE SET until = excluded.until",
                &[&session, &until, &now],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn signed_out(&self, session: &str) -> Result<bool, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let row = client
            .query_opt("SELECT 1 FROM console_sign_outs WHERE session = $1", &[&session])
            .await
            .map_err(read_failed)?;
        Ok(row.is_some())
    }
}
