//! The outbox tables are vacuumed by the service itself once its relays have deleted enough rows, not
//! only when autovacuum next wakes.

use std::time::{Duration, Instant};

use orderflow_messages::RoutingKey;
use orderflow_ports::outbox::{Destination, OutboxStore};
use orderflow_ports::sales::SalesStore;

use super::{TestSchema, database_url};
use crate::contract::fixtures::{message, message_ids};
use crate::postgres::PgSalesStore;

/// How often the schema's `table` was vacuumed by a `VACUUM` statement (autovacuum counts apart).
async fn vacuums(observer: &tokio_postgres::Client, schema: &str, table: &str) -> i64 {
    observer
        .query_one(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
            &[&schema, &table],
        )
        .await
        .expect("the table's statistics")
        .get(0)
}

/// Writes a thousand messages owed to both destinations, then takes and settles them as published: 2,000
/// rows deleted.
async fn publish_a_thousand_messages(store: &PgSalesStore) {
    store.enqueue((0..1_000).map(|_| message(Some(RoutingKey::OrdersCreated), true)).collect()).await.expect("owed");
    for destination in [Destination::Command, Destination::Audit] {
        let batch = store.take(destination, 1_000).await.expect("rows taken");
        let ids = message_ids(batch.messages());
        batch.settle(&ids).await.expect("published");
    }
}

#[tokio::test]
async fn outbox_tables_are_vacuumed_once_the_relays_have_deleted_thousands_of_rows() {
    let schema = TestSchema::new();
    let settings = schema.settings();
    let store = PgSalesStore::connect(&settings).await.expect("connect to PostgreSQL (is it running?)");
    let (observer, connection) =
        tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.expect("an observer connection");
    tokio::spawn(connection);

    publish_a_thousand_messages(&store).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vacuums(&observer, &settings.schema, "command_outbox").await, 0, "2,000 deleted rows are too few");

    publish_a_thousand_messages(&store).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (commands, audit) = (
            vacuums(&observer, &settings.schema, "command_outbox").await,
            vacuums(&observer, &settings.schema, "audit_outbox").await,
        );
        if commands > 0 && audit > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "4,000 deleted rows were not vacuumed within 10 s ({commands}, {audit})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
