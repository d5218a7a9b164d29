//! Traces and logs of the real binaries: both services export their spans over OTLP/HTTP to a receiver
//! in the test, and one order placed with a client `traceparent` is one trace across both processes, the
//! brokers between them, their JSON logs and the audit stream.

mod processes;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use orderflow_adapters::kafka::{AuditReader, KafkaSettings};
use poem::web::Data;
use poem::{EndpointExt, Route, Server, handler, post};
use processes::{Options, Services};
use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::eventually;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// A span as the receiver got it: which service sent it, its kind, name and trace id.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    service: String,
    kind: SpanKind,
    name: String,
    trace_id: String,
}

type Spans = Arc<Mutex<Vec<Received>>>;

#[handler]
async fn traces(body: poem::Body, spans: Data<&Spans>) -> poem::Result<()> {
    let body = body.into_bytes().await?;
    let request = ExportTraceServiceRequest::decode(body).map_err(poem::error::BadRequest)?;
    let mut spans = spans.lock().map_err(|_| poem::error::InternalServerError(std::fmt::Error))?;
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                AnyValue::StringValue(name) => name,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    service: service.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    name: span.name,
                    trace_id: span.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                });
            }
        }
    }
    Ok(())
}

/// Starts the OTLP/HTTP receiver; returns its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`).
async fn receiver(spans: Spans) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let app = Route::new().at("/v1/traces", post(traces)).data(spans);
    let server = Server::new(poem::listener::TcpListener::bind(format!("127.0.0.1:{port}")));
    tokio::spawn(server.run(app));
    Ok(format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_placed_with_a_traceparent_is_one_exported_trace_across_both_processes_their_logs_and_the_audit()
-> anyhow::Result<()> {
    let spans = Spans::default();
    let endpoint = receiver(Arc::clone(&spans)).await?;
    let env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned())];
    let s = Services::start(Options { env, ..Options::default() }).await?;
    s.put_product("SKU-TRACED", 1999, 10).await?;

    let placed = s
        .sales(Method::POST, "/orders")
        .header("traceparent", format!("00-{TRACE_ID}-b7ad6b7169203331-01"))
        .json(&support::order_body("cust-traced", &[("SKU-TRACED", 1)]))
        .send()
        .await?;
    ensure!(placed.status() == StatusCode::CREATED, "POST /orders answered {}", placed.status());
    let id = support::string(&placed.json::<serde_json::Value>().await?["id"])?;
    s.wait_for_status(&id, "pending_shipment", Duration::from_secs(30)).await?;
    let shipment = support::string(&s.shipment_of(&id).await?["id"])?;
    let shipped = s
        .staff(Method::POST, &format!("/shipments/{shipment}/ship"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({ "carrier": "DHL", "tracking_number": "TRACK-OTLP" }))
        .send()
        .await?;
    ensure!(shipped.status() == StatusCode::OK, "ship answered {}", shipped.status());
    s.wait_for_status(&id, "shipped", Duration::from_secs(30)).await?;

    let expected = [
        ("sales-api", SpanKind::Server, "POST /orders"),
        ("sales-api", SpanKind::Producer, "publish payments.requested"),
        ("sales-api", SpanKind::Consumer, "process payments.requested"),
        ("sales-api", SpanKind::Producer, "publish orders.created"),
        ("delivery-api", SpanKind::Consumer, "process orders.created"),
        ("delivery-api", SpanKind::Client, "postgresql transaction"),
        ("delivery-api", SpanKind::Server, "POST /shipments/{id}/ship"),
        ("delivery-api", SpanKind::Producer, "publish orders.shipped"),
        ("sales-api", SpanKind::Consumer, "process orders.shipped"),
        ("sales-api", SpanKind::Producer, "publish audit"),
        ("delivery-api", SpanKind::Producer, "publish audit"),
    ];
    let exported = eventually("every span of the order's trace exported", || async {
        let got: Vec<Received> = spans.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        let traced: Vec<Received> = got.into_iter().filter(|r| r.trace_id == TRACE_ID).collect();
        let all = expected.iter().all(|(service, kind, name)| {
            traced.iter().any(|r| r.service == *service && r.kind == *kind && r.name == *name)
        });
        Ok(all.then_some(traced))
    })
    .await;
    let exported = exported.with_context(|| format!("exported: {:#?}", spans.lock().map(|s| s.clone())))?;
    ensure!(!exported.is_empty());

    let (sales_log, delivery_log) = s.logs();
    for (service, log) in [("sales-api", &sales_log), ("delivery-api", &delivery_log)] {
        let traced = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["trace_id"] == TRACE_ID && line["span_id"].as_str().is_some_and(|id| id.len() == 16))
            .count();
        assert!(traced > 0, "{service} logged lines naming the trace and span:\n{log}");
    }

    let settings = KafkaSettings { topic: s.audit_topic().to_owned(), ..KafkaSettings::new(s.kafka_brokers()) };
    let records = eventually("the order's audit records", || async {
        let records = AuditReader::history(&settings, Some(&id)).await.map_err(|e| anyhow::anyhow!(e))?;
        Ok(records.iter().any(|r| r.event.event_type == "orderflow.order.shipped.v1").then_some(records))
    })
    .await?;
    for record in records {
        let header = record.headers.iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v.as_str());
        assert!(
            header.is_some_and(|v| v.contains(TRACE_ID)),
            "the audit record {} carries the trace in its header: {header:?}",
            record.event.event_type
        );
    }
    Ok(())
}
