//! The Sales store on PostgreSQL. Placing an order is one transaction of five round trips: `BEGIN`, the
//! idempotency key, the stock reservation (rows locked in SKU order), one statement writing the order,
//! its lines, its timeline and its outbox rows, and `COMMIT`.

use async_trait::async_trait;
use orderflow_domain::{
    Currency, EmailAddress, Money, Order, OrderId, OrderStatus, ProductName, Sku, StockEffect, Timestamp,
};
use orderflow_messages::CloudEvent;
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::notify::NotifyError;
use orderflow_ports::outbox::OutboxMessage;
use orderflow_ports::sales::{
    ChangeError, ChangeOutcome, EnqueueError, IdempotencyRecord, NotifyOnceError, OrderChange, OrderQuery, PlaceError,
    PlaceOutcome, Placement, Product, PutProductError, SalesStore,
};
use orderflow_ports::{BoxError, Page, ReadError};
use tokio_postgres::Row;

use super::outbox::{self, pg_outbox_store};
use super::{Database, PgSettings, PgSetupError, Plans, Service, Tx, from_json};

/// Sales persistence in PostgreSQL.
#[derive(Clone)]
pub struct PgSalesStore {
    pub(super) db: Database,
}

impl PgSalesStore {
    /// Connects, applies migrations when asked, and starts listening for outbox writes.
    ///
    /// # Errors
    /// [`PgSetupError`] when the settings are unusable or the database refuses.
    pub async fn connect(settings: &PgSettings) -> Result<Self, PgSetupError> {
        Ok(Self { db: Database::open(settings, Service::Sales).await? })
    }
}

pg_outbox_store!(PgSalesStore);

/// How many expired idempotency keys one statement deletes: the first purge after an upgrade may find
/// millions, and one statement holding all their row locks would make placements that take over a key
/// wait for it.
const FORGET_AT_ONCE: i64 = 10_000;

/// Deletes up to `$2` keys recorded before `$1`, skipping a key a placement is taking over.
const FORGET_KEYS: &str = "DELETE FROM idempotency_keys WHERE (client, key) IN (
    SELECT client, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// The columns `order_from` reads, lines aggregated so one round trip reads a whole order.
const ORDER_COLUMNS: &str = "o.id, o.customer_id, o.status, o.total_minor, o.currency, o.shipping_address,
    o.version, o.created_at, o.updated_at,
    (SELECT jsonb_agg(jsonb_build_object('sku', l.sku, 'quantity', l.quantity,
        'unit_price', jsonb_build_object('amount_minor', l.unit_price_minor, 'currency', l.currency))
        ORDER BY l.position) FROM order_lines l WHERE l.order_id = o.id),
    o.contact_email";

fn order_from(row: &Row) -> Result<Order, BoxError> {
    let currency = Currency::parse(row.get::<_, &str>(4))?;
    Ok(Order {
        id: OrderId::from_uuid(row.get(0)),
        customer_id: from_json(serde_json::Value::String(row.get(1)))?,
        status: OrderStatus::parse(row.get(2))?,
        total: Money::new(row.get(3), currency)?,
        shipping_address: from_json(row.get(5))?,
        version: u32::try_from(row.get::<_, i32>(6))?,
        created_at: row.get(7),
        updated_at: row.get(8),
        lines: from_json(row.get::<_, Option<serde_json::Value>>(9).unwrap_or_default())?,
        contact_email: row.get::<_, Option<&str>>(10).map(EmailAddress::parse).transpose()?,
    })
}

fn product_from(row: &Row) -> Result<Product, BoxError> {
    Ok(Product {
        sku: Sku::parse(row.get(0))?,
        name: ProductName::parse(row.get(1))?,
        price: Money::new(row.get(2), Currency::parse(row.get(3))?)?,
        stock: u32::try_from(row.get::<_, i32>(4))?,
        reserved: u32::try_from(row.get::<_, i32>(5))?,
    })
}

/// The audit messages of a change, for the order's timeline.
fn timeline_events(messages: &[OutboxMessage]) -> Result<Vec<serde_json::Value>, BoxError> {
    Ok(messages.iter().filter(|m| m.audit).map(|m| serde_json::to_value(&m.event)).collect::<Result<_, _>>()?)
}

/// `INSERT INTO order_events` of the timeline events bound at `$n` for the order at `$1`.
fn insert_timeline(n: usize) -> String {
    format!(
        "INSERT INTO order_events (order_id, event)
         SELECT $1, e FROM unnest(${n}::jsonb[]) WITH ORDINALITY AS t(e, n) ORDER BY n"
    )
}

/// Writes the audit messages of a change to the order's timeline and all its messages to the outbox,
/// in one statement.
async fn record(tx: &Tx<'_>, order_id: OrderId, messages: &[OutboxMessage]) -> Result<(), BoxError> {
    let events = timeline_events(messages)?;
    let columns = outbox::OutboxColumns::of(messages)?;
    let sql = format!("WITH e AS ({}), {}", insert_timeline(2), outbox::write_rows(3));
    let statement = tx.prepare_cached(&sql).await?;
    let id = order_id.as_uuid();
    let [a, b, c, d, e] = columns.params();
    tx.execute(&statement, &[&id, &events, a, b, c, d, e]).await?;
    Ok(())
}

/// Applies a stock effect to an order's lines, locking the products in SKU order so concurrent changes
/// over overlapping SKUs cannot deadlock. Returns the SKUs whose rows were updated.
async fn move_stock(tx: &Tx<'_>, order: &Order, effect: StockEffect) -> Result<Vec<String>, BoxError> {
    let set = match effect {
        StockEffect::None => return Ok(order.lines.iter().map(|l| l.sku.to_string()).collect()),
        StockEffect::Reserve => "reserved = p.reserved + w.qty",
        StockEffect::Release => "reserved = p.reserved - w.qty",
        StockEffect::Commit => "reserved = p.reserved - w.qty, stock = p.stock - w.qty",
    };
    let guard = match effect {
        StockEffect::Reserve => "AND l.stock - l.reserved >= w.qty",
        _ => "",
    };
    let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i32> = order.lines.iter().map(|l| i32::try_from(l.quantity.get())).collect::<Result<_, _>>()?;
    let sql = format!(
        "WITH w AS (SELECT * FROM unnest($1::text[], $2::int[]) AS w(sku, qty)),
              l AS (SELECT p.sku, p.stock, p.reserved FROM products p
                    WHERE p.sku = ANY($1) ORDER BY p.sku FOR UPDATE)
         UPDATE products p SET {set} FROM w, l
         WHERE p.sku = ANY($1) AND p.sku = w.sku AND l.sku = w.sku {guard}
         RETURNING p.sku"
    );
    let statement = tx.prepare_cached(&sql).await?;
    let rows = tx.query(&statement, &[&skus, &quantities]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn place_failed(error: impl Into<BoxError>) -> PlaceError {
    PlaceError::Unexpected(error.into())
}

/// Per SKU, in SKU order: the change of its reserved units and of its stock, as statement parameters.
struct StockDeltas {
    skus: Vec<String>,
    reserved: Vec<i32>,
    stock: Vec<i32>,
}

/// The stock effects of many changes summed per SKU.
fn stock_deltas(changes: &[&OrderChange]) -> Result<StockDeltas, BoxError> {
    let mut deltas: std::collections::BTreeMap<&str, (i32, i32)> = std::collections::BTreeMap::new();
    for change in changes {
        let (reserved, stock) = match change.stock {
            StockEffect::None => continue,
            StockEffect::Reserve => (1, 0),
            StockEffect::Release => (-1, 0),
            StockEffect::Commit => (-1, -1),
        };
        for line in &change.order.lines {
            let quantity = i32::try_from(line.quantity.get())?;
            let delta = deltas.entry(line.sku.as_str()).or_default();
            delta.0 += reserved * quantity;
            delta.1 += stock * quantity;
        }
    }
    Ok(StockDeltas {
        skus: deltas.keys().map(|sku| (*sku).to_owned()).collect(),
        reserved: deltas.values().map(|d| d.0).collect(),
        stock: deltas.values().map(|d| d.1).collect(),
    })
}

/// The stock effects of a batch's applied changes, summed per SKU and locked in SKU order like every
/// other writer of products.
async fn move_batch_stock(tx: &Tx<'_>, changes: &[&OrderChange]) -> Result<(), BoxError> {
    let StockDeltas { skus, reserved, stock } = stock_deltas(changes)?;
    if skus.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "WITH w AS (SELECT * FROM unnest($1::text[], $2::int[], $3::int[]) AS w(sku, reserved, stock)),
                  l AS (SELECT p.sku FROM products p WHERE p.sku = ANY($1) ORDER BY p.sku FOR UPDATE)
             UPDATE products p SET reserved = p.reserved + w.reserved, stock = p.stock + w.stock FROM w, l
             WHERE p.sku = ANY($1) AND p.sku = w.sku AND l.sku = w.sku
             RETURNING p.sku",
        )
        .await?;
    let moved = tx.query(&statement, &[&skus, &reserved, &stock]).await?;
    if moved.len() != skus.len() {
        return Err("stock out of balance: a product of the batch is gone".into());
    }
    Ok(())
}

/// The timeline and outbox rows of a batch's applied changes (`messages`, theirs in the batch's order).
async fn record_changes(tx: &Tx<'_>, changes: &[&OrderChange], messages: &[OutboxMessage]) -> Result<(), BoxError> {
    let timeline_orders: Vec<uuid::Uuid> =
        changes.iter().flat_map(|c| c.messages.iter().filter(|m| m.audit).map(|_| c.order.id.as_uuid())).collect();
    let events = timeline_events(messages)?;
    let columns = outbox::OutboxColumns::of(messages)?;
    let sql = format!(
        "WITH e AS (INSERT INTO order_events (order_id, event)
                    SELECT o, e FROM unnest($1::uuid[], $2::jsonb[]) WITH ORDINALITY AS t(o, e, n) ORDER BY n),
         {}",
        outbox::write_rows(3)
    );
    let statement = tx.prepare_cached(&sql).await?;
    let [a, b, c, d, e] = columns.params();
    tx.execute(&statement, &[&timeline_orders, &events, a, b, c, d, e]).await?;
    Ok(())
}

/// Writes the changes of a batch that are neither redeliveries nor second changes of an order, inside
/// `tx`, with one statement per kind of row; fills in their outcomes. `Err` leaves `tx` to roll back.
async fn write_batch(
    tx: &Tx<'_>,
    changes: &[OrderChange],
    outcomes: &mut [Option<Result<ChangeOutcome, ChangeError>>],
) -> Result<bool, BoxError> {
    let seen = outbox::inbox_seen(tx, changes.iter().filter_map(|c| c.inbox.as_ref())).await?;
    let mut changing = std::collections::HashSet::new();
    let mut candidates = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        outcomes[i] = if change.inbox.as_ref().is_some_and(|e| seen.contains(e)) {
            Some(Ok(ChangeOutcome::AlreadyProcessed))
        } else if !changing.insert(change.order.id) {
            Some(Err(ChangeError::Conflict { expected: change.expected_version }))
        } else {
            candidates.push(i);
            None
        };
    }
    if candidates.is_empty() {
        return Ok(false);
    }
    // The version checks, all at once; rows are locked in id order, as every batch locks them.
    candidates.sort_by_key(|&i| changes[i].order.id);
    let ids: Vec<uuid::Uuid> = candidates.iter().map(|&i| changes[i].order.id.as_uuid()).collect();
    let statuses: Vec<&str> = candidates.iter().map(|&i| changes[i].order.status.as_str()).collect();
    let versions: Vec<i32> =
        candidates.iter().map(|&i| i32::try_from(changes[i].order.version)).collect::<Result<_, _>>()?;
    let updated_at: Vec<_> = candidates.iter().map(|&i| changes[i].order.updated_at).collect();
    let expected: Vec<i32> =
        candidates.iter().map(|&i| i32::try_from(changes[i].expected_version)).collect::<Result<_, _>>()?;
    let statement = tx
        .prepare_cached(
            "UPDATE orders o SET status = c.status, version = c.version, updated_at = c.updated_at
             FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::int[])
                 AS c(id, status, version, updated_at, expected)
             WHERE o.id = ANY($1) AND o.id = c.id AND o.version = c.expected
             RETURNING o.id",
        )
        .await?;
    let rows = tx.query(&statement, &[&ids, &statuses, &versions, &updated_at, &expected]).await?;
    let updated: std::collections::HashSet<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let (applied, refused): (Vec<usize>, Vec<usize>) =
        candidates.into_iter().partition(|&i| updated.contains(&changes[i].order.id.as_uuid()));
    let keys: Vec<_> = refused.iter().map(|&i| (changes[i].order.id.as_uuid(), changes[i].expected_version)).collect();
    if !keys.is_empty() {
        for (i, refusal) in refused.into_iter().zip(super::refusals(tx, "orders", &keys).await?) {
            outcomes[i] = Some(Err(refusal));
        }
    }
    if applied.is_empty() {
        return Ok(false);
    }
    let applied_changes: Vec<&OrderChange> = applied.iter().map(|&i| &changes[i]).collect();
    let messages: Vec<OutboxMessage> = applied_changes.iter().flat_map(|c| c.messages.iter().cloned()).collect();
    // The rest travels in one round trip, the stock last: product rows are what every placement and
    // batch contends for, and each is then held only from its update to the commit.
    let (written, recorded, stocked) = tokio::join!(
        biased;
        record_changes(tx, &applied_changes, &messages),
        outbox::record_inbox(tx, applied_changes.iter().filter_map(|c| c.inbox.as_ref())),
        move_batch_stock(tx, &applied_changes)
    );
    written?;
    recorded?;
    stocked?;
    for i in applied {
        outcomes[i] = Some(Ok(ChangeOutcome::Applied));
    }
    Ok(!messages.is_empty())
}

fn change_failed(error: impl Into<BoxError>) -> ChangeError {
    ChangeError::Unexpected(error.into())
}

fn read_failed(error: impl Into<BoxError>) -> ReadError {
    ReadError::Unexpected(error.into())
}

/// Why a placement's transaction rolls back.
enum Unplaced {
    /// The idempotency key is held by an earlier request: its order is the answer, and what this
    /// placement wrote meanwhile is undone.
    Replayed(Box<Order>),
    Failed(PlaceError),
}

impl From<PlaceError> for Unplaced {
    fn from(error: PlaceError) -> Self {
        Self::Failed(error)
    }
}

/// Writes a placement inside `tx`: its idempotency record, the order, its lines, timeline and outbox rows,
/// and the stock it reserves. All of it travels in one round trip, the stock last: product rows are what
/// every placement and batch contends for, and each is then held only from its update to the commit.
/// The statements must reach the server in that order (`biased`: a rotating join could send the stock
/// first once the statements are prepared, and two requests with one key would then lock key and
/// products in opposite orders). When the key turns out to be another request's, or the stock is short,
/// the transaction rolls back.
async fn place(tx: &Tx<'_>, placement: &Placement) -> Result<(), Unplaced> {
    let order = &placement.order;
    let (claimed, inserted, reserved) = tokio::join!(
        biased;
        claim_key(tx, order, placement.idempotency.as_ref()),
        insert_order(tx, order, &placement.messages),
        move_stock(tx, order, StockEffect::Reserve)
    );
    if let Some(key) = placement.idempotency.as_ref().filter(|_| matches!(claimed, Ok(false))) {
        let row = tx
            .query_one(
                "SELECT request_hash, response FROM idempotency_keys WHERE client = $1 AND key = $2",
                &[&key.client, &key.key],
            )
            .await
            .map_err(place_failed)?;
        if row.get::<_, &str>(0) != key.request_hash {
            return Err(PlaceError::KeyReused.into());
        }
        return Err(Unplaced::Replayed(Box::new(from_json(row.get(1)).map_err(PlaceError::Unexpected)?)));
    }
    claimed?;
    inserted?;
    let reserved = reserved.map_err(PlaceError::Unexpected)?;
    if reserved.len() < order.lines.len() {
        let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
        let known: Vec<String> = tx
            .query("SELECT sku FROM products WHERE sku = ANY($1)", &[&skus])
            .await
            .map_err(place_failed)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing = |pred: &dyn Fn(&str) -> bool| -> Vec<Sku> {
            order.lines.iter().filter(|l| pred(l.sku.as_str())).map(|l| l.sku.clone()).collect()
        };
        let unknown = missing(&|s| !known.iter().any(|k| k == s));
        return Err(Unplaced::Failed(if unknown.is_empty() {
            PlaceError::InsufficientStock(missing(&|s| !reserved.iter().any(|r| r == s)))
        } else {
            PlaceError::UnknownSkus(unknown)
        }));
    }
    Ok(())
}

/// Claims the placement's idempotency key, if it has one, inside `tx`; `false` when an earlier request
/// holds it. A concurrent request with the same key blocks on its row until the first commits, then
/// replays it; an expired key is taken over.
async fn claim_key(tx: &Tx<'_>, order: &Order, key: Option<&IdempotencyRecord>) -> Result<bool, PlaceError> {
    let Some(key) = key else {
        return Ok(true);
    };
    let response = serde_json::to_value(order).map_err(place_failed)?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (client, key, request_hash, response, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (client, key) DO UPDATE
                 SET request_hash = EXCLUDED.request_hash, response = EXCLUDED.response,
                     created_at = EXCLUDED.created_at
                 WHERE idempotency_keys.created_at < $6
             RETURNING 1",
        )
        .await
        .map_err(place_failed)?;
    let claimed = tx
        .query_opt(
            &statement,
            &[&key.client, &key.key, &key.request_hash, &response, &order.created_at, &key.not_before],
        )
        .await
        .map_err(place_failed)?;
    Ok(claimed.is_some())
}

/// Writes a new order inside `tx`: the order, its lines, timeline and outbox rows (`messages`).
async fn insert_order(tx: &Tx<'_>, order: &Order, messages: &[OutboxMessage]) -> Result<(), PlaceError> {
    let positions: Vec<i16> = (1..).take(order.lines.len()).collect();
    let skus: Vec<&str> = order.lines.iter().map(|l| l.sku.as_str()).collect();
    let quantities: Vec<i32> =
        order.lines.iter().map(|l| i32::try_from(l.quantity.get())).collect::<Result<_, _>>().map_err(place_failed)?;
    let prices: Vec<i64> = order.lines.iter().map(|l| l.unit_price.amount_minor).collect();
    let address = serde_json::to_value(&order.shipping_address).map_err(place_failed)?;
    let version = i32::try_from(order.version).map_err(place_failed)?;
    let events = timeline_events(messages).map_err(PlaceError::Unexpected)?;
    let columns = outbox::OutboxColumns::of(messages).map_err(PlaceError::Unexpected)?;
    let sql = format!(
        "WITH o AS (
             INSERT INTO orders (id, customer_id, status, total_minor, currency, shipping_address,
                                 version, created_at, updated_at, contact_email)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $13)),
         l AS (
             INSERT INTO order_lines (order_id, position, sku, quantity, unit_price_minor, currency)
             SELECT $1, *, $5 FROM unnest($9::smallint[], $10::text[], $11::int[], $12::bigint[])),
         e AS ({}),
         {}",
        insert_timeline(14),
        outbox::write_rows(15)
    );
    let statement = tx.prepare_cached(&sql).await.map_err(place_failed)?;
    let id = order.id.as_uuid();
    let [m1, m2, m3, m4, m5] = columns.params();
    tx.execute(
        &statement,
        &[
            &id,
            &order.customer_id.as_str(),
            &order.status.as_str(),
            &order.total.amount_minor,
            &order.total.currency.as_str(),
            &address,
            &version,
            &order.created_at,
            &positions,
            &skus,
            &quantities,
            &prices,
            &order.contact_email.as_ref().map(EmailAddress::as_str),
            &events,
            m1,
            m2,
            m3,
            m4,
            m5,
        ],
    )
    .await
    .map_err(place_failed)?;
    Ok(())
}

/// Applies one change inside `tx`: its inbox entry, the order's new state (version-checked), its stock
/// effect and outbox rows. A redelivery changes nothing.
async fn apply(tx: &Tx<'_>, change: &OrderChange) -> Result<ChangeOutcome, ChangeError> {
    if !outbox::claim_inbox(tx, change.inbox.as_ref()).await.map_err(change_failed)? {
        return Ok(ChangeOutcome::AlreadyProcessed);
    }
    let order = &change.order;
    let version = i32::try_from(order.version).map_err(change_failed)?;
    let expected = i32::try_from(change.expected_version).map_err(change_failed)?;
    let statement = tx
        .prepare_cached("UPDATE orders SET status = $2, version = $3, updated_at = $4 WHERE id = $1 AND version = $5")
        .await
        .map_err(change_failed)?;
    let updated = tx
        .execute(&statement, &[&order.id.as_uuid(), &order.status.as_str(), &version, &order.updated_at, &expected])
        .await
        .map_err(change_failed)?;
    if updated == 0 {
        let exists =
            tx.query_opt("SELECT 1 FROM orders WHERE id = $1", &[&order.id.as_uuid()]).await.map_err(change_failed)?;
        return Err(match exists {
            None => ChangeError::NotFound,
            Some(_) => ChangeError::Conflict { expected: change.expected_version },
        });
    }
    let moved = move_stock(tx, order, change.stock).await.map_err(ChangeError::Unexpected)?;
    if moved.len() != order.lines.len() {
        return Err(ChangeError::Unexpected(format!("stock of order {} out of balance", order.id).into()));
    }
    record(tx, order.id, &change.messages).await.map_err(ChangeError::Unexpected)?;
    Ok(ChangeOutcome::Applied)
}

#[async_trait]
impl SalesStore for PgSalesStore {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), EnqueueError> {
        let columns = outbox::OutboxColumns::of(&messages).map_err(EnqueueError::Unexpected)?;
        let client = self.db.client().await.map_err(EnqueueError::Unexpected)?;
        let statement = client
            .prepare_cached(&format!("WITH {}", outbox::write_rows(1)))
            .await
            .map_err(|e| EnqueueError::Unexpected(e.into()))?;
        let [a, b, c, d, e] = columns.params();
        // One statement: atomic without a transaction of its own.
        client.execute(&statement, &[a, b, c, d, e]).await.map_err(|e| EnqueueError::Unexpected(e.into()))?;
        self.db.outbox_committed();
        Ok(())
    }

    async fn notify_once(
        &self,
        entry: &InboxEntry,
        send: futures::future::BoxFuture<'_, Result<(), NotifyError>>,
    ) -> Result<ChangeOutcome, NotifyOnceError> {
        let unexpected = |e: tokio_postgres::Error| NotifyOnceError::Unexpected(e.into());
        // Taken once the claim holds; a transaction run again (its connection found closed) has not
        // reached the claim, so it finds the send still here.
        let send = std::sync::Mutex::new(Some(send));
        // The claim is the inbox row, uncommitted while the e-mail is sent: a concurrent delivery of the
        // same message waits on it, then finds it recorded, or takes it over if this send failed.
        self.db
            .transaction(Plans::Cached, NotifyOnceError::Unexpected, async |tx| {
                let statement = tx
                    .prepare_cached("INSERT INTO inbox (message_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .await
                    .map_err(unexpected)?;
                let claimed =
                    tx.execute(&statement, &[&entry.message_id, &entry.consumer]).await.map_err(unexpected)?;
                if claimed == 0 {
                    return Ok(ChangeOutcome::AlreadyProcessed);
                }
                let send = send.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                send.ok_or_else(|| NotifyOnceError::Unexpected("the message was sent already".into()))?.await?;
                Ok(ChangeOutcome::Applied)
            })
            .await
    }

    async fn place_order(&self, placement: Placement) -> Result<PlaceOutcome, PlaceError> {
        let placed = self
            .db
            .transaction(
                Plans::Keyed,
                |e| Unplaced::Failed(PlaceError::Unexpected(e)),
                async |tx| place(tx, &placement).await,
            )
            .await;
        match placed {
            Ok(()) => {
                self.db.outbox_committed();
                Ok(PlaceOutcome::Created(placement.order))
            }
            Err(Unplaced::Replayed(order)) => Ok(PlaceOutcome::Replayed(*order)),
            Err(Unplaced::Failed(error)) => Err(error),
        }
    }

    async fn apply(&self, change: OrderChange) -> Result<ChangeOutcome, ChangeError> {
        let outcome =
            self.db.transaction(Plans::Cached, ChangeError::Unexpected, async |tx| apply(tx, &change).await).await?;
        if outcome == ChangeOutcome::Applied && !change.messages.is_empty() {
            self.db.outbox_committed();
        }
        Ok(outcome)
    }

    async fn apply_all(
        &self,
        changes: Vec<OrderChange>,
    ) -> Result<Vec<Result<ChangeOutcome, ChangeError>>, ChangeError> {
        self.db.commit_batch(&changes, write_batch).await
    }

    async fn orders_by_id(&self, ids: &[OrderId]) -> Result<Vec<Order>, ReadError> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = ANY($1)");
        let rows = self.db.read_keyed(&sql, &[&ids]).await.map_err(ReadError::Unexpected)?;
        rows.iter().map(order_from).collect::<Result<_, _>>().map_err(ReadError::Unexpected)
    }

    async fn order(&self, id: OrderId) -> Result<Option<Order>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let statement = client
            .prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1"))
            .await
            .map_err(read_failed)?;
        let row = client.query_opt(&statement, &[&id.as_uuid()]).await.map_err(read_failed)?;
        row.as_ref().map(order_from).transpose().map_err(ReadError::Unexpected)
    }

    async fn orders(&self, query: OrderQuery) -> Result<Page<Order, OrderId>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let limit = i64::try_from(query.limit + 1).map_err(read_failed)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM orders o
                     WHERE ($1::text IS NULL OR o.customer_id = $1) AND ($2::text IS NULL OR o.status = $2)
                       AND ($3::uuid IS NULL OR o.id < $3)
                     ORDER BY o.id DESC LIMIT $4"
                ),
                &[
                    &query.customer_id,
                    &query.status.map(OrderStatus::as_str),
                    &query.after.map(|a| a.as_uuid()),
                    &limit,
                ],
            )
            .await
            .map_err(read_failed)?;
        let mut items = rows.iter().map(order_from).collect::<Result<Vec<_>, _>>().map_err(ReadError::Unexpected)?;
        let more = items.len() > query.limit;
        items.truncate(query.limit);
        let next = if more { items.last().map(|o| o.id) } else { None };
        Ok(Page { items, next })
    }

    async fn timeline(&self, id: OrderId) -> Result<Option<Vec<CloudEvent>>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let rows = client
            .query(
                "SELECT e.event FROM orders o LEFT JOIN order_events e ON e.order_id = o.id
                 WHERE o.id = $1 ORDER BY e.seq",
                &[&id.as_uuid()],
            )
            .await
            .map_err(read_failed)?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .filter_map(|r| r.get::<_, Option<serde_json::Value>>(0))
            .map(from_json)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(ReadError::Unexpected)
    }

    async fn products_by_sku(&self, skus: &[Sku]) -> Result<Vec<Product>, ReadError> {
        let skus: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let sql = "SELECT sku, name, price_minor, currency, stock, reserved FROM products WHERE sku = ANY($1)";
        let rows = self.db.read_keyed(sql, &[&skus]).await.map_err(ReadError::Unexpected)?;
        rows.iter().map(product_from).collect::<Result<_, _>>().map_err(ReadError::Unexpected)
    }

    async fn forget_idempotency_keys(&self, before: Timestamp) -> Result<u64, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let statement = client.prepare_cached(FORGET_KEYS).await.map_err(read_failed)?;
        let mut forgotten = 0;
        loop {
            let deleted = client.execute(&statement, &[&before, &FORGET_AT_ONCE]).await.map_err(read_failed)?;
            forgotten += deleted;
            if deleted < FORGET_AT_ONCE.unsigned_abs() {
                return Ok(forgotten);
            }
        }
    }

    async fn products(&self, limit: usize, after: Option<Sku>) -> Result<Page<Product, Sku>, ReadError> {
        let client = self.db.client().await.map_err(ReadError::Unexpected)?;
        let fetch = i64::try_from(limit + 1).map_err(read_failed)?;
        let rows = client
            .query(
                "SELECT sku, name, price_minor, currency, stock, reserved FROM products
                 WHERE ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2",
                &[&after.as_ref().map(Sku::as_str), &fetch],
            )
            .await
            .map_err(read_failed)?;
        let mut items = rows.iter().map(product_from).collect::<Result<Vec<_>, _>>().map_err(ReadError::Unexpected)?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|p| p.sku.clone()) } else { None };
        Ok(Page { items, next })
    }

    async fn put_product(
        &self,
        sku: Sku,
        name: ProductName,
        price: Money,
        stock: u32,
    ) -> Result<Product, PutProductError> {
        let client = self.db.client().await.map_err(PutProductError::Unexpected)?;
        let stock_i32 = i32::try_from(stock).map_err(|e| PutProductError::Unexpected(e.into()))?;
        // The update only happens when the new stock still covers the reservations; otherwise no row
        // comes back and the caller is told why.
        let row = client
            .query_opt(
                "INSERT INTO products AS p (sku, name, price_minor, currency, stock) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price_minor = EXCLUDED.price_minor,
                     currency = EXCLUDED.currency, stock = EXCLUDED.stock
                     WHERE p.reserved <= EXCLUDED.stock
                 RETURNING sku, name, price_minor, currency, stock, reserved",
                &[&sku.as_str(), &name.as_str(), &price.amount_minor, &price.currency.as_str(), &stock_i32],
            )
            .await
            .map_err(|e| PutProductError::Unexpected(e.into()))?;
        match row {
            Some(row) => product_from(&row).map_err(PutProductError::Unexpected),
            None => {
                let reserved: i32 = client
                    .query_one("SELECT reserved FROM products WHERE sku = $1", &[&sku.as_str()])
                    .await
                    .map_err(|e| PutProductError::Unexpected(e.into()))?
                    .get(0);
                Err(PutProductError::StockBelowReserved { stock, reserved: u32::try_from(reserved).unwrap_or(0) })
            }
        }
    }
}
