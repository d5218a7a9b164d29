//! PostgreSQL for tests of anything that runs on it (the stores here, the relay in `orderflow-runtime`):
//! the server to use, a schema of its own per test, dropped when the test ends, and a plain connection
//! into it.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::NoTls;

use crate::postgres::PgSettings;

/// The server the tests use: `TEST_DATABASE_URL`, else `DATABASE_URL`, else the local default.
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema of its own for one test, dropped (with everything in it) when the test ends.
pub struct TestSchema {
    /// The schema's name.
    pub name: String,
}

impl TestSchema {
    /// A fresh name; the store that connects with [`TestSchema::settings`] creates the schema.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        Self { name: name[..40.min(name.len())].to_owned() }
    }

    /// Settings for a store in this schema.
    pub fn settings(&self) -> PgSettings {
        PgSettings { pool_size: 20, ..PgSettings::new(database_url(), &self.name) }
    }

    /// A plain connection of its own whose tables are this schema's.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub async fn connect_raw(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = database_url().parse().expect("a valid URL");
        config.options(format!("-c search_path={}", self.name));
        let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schemas(vec![self.name.clone()]);
    }
}

/// Drops schemas a test made, best effort, on a thread and a runtime of its own: it is called from `Drop`,
/// which runs outside any runtime guarantee (possibly inside one that is shutting down).
pub fn drop_schemas(names: Vec<String>) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&database_url(), NoTls).await.ok()?;
            tokio::spawn(connection);
            for name in names {
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await.ok()?;
            }
            Some(())
        })
    });
    let _ = cleanup.join();
}
