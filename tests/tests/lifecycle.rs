//! Orders driven through both apps over HTTP: the happy path, payment failure, cancellations before and
//! after payment, the ship/cancel race, insufficient stock, and the audit stream.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use orderflow::dev::DevOptions;
use orderflow_adapters::simulated::PaymentSettings;
use orderflow_domain::OrderId;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{Harness, SKU, eventually, expect_status, order_body, string};
use uuid::Uuid;

fn order_id(id: &str) -> anyhow::Result<OrderId> {
    Ok(OrderId::from_uuid(Uuid::parse_str(id)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_goes_from_placed_to_delivered_across_both_apps() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;

    let response = h.place_raw(&order_body("cust-happy", &[(SKU, 3)]), None).await?;
    ensure!(response.status() == StatusCode::CREATED, "POST /orders answered {}", response.status());
    let location = response.headers().get("location").context("no Location header")?.to_str()?.to_owned();
    let order = response.json::<Value>().await?;
    let id = string(&order["id"])?;
    assert_eq!(location, format!("/orders/{id}"));
    assert_eq!(order["customer_id"], "cust-happy");
    assert_eq!(order["total"]["amount_minor"], 3 * 1999);
    assert_eq!(order["total"]["currency"], "EUR");
    assert_eq!(order["lines"][0]["unit_price"]["amount_minor"], 1999);
    assert_eq!(h.stock(SKU).await?, (10, 3), "placing reserves the stock");

    h.wait_for_status(&id, "pending_shipment").await?;
    let shipment = h.shipment_of(&id).await?;
    assert_eq!(shipment["status"], "pending");
    assert_eq!(shipment["order_id"], id.as_str());
    let shipment_id = string(&shipment["id"])?;

    let shipped = h.ship(&shipment_id).await?;
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(shipped["carrier"], "DHL");
    assert_eq!(shipped["tracking_number"], "TRACK-0001");
    h.wait_for_status(&id, "shipped").await?;
    assert_eq!(h.stock(SKU).await?, (7, 0), "shipping takes the units off the shelf and out of reserve");

    let delivered = h.deliver(&shipment_id).await?;
    assert_eq!(delivered["status"], "delivered");
    let order = h.wait_for_status(&id, "delivered").await?;
    assert_eq!(order["lines"][0]["quantity"], 3);
    assert_eq!(h.stock(SKU).await?, (7, 0));

    assert_eq!(
        h.timeline(&id).await?,
        [
            "orderflow.order.placed.v1",
            "orderflow.order.paid.v1",
            "orderflow.order.shipped.v1",
            "orderflow.order.delivered.v1",
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_payment_fails_the_order_and_releases_its_stock() -> anyhow::Result<()> {
    let mut options = DevOptions::for_tests();
    options.payment = PaymentSettings { decline_above_minor: 100, ..PaymentSettings::default() };
    let h = Harness::start_with(options).await?;
    h.put_product(SKU, 1999, 10).await?;

    let order = h.place("cust-declined", SKU, 2).await?;
    let id = string(&order["id"])?;
    h.wait_for_status(&id, "payment_failed").await?;
    assert_eq!(h.stock(SKU).await?, (10, 0));
    assert_eq!(h.timeline(&id).await?, ["orderflow.order.placed.v1", "orderflow.order.payment_failed.v1"]);
    let response = h.staff(reqwest::Method::GET, &format!("/shipments/by-order/{id}")).send().await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "an unpaid order is never shipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_before_payment_is_immediate_and_releases_the_stock() -> anyhow::Result<()> {
    let mut options = DevOptions::for_tests();
    options.payment = PaymentSettings { latency: Duration::from_millis(500), ..PaymentSettings::default() };
    let h = Harness::start_with(options).await?;
    h.put_product(SKU, 1999, 10).await?;

    let order = h.place("cust-early-cancel", SKU, 4).await?;
    let id = string(&order["id"])?;
    assert_eq!(order["status"], "pending_payment");
    let cancelled = expect_status(h.cancel(&id).await?, StatusCode::OK).await?;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(h.order(&id).await?["status"], "cancelled");
    assert_eq!(h.stock(SKU).await?, (10, 0));

    // Cancelling again is harmless.
    let again = expect_status(h.cancel(&id).await?, StatusCode::OK).await?;
    assert_eq!(again["status"], "cancelled");

    // The charge that may have been in flight (500 ms) must not revive the order: give it time to end,
    // then check that nothing moved.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.timeline(&id).await?, ["orderflow.order.placed.v1", "orderflow.order.cancelled.v1"]);
    assert_eq!(h.order(&id).await?["status"], "cancelled");
    assert_eq!(h.stock(SKU).await?, (10, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_after_payment_cancels_the_shipment_and_refunds() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (id, shipment) = h.paid_order_with_shipment("cust-late-cancel", SKU, 2).await?;

    let response = expect_status(h.cancel(&id).await?, StatusCode::OK).await?;
    assert_eq!(response["status"], "cancellation_requested");
    h.wait_for_status(&id, "cancelled").await?;
    h.wait_for_shipment_status(&id, "cancelled").await?;
    let ship = h
        .staff(Method::POST, &format!("/shipments/{shipment}/ship"))
        .json(&serde_json::json!({ "carrier": "DHL", "tracking_number": "TRACK-LATE" }))
        .send()
        .await?;
    let problem = expect_status(ship, StatusCode::CONFLICT).await?;
    assert_eq!(problem["detail"], "the shipment was cancelled", "staff are told why");
    assert_eq!(h.stock(SKU).await?, (10, 0));
    let oid = order_id(&id)?;
    eventually("the refund", || async { Ok(h.stack.payments.refunded(oid).then_some(())) }).await?;
    assert_eq!(
        h.timeline(&id).await?,
        [
            "orderflow.order.placed.v1",
            "orderflow.order.paid.v1",
            "orderflow.order.cancellation_requested.v1",
            "orderflow.order.cancelled.v1",
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_the_moment_payment_lands_still_cancels_the_shipment() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let order = h.place("cust-quick-cancel", SKU, 2).await?;
    let id = string(&order["id"])?;
    // No waiting for Delivery: the cancel request may reach it before the order to ship does.
    h.wait_for_status(&id, "pending_shipment").await?;
    let response = expect_status(h.cancel(&id).await?, StatusCode::OK).await?;
    assert_eq!(response["status"], "cancellation_requested");

    h.wait_for_status(&id, "cancelled").await?;
    h.wait_for_shipment_status(&id, "cancelled").await?;
    assert_eq!(h.stock(SKU).await?, (10, 0));
    let oid = order_id(&id)?;
    eventually("the refund", || async { Ok(h.stack.payments.refunded(oid).then_some(())) }).await?;
    assert!(h.stack.bus.dead_letters().is_empty(), "nothing was dead-lettered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_after_the_parcel_left_loses_the_race() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (id, shipment) = h.paid_order_with_shipment("cust-race", SKU, 1).await?;

    h.ship(&shipment).await?;
    let response = h.cancel(&id).await?;
    match response.status() {
        // Sales already knew it shipped.
        StatusCode::CONFLICT => {
            let problem = response.json::<Value>().await?;
            assert_eq!(problem["type"], "/problems/transition-not-allowed");
        }
        // The cancel landed before the ship report: it is requested, and then loses.
        StatusCode::OK => assert_eq!(response.json::<Value>().await?["status"], "cancellation_requested"),
        other => anyhow::bail!("cancel answered {other}: {}", response.text().await?),
    }
    h.wait_for_status(&id, "shipped").await?;
    assert_eq!(h.wait_for_shipment_status(&id, "shipped").await?["status"], "shipped");
    assert!(!h.stack.payments.refunded(order_id(&id)?), "a shipped order keeps its payment");
    assert_eq!(h.stock(SKU).await?, (9, 0));

    // Once Sales knows, a cancel is refused.
    let problem = expect_status(h.cancel(&id).await?, StatusCode::CONFLICT).await?;
    assert_eq!(problem["type"], "/problems/transition-not-allowed");
    assert_eq!(problem["detail"], "the order is shipped: it can no longer be cancelled", "the rule is named");
    assert_eq!(h.order(&id).await?["status"], "shipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_shipped_order_is_rejected() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (id, shipment) = h.paid_order_with_shipment("cust-shipped", SKU, 1).await?;
    h.ship(&shipment).await?;
    h.wait_for_status(&id, "shipped").await?;

    let response = h.cancel(&id).await?;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert_eq!(h.order(&id).await?["status"], "shipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_beyond_the_stock_is_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 5).await?;
    h.put_product("SKU-TEST-2", 500, 100).await?;
    h.put_product("SKU-TEST-3", 700, 0).await?;

    let body = order_body("cust-greedy", &[(SKU, 6), ("SKU-TEST-2", 1), ("SKU-TEST-3", 1)]);
    let response = h.place_raw(&body, None).await?;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem = response.json::<Value>().await?;
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    assert_eq!(problem["status"], 409);
    let mut skus: Vec<String> =
        problem["skus"].as_array().context("no `skus`")?.iter().map(string).collect::<anyhow::Result<_>>()?;
    skus.sort();
    assert_eq!(skus, [SKU, "SKU-TEST-3"]);

    assert!(h.orders_of("cust-greedy").await?.is_empty());
    assert_eq!(h.stock(SKU).await?, (5, 0));
    assert_eq!(h.stock("SKU-TEST-2").await?, (100, 0), "nothing was reserved, not even what was available");
    assert_eq!(h.stock("SKU-TEST-3").await?, (0, 0));

    // What is there can still be ordered in full.
    let order = h.place("cust-greedy", SKU, 5).await?;
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(h.stock(SKU).await?, (5, 5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_order_event_reaches_the_audit_stream() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (delivered, shipment) = h.paid_order_with_shipment("cust-audit", SKU, 1).await?;
    h.ship(&shipment).await?;
    h.wait_for_status(&delivered, "shipped").await?;
    h.deliver(&shipment).await?;
    h.wait_for_status(&delivered, "delivered").await?;
    let (cancelled, _) = h.paid_order_with_shipment("cust-audit", SKU, 1).await?;
    expect_status(h.cancel(&cancelled).await?, StatusCode::OK).await?;
    h.wait_for_status(&cancelled, "cancelled").await?;

    for id in [&delivered, &cancelled] {
        let timeline = h.timeline(id).await?;
        eventually(&format!("the audit stream to hold the timeline of {id}"), || async {
            let audited: Vec<String> = h
                .stack
                .audit
                .events()
                .into_iter()
                .filter(|e| e.subject == *id && e.event_type.starts_with("orderflow.order."))
                .map(|e| e.event_type)
                .collect();
            Ok((audited == timeline).then_some(()))
        })
        .await?;
    }
    let expected =
        ["orderflow.shipment.created.v1", "orderflow.shipment.shipped.v1", "orderflow.shipment.delivered.v2"];
    eventually("the shipment's events in the audit stream", || async {
        let shipment_events: Vec<String> = h
            .stack
            .audit
            .events()
            .into_iter()
            .filter(|e| e.subject == delivered && e.event_type.starts_with("orderflow.shipment."))
            .map(|e| e.event_type)
            .collect();
        Ok((shipment_events == expected).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_are_listed_newest_first_in_pages_and_by_status() -> anyhow::Result<()> {
    let mut options = DevOptions::for_tests();
    options.payment = PaymentSettings { decline_above_minor: 2500, ..PaymentSettings::default() };
    let h = Harness::start_with(options).await?;
    h.put_product(SKU, 1000, 100).await?;
    let mut placed = Vec::new();
    for quantity in [1, 2, 3, 1, 2] {
        placed.push(string(&h.place("cust-pages", SKU, quantity).await?["id"])?);
    }
    h.place("cust-someone-else", SKU, 1).await?;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut query = vec![("customer_id", "cust-pages".to_owned()), ("limit", "2".to_owned())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let response = h.sales(reqwest::Method::GET, "/orders").query(&query).send().await?;
        let page = expect_status(response, StatusCode::OK).await?;
        let items = page["items"].as_array().context("no items")?;
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|o| string(&o["id"])).collect::<anyhow::Result<Vec<_>>>()?);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "every order once, newest first");

    // The 3-unit order (3000 > 2500) is declined; the others are paid.
    let declined = &placed[2];
    h.wait_for_status(declined, "payment_failed").await?;
    for id in placed.iter().filter(|id| *id != declined) {
        h.wait_for_status(id, "pending_shipment").await?;
    }
    let response = h
        .sales(reqwest::Method::GET, "/orders")
        .query(&[("customer_id", "cust-pages"), ("status", "payment_failed")])
        .send()
        .await?;
    let page = expect_status(response, StatusCode::OK).await?;
    let ids: Vec<String> = page["items"]
        .as_array()
        .context("no items")?
        .iter()
        .map(|o| string(&o["id"]))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(ids, std::slice::from_ref(declined));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_handled_commands_cache_lookups_and_requests_refusals_under_their_operation() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let (id, _) = h.paid_order_with_shipment("cust-metrics", SKU, 1).await?;
    h.order(&id).await?;
    let unknown = format!("/orders/{}", uuid::Uuid::new_v4());
    expect_status(h.sales(reqwest::Method::GET, &unknown).send().await?, StatusCode::NOT_FOUND).await?;
    let anonymous = h.http.get(h.sales_url(&format!("/orders/{id}"))).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(h.http.get(h.sales_url("/health/live")).send().await?.status(), StatusCode::OK);
    let text = h.http.get(h.sales_url("/metrics")).send().await?.text().await?;
    for expected in [
        "orderflow_messages_total{outcome=\"done\",queue=\"payments.requested\"}",
        "orderflow_handler_seconds_bucket{queue=\"payments.requested\"",
        "orderflow_cache_lookups_total{result=\"hit\"}",
        "http_requests_total{method=\"POST\",operation=\"place_order\",status=\"201\"}",
        "http_requests_total{method=\"GET\",operation=\"get_order\",status=\"404\"} 1",
        "http_requests_total{method=\"GET\",operation=\"get_order\",status=\"401\"} 1",
        "http_requests_total{method=\"GET\",operation=\"health_live\",status=\"200\"} 1",
    ] {
        assert!(text.contains(expected), "/metrics lacks {expected}:\n{text}");
    }
    Ok(())
}
