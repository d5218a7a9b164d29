//! The Kafka adapter against a real broker (tansu locally: `bash infra/scripts/kafka.sh start`; another with
//! `TEST_KAFKA_BROKERS`), each test on a topic of its own, deleted when the test ends: the audit-log contract
//! suite, then what only Kafka has (headers, partitions, the topic, readers, a broker going away).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::{EventId, OrderId};
use orderflow_messages::{CancelRequested, CloudEvent, EventBody, Source};
use orderflow_ports::messaging::AuditLog;
use orderflow_ports::system::HealthCheck;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::Producer;
use uuid::Uuid;

use super::{AuditReader, KafkaAuditLog, KafkaSettings, ReadOptions};
use crate::contract::audit::{AuditFixture, Audited};

/// The brokers under test; fails (never skips) when none listens, saying how to start one.
fn brokers() -> String {
    let brokers = std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&first)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no Kafka broker listens on {first}: run `bash infra/scripts/kafka.sh start` (or set TEST_KAFKA_BROKERS)"
    );
    brokers
}

/// A topic of its own for one test, deleted when the test ends.
struct TestTopic {
    settings: KafkaSettings,
}

impl TestTopic {
    fn new(partitions: i32) -> Self {
        let settings = KafkaSettings {
            topic: format!("test.audit.{}", Uuid::new_v4().simple()),
            partitions,
            message_timeout: Duration::from_secs(10),
            ..KafkaSettings::new(brokers())
        };
        Self { settings }
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let (brokers, topic) = (self.settings.brokers.clone(), self.settings.topic.clone());
        // Drop cannot await, and may run inside the test's runtime: delete from a runtime of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("an admin client");
                let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
                admin.delete_topics(&[&topic], &options).await
            })
        })
        .join();
        if !matches!(&deleted, Ok(Ok(results)) if results.iter().all(Result::is_ok)) {
            eprintln!("could not delete test topic {}: {deleted:?}", self.settings.topic);
        }
    }
}

fn event(order_id: OrderId, traceparent: Option<&str>) -> CloudEvent {
    let body = EventBody::of(order_id, &CancelRequested { order_id });
    CloudEvent::wrap(
        EventId::from_uuid(Uuid::now_v7()),
        Source::Sales,
        body,
        chrono::Utc::now(),
        traceparent.map(str::to_owned),
    )
}

fn new_order() -> OrderId {
    OrderId::from_uuid(Uuid::now_v7())
}

/// A Kafka audit log on a topic of its own (three partitions, so orders spread), read back with
/// [`AuditReader::history`], as `orderflow audit timeline` reads it.
struct KafkaFixture {
    log: Arc<KafkaAuditLog>,
    topic: TestTopic,
}

impl KafkaFixture {
    async fn new() -> Self {
        let topic = TestTopic::new(3);
        let log = Arc::new(KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects"));
        Self { log, topic }
    }
}

#[async_trait]
impl AuditFixture for KafkaFixture {
    fn log(&self) -> Arc<dyn AuditLog> {
        Arc::clone(&self.log) as Arc<dyn AuditLog>
    }

    async fn read(&self, subject: Option<&str>) -> Vec<Audited> {
        let records = AuditReader::history(&self.topic.settings, subject).await.expect("the topic is read");
        records.into_iter().map(|record| Audited { key: record.key, event: record.event }).collect()
    }
}

mod contract {
    crate::audit_log_contract!(|| async { super::KafkaFixture::new().await });
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn each_record_carries_the_type_id_and_traceparent_headers() {
    let topic = TestTopic::new(1);
    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let (traced, untraced) = (event(new_order(), Some(TRACEPARENT)), event(new_order(), None));
    log.append(&traced).await.expect("appended");
    log.append(&untraced).await.expect("appended");

    let records = AuditReader::history(&topic.settings, None).await.expect("read back");

    let headers: Vec<Vec<(String, String)>> = records.into_iter().map(|record| record.headers).collect();
    let header = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    assert_eq!(
        headers,
        [
            vec![
                header("ce_type", &traced.event_type),
                header("ce_id", &traced.id.to_string()),
                header("traceparent", TRACEPARENT)
            ],
            vec![header("ce_type", &untraced.event_type), header("ce_id", &untraced.id.to_string())],
        ]
    );
}

/// `orderflow audit timeline` reads with `history`: records appended together (batched by the producer)
/// must all be read back, the newest included.
#[tokio::test]
async fn history_reads_every_record_appended_concurrently_up_to_the_newest() {
    let topic = TestTopic::new(3);
    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let orders: Vec<OrderId> = (0..8).map(|_| new_order()).collect();
    let events: Vec<CloudEvent> = (0..80).map(|i| event(orders[i % orders.len()], None)).collect();
    futures::future::join_all(events.iter().map(|e| log.append(e)))
        .await
        .into_iter()
        .for_each(|r| r.expect("appended"));

    let records = AuditReader::history(&topic.settings, None).await.expect("read back");

    let mut read: Vec<String> = records.iter().map(|r| r.event.id.to_string()).collect();
    let mut sent: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    read.sort();
    sent.sort();
    assert_eq!(read, sent, "every appended record, once");
}

#[tokio::test]
async fn events_of_one_order_land_in_one_partition() {
    let topic = TestTopic::new(6);
    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let order = new_order();
    for _ in 0..10 {
        log.append(&event(order, None)).await.expect("appended");
        log.append(&event(new_order(), None)).await.expect("appended");
    }

    let records = AuditReader::history(&topic.settings, Some(&order.to_string())).await.expect("read back");

    assert_eq!(records.len(), 10);
    let partition = records[0].partition;
    assert!(records.iter().all(|r| r.partition == partition), "{records:?}");
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset), "in offset order");
}

#[tokio::test]
async fn append_fails_within_the_message_timeout_when_no_broker_listens() {
    let settings = KafkaSettings {
        topic: format!("test.audit.{}", Uuid::new_v4().simple()),
        message_timeout: Duration::from_secs(3),
        ..KafkaSettings::new("127.0.0.1:1")
    };

    // Before the topic is known to exist: creating it fails in time.
    let log = KafkaAuditLog::new(settings.clone()).expect("a producer needs no broker");
    let started = Instant::now();
    let result = log.append(&event(new_order(), None)).await;
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());

    // With the topic taken as existing: the delivery report times out.
    let log = KafkaAuditLog::new(settings).expect("a producer needs no broker");
    log.topic_ready.store(true, std::sync::atomic::Ordering::Release);
    let started = Instant::now();
    let result = log.append(&event(new_order(), None)).await;
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn connect_creates_the_topic_with_the_configured_partitions_and_accepts_an_existing_one() {
    let topic = TestTopic::new(4);

    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("creates the topic");
    KafkaAuditLog::connect(topic.settings.clone()).await.expect("accepts the existing topic");

    let (_, producer) = log.current();
    let name = topic.settings.topic.clone();
    let partitions = tokio::task::spawn_blocking(move || {
        let metadata = producer.client().fetch_metadata(Some(&name), Duration::from_secs(5)).expect("metadata");
        metadata.topics().iter().find(|t| t.name() == name).map(|t| t.partitions().len())
    })
    .await
    .expect("joined");
    assert_eq!(partitions, Some(4));
}

#[tokio::test]
async fn ping_says_whether_a_broker_answers() {
    let topic = TestTopic::new(1);
    let up = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let down = KafkaAuditLog::new(KafkaSettings::new("127.0.0.1:1")).expect("a producer needs no broker");

    assert!(up.ping().await);
    assert!(!down.ping().await);
}

#[tokio::test]
async fn readiness_reports_the_audit_log_as_audit_up_only_while_a_broker_answers() {
    let topic = TestTopic::new(1);
    let up = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let down = KafkaAuditLog::new(KafkaSettings::new("127.0.0.1:1")).expect("a producer needs no broker");

    assert_eq!(HealthCheck::name(&up), "audit");
    assert!(HealthCheck::check(&up).await);
    assert!(!HealthCheck::check(&down).await);
}

#[tokio::test]
async fn a_reader_without_a_group_reads_only_events_appended_after_it_opened() {
    let topic = TestTopic::new(2);
    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    log.append(&event(new_order(), None)).await.expect("appended");
    let reader = AuditReader::open(&topic.settings, &ReadOptions::default()).await.expect("opens");

    let new = event(new_order(), Some(TRACEPARENT));
    log.append(&new).await.expect("appended");
    let record = tokio::time::timeout(Duration::from_secs(15), reader.next()).await.expect("in time").expect("read");

    assert_eq!(record.event, new);
}

#[tokio::test]
async fn a_reader_in_a_group_from_the_beginning_reads_earlier_events() {
    let topic = TestTopic::new(2);
    let log = KafkaAuditLog::connect(topic.settings.clone()).await.expect("connects");
    let earlier = event(new_order(), None);
    log.append(&earlier).await.expect("appended");
    let options =
        ReadOptions { from_beginning: true, group: Some(format!("test-analysts-{}", Uuid::new_v4().simple())) };

    let reader = AuditReader::open(&topic.settings, &options).await.expect("opens");
    let record = tokio::time::timeout(Duration::from_secs(30), reader.next()).await.expect("in time").expect("read");

    assert_eq!(record.event, earlier);
}

/// A broker of its own on a free port (started with the script), for the one test that restarts it; the
/// shared broker is never stopped. Stopped when the test ends.
struct PrivateBroker {
    port: u16,
}

impl PrivateBroker {
    fn start() -> Self {
        brokers(); // The shared broker's presence says the script has installed tansu already.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let broker = Self { port };
        broker.script("start");
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, command: &str) {
        let status = std::process::Command::new("bash")
            .args(["infra/scripts/kafka.sh", command])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("KAFKA_PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash runs");
        assert!(status.success(), "kafka.sh {command} failed for port {}", self.port);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}

#[tokio::test]
async fn appends_fail_while_the_broker_is_down_and_succeed_once_it_is_back_even_if_it_lost_its_state() {
    let broker = PrivateBroker::start();
    let settings = KafkaSettings {
        topic: "orders.audit".to_owned(),
        partitions: 3,
        message_timeout: Duration::from_secs(3),
        ..KafkaSettings::new(broker.address())
    };
    let log = KafkaAuditLog::connect(settings.clone()).await.expect("connects");
    let before = event(new_order(), None);
    log.append(&before).await.expect("appended");

    broker.script("stop");
    let started = Instant::now();
    let while_down = log.append(&event(new_order(), None)).await;
    assert!(while_down.is_err(), "{while_down:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());

    // tansu keeps topics and producer ids in memory: after the restart both are gone.
    broker.script("start");
    let after = event(new_order(), None);
    log.append(&after).await.expect("appended once the broker is back");

    let records = AuditReader::history(&settings, None).await.expect("read back");
    let events: Vec<CloudEvent> = records.into_iter().map(|r| r.event).collect();
    assert_eq!(events, vec![after]);
}
