//! The audit stream end to end: both services as separate processes append every event of every order to
//! the test's Kafka topic through their outboxes, and an analyst's consumer group reads each order's history
//! in lifecycle order from one partition — also when Kafka was down while the orders flowed. These tests
//! create vhosts on the shared RabbitMQ broker, so they run one at a time with the other broker tests
//! (nextest group of `on_rabbitmq*`).

mod processes;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use orderflow_adapters::contract::postgres::database_url;
use orderflow_adapters::kafka::{AuditReader, AuditRecord, HEADER_ID, KafkaSettings, ReadOptions};
use processes::{Kind, Options, Services};
use uuid::Uuid;

const SKU: &str = "SKU-E2E-AUDIT";

/// The audit events Sales appends for an order that is delivered, in the order they happen.
const SALES_LIFECYCLE: [&str; 4] = [
    "orderflow.order.placed.v1",
    "orderflow.order.paid.v1",
    "orderflow.order.shipped.v1",
    "orderflow.order.delivered.v1",
];

/// The audit events Delivery appends for the same order's shipment, in the order they happen.
const DELIVERY_LIFECYCLE: [&str; 3] =
    ["orderflow.shipment.created.v1", "orderflow.shipment.shipped.v1", "orderflow.shipment.delivered.v2"];

/// The settings an analyst's client would use for the test's topic.
fn kafka_settings(s: &Services) -> KafkaSettings {
    KafkaSettings { topic: s.audit_topic().to_owned(), ..KafkaSettings::new(s.kafka_brokers()) }
}

/// What the consumer group read, per order (the record key), in the order it arrived.
#[derive(Debug, Default)]
struct Trail {
    by_order: HashMap<String, Vec<AuditRecord>>,
    records: usize,
}

impl Trail {
    /// The distinct event types read for an order.
    fn types_of(&self, order: &str) -> BTreeSet<&str> {
        self.by_order.get(order).map(|r| r.iter().map(|r| r.event.event_type.as_str()).collect()).unwrap_or_default()
    }

    /// Whether every event of every order in `orders` has been read.
    fn complete_for(&self, orders: &[String]) -> bool {
        orders.iter().all(|order| {
            let types = self.types_of(order);
            SALES_LIFECYCLE.iter().chain(&DELIVERY_LIFECYCLE).all(|t| types.contains(t))
        })
    }
}

/// Reads the test's topic from the beginning with a consumer group of its own until every event of every
/// order in `orders` has arrived, for at most `within`.
async fn read_trail(s: &Services, orders: &[String], within: Duration) -> anyhow::Result<Trail> {
    let group = format!("e2e-audit-check-{}", Uuid::new_v4().simple());
    let options = ReadOptions { from_beginning: true, group: Some(group) };
    let reader = AuditReader::open(&kafka_settings(s), &options).await.map_err(|e| anyhow::anyhow!(e))?;
    let deadline = tokio::time::Instant::now() + within;
    let mut trail = Trail::default();
    while !trail.complete_for(orders) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(next) = tokio::time::timeout(left, reader.next()).await else {
            let missing: Vec<String> = orders
                .iter()
                .filter_map(|order| {
                    let types = trail.types_of(order);
                    let absent: Vec<&str> = SALES_LIFECYCLE
                        .iter()
                        .chain(&DELIVERY_LIFECYCLE)
                        .copied()
                        .filter(|t| !types.contains(t))
                        .collect();
                    (!absent.is_empty()).then(|| format!("{order}: {absent:?}"))
                })
                .collect();
            bail!(
                "after {within:?} and {} records, {} of {} orders still miss events:\n{}",
                trail.records,
                missing.len(),
                orders.len(),
                missing.join("\n")
            );
        };
        let record = next?;
        trail.records += 1;
        let key = record.key.clone().context("an audit record without a key")?;
        trail.by_order.entry(key).or_default().push(record);
    }
    Ok(trail)
}

/// Checks the audit trail of each of `orders`: its records are keyed by the order and sit in one partition;
/// after de-duplication on the event id, Sales's events are exactly placed, paid, shipped, delivered and
/// Delivery's exactly created, shipped, delivered, each in that order of offsets. Returns how many
/// duplicates (at-least-once redeliveries) were dropped.
fn check_trail(trail: &Trail, orders: &[String]) -> anyhow::Result<usize> {
    let mut duplicates = 0;
    for order in orders {
        let mut records: Vec<&AuditRecord> = trail.by_order.get(order).map(|r| r.iter().collect()).unwrap_or_default();
        let partitions: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
        ensure!(partitions.len() == 1, "order {order}'s records are spread over partitions {partitions:?}");
        records.sort_by_key(|r| r.offset);
        let mut seen = BTreeSet::new();
        let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for record in records {
            let id = record.event.id.to_string();
            ensure!(record.event.subject == *order, "record {id} under key {order} concerns {}", record.event.subject);
            let header = record.headers.iter().find(|(k, _)| k == HEADER_ID).map(|(_, v)| v.as_str());
            ensure!(header == Some(id.as_str()), "record {id} has the {HEADER_ID} header {header:?}");
            if !seen.insert(id) {
                duplicates += 1;
                continue;
            }
            by_source.entry(record.event.source.as_str()).or_default().push(record.event.event_type.as_str());
        }
        let sales = by_source.remove("sales-api").unwrap_or_default();
        let delivery = by_source.remove("delivery-api").unwrap_or_default();
        ensure!(sales == SALES_LIFECYCLE, "order {order}: Sales's audit events in partition order are {sales:?}");
        ensure!(
            delivery == DELIVERY_LIFECYCLE,
            "order {order}: Delivery's audit events in partition order are {delivery:?}"
        );
        ensure!(by_source.is_empty(), "order {order} has audit events from {:?}", by_source.keys());
    }
    Ok(duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_of_every_order_reaches_the_audit_topic_in_lifecycle_order() -> anyhow::Result<()> {
    let s = Services::start(Options { autopilot: Some(("100ms", "100ms")), ..Options::default() }).await?;
    s.put_product(SKU, 100, 1_000).await?;
    let ids = s.place_many(50, "audit", SKU).await?;
    s.wait_all_delivered(&ids, Duration::from_secs(60)).await?;
    let trail = read_trail(&s, &ids, Duration::from_secs(60)).await?;
    let duplicates = check_trail(&trail, &ids)?;
    let ours: BTreeSet<&String> = ids.iter().collect();
    let strangers: Vec<&String> = trail.by_order.keys().filter(|k| !ours.contains(k)).collect();
    ensure!(strangers.is_empty(), "the test's topic has records of orders it did not place: {strangers:?}");
    println!("{} orders, {} audit records read, {duplicates} duplicates dropped", ids.len(), trail.records);
    Ok(())
}

/// A tansu broker of this test's own, on a free port, so stopping it does not disturb other tests. Stopped
/// when dropped.
struct PrivateKafka {
    port: u16,
}

impl PrivateKafka {
    async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let kafka = Self { port };
        kafka.run("start").await?;
        Ok(kafka)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn run(&self, action: &'static str) -> anyhow::Result<()> {
        let port = self.port;
        tokio::task::spawn_blocking(move || Self::script(port, action)).await?
    }

    fn script(port: u16, action: &str) -> anyhow::Result<()> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/scripts/kafka.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(action)
            .env("KAFKA_PORT", port.to_string())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(
            output.status.success(),
            "kafka.sh {action} on port {port} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = Self::script(self.port, "stop");
    }
}

/// Outbox rows of `schema` whose audit record Kafka has not acknowledged yet.
async fn audit_pending(db: &tokio_postgres::Client, schema: &str) -> anyhow::Result<i64> {
    let row = db.query_one(&format!("SELECT count(*) FROM \"{schema}\".audit_outbox"), &[]).await?;
    Ok(row.get(0))
}

/// Outbox rows of all the test's schemas whose audit record Kafka has not acknowledged yet.
async fn audit_pending_total(db: &tokio_postgres::Client, s: &Services) -> anyhow::Result<i64> {
    let mut total = 0;
    for schema in s.schemas() {
        total += audit_pending(db, schema).await?;
    }
    Ok(total)
}

/// Waits until no outbox row of the test owes Kafka its audit record, for at most `within`.
async fn audit_drained(db: &tokio_postgres::Client, s: &Services, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let pending = audit_pending_total(db, s).await?;
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{pending} outbox rows still owe Kafka their audit record after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both services on a tansu of the test's own, with `orders` orders placed, delivered and audited while it
/// is up; returns the broker, the services, a database client and those orders.
async fn on_private_kafka(
    orders: usize,
    customer: &str,
) -> anyhow::Result<(PrivateKafka, Services, tokio_postgres::Client, Vec<String>)> {
    let kafka = PrivateKafka::start().await?;
    let s = Services::start(Options {
        autopilot: Some(("100ms", "100ms")),
        kafka_brokers: Some(kafka.brokers()),
        ..Options::default()
    })
    .await?;
    let (db, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    s.put_product(SKU, 100, 1_000).await?;
    let placed = s.place_many(orders, customer, SKU).await?;
    s.wait_all_delivered(&placed, Duration::from_secs(30)).await?;
    audit_drained(&db, &s, Duration::from_secs(30)).await.context("with Kafka up")?;
    Ok((kafka, s, db, placed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_complete_while_kafka_is_down_and_the_audit_trail_completes_after_it_returns() -> anyhow::Result<()> {
    // The broker comes first, so it is stopped after the services are killed.
    let (kafka, s, db, before) = on_private_kafka(10, "kafka-up").await?;

    kafka.run("stop").await?;
    let during = s.place_many(20, "kafka-down", SKU).await?;
    s.wait_all_delivered(&during, Duration::from_secs(45)).await.context("orders placed while Kafka is down")?;
    // Still down: the orders completed over RabbitMQ while their audit records wait in the outboxes, and
    // a send is no acknowledgement.
    let pending = audit_pending_total(&db, &s).await?;
    ensure!(pending > 0, "no outbox row owes Kafka its audit record while Kafka is down");
    for schema in s.schemas() {
        ensure!(audit_pending(&db, schema).await? > 0, "{schema} owes Kafka nothing while Kafka is down");
    }
    println!("{pending} audit records wait in the outboxes while Kafka is down");

    kafka.run("start").await?;
    let after = s.place_many(10, "kafka-back", SKU).await?;
    s.wait_all_delivered(&after, Duration::from_secs(30)).await?;
    // A send in flight when the broker returned fails within the 3 s message timeout, the relay retries as
    // soon as a broker answers, the topic is recreated and a new producer drains the rest.
    audit_drained(&db, &s, Duration::from_secs(60)).await.context("after Kafka is back")?;

    // tansu (the local broker) keeps its data in memory: the restart lost the topic with every record
    // acknowledged before the stop, and the services recreated it. So completeness is asserted for the
    // orders whose events were still in the outboxes when the broker went down and for those placed
    // after it returned; with a durable broker the orders placed before the outage would be there too.
    let mut expected: Vec<String> = during.iter().chain(&after).cloned().collect();
    expected.sort();
    let trail = read_trail(&s, &expected, Duration::from_secs(30)).await?;
    let duplicates = check_trail(&trail, &expected)?;
    let before_seen = before.iter().filter(|id| trail.by_order.contains_key(*id)).count();
    println!(
        "{} orders checked, {} audit records read, {duplicates} duplicates dropped; {before_seen} of {} orders \
         placed before the outage still have records after the in-memory broker's restart",
        expected.len(),
        trail.records,
        before.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_stream_resumes_within_five_seconds_of_kafka_returning() -> anyhow::Result<()> {
    // The broker comes first, so it is stopped after the services are killed.
    let (kafka, s, db, _) = on_private_kafka(2, "resume-up").await?;

    kafka.run("stop").await?;
    let during = s.place_many(10, "resume-down", SKU).await?;
    s.wait_all_delivered(&during, Duration::from_secs(45)).await?;
    // Long enough for the relays to be deep in their back-off, with appends in flight.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let owed = audit_pending_total(&db, &s).await?;
    ensure!(owed > 0, "no audit record waits while Kafka is down");

    kafka.run("start").await?;
    let back = std::time::Instant::now();
    let mut first = None;
    loop {
        let pending = audit_pending_total(&db, &s).await?;
        if first.is_none() && pending < owed {
            first = Some(back.elapsed());
        }
        if pending == 0 {
            break;
        }
        ensure!(
            back.elapsed() < Duration::from_secs(60),
            "{pending} audit records still owed a minute after Kafka returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (first, all) = (first.unwrap_or_default(), back.elapsed());
    println!("{owed} audit records owed; the first acknowledged {first:?} and the last {all:?} after Kafka returned");
    ensure!(first <= Duration::from_secs(5), "the audit stream resumed {first:?} after Kafka returned (at most 5 s)");
    let mut expected = during.clone();
    expected.sort();
    let trail = read_trail(&s, &expected, Duration::from_secs(30)).await?;
    check_trail(&trail, &expected)?;
    Ok(())
}

/// Places `count` single-unit orders of `sku` over `fronts` (base URLs of Sales processes) in turn, 16 at
/// a time, and returns their ids.
async fn place_over(s: &Services, fronts: &[String], count: usize, prefix: &str) -> anyhow::Result<Vec<String>> {
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
        .map(|i| async move {
            let response = s
                .http
                .post(format!("{}/orders", fronts[i % fronts.len()]))
                .bearer_auth(&s.sales_token)
                .header("Idempotency-Key", Uuid::new_v4().to_string())
                .json(&support::order_body(&format!("{prefix}-{i}"), &[(SKU, 1)]))
                .send()
                .await?;
            support::string(&support::expect_status(response, reqwest::StatusCode::CREATED).await?["id"])
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// How many relays (replicas) share `schema`'s outbox, as PostgreSQL sees their listening connections.
async fn relays(db: &tokio_postgres::Client, schema: &str) -> anyhow::Result<i64> {
    let application = format!("orderflow relay {schema}");
    let row = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            &[&application],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_orders_trail_stays_in_lifecycle_order_with_three_sales_and_two_delivery_replicas_one_killed_and_one_stopped()
-> anyhow::Result<()> {
    let mut s = Services::start(Options { autopilot: Some(("50ms", "50ms")), ..Options::default() }).await?;
    let sales_b = s.add_replica(Kind::Sales).await?;
    let sales_c = s.add_replica(Kind::Sales).await?;
    let delivery_b = s.add_replica(Kind::Delivery).await?;
    s.put_product(SKU, 100, 10_000).await?;
    let (db, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let sales_schema = s.schemas()[0].clone();
    ensure!(relays(&db, &sales_schema).await? == 3, "three Sales relays share the outbox");
    let all = [s.sales_url(""), s.replica_url(sales_b, ""), s.replica_url(sales_c, "")];

    let mut ids = place_over(&s, &all, 800, "scale-a").await?;
    s.kill_replica(sales_c);
    s.kill_replica(delivery_b);
    let killed = std::time::Instant::now();
    while relays(&db, &sales_schema).await? > 2 {
        ensure!(killed.elapsed() < Duration::from_secs(30), "the killed replica's relay still holds its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let freed = killed.elapsed();
    ids.extend(place_over(&s, &all[..2], 600, "scale-b").await?);
    s.stop_replica(sales_b).await?;
    ids.extend(place_over(&s, &all[..1], 600, "scale-c").await?);

    s.wait_all_delivered(&ids, Duration::from_secs(150)).await?;
    let trail = read_trail(&s, &ids, Duration::from_secs(90)).await?;
    let duplicates = check_trail(&trail, &ids)?;
    for id in ids.iter().step_by(97) {
        let timeline = s.timeline(id).await?;
        ensure!(timeline == SALES_LIFECYCLE, "order {id}'s timeline is {timeline:?}: each step once, in order");
    }
    println!(
        "{} orders over 3 Sales and 2 Delivery processes; the killed Sales replica's partitions were free {freed:?} \
         after SIGKILL (the others recount within a second); {} audit records, {duplicates} duplicates dropped",
        ids.len(),
        trail.records
    );
    Ok(())
}
