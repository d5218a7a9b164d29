//! `orderflow dlq list|peek|replay|purge` run as the real binary against the real RabbitMQ, each test in a
//! vhost of its own (deleted at the end). These tests use the shared broker, so they run one at a time
//! with the other broker tests (nextest group `rabbitmq`, matched by this file's name).

mod support;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_messages::RoutingKey;
use serde_json::{Value, json};
use uuid::Uuid;

/// The retry delays of the test topology, passed to the CLI as `--retry-delays`.
const DELAYS: [Duration; 3] = [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)];
const DELAYS_FLAG: &str = "100ms,200ms,400ms";

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .context("running rabbitmqctl")?;
    ensure!(status.success(), "rabbitmqctl {args:?} failed");
    Ok(())
}

/// A vhost of the test's own with the topology declared as the services declare it; deleted on drop.
struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    async fn create() -> anyhow::Result<Self> {
        let name = format!("cli_{}", Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name])?;
        let vhost = Self { url: format!("amqp://guest:guest@127.0.0.1:5672/{name}"), name };
        rabbitmqctl(&["set_permissions", "-p", &vhost.name, "guest", ".*", ".*", ".*"])?;
        let settings = RabbitSettings { retry_delays: DELAYS.to_vec(), ..RabbitSettings::new(vhost.url.clone()) };
        RabbitBroker::connect(settings, &RoutingKey::ALL)
            .await
            .map_err(|e| anyhow::anyhow!("declaring the topology in {}: {e}", vhost.name))?;
        Ok(vhost)
    }

    async fn channel(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((connection, channel))
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// What would tell the CLI where the broker is and how its queues retry: the tests say it with flags.
const UNSET: &[&str] = &["AMQP_URL", "AMQP_RETRY_DELAYS"];

/// Runs `orderflow dlq <args…> --amqp-url URL --retry-delays …`, expecting success; returns stdout.
async fn dlq(vhost: &Vhost, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--amqp-url", &vhost.url, "--retry-delays", DELAYS_FLAG]);
    support::cli_output(&all, UNSET).await
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Dead-letters one CloudEvent in `orders.created.dlq`, as a consumer that gave up after 3 retries does.
async fn dead_letter(vhost: &Vhost, message_id: &str, body: &Value) -> anyhow::Result<()> {
    let (connection, channel) = vhost.channel().await?;
    let mut headers = FieldTable::default();
    headers.insert("x-error".into(), long_string("database unavailable"));
    headers.insert("x-original-queue".into(), long_string("orders.created"));
    headers.insert("x-failed-at".into(), long_string("2024-05-01T12:00:00Z"));
    headers.insert("x-retry-count".into(), AMQPValue::LongLongInt(3));
    headers.insert("traceparent".into(), long_string("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    let confirm = channel
        .basic_publish(
            "".into(),
            "orders.created.dlq".into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            &serde_json::to_vec(body)?,
            BasicProperties::default()
                .with_message_id(message_id.into())
                .with_delivery_mode(2)
                .with_content_type("application/cloudevents+json".into())
                .with_headers(headers),
        )
        .await?
        .await?;
    ensure!(matches!(confirm, Confirmation::Ack(None)), "the broker did not take the dead letter: {confirm:?}");
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// Messages waiting in `queue` (a passive declare).
async fn depth(vhost: &Vhost, queue: &str) -> anyhow::Result<u32> {
    let (connection, channel) = vhost.channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(declared.message_count())
}

fn event(id: &str, order_id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "sales-api",
        "type": "orderflow.order.paid.v1",
        "subject": order_id,
        "time": "2024-05-01T11:59:59Z",
        "datacontenttype": "application/json",
        "data": { "order_id": order_id },
    })
}

/// The rows of a table printed by the CLI, split on whitespace, without the header.
fn rows(table: &str) -> Vec<Vec<String>> {
    table.lines().skip(1).map(|line| line.split_whitespace().map(str::to_owned).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_peeked_and_replayed_to_its_queue_with_the_cli() -> anyhow::Result<()> {
    let vhost = Vhost::create().await?;
    let id = Uuid::new_v4().to_string();
    let order_id = Uuid::new_v4().to_string();
    let body = event(&id, &order_id);
    dead_letter(&vhost, &id, &body).await?;

    let list = dlq(&vhost, &["list"]).await?;
    let listed = rows(&list);
    assert_eq!(listed.len(), RoutingKey::ALL.len(), "one row per queue:\n{list}");
    for queue in RoutingKey::ALL {
        let expected = if queue == RoutingKey::OrdersCreated { "1" } else { "0" };
        let row = listed.iter().find(|row| row[0] == queue.as_str()).context("a queue is missing")?;
        assert_eq!(row.last().map(String::as_str), Some(expected), "depth of {}:\n{list}", queue.as_str());
    }

    let peeked = dlq(&vhost, &["peek", "orders.created", "--format", "jsonl"]).await?;
    let lines: Vec<&str> = peeked.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line per dead letter, nothing else:\n{peeked}");
    let entry: Value = serde_json::from_str(lines[0])?;
    assert_eq!(entry["message_id"], json!(id));
    assert_eq!(entry["type"], "orderflow.order.paid.v1");
    assert_eq!(entry["original_queue"], "orders.created");
    assert_eq!(entry["error"], "database unavailable");
    assert_eq!(entry["failed_at"], "2024-05-01T12:00:00.000Z");
    assert_eq!(entry["retries"], 3);
    assert_eq!(entry["body"], body);
    assert_eq!(depth(&vhost, "orders.created.dlq").await?, 1, "peeking leaves the message in place");

    let table = dlq(&vhost, &["peek", "orders.created"]).await?;
    assert!(table.starts_with("MESSAGE_ID"), "a table with a header:\n{table}");
    assert!(table.contains(&id) && table.contains("database unavailable"), "the dead letter's row:\n{table}");

    let replayed = dlq(&vhost, &["replay", "orders.created"]).await?;
    assert!(replayed.contains("moved 1 message"), "the count is reported: {replayed}");
    assert_eq!(depth(&vhost, "orders.created.dlq").await?, 0, "the dead-letter queue is empty");
    assert_eq!(depth(&vhost, "orders.created").await?, 1, "the message is back in its queue");
    let (connection, channel) = vhost.channel().await?;
    let got = channel
        .basic_get("orders.created".into(), BasicGetOptions { no_ack: true })
        .await?
        .context("no message in orders.created")?;
    assert_eq!(serde_json::from_slice::<Value>(&got.delivery.data)?, body, "the body is unchanged");
    assert_eq!(got.delivery.properties.message_id().as_ref().map(|m| m.as_str()), Some(id.as_str()));
    let headers = got.delivery.properties.headers().clone().unwrap_or_default();
    assert!(!headers.inner().contains_key("x-retry-count"), "the retry count is reset: {headers:?}");
    assert!(headers.inner().contains_key("traceparent"), "the trace context travels on: {headers:?}");
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_is_refused_without_yes_and_empties_the_dead_letter_queue_with_it() -> anyhow::Result<()> {
    let vhost = Vhost::create().await?;
    for _ in 0..2 {
        let id = Uuid::new_v4().to_string();
        dead_letter(&vhost, &id, &event(&id, &Uuid::new_v4().to_string())).await?;
    }
    let refused = support::run_cli(
        &["dlq", "purge", "orders.created", "--amqp-url", &vhost.url, "--retry-delays", DELAYS_FLAG],
        UNSET,
    )
    .await?;
    assert!(!refused.status.success(), "purge without --yes fails");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "the refusal says how to confirm: {stderr}");
    assert!(refused.stdout.is_empty(), "nothing on stdout");
    assert_eq!(depth(&vhost, "orders.created.dlq").await?, 2, "nothing was deleted");

    let purged = dlq(&vhost, &["purge", "orders.created", "--yes"]).await?;
    assert!(purged.contains("deleted 2 message"), "the count is reported: {purged}");
    assert_eq!(depth(&vhost, "orders.created.dlq").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delays_that_differ_from_the_services_are_explained() -> anyhow::Result<()> {
    let vhost = Vhost::create().await?;
    let output =
        support::run_cli(&["dlq", "list", "--amqp-url", &vhost.url, "--retry-delays", "1s,5s,25s"], UNSET).await?;
    assert!(!output.status.success(), "the broker refuses the other TTLs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--retry-delays"), "the error points at the flag: {stderr}");
    assert!(!stderr.contains("guest:guest"), "credentials stay out of messages: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_queue_is_an_error_listing_the_valid_ones() -> anyhow::Result<()> {
    for command in ["peek", "replay", "purge"] {
        let output =
            support::run_cli(&["dlq", command, "orders.nope", "--amqp-url", "amqp://127.0.0.1:1/%2f"], UNSET).await?;
        assert!(!output.status.success(), "{command} of an unknown queue fails");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("orders.nope"), "the error names the queue: {stderr}");
        for queue in RoutingKey::ALL {
            assert!(stderr.contains(queue.as_str()), "the error lists {}: {stderr}", queue.as_str());
        }
    }
    Ok(())
}
