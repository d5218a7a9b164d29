//! The RabbitMQ adapter against the real broker, each test in a vhost of its own: the command-bus contract
//! suite, then what only the broker shows: confirms of unroutable commands and frame sizes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::{EventId, OrderId};
use orderflow_messages::CancelRequested;
use orderflow_messages::{CloudEvent, EventBody, RoutingKey, Source};
use orderflow_ports::messaging::{
    CommandConsumer, CommandPublisher, DeadLetterAdmin, Delivery, HandlerOutcome, MessageHandler,
};
use orderflow_ports::system::HealthCheck;
use uuid::Uuid;

use super::{RabbitBroker, RabbitSettings};
use crate::contract::bus::{BusFixture, BusOptions, CommandBus, OTHER, QUEUE};

/// A vhost of its own for one test, deleted (with its queues) when the test ends.
struct TestVhost {
    name: String,
}

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs (is RabbitMQ installed?)");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

impl TestVhost {
    fn new() -> Self {
        let name = format!("t_{}", Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }

    fn settings(&self, delays: &[u64]) -> RabbitSettings {
        let base = std::env::var("TEST_AMQP_BASE").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned());
        RabbitSettings {
            retry_delays: delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
            prefetch: 8,
            ..RabbitSettings::new(format!("{base}/{}", self.name))
        }
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.name]);
    }
}

/// A vhost of its own per check, holding a broker with the contract's queues.
struct RabbitFixture {
    vhost: TestVhost,
}

#[async_trait]
impl BusFixture for RabbitFixture {
    async fn bus(&self, options: BusOptions) -> Arc<dyn CommandBus> {
        let delays: Vec<u64> =
            options.retry_delays.iter().map(|d| u64::try_from(d.as_millis()).expect("a short delay")).collect();
        let settings = RabbitSettings { prefetch: options.prefetch, ..self.vhost.settings(&delays) };
        Arc::new(RabbitBroker::connect(settings, &[QUEUE, OTHER]).await.expect("the broker answers"))
    }
}

mod contract {
    crate::command_bus_contract!(|| async { super::RabbitFixture { vhost: super::TestVhost::new() } });
}

fn event() -> CloudEvent {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let body = EventBody::of(order_id, &CancelRequested { order_id });
    CloudEvent::wrap(EventId::from_uuid(Uuid::now_v7()), Source::Sales, body, chrono::Utc::now(), None)
}

/// Records every delivery and refuses it as permanently failed.
#[derive(Default)]
struct Refuser {
    seen: Mutex<Vec<Delivery>>,
}

impl Refuser {
    fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl MessageHandler for Refuser {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.seen.lock().unwrap().push(delivery.clone());
        HandlerOutcome::Permanent("cannot be handled".into())
    }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_many_frames_long_is_delivered_whole_and_dead_lettered_whole() {
    let vhost = TestVhost::new();
    let queue = RoutingKey::OrdersCancelRequested;
    let broker = Arc::new(RabbitBroker::connect(vhost.settings(&[100]), &[queue]).await.unwrap());
    let handler = Arc::new(Refuser::default());
    let consumer = {
        let (broker, handler) = (Arc::clone(&broker), Arc::clone(&handler));
        tokio::spawn(async move { broker.consume(queue, handler).await })
    };
    let mut event = event();
    // Ten times the frame size asked of the broker, so the body travels in many frames both ways.
    event.data["note"] = serde_json::Value::String("x".repeat(10 * super::FRAME_MAX as usize));
    broker.publish(queue, &event).await.unwrap();
    let seen = eventually("the delivery", async || handler.seen().first().cloned()).await;
    assert_eq!(CloudEvent::decode(&seen.body).unwrap(), event);
    let letters = eventually("the dead letter", async || {
        let letters = broker.peek(queue, 10).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(CloudEvent::decode(&letters[0].body).unwrap(), event);
    broker.shutdown().await;
    consumer.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_max_in_the_url_is_what_the_connection_negotiates() {
    let vhost = TestVhost::new();
    let url = format!("{}?frame_max=8192", vhost.settings(&[100]).url);
    let (connection, _channel) = super::open_channel(&url).await.unwrap();
    assert_eq!(connection.configuration().frame_max(), 8192);
    let (connection, _channel) = super::open_channel(&vhost.settings(&[100]).url).await.unwrap();
    assert_eq!(connection.configuration().frame_max(), super::FRAME_MAX, "the default keeps lapin's buffers small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_the_broker_as_broker_up_while_it_answers() {
    let vhost = TestVhost::new();
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[RoutingKey::OrdersCreated]).await.unwrap();
    assert_eq!(HealthCheck::name(&broker), "broker");
    assert!(HealthCheck::check(&broker).await);

    rabbitmqctl(&["delete_vhost", &vhost.name]);
    let answered = HealthCheck::check(&broker).await;
    // Put back for the test's own clean-up.
    rabbitmqctl(&["add_vhost", &vhost.name]);
    assert!(!answered, "a broker that closed the connection and refuses a new one is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_key_no_queue_is_bound_to_is_an_error() {
    let vhost = TestVhost::new();
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[RoutingKey::OrdersCreated]).await.unwrap();
    assert!(
        broker.publish(RoutingKey::OrdersShipped, &event()).await.is_err(),
        "an unroutable message is not lost silently"
    );
    assert!(broker.publish(RoutingKey::OrdersCreated, &event()).await.is_ok(), "the publisher recovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_command_in_a_batch_fails_alone_and_the_rest_is_confirmed() {
    let vhost = TestVhost::new();
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[RoutingKey::OrdersCreated]).await.unwrap();
    let (first, stray, last) = (event(), event(), event());
    let batch =
        [(RoutingKey::OrdersCreated, &first), (RoutingKey::OrdersShipped, &stray), (RoutingKey::OrdersCreated, &last)];

    let published = broker.publish_all(&batch).await;

    assert_eq!(published.confirmed, [true, false, true]);
    assert!(published.failure.is_some(), "the unroutable command is reported");
    assert!(broker.publish(RoutingKey::OrdersCreated, &event()).await.is_ok(), "the publisher carries on");
}

/// How many deliveries of `queue` in `vhost` the broker counts as handed out and not yet acknowledged.
fn unacknowledged(vhost: &TestVhost, queue: RoutingKey) -> u64 {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "-p", &vhost.name, "name", "messages_unacknowledged"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue.as_str())
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("{queue:?} is listed: {}", String::from_utf8_lossy(&output.stdout)))
}

/// Handles deliveries in batches, all done, holding the first batch until `release` is sent.
struct FirstBatchHeld {
    batches: Mutex<Vec<usize>>,
    release: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl MessageHandler for FirstBatchHeld {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let first = {
            let mut batches = self.batches.lock().unwrap();
            batches.push(deliveries.len());
            batches.len() == 1
        };
        if first {
            let _ = self.release.subscribe().wait_for(|released| *released).await;
        }
        deliveries.iter().map(|_| HandlerOutcome::Done).collect()
    }
}

/// Later batches are acknowledged together (one `multiple` ack a batch where they can be), but never so
/// that an earlier batch still being handled is acknowledged with them: its deliveries stay with the
/// broker, unacknowledged, until it is done, so a crash meanwhile would hand them out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_still_being_handled_stays_unacknowledged_while_later_batches_are_acknowledged() {
    let vhost = TestVhost::new();
    let broker = Arc::new(RabbitBroker::connect(vhost.settings(&[100]), &[QUEUE]).await.unwrap());
    for _ in 0..8 {
        broker.publish(QUEUE, &event()).await.unwrap();
    }
    let handler = Arc::new(FirstBatchHeld { batches: Mutex::default(), release: tokio::sync::watch::channel(false).0 });
    let consumer = {
        let (broker, handler) = (Arc::clone(&broker), Arc::clone(&handler));
        tokio::spawn(async move { broker.consume(QUEUE, handler).await })
    };

    let first = eventually("all eight handed out", async || {
        let batches = handler.batches.lock().unwrap().clone();
        (batches.iter().sum::<usize>() == 8).then(|| batches[0])
    })
    .await;
    eventually("the later batches acknowledged", async || {
        (unacknowledged(&vhost, QUEUE) == first as u64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unacknowledged(&vhost, QUEUE), first as u64, "the held batch is still unacknowledged");

    handler.release.send_replace(true);
    eventually("the held batch acknowledged", async || (unacknowledged(&vhost, QUEUE) == 0).then_some(())).await;
    broker.shutdown().await;
    consumer.await.unwrap().unwrap();
    assert_eq!(broker.waiting(QUEUE).await.unwrap(), 0, "nothing went back to the queue");
}
