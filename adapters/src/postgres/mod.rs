//! PostgreSQL adapters: the Sales and Delivery stores on `tokio-postgres` + `deadpool-postgres`, each in
//! its own schema, with migrations applied at start-up and the outbox relay woken by `LISTEN/NOTIFY`.

mod delivery;
mod outbox;
mod sales;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use orderflow_ports::BoxError;
use orderflow_ports::sales::{ChangeError, ChangeOutcome};

/// What became of one change of a batch.
type Outcome = Result<ChangeOutcome, ChangeError>;
use tokio::sync::Notify;
use tokio_postgres::NoTls;

pub use delivery::PgDeliveryStore;
pub use sales::PgSalesStore;

mod sales_migrations {
    refinery::embed_migrations!("../infra/migrations/sales");
}
mod delivery_migrations {
    refinery::embed_migrations!("../infra/migrations/delivery");
}

/// How to reach and use the database.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/db`.
    pub url: String,
    /// The schema the service's tables live in (`sales`, `delivery`; tests use their own).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest a statement may run before the server cancels it.
    pub statement_timeout: Duration,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
}

impl PgSettings {
    /// Settings with the defaults: a pool of 16, 5 s statement timeout, migrations on.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: schema.into(),
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

/// Why the database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgSetupError {
    /// The URL or schema name is not usable.
    #[error("invalid database settings: {0}")]
    Invalid(String),
    /// The server refused or failed.
    #[error("database setup failed")]
    Database(#[source] BoxError),
}

fn setup_failed(error: impl std::error::Error + Send + Sync + 'static) -> PgSetupError {
    PgSetupError::Database(Box::new(error))
}

/// Which service's tables a schema holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Sales,
    Delivery,
}

/// A pool whose connections all use one schema, plus the signal the relay waits on.
#[derive(Clone)]
struct Database {
    pool: Pool,
    /// Wakes this process's relay loops, command and audit (by its own commits and other processes'
    /// NOTIFYs).
    outbox_written: Arc<(Notify, Notify)>,
    /// Asks the announcer to tell other processes' relays.
    announce: Arc<Notify>,
    /// How many relays share the outbox (all replicas'), as last counted.
    relays: Arc<AtomicUsize>,
    /// Counts this process's relay rounds, to start each at another partition.
    relay_round: Arc<AtomicU32>,
    /// Outbox rows this process's relays deleted since its last vacuum of the outbox tables.
    deleted: Arc<AtomicUsize>,
}

impl Database {
    async fn open(settings: &PgSettings, service: Service) -> Result<Self, PgSetupError> {
        let schema = &settings.schema;
        let valid = !schema.is_empty()
            && schema.len() <= 40
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(PgSetupError::Invalid(format!("schema name {schema:?} must match [a-z_][a-z0-9_]*")));
        }
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| PgSetupError::Invalid(format!("DATABASE_URL: {e}")))?;
        // Keep-alives bound how long the server keeps the session (and the outbox partitions its relay
        // transaction holds) of a client whose machine vanished: about 25 s instead of the system's hours.
        config.options(format!(
            "-c search_path={schema} -c statement_timeout={} -c tcp_keepalives_idle=10 \
             -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
            settings.statement_timeout.as_millis()
        ));
        if config.get_application_name().is_none() {
            config.application_name("orderflow");
        }
        if settings.migrate {
            migrate(&config, schema, service).await?;
        }
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .build()
            .map_err(|e| PgSetupError::Invalid(e.to_string()))?;
        let outbox_written = Arc::new((Notify::new(), Notify::new()));
        let announce = Arc::new(Notify::new());
        let channel = format!("{schema}_outbox");
        let application = outbox::relay_application(schema);
        let relays = Arc::new(AtomicUsize::new(1));
        let mut listener = config;
        listener.application_name(&application);
        tokio::spawn(outbox::listen(listener, channel.clone(), Arc::clone(&outbox_written)));
        tokio::spawn(outbox::announce(pool.clone(), channel, Arc::clone(&announce)));
        tokio::spawn(outbox::observe(pool.clone(), schema.clone()));
        tokio::spawn(outbox::count_relays(pool.clone(), application, Arc::clone(&relays)));
        let relay_round = Arc::new(AtomicU32::new(rand::random::<u32>()));
        let deleted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(outbox::vacuum(pool.clone(), Arc::clone(&deleted)));
        Ok(Self { pool, outbox_written, announce, relays, relay_round, deleted })
    }

    /// Called after a commit that wrote outbox rows: wakes the local relay at once and has the announcer
    /// NOTIFY the others, outside the writing transaction and coalesced under load.
    fn outbox_committed(&self) {
        outbox::wake_both(&self.outbox_written);
        self.announce.notify_one();
    }

    /// Writes a batch of changes with `write` in one transaction planned by key
    /// ([`Plans::Keyed`]), commits it, wakes the relays when it wrote messages, and returns every change's
    /// outcome in the batch's order. `write` fills in each outcome and says whether it wrote messages.
    async fn commit_batch<C: Sync>(
        &self,
        changes: &[C],
        write: impl AsyncFn(&Tx<'_>, &[C], &mut [Option<Outcome>]) -> Result<bool, BoxError> + Copy,
    ) -> Result<Vec<Outcome>, ChangeError> {
        let (outcomes, wrote_messages) = self
            .transaction(Plans::Keyed, ChangeError::Unexpected, async |tx| {
                let mut outcomes: Vec<Option<Outcome>> = changes.iter().map(|_| None).collect();
                let wrote = write(tx, changes, &mut outcomes).await.map_err(ChangeError::Unexpected)?;
                Ok((outcomes, wrote))
            })
            .await?;
        if wrote_messages {
            self.outbox_committed();
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.ok_or_else(|| ChangeError::Unexpected("a change of the batch was left out".into())))
            .collect()
    }

    /// Reads rows by key (`sql` over `params`) with [`Plans::Keyed`] planning, in a transaction of its
    /// own whose statements all travel in one round trip.
    async fn read_keyed(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, BoxError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        // A failed read leaves the transaction aborted, and `COMMIT` then rolls it back: the connection
        // goes back to the pool outside any transaction either way.
        let (begun, rows, ended) = tokio::join!(
            biased;
            client.batch_execute(Plans::Keyed.begin()),
            client.query(&statement, params),
            client.batch_execute("COMMIT")
        );
        begun?;
        ended?;
        Ok(rows?)
    }

    /// A pooled connection that is still open. A connection the server closed (restart, failover,
    /// `pg_terminate_backend`) is discarded here rather than failing the caller's first statement.
    async fn client(&self) -> Result<deadpool_postgres::Object, BoxError> {
        let attempts = self.pool.status().max_size + 1;
        for _ in 0..attempts {
            let client = self.pool.get().await?;
            if !client.is_closed() {
                return Ok(client);
            }
            drop(deadpool_postgres::Object::take(client));
        }
        Err("every pooled connection was closed".into())
    }

    /// Runs `work` in a transaction and commits it if `work` succeeds; if `work` fails, the transaction
    /// rolls back and `work`'s error is returned. `BEGIN` (with the planning settings) travels with the
    /// work's first statements, in one round trip: the driver's own transaction waits for its `BEGIN`
    /// before anything else is sent, a round trip per transaction on the hottest paths. Should the caller
    /// stop waiting midway, the connection is closed rather than returned to the pool, and the server
    /// rolls back. A connection the server closed is only noticed when used, so a transaction whose
    /// `BEGIN` failed on a closed connection runs again on another one (a clone of `work`): nothing of it
    /// reached the server.
    /// Failures of the database itself become errors through `unexpected`.
    async fn transaction<T, E>(
        &self,
        plans: Plans,
        unexpected: fn(BoxError) -> E,
        work: impl AsyncFnOnce(&Tx<'_>) -> Result<T, E> + Clone,
    ) -> Result<T, E> {
        // A transaction of a traced operation (a request, a delivery) is a span of it; the relay's and
        // the jobs' own rounds are not traced, so they would only add a trace of one span each.
        let span = match tracing::Span::current().is_none() {
            true => tracing::Span::none(),
            false => tracing::info_span!(
                "transaction",
                otel.name = "postgresql transaction",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
                db.system.name = "postgresql",
            ),
        };
        let mut attempts = 3;
        loop {
            let held = HeldTransaction(Some(self.client().await.map_err(unexpected)?));
            let Some(client) = held.0.as_ref() else { return Err(unexpected(LOST.into())) };
            let tx = Tx(client);
            // `biased`: `BEGIN` is sent before the work's first statement.
            let attempt = work.clone();
            let (begun, value) = tokio::join!(biased; client.batch_execute(plans.begin()), attempt(&tx));
            match begun {
                Err(error) if error.is_closed() && attempts > 1 => {
                    attempts -= 1;
                    continue;
                }
                Err(error) => return Err(unexpected(error.into())),
                Ok(()) => {}
            }
            let value = match value {
                Ok(value) => value,
                Err(error) => {
                    // A rollback that fails leaves the connection to be closed, which rolls back as well.
                    let _ = held.finish("ROLLBACK").await;
                    return Err(error);
                }
            };
            if let Err(error) = held.finish("COMMIT").await {
                orderflow_ports::trace::mark_failed(&span, &error.to_string());
                return Err(unexpected(error.into()));
            }
            return Ok(value);
        }
    }
}

/// An open transaction's connection: what its statements are sent on.
struct Tx<'a>(&'a deadpool_postgres::Object);

impl std::ops::Deref for Tx<'_> {
    type Target = deadpool_postgres::ClientWrapper;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

/// What a [`HeldTransaction`] without its connection says: none is made so.
const LOST: &str = "the transaction's connection is gone";

/// A transaction begun on a pooled connection and ended by [`HeldTransaction::finish`]. Dropped before
/// that (a caller that stopped waiting, a relay whose task ended mid-publish), its connection is closed
/// instead of going back to the pool: the server then rolls the transaction back and frees what it held,
/// and no statement has to be sent from `Drop`.
struct HeldTransaction(Option<deadpool_postgres::Object>);

impl HeldTransaction {
    /// Runs `sql`, which ends the transaction (its last statement a `COMMIT` or `ROLLBACK`).
    async fn finish(mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        let Some(client) = self.0.as_ref() else { return Ok(()) };
        client.batch_execute(sql).await?;
        self.0 = None;
        Ok(())
    }
}

impl Drop for HeldTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// How a transaction's statements are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plans {
    /// Prepared statements keep the plan the server settles on: right for statements on one row.
    Cached,
    /// For transactions whose every statement finds its rows by key (a placement, a batch): each
    /// prepared statement is planned once per connection, and never as a scan of a whole table.
    /// Left to itself the server plans a statement over an array anew at every call (a plan for two
    /// keys looks cheaper than one for any number): planning took a quarter of PostgreSQL's statement
    /// time under load, `outbox_partition` parsed and inlined at each planning. A plan made once
    /// must not depend on the table's statistics, though: one made while a table is young (or
    /// analyzed while empty) scans it, and would go on scanning it as it grows until the next
    /// `ANALYZE` (4 ms a batch in the benchmark, which never waits that long). With sequential scans
    /// disabled the planner takes the primary key whatever the statistics say.
    Keyed,
}

impl Plans {
    /// What begins a transaction planned so.
    const fn begin(self) -> &'static str {
        match self {
            Self::Cached => "BEGIN",
            Self::Keyed => BEGIN_KEYED,
        }
    }
}

/// Begins a transaction of [`Plans::Keyed`].
const BEGIN_KEYED: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// Why a batch's version-checked update refused these rows of `table`, given as `(id, expected version)`:
/// [`ChangeError::NotFound`] for an id the table does not hold, [`ChangeError::Conflict`] for the others.
async fn refusals(
    tx: &Tx<'_>,
    table: &str,
    refused: &[(uuid::Uuid, u32)],
) -> Result<Vec<ChangeError>, tokio_postgres::Error> {
    let ids: Vec<uuid::Uuid> = refused.iter().map(|(id, _)| *id).collect();
    let statement = tx.prepare_cached(&format!("SELECT id FROM {table} WHERE id = ANY($1)")).await?;
    let existing: std::collections::HashSet<uuid::Uuid> =
        tx.query(&statement, &[&ids]).await?.iter().map(|r| r.get(0)).collect();
    Ok(refused
        .iter()
        .map(|(id, expected)| match existing.contains(id) {
            true => ChangeError::Conflict { expected: *expected },
            false => ChangeError::NotFound,
        })
        .collect())
}

/// Creates the schema and applies the service's migrations under an advisory lock, so replicas starting
/// together take turns instead of racing.
async fn migrate(config: &tokio_postgres::Config, schema: &str, service: Service) -> Result<(), PgSetupError> {
    let (mut client, connection) = config.connect(NoTls).await.map_err(setup_failed)?;
    let driver = tokio::spawn(connection);
    let lock = format!("orderflow-migrate-{schema}");
    client.execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock]).await.map_err(setup_failed)?;
    let result = async {
        client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await.map_err(setup_failed)?;
        let runner = match service {
            Service::Sales => sales_migrations::migrations::runner(),
            Service::Delivery => delivery_migrations::migrations::runner(),
        };
        runner.run_async(&mut client).await.map_err(setup_failed)?;
        Ok(())
    }
    .await;
    // Closing the session releases the advisory lock even if the unlock below is never reached.
    let _ = client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock]).await;
    drop(client);
    let _ = driver.await;
    result
}

fn unexpected(error: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(error)
}

/// Reads a JSON column into a domain type.
fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, BoxError> {
    Ok(serde_json::from_value(value)?)
}

#[cfg(all(test, feature = "contract"))]
mod tests;
