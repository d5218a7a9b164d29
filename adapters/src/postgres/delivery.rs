//! The Delivery store on PostgreSQL.

use async_trait::async_trait;
use orderflow_domain::{Carrier, OrderId, Shipment, ShipmentId, ShipmentStatus, TrackingNumber};
use orderflow_ports::delivery::{DeliveryStore, ShipmentChange, ShipmentQuery};
use orderflow_ports::sales::{ChangeError, ChangeOutcome};
use orderflow_ports::{BoxError, Page, ReadError};
use tokio_postgres::Row;

use super::outbox::{self, pg_outbox_store};
use super::{Database, PgSettings, PgSetupError, Service, Tx, from_json};

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

/// Writes one change inside `tx`: the inbox entry, the shipment, its outbox rows. A conflict or a missing
/// shipment is reported before anything but the inbox entry is written.
async fn write(tx: &Tx, change: &ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
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
                                            created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (order_id) DO NOTHING",
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

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    async fn save(&self, change: ShipmentChange) -> Result<ChangeOutcome, ChangeError> {
        let tx = self.db.begin().await.map_err(ChangeError::Unexpected)?;
        let outcome = write(&tx, &change).await?;
        if outcome == ChangeOutcome::Applied {
            tx.commit().await.map_err(failed)?;
            if !change.messages.is_empty() {
                self.db.outbox_committed();
            }
        }
        Ok(outcome)
    }

    async fn save_all(
        &self,
        changes: Vec<ShipmentChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        let tx = self.db.begin().await.map_err(ChangeError::Unexpected)?;
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in &changes {
            // Only an inbox entry can be written before a change turns out not to apply; a savepoint
            // takes it back without losing the rest of the batch.
            if change.inbox.is_some() {
                tx.batch_execute("SAVEPOINT change").await.map_err(failed)?;
            }
            match write(&tx, change).await {
                Err(ChangeError::Unexpected(error)) => return Err(ChangeError::Unexpected(error)),
                Err(refused) if change.inbox.is_some() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT change").await.map_err(failed)?;
                    outcomes.push(Err(refused));
                }
                outcome => outcomes.push(outcome),
            }
        }
        tx.commit().await.map_err(failed)?;
        let wrote_messages = changes
            .iter()
            .zip(&outcomes)
            .any(|(change, outcome)| !change.messages.is_empty() && matches!(outcome, Ok(ChangeOutcome::Applied)));
        if wrote_messages {
            self.db.outbox_committed();
        }
        Ok(outcomes)
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
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM shipments
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::timestamptz IS NULL OR updated_at < $2)
                       AND ($3::uuid IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &query.status.map(ShipmentStatus::as_str),
                    &query.updated_before,
                    &query.after.map(|a| a.as_uuid()),
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
}
