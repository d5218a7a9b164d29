//! One order's trace across both services in one process (`orderflow dev`'s adapters), its spans caught
//! by an in-memory exporter: the client's `traceparent` is continued by the Sales request, the relay's
//! publications, Delivery's handling, the autopilot's steps and what Delivery sends back.

mod support;

use anyhow::{Context, ensure};
use delivery_api::workers::AutopilotSettings;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use orderflow::dev::DevOptions;
use reqwest::{Method, StatusCode};
use support::{Harness, SKU, order_body, string};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| format!("{:?} {} ({})", s.span_kind, s.name, s.span_context.trace_id()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_placed_with_a_traceparent_is_one_trace_from_the_sales_request_through_delivery_and_back()
-> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = orderflow_runtime::telemetry::tracer_provider("orderflow", Some(exporter.clone()));
    tracing_subscriber::registry().with(orderflow_runtime::telemetry::traces(&provider)).try_init()?;
    let autopilot = AutopilotSettings {
        ship_after: std::time::Duration::from_millis(50),
        deliver_after: std::time::Duration::from_millis(50),
    };
    let h = Harness::start_with(DevOptions { autopilot: Some(autopilot), ..DevOptions::for_tests() }).await?;
    h.put_product(SKU, 1999, 10).await?;

    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let placed = h
        .sales(Method::POST, "/orders")
        .header("traceparent", &traceparent)
        .json(&order_body("cust-traced", &[(SKU, 1)]))
        .send()
        .await?;
    ensure!(placed.status() == StatusCode::CREATED, "POST /orders answered {}", placed.status());
    let id = string(&placed.json::<serde_json::Value>().await?["id"])?;
    h.wait_for_status(&id, "delivered").await?;
    // The audit records are appended by the relay after the commits the wait above saw.
    let audited = support::eventually("the delivered order's audit record", || async {
        let events = h.stack.audit.events();
        Ok(events.iter().any(|e| e.subject == id && e.event_type == "orderflow.order.delivered.v1").then_some(events))
    })
    .await?;
    provider.force_flush()?;

    let spans: Vec<SpanData> = exporter
        .get_finished_spans()?
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE_ID)
        .collect();
    let has = |kind: SpanKind, name: &str| spans.iter().any(|s| s.span_kind == kind && s.name == name);
    let all = describe(&spans);
    assert!(has(SpanKind::Server, "POST /orders"), "the Sales request is a SERVER span of the client's trace:\n{all}");
    let server = spans.iter().find(|s| s.name == "POST /orders").context("the server span")?;
    assert_eq!(attribute(server, "http.route").as_deref(), Some("/orders"));
    assert_eq!(attribute(server, "http.response.status_code").as_deref(), Some("201"));
    assert!(has(SpanKind::Internal, "place order"), "the use case has its span:\n{all}");
    for published in ["publish payments.requested", "publish orders.created", "publish audit"] {
        assert!(has(SpanKind::Producer, published), "the relay's {published} is in the trace:\n{all}");
    }
    let consumed =
        ["process payments.requested", "process orders.created", "process orders.shipped", "process orders.delivered"];
    for consumed in consumed {
        assert!(has(SpanKind::Consumer, consumed), "{consumed} is in the trace:\n{all}");
    }
    let producer = spans.iter().find(|s| s.name == "publish orders.created").context("the relay's producer span")?;
    assert!(attribute(producer, "messaging.message.id").is_some_and(|id| !id.is_empty()), "the command's id");
    assert_eq!(attribute(producer, "messaging.batch.message_count"), None, "one message, not a batch");
    let delivery_consumer = spans.iter().find(|s| s.name == "process orders.created").context("Delivery's consumer")?;
    assert_eq!(attribute(delivery_consumer, "messaging.destination.name").as_deref(), Some("orders.created"));
    assert_eq!(
        delivery_consumer.parent_span_id,
        producer.span_context.span_id(),
        "alone in its round, it continues the publish"
    );
    for step in ["autopilot ship", "autopilot deliver"] {
        assert!(has(SpanKind::Internal, step), "the {step} step continues the order's trace:\n{all}");
    }
    for sent_back in ["publish orders.shipped", "publish orders.delivered"] {
        assert!(has(SpanKind::Producer, sent_back), "what Delivery sends back ({sent_back}) is in the trace:\n{all}");
    }

    let traced: Vec<_> = audited.iter().filter(|e| e.subject == id).collect();
    ensure!(!traced.is_empty(), "the order has audit records");
    for event in traced {
        let carried = event.traceparent.as_deref().unwrap_or_default();
        assert!(carried.contains(TRACE_ID), "the audit record {} carries the trace: {carried:?}", event.event_type);
    }
    Ok(())
}
