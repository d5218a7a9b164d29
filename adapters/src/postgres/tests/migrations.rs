//! Migrations against the real server: replicas starting together on one fresh schema take turns.

use std::sync::Arc;

use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use super::{TestSchema, database_url};
use crate::contract::fixtures::{eur, name, sku};
use crate::postgres::{PgDeliveryStore, PgSalesStore, PgSettings, delivery_migrations, sales_migrations};

/// `(version, name)` of every migration recorded in the schema.
async fn history(schema: &str) -> Vec<(i64, String)> {
    let mut config: tokio_postgres::Config = database_url().parse().expect("a valid URL");
    config.options(format!("-c search_path={schema}"));
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
        .query("SELECT version::bigint, name FROM refinery_schema_history ORDER BY version", &[])
        .await
        .expect("history read")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn expected(migrations: &[refinery::Migration]) -> Vec<(i64, String)> {
    migrations.iter().map(|m| (i64::from(m.version()), m.name().to_owned())).collect()
}

fn settings(schema: &TestSchema) -> PgSettings {
    PgSettings { pool_size: 2, ..schema.settings() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let schema = TestSchema::new();
    let barrier = Arc::new(Barrier::new(4));
    let mut replicas = JoinSet::new();
    for _ in 0..4 {
        let settings = settings(&schema);
        let barrier = Arc::clone(&barrier);
        replicas.spawn(async move {
            barrier.wait().await;
            PgSalesStore::connect(&settings).await
        });
    }

    let stores = replicas.join_all().await;

    for (i, store) in stores.into_iter().enumerate() {
        let store = store.unwrap_or_else(|e| panic!("replica {i} failed to start: {e:?}"));
        orderflow_ports::sales::SalesStore::put_product(&store, sku(&format!("MIG-{i}")), name("Mig"), eur(100), 1)
            .await
            .unwrap_or_else(|e| panic!("replica {i} cannot use its tables: {e:?}"));
    }
    let recorded = history(&schema.name).await;
    assert_eq!(
        recorded,
        expected(sales_migrations::migrations::runner().get_migrations()),
        "each migration is recorded exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_replicas_starting_together_migrate_once() {
    let schema = TestSchema::new();
    let barrier = Arc::new(Barrier::new(4));
    let mut replicas = JoinSet::new();
    for _ in 0..4 {
        let settings = settings(&schema);
        let barrier = Arc::clone(&barrier);
        replicas.spawn(async move {
            barrier.wait().await;
            PgDeliveryStore::connect(&settings).await.map(|_| ())
        });
    }

    let started = replicas.join_all().await;

    for (i, result) in started.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("replica {i} failed to start: {e:?}"));
    }
    assert_eq!(
        history(&schema.name).await,
        expected(delivery_migrations::migrations::runner().get_migrations()),
        "each migration is recorded exactly once"
    );
}
