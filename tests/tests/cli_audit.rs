//! `orderflow audit timeline|tail` run as the real binary against Kafka (tansu on 127.0.0.1:9092, started
//! by the test command), each test on a fresh topic of its own filled through the Kafka audit adapter.

mod support;

use std::time::Duration;

use anyhow::{Context, bail};
use orderflow_adapters::kafka::{KafkaAuditLog, KafkaSettings};
use orderflow_domain::EventId;
use orderflow_messages::CloudEvent;
use orderflow_ports::messaging::AuditLog;
use serde_json::{Value, json};
use uuid::Uuid;

const BROKERS: &str = "127.0.0.1:9092";
/// What would tell the CLI where the audit log is: the tests say it with flags.
const UNSET: &[&str] = &["KAFKA_BROKERS", "AUDIT_TOPIC"];

/// Runs `orderflow audit <args…> --brokers … --topic TOPIC`, expecting success; returns stdout.
async fn audit(topic: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--brokers", BROKERS, "--topic", topic]);
    support::cli_output(&all, UNSET).await
}

/// Every stdout line as JSON: jsonl output is nothing but CloudEvents.
fn events(stdout: &str) -> anyhow::Result<Vec<CloudEvent>> {
    stdout
        .lines()
        .map(|line| CloudEvent::decode(line.as_bytes()).with_context(|| format!("not an event: {line}")))
        .collect()
}

fn event(order_id: &str, short_type: &str, second: u32) -> anyhow::Result<CloudEvent> {
    Ok(CloudEvent {
        specversion: "1.0".to_owned(),
        id: EventId::from_uuid(Uuid::now_v7()),
        source: "sales-api".to_owned(),
        event_type: format!("orderflow.order.{short_type}.v1"),
        subject: order_id.to_owned(),
        time: chrono::DateTime::from_timestamp(1_714_564_800 + i64::from(second), 0).context("a valid time")?,
        datacontenttype: "application/json".to_owned(),
        data: json!({ "order_id": order_id }),
        traceparent: None,
    })
}

/// A fresh topic holding two orders' events, interleaved: `a` placed, paid, shipped and `b` placed, paid.
struct Stream {
    topic: String,
    a: Vec<CloudEvent>,
    b: Vec<CloudEvent>,
}

impl Stream {
    async fn fill() -> anyhow::Result<Self> {
        let reachable = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(BROKERS)).await;
        if !matches!(reachable, Ok(Ok(_))) {
            bail!("no Kafka broker on {BROKERS}: these tests need tansu running there (the test command starts it)");
        }
        let topic = format!("cli-audit-{}", Uuid::new_v4().simple());
        let settings = KafkaSettings {
            topic: topic.clone(),
            partitions: 3,
            message_timeout: Duration::from_secs(10),
            ..KafkaSettings::new(BROKERS)
        };
        let log = KafkaAuditLog::connect(settings).await.map_err(|e| anyhow::anyhow!("creating topic {topic}: {e}"))?;
        let (order_a, order_b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        let a = vec![event(&order_a, "placed", 0)?, event(&order_a, "paid", 2)?, event(&order_a, "shipped", 4)?];
        let b = vec![event(&order_b, "placed", 1)?, event(&order_b, "paid", 3)?];
        for e in [&a[0], &b[0], &a[1], &b[1], &a[2]] {
            log.append(e).await.with_context(|| format!("appending {}", e.event_type))?;
        }
        Ok(Self { topic, a, b })
    }
}

fn ids(events: &[CloudEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_prints_exactly_one_orders_events_oldest_first() -> anyhow::Result<()> {
    let stream = Stream::fill().await?;
    let order = stream.a[0].subject.clone();
    let printed = events(&audit(&stream.topic, &["timeline", &order, "--format", "jsonl"]).await?)?;
    assert_eq!(printed, stream.a, "order a's events, whole and in order");

    let table = audit(&stream.topic, &["timeline", &stream.b[0].subject, "--format", "table"]).await?;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and order b's two events:\n{table}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("PARTITION/OFFSET"), "the header: {}", lines[0]);
    for (line, expected) in lines[1..].iter().zip(&stream.b) {
        for column in [&expected.event_type, &expected.subject, &expected.source] {
            assert!(line.contains(column.as_str()), "{column} in {line}");
        }
        assert!(line.starts_with(&expected.time.format("%Y-%m-%dT%H:%M:%S").to_string()), "the time first: {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_of_an_order_without_events_is_an_error() -> anyhow::Result<()> {
    let stream = Stream::fill().await?;
    let unknown = Uuid::now_v7().to_string();
    let output =
        support::run_cli(&["audit", "timeline", &unknown, "--brokers", BROKERS, "--topic", &stream.topic], UNSET)
            .await?;
    assert!(!output.status.success(), "no events is a failure");
    assert!(output.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&unknown), "the error names the order: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_from_the_beginning_applies_the_type_filter_and_stops_at_the_limit() -> anyhow::Result<()> {
    let stream = Stream::fill().await?;
    let args = ["tail", "--from-beginning", "--limit", "2", "--type", "orderflow.order.paid.v1", "--format", "jsonl"];
    let printed = events(&audit(&stream.topic, &args).await?)?;
    let mut got = ids(&printed);
    got.sort_unstable();
    let mut expected = vec![stream.a[1].id, stream.b[1].id];
    expected.sort_unstable();
    assert_eq!(got, expected, "both paid events and nothing else");

    // The short form of a type works too.
    let args = ["tail", "--from-beginning", "--limit", "1", "--type", "order.shipped"];
    let printed = events(&audit(&stream.topic, &args).await?)?;
    assert_eq!(ids(&printed), [stream.a[2].id]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_one_order_prints_its_events_in_order() -> anyhow::Result<()> {
    let stream = Stream::fill().await?;
    let order = stream.b[0].subject.clone();
    let args = ["tail", "--from-beginning", "--order", &order, "--limit", "2"];
    let printed = events(&audit(&stream.topic, &args).await?)?;
    assert_eq!(printed, stream.b, "order b's events, oldest first (one order lives in one partition)");
    let values: Vec<Value> = printed.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
    assert!(values.iter().all(|v| v["subject"] == json!(order)));
    Ok(())
}
