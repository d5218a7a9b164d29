//! `Idempotency-Key` on `POST /orders`: replays, a reused key with another body, a storm of concurrent
//! retries, and keys scoped to the client that sent them.

mod support;

use anyhow::Context;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use support::{Harness, SKU, expect_status, order_body, string};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_key_and_body_replay_the_first_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let body = order_body("cust-replay", &[(SKU, 2)]);

    let first = h.place_raw(&body, Some("key-replay-1")).await?;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none(), "the first response is not a replay");
    let first = first.json::<Value>().await?;

    let second = h.place_raw(&body, Some("key-replay-1")).await?;
    assert_eq!(second.status(), StatusCode::CREATED);
    let replayed = second.headers().get("idempotent-replayed").context("no Idempotent-Replayed header")?;
    assert_eq!(replayed.to_str()?, "true");
    let location = second.headers().get("location").context("no Location header")?.to_str()?.to_owned();
    let second = second.json::<Value>().await?;

    assert_eq!(first["id"], second["id"]);
    assert_eq!(location, format!("/orders/{}", string(&first["id"])?));
    assert_eq!(h.orders_of("cust-replay").await?.len(), 1);
    assert_eq!(h.stock(SKU).await?, (10, 2), "stock is reserved once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_key_with_another_body_is_refused() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let first = h.place_raw(&order_body("cust-reuse", &[(SKU, 2)]), Some("key-reuse-1")).await?;
    expect_status(first, StatusCode::CREATED).await?;

    let response = h.place_raw(&order_body("cust-reuse", &[(SKU, 3)]), Some("key-reuse-1")).await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let content_type = response.headers().get("content-type").context("no content type")?.to_str()?.to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem = response.json::<Value>().await?;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["field"], "Idempotency-Key");

    assert_eq!(h.orders_of("cust-reuse").await?.len(), 1);
    assert_eq!(h.stock(SKU).await?, (10, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn fifty_concurrent_retries_with_one_key_make_one_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 100).await?;
    let body = order_body("cust-storm", &[(SKU, 3)]);

    let responses = join_all((0..50).map(|_| async {
        let response = h.place_raw(&body, Some("key-storm-1")).await?;
        let status = response.status();
        let json = response.json::<Value>().await?;
        anyhow::Ok((status, json))
    }))
    .await;

    let mut ids = Vec::new();
    for response in responses {
        let (status, json) = response?;
        if status.is_success() {
            assert_eq!(status, StatusCode::CREATED);
            ids.push(string(&json["id"])?);
        } else {
            // A retry that arrives while the first request is still running is told to retry later.
            assert_eq!(status, StatusCode::CONFLICT, "{json}");
            assert_eq!(json["type"], "/problems/idempotency-key-in-flight", "{json}");
        }
    }
    assert!(!ids.is_empty(), "at least one request succeeds");
    assert!(ids.iter().all(|id| *id == ids[0]), "every success names the same order: {ids:?}");

    let orders = h.orders_of("cust-storm").await?;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["id"], ids[0].as_str());
    assert_eq!(h.stock(SKU).await?, (100, 3), "stock is reserved exactly once");

    // A retry after the storm is a plain replay.
    let late = h.place_raw(&body, Some("key-storm-1")).await?;
    assert_eq!(late.status(), StatusCode::CREATED);
    assert_eq!(late.json::<Value>().await?["id"], ids[0].as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_belong_to_the_client_that_sent_them() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let body = order_body("cust-two-clients", &[(SKU, 1)]);

    let as_sales = expect_status(h.place_raw(&body, Some("shared-key")).await?, StatusCode::CREATED).await?;
    let response = h
        .http
        .post(h.sales_url("/orders"))
        .bearer_auth(&h.admin_token)
        .header("Idempotency-Key", "shared-key")
        .json(&body)
        .send()
        .await?;
    assert!(response.headers().get("idempotent-replayed").is_none(), "another client's key is not replayed");
    let as_admin = expect_status(response, StatusCode::CREATED).await?;

    assert_ne!(as_sales["id"], as_admin["id"]);
    assert_eq!(h.orders_of("cust-two-clients").await?.len(), 2);
    assert_eq!(h.stock(SKU).await?, (10, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_without_a_key_are_not_deduplicated() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let body = order_body("cust-no-key", &[(SKU, 1)]);
    let first = expect_status(h.place_raw(&body, None).await?, StatusCode::CREATED).await?;
    let second = expect_status(h.place_raw(&body, None).await?, StatusCode::CREATED).await?;
    assert_ne!(first["id"], second["id"]);
    assert_eq!(h.orders_of("cust-no-key").await?.len(), 2);
    Ok(())
}
