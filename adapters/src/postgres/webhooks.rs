//! Webhook endpoints and deliveries on PostgreSQL (migration `V5__webhooks.sql`; a trigger on
//! `order_events` writes the deliveries each change owes).

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::{EventId, OrderId, Timestamp};
use orderflow_ports::BoxError;
use orderflow_ports::webhooks::{
    Attempt, DeliveryStatus, DueDelivery, Settlement, WebhookDelivery, WebhookEndpoint, WebhookError, WebhookStore,
};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{PgSalesStore, Plans};

/// The trigger on `order_events` that owes deliveries (`owe_webhooks()`, migration V5). It exists only
/// while an endpoint is registered: with a transition table, even disabled, it would make every insert
/// into `order_events` capture its rows.
const CREATE_TRIGGER: &str = "CREATE OR REPLACE TRIGGER order_events_owe_webhooks AFTER INSERT ON order_events
     REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION owe_webhooks()";
/// Drops the trigger when the last endpoint is removed.
const DROP_TRIGGER: &str = "DROP TRIGGER IF EXISTS order_events_owe_webhooks ON order_events";
/// The lock creating the trigger takes, taken first by whoever registers an endpoint.
const LOCK_EVENTS: &str = "LOCK TABLE order_events IN SHARE ROW EXCLUSIVE MODE";
/// The lock dropping it takes, taken first by whoever removes one (never upgraded from a weaker one).
const LOCK_EVENTS_FOR_DROP: &str = "LOCK TABLE order_events IN ACCESS EXCLUSIVE MODE";

fn failed(error: impl Into<BoxError>) -> WebhookError {
    WebhookError::Unexpected(error.into())
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.endpoint_id, d.event_id, d.event_type, d.order_id, d.body, d.status, d.attempts, d.created_at";

fn attempt_json(attempt: &Attempt) -> serde_json::Value {
    serde_json::json!({ "at": attempt.at, "status_code": attempt.status_code, "error": attempt.error })
}

fn delivery_from(row: &Row) -> Result<WebhookDelivery, BoxError> {
    let status = match row.get::<_, &str>(6) {
        "pending" => DeliveryStatus::Pending,
        "delivered" => DeliveryStatus::Delivered,
        "dead_lettered" => DeliveryStatus::DeadLettered,
        other => return Err(format!("unknown delivery status {other}").into()),
    };
    let attempts = row
        .get::<_, serde_json::Value>(7)
        .as_array()
        .map(|attempts| {
            attempts
                .iter()
                .map(|a| {
                    Ok(Attempt {
                        at: serde_json::from_value(a["at"].clone())?,
                        status_code: a["status_code"].as_u64().map(u16::try_from).transpose()?,
                        error: a["error"].as_str().map(str::to_owned),
                    })
                })
                .collect::<Result<Vec<_>, BoxError>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(WebhookDelivery {
        id: row.get(0),
        endpoint_id: row.get(1),
        event_id: EventId::from_uuid(row.get(2)),
        event_type: row.get(3),
        order_id: OrderId::from_uuid(row.get(4)),
        body: row.get(5),
        status,
        attempts,
        created_at: row.get(8),
    })
}

#[async_trait]
impl WebhookStore for PgSalesStore {
    async fn add_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), WebhookError> {
        let endpoint = endpoint.clone();
        self.db
            .transaction(Plans::Cached, WebhookError::Unexpected, async move |tx| {
                // The table lock first: writers of order_events finish or wait, and every event recorded
                // after this commit is owed (the lock CREATE TRIGGER needs anyway, taken before any other).
                tx.batch_execute(LOCK_EVENTS).await.map_err(failed)?;
                tx.execute(
                    "INSERT INTO webhook_endpoints (id, url, event_types, secret, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&endpoint.id, &endpoint.url, &endpoint.event_types, &endpoint.secret, &endpoint.created_at],
                )
                .await
                .map_err(failed)?;
                tx.batch_execute(CREATE_TRIGGER).await.map_err(failed)
            })
            .await
    }

    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        let rows = client
            .query(
                "SELECT id, url, event_types, secret, created_at, failing_since, disabled
                 FROM webhook_endpoints ORDER BY created_at, id",
                &[],
            )
            .await
            .map_err(failed)?;
        Ok(rows
            .iter()
            .map(|r| WebhookEndpoint {
                id: r.get(0),
                url: r.get(1),
                event_types: r.get(2),
                secret: r.get(3),
                created_at: r.get(4),
                failing_since: r.get(5),
                disabled: r.get(6),
            })
            .collect())
    }

    async fn remove_endpoint(&self, id: Uuid) -> Result<bool, WebhookError> {
        self.db
            .transaction(Plans::Cached, WebhookError::Unexpected, async move |tx| {
                // The table lock before the row: a change recording an event holds order_events and then
                // checks the endpoint row its delivery refers to, so the other order could deadlock. It
                // also serialises this with registrations, so the count below sees theirs.
                tx.batch_execute(LOCK_EVENTS_FOR_DROP).await.map_err(failed)?;
                let removed =
                    tx.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id]).await.map_err(failed)?;
                let left = tx.query_one("SELECT count(*) FROM webhook_endpoints", &[]).await.map_err(failed)?;
                if left.get::<_, i64>(0) == 0 {
                    tx.batch_execute(DROP_TRIGGER).await.map_err(failed)?;
                }
                Ok(removed > 0)
            })
            .await
    }

    async fn deliveries(&self, endpoint: Uuid, limit: usize) -> Result<Option<Vec<WebhookDelivery>>, WebhookError> {
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        if client
            .query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1", &[&endpoint])
            .await
            .map_err(failed)?
            .is_none()
        {
            return Ok(None);
        }
        let limit = i64::try_from(limit).map_err(failed)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.endpoint_id = $1
                     ORDER BY d.seq DESC LIMIT $2"
                ),
                &[&endpoint, &limit],
            )
            .await
            .map_err(failed)?;
        Ok(Some(rows.iter().map(delivery_from).collect::<Result<_, _>>().map_err(WebhookError::Unexpected)?))
    }

    async fn redeliver(&self, endpoint: Uuid, delivery: Uuid, now: Timestamp) -> Result<bool, WebhookError> {
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        let updated = client
            .execute(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3
                 WHERE endpoint_id = $1 AND id = $2",
                &[&endpoint, &delivery, &now],
            )
            .await
            .map_err(failed)?;
        Ok(updated > 0)
    }

    async fn take_due(&self, now: Timestamp, lease: Duration, limit: usize) -> Result<Vec<DueDelivery>, WebhookError> {
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        let until = now + chrono::Duration::from_std(lease).map_err(failed)?;
        let limit = i64::try_from(limit).map_err(failed)?;
        // The oldest pending delivery of each endpoint and order only: a later one waits until the one
        // before it is delivered or given up. SKIP LOCKED lets replicas take different rows at once.
        let statement = client
            .prepare_cached(&format!(
                "WITH due AS (
                     SELECT d.seq FROM webhook_deliveries d
                     JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.disabled IS NULL
                     WHERE d.status = 'pending' AND d.next_attempt_at <= $1
                       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                       WHERE p.endpoint_id = d.endpoint_id AND p.order_id = d.order_id
                                         AND p.status = 'pending' AND p.seq < d.seq)
                     ORDER BY d.seq LIMIT $3
                     FOR UPDATE OF d SKIP LOCKED)
                 UPDATE webhook_deliveries d SET next_attempt_at = $2 FROM due, webhook_endpoints w
                 WHERE d.seq = due.seq AND w.id = d.endpoint_id
                 RETURNING {DELIVERY_COLUMNS}, w.url, w.secret, d.seq, w.failing_since"
            ))
            .await
            .map_err(failed)?;
        let rows = client.query(&statement, &[&now, &until, &limit]).await.map_err(failed)?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok((
                    r.get::<_, i64>(11),
                    DueDelivery {
                        delivery: delivery_from(r)?,
                        url: r.get(9),
                        secret: r.get(10),
                        failing_since: r.get(12),
                    },
                ))
            })
            .collect::<Result<Vec<_>, BoxError>>()
            .map_err(WebhookError::Unexpected)?;
        due.sort_by_key(|(seq, _)| *seq);
        Ok(due.into_iter().map(|(_, d)| d).collect())
    }

    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, WebhookError> {
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        // A delivered row's next_attempt_at is when it was delivered.
        client
            .execute("DELETE FROM webhook_deliveries WHERE status = 'delivered' AND next_attempt_at < $1", &[&before])
            .await
            .map_err(failed)
    }

    async fn settle(
        &self,
        delivery: &WebhookDelivery,
        attempt: Attempt,
        settlement: Settlement,
        disable: Option<String>,
    ) -> Result<(), WebhookError> {
        let (status, next) = match settlement {
            Settlement::Delivered => ("delivered", attempt.at),
            Settlement::RetryAt(at) => ("pending", at),
            Settlement::DeadLettered => ("dead_lettered", attempt.at),
        };
        let succeeded = settlement == Settlement::Delivered;
        let client = self.db.client().await.map_err(WebhookError::Unexpected)?;
        client
            .execute(
                "WITH d AS (
                     UPDATE webhook_deliveries SET status = $2, next_attempt_at = $3, attempts = attempts || $4
                     WHERE id = $1)
                 UPDATE webhook_endpoints
                 SET failing_since = CASE WHEN $5 THEN NULL ELSE coalesce(failing_since, $6) END,
                     disabled = coalesce(disabled, $7)
                 WHERE id = $8",
                &[
                    &delivery.id,
                    &status,
                    &next,
                    &serde_json::Value::Array(vec![attempt_json(&attempt)]),
                    &succeeded,
                    &attempt.at,
                    &disable,
                    &delivery.endpoint_id,
                ],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }
}
