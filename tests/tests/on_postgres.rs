//! Both apps on their PostgreSQL stores (commands still on the in-process bus): the lifecycle, a
//! cancellation with refund, out of stock, and concurrent retries with one idempotency key — what the
//! in-memory runs show, shown again on the real database. Each test gets schemas of its own.

mod support;

use anyhow::ensure;
use futures::future::join_all;
use orderflow::dev::{DevOptions, DevPostgres};
use orderflow_adapters::contract::postgres::{database_url, drop_schemas};
use orderflow_domain::OrderId;
use reqwest::StatusCode;
use serde_json::Value;
use support::{Harness, SKU, eventually, expect_status, order_body, string};
use uuid::Uuid;

/// The two schemas of one test, dropped when it ends.
struct Schemas(Vec<String>);

impl Drop for Schemas {
    fn drop(&mut self) {
        drop_schemas(std::mem::take(&mut self.0));
    }
}

async fn start() -> anyhow::Result<(Harness, Schemas)> {
    let tag = Uuid::new_v4().simple().to_string();
    let (sales, delivery) = (format!("e2e_sales_{}", &tag[..12]), format!("e2e_delivery_{}", &tag[..12]));
    let schemas = Schemas(vec![sales.clone(), delivery.clone()]);
    let postgres = DevPostgres { url: database_url(), sales_schema: sales, delivery_schema: delivery };
    let harness = Harness::start_with(DevOptions { postgres: Some(postgres), ..DevOptions::for_tests() }).await?;
    Ok((harness, schemas))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_goes_from_placed_to_delivered_on_postgres() -> anyhow::Result<()> {
    let (h, _schemas) = start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (id, shipment) = h.paid_order_with_shipment("cust-pg", SKU, 3).await?;
    assert_eq!(h.stock(SKU).await?, (10, 3));
    h.ship(&shipment).await?;
    h.wait_for_status(&id, "shipped").await?;
    h.deliver(&shipment).await?;
    h.wait_for_status(&id, "delivered").await?;
    assert_eq!(h.stock(SKU).await?, (7, 0));
    assert_eq!(
        h.timeline(&id).await?,
        [
            "orderflow.order.placed.v1",
            "orderflow.order.paid.v1",
            "orderflow.order.shipped.v1",
            "orderflow.order.delivered.v1"
        ]
    );
    let audited = eventually("every event audited", || async {
        let count = h.stack.audit.events().iter().filter(|e| e.subject == id).count();
        Ok((count >= 7).then_some(count))
    })
    .await?;
    assert_eq!(audited, 7, "four order events and three shipment events (created, shipped, delivered)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_after_payment_refunds_and_releases_the_stock_on_postgres() -> anyhow::Result<()> {
    let (h, _schemas) = start().await?;
    h.put_product(SKU, 1999, 5).await?;
    let (id, _) = h.paid_order_with_shipment("cust-pg-cancel", SKU, 2).await?;
    let response = h.cancel(&id).await?;
    let order = expect_status(response, StatusCode::OK).await?;
    assert_eq!(order["status"], "cancellation_requested");
    h.wait_for_status(&id, "cancelled").await?;
    let order_id = OrderId::from_uuid(Uuid::parse_str(&id)?);
    eventually("the refund", || async { Ok(h.stack.payments.refunded(order_id).then_some(())) }).await?;
    assert_eq!(h.stock(SKU).await?, (5, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_beyond_the_stock_stores_nothing_on_postgres() -> anyhow::Result<()> {
    let (h, _schemas) = start().await?;
    h.put_product(SKU, 1999, 2).await?;
    h.put_product("SKU-TEST-2", 500, 100).await?;
    let response = h.place_raw(&order_body("cust-pg-short", &[("SKU-TEST-2", 1), (SKU, 3)]), None).await?;
    let problem = expect_status(response, StatusCode::CONFLICT).await?;
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    assert_eq!(problem["skus"], serde_json::json!([SKU]));
    assert!(h.orders_of("cust-pg-short").await?.is_empty());
    assert_eq!(h.stock("SKU-TEST-2").await?, (100, 0), "nothing was reserved, not even the SKU in stock");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_retries_with_one_key_make_one_order_on_postgres() -> anyhow::Result<()> {
    let (h, _schemas) = start().await?;
    h.put_product(SKU, 1999, 100).await?;
    let body = order_body("cust-pg-retry", &[(SKU, 1)]);
    let responses = join_all((0..30).map(|_| h.place_raw(&body, Some("pg-retry-key")))).await;
    let mut ids = Vec::new();
    for response in responses {
        let response = response?;
        ensure!(response.status() == StatusCode::CREATED, "a retry answered {}", response.status());
        ids.push(string(&response.json::<Value>().await?["id"])?);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry returns the same order");
    assert_eq!(h.orders_of("cust-pg-retry").await?.len(), 1);
    assert_eq!(h.stock(SKU).await?, (100, 1));
    Ok(())
}
