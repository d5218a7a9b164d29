//! The RabbitMQ adapter against the real broker, each test in a vhost of its own: confirmed publishing,
//! the retry ladder with its delays, dead-lettering, replay and purge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::{EventId, OrderId};
use orderflow_messages::CancelRequested;
use orderflow_messages::{CloudEvent, EventBody, RoutingKey, Source};
use orderflow_ports::messaging::{
    CommandConsumer, CommandPublisher, DeadLetterAdmin, Delivery, HandlerOutcome, MessageHandler,
};
use uuid::Uuid;

use super::{RabbitBroker, RabbitSettings};

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

fn event() -> CloudEvent {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let body = EventBody::of(order_id, &CancelRequested { order_id });
    CloudEvent::wrap(EventId::from_uuid(Uuid::now_v7()), Source::Sales, body, chrono::Utc::now(), None)
}

/// Records every delivery with the time it arrived, and answers as told.
struct Recorder {
    seen: Mutex<Vec<(Delivery, Instant)>>,
    failing: AtomicBool,
    permanent: bool,
}

impl Recorder {
    fn new(failing: bool, permanent: bool) -> Arc<Self> {
        Arc::new(Self { seen: Mutex::default(), failing: AtomicBool::new(failing), permanent })
    }

    fn seen(&self) -> Vec<(Delivery, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.seen.lock().unwrap().push((delivery.clone(), Instant::now()));
        match (self.failing.load(Ordering::SeqCst), self.permanent) {
            (false, _) => HandlerOutcome::Done,
            (true, true) => HandlerOutcome::Permanent("cannot be handled".into()),
            (true, false) => HandlerOutcome::Transient("database down".into()),
        }
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

async fn start(
    vhost: &TestVhost,
    delays: &[u64],
    handler: Arc<Recorder>,
) -> (Arc<RabbitBroker>, tokio::task::JoinHandle<()>) {
    let broker =
        Arc::new(RabbitBroker::connect(vhost.settings(delays), &[RoutingKey::OrdersCancelRequested]).await.unwrap());
    let task = consume_in_background(&broker, RoutingKey::OrdersCancelRequested, handler);
    (broker, task)
}

/// Consumes `queue` with `handler` on a task of its own until the broker shuts down.
fn consume_in_background(
    broker: &Arc<RabbitBroker>,
    queue: RoutingKey,
    handler: Arc<dyn MessageHandler>,
) -> tokio::task::JoinHandle<()> {
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        let _ = broker.consume(queue, handler).await;
    })
}

/// A broker on `vhost` with `count` commands already waiting in `queue`, no consumer yet.
async fn broker_with_queued(vhost: &TestVhost, queue: RoutingKey, count: usize) -> Arc<RabbitBroker> {
    let broker = Arc::new(RabbitBroker::connect(vhost.settings(&[100]), &[queue]).await.unwrap());
    for _ in 0..count {
        broker.publish(queue, &event()).await.unwrap();
    }
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_in_a_queue_until_its_consumer_takes_and_acks_them() {
    let vhost = TestVhost::new();
    let queue = RoutingKey::OrdersCancelRequested;
    let broker = broker_with_queued(&vhost, queue, 3).await;
    let before = eventually("three waiting", async || {
        let waiting = broker.waiting(queue).await.unwrap();
        (waiting == 3).then_some(waiting)
    })
    .await;
    let handler = Recorder::new(false, false);
    let consumer = consume_in_background(&broker, queue, handler.clone());
    eventually("all three handled", async || (handler.seen().len() == 3).then_some(())).await;
    eventually("none waiting", async || (broker.waiting(queue).await.unwrap() == 0).then_some(())).await;
    broker.shutdown().await;
    consumer.await.unwrap();

    assert_eq!(before, 3);
    assert_eq!(handler.seen().len(), 3, "each handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_command_is_delivered_with_its_message_id() {
    let vhost = TestVhost::new();
    let handler = Recorder::new(false, false);
    let (broker, consumer) = start(&vhost, &[100, 100, 100], Arc::clone(&handler)).await;
    let event = event();
    broker.publish(RoutingKey::OrdersCancelRequested, &event).await.unwrap();
    let seen = eventually("the delivery", async || handler.seen().first().cloned()).await.0;
    assert_eq!(seen.message_id, Some(event.id.to_string()));
    assert_eq!(seen.retries, 0);
    assert_eq!(CloudEvent::decode(&seen.body).unwrap(), event);
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_many_frames_long_is_delivered_whole_and_dead_lettered_whole() {
    let vhost = TestVhost::new();
    let handler = Recorder::new(true, true);
    let (broker, consumer) = start(&vhost, &[100], Arc::clone(&handler)).await;
    let mut event = event();
    // Ten times the frame size asked of the broker, so the body travels in many frames both ways.
    event.data["note"] = serde_json::Value::String("x".repeat(10 * super::FRAME_MAX as usize));
    broker.publish(RoutingKey::OrdersCancelRequested, &event).await.unwrap();
    let seen = eventually("the delivery", async || handler.seen().first().cloned()).await.0;
    assert_eq!(CloudEvent::decode(&seen.body).unwrap(), event);
    let letters = eventually("the dead letter", async || {
        let letters = broker.peek(RoutingKey::OrdersCancelRequested, 10).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(CloudEvent::decode(&letters[0].body).unwrap(), event);
    consumer.abort();
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
async fn publishing_to_a_key_no_queue_is_bound_to_is_an_error() {
    let vhost = TestVhost::new();
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[RoutingKey::OrdersCreated]).await.unwrap();
    assert!(
        broker.publish(RoutingKey::OrdersShipped, &event()).await.is_err(),
        "an unroutable message is not lost silently"
    );
    assert!(broker.publish(RoutingKey::OrdersCreated, &event()).await.is_ok(), "the publisher recovers");
}

/// The message ids waiting in `queue`, front to back, taken off it (no consumer may be running).
async fn take_all(vhost: &TestVhost, queue: RoutingKey) -> Vec<String> {
    let (connection, channel) = super::open_channel(&vhost.settings(&[100]).url).await.unwrap();
    let mut ids = Vec::new();
    let options = lapin::options::BasicGetOptions { no_ack: true };
    while let Some(message) = channel.basic_get(queue.as_str().into(), options).await.unwrap() {
        ids.push(message.delivery.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default());
    }
    let _ = connection.close(200, "done".into()).await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_confirmed_as_a_whole_and_queued_in_its_order() {
    let vhost = TestVhost::new();
    let queue = RoutingKey::OrdersCancelRequested;
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[queue]).await.unwrap();
    let events: Vec<CloudEvent> = (0..200).map(|_| event()).collect();
    let batch: Vec<(RoutingKey, &CloudEvent)> = events.iter().map(|event| (queue, event)).collect();

    let published = broker.publish_all(&batch).await;

    assert!(published.failure.is_none(), "{:?}", published.failure);
    assert_eq!(published.confirmed, vec![true; events.len()]);
    let sent: Vec<String> = events.iter().map(|event| event.id.to_string()).collect();
    assert_eq!(take_all(&vhost, queue).await, sent, "one channel keeps the batch's order");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_without_retries() {
    let vhost = TestVhost::new();
    let handler = Recorder::new(true, true);
    let (broker, consumer) = start(&vhost, &[100, 100, 100], Arc::clone(&handler)).await;
    let event = event();
    broker.publish(RoutingKey::OrdersCancelRequested, &event).await.unwrap();
    let queue = RoutingKey::OrdersCancelRequested;
    eventually("the dead letter", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 1).cloned()
    })
    .await;
    assert_eq!(handler.seen().len(), 1, "no retries");
    let letters = broker.peek(queue, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, Some(event.id.to_string()));
    assert_eq!(letters[0].original_queue, queue);
    assert_eq!(letters[0].error, "cannot be handled");
    assert_eq!(letters[0].retries, 0);
    // A quorum queue applies the requeue through its log, so the depth catches up a moment later.
    eventually("the peeked message back in place", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 1).cloned()
    })
    .await;
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_after_each_delay_then_dead_lettered() {
    let vhost = TestVhost::new();
    let delays = [400, 800, 1200];
    let handler = Recorder::new(true, false);
    let (broker, consumer) = start(&vhost, &delays, Arc::clone(&handler)).await;
    broker.publish(RoutingKey::OrdersCancelRequested, &event()).await.unwrap();
    let queue = RoutingKey::OrdersCancelRequested;
    eventually("the dead letter", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 1).cloned()
    })
    .await;
    let seen = handler.seen();
    assert_eq!(seen.iter().map(|(d, _)| d.retries).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (i, delay) in delays.iter().enumerate() {
        let gap = seen[i + 1].1 - seen[i].1;
        let delay = Duration::from_millis(*delay);
        // The broker expires a message at the head of its retry queue on time; scheduling and the
        // round trips add a little. ±20% of the configured delay, plus 150 ms of transport.
        assert!(gap >= delay.mul_f64(0.8), "retry {} came after {gap:?}, configured {delay:?}", i + 1);
        assert!(gap <= delay.mul_f64(1.2) + Duration::from_millis(150), "retry {} came after {gap:?}", i + 1);
    }
    assert_eq!(broker.peek(queue, 1).await.unwrap()[0].retries, 3);
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_dead_lettered_message_after_the_fix_processes_it_once() {
    let vhost = TestVhost::new();
    let handler = Recorder::new(true, true);
    let (broker, consumer) = start(&vhost, &[100, 100, 100], Arc::clone(&handler)).await;
    let queue = RoutingKey::OrdersCancelRequested;
    broker.publish(queue, &event()).await.unwrap();
    eventually("the dead letter", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 1).cloned()
    })
    .await;
    handler.failing.store(false, Ordering::SeqCst);
    assert_eq!(broker.replay(queue, 10).await.unwrap(), 1);
    eventually("the replayed delivery", async || (handler.seen().len() == 2).then_some(())).await;
    let replayed = &handler.seen()[1].0;
    assert_eq!(replayed.retries, 0, "the retry count is reset");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handler.seen().len(), 2, "processed exactly once more");
    assert_eq!(broker.queues(&[queue]).await.unwrap()[0].depth, 0);
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_empties_the_dead_letter_queue() {
    let vhost = TestVhost::new();
    let handler = Recorder::new(true, true);
    let (broker, consumer) = start(&vhost, &[100], Arc::clone(&handler)).await;
    let queue = RoutingKey::OrdersCancelRequested;
    for _ in 0..3 {
        broker.publish(queue, &event()).await.unwrap();
    }
    eventually("three dead letters", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 3).cloned()
    })
    .await;
    assert_eq!(broker.purge(queue).await.unwrap(), 3);
    assert_eq!(broker.queues(&[queue]).await.unwrap()[0].depth, 0);
    consumer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_before_a_consumer_exists_are_kept() {
    let vhost = TestVhost::new();
    let broker = RabbitBroker::connect(vhost.settings(&[100]), &[RoutingKey::OrdersCancelRequested]).await.unwrap();
    for _ in 0..5 {
        broker.publish(RoutingKey::OrdersCancelRequested, &event()).await.unwrap();
    }
    let handler = Recorder::new(false, false);
    let (_, consumer) = start(&vhost, &[100], Arc::clone(&handler)).await;
    eventually("five deliveries", async || (handler.seen().len() == 5).then_some(())).await;
    consumer.abort();
}

/// Handles deliveries in batches, as a store committing several at once does, and records each batch.
/// The second delivery of the first batch of several is poison: it fails, alone, every time.
#[derive(Default)]
struct Batches {
    batches: Mutex<Vec<Vec<String>>>,
    poison: Mutex<Option<String>>,
}

impl Batches {
    fn handled(&self) -> Vec<String> {
        self.batches.lock().unwrap().iter().flatten().cloned().collect()
    }
}

#[async_trait]
impl MessageHandler for Batches {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.message_id.clone().unwrap_or_default()).collect();
        self.batches.lock().unwrap().push(ids.clone());
        let poison = {
            let mut poison = self.poison.lock().unwrap();
            if poison.is_none() && ids.len() > 1 {
                *poison = Some(ids[1].clone());
            }
            poison.clone()
        };
        ids.iter()
            .map(|id| match poison.as_ref() == Some(id) {
                true => HandlerOutcome::Permanent("cannot be handled".into()),
                false => HandlerOutcome::Done,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_inside_a_batch_is_dead_lettered_alone_and_the_rest_is_acknowledged() {
    let vhost = TestVhost::new();
    let queue = RoutingKey::OrdersCancelRequested;
    // Queued before the consumer starts, so they arrive together and are handed over in batches.
    let broker = broker_with_queued(&vhost, queue, 25).await;
    let handler = Arc::new(Batches::default());
    let consumer = consume_in_background(&broker, queue, handler.clone());
    let letters = eventually("the dead letter", async || {
        let letters = broker.peek(queue, 10).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    eventually("every delivery handled", async || (handler.handled().len() >= 25).then_some(())).await;
    broker.shutdown().await;
    consumer.await.unwrap();

    let poison = handler.poison.lock().unwrap().clone().expect("a batch of several deliveries");
    let batches = handler.batches.lock().unwrap().clone();
    assert!(batches.iter().any(|b| b.len() > 1 && b.contains(&poison)), "{batches:?}");
    assert_eq!(letters.len(), 1, "only the poison is dead-lettered");
    assert_eq!(letters[0].message_id.as_deref(), Some(poison.as_str()));
    assert_eq!(letters[0].retries, 0);
    let mut handled = handler.handled();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 25, "each delivery handled once, none redelivered: {batches:?}");
    assert_eq!(handler.handled().len(), 25, "each delivery handled once, none redelivered: {batches:?}");
    // A quorum queue's depth counts a peeked letter again only once the broker has taken it back.
    eventually("only the dead letter left", async || {
        broker.queues(&[queue]).await.unwrap().first().filter(|q| q.depth == 1).cloned()
    })
    .await;
}

/// Takes its time, so a shutdown can catch it mid-message.
struct Slow {
    finished: AtomicBool,
}

#[async_trait]
impl MessageHandler for Slow {
    async fn handle(&self, _: &Delivery) -> HandlerOutcome {
        tokio::time::sleep(Duration::from_millis(800)).await;
        self.finished.store(true, Ordering::SeqCst);
        HandlerOutcome::Done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_settles_the_message_in_flight_before_returning() {
    let vhost = TestVhost::new();
    let queue = RoutingKey::OrdersCancelRequested;
    let broker = Arc::new(RabbitBroker::connect(vhost.settings(&[100]), &[queue]).await.unwrap());
    let handler = Arc::new(Slow { finished: AtomicBool::new(false) });
    let consumer = Arc::clone(&broker);
    let slow: Arc<dyn MessageHandler> = handler.clone();
    let consuming = tokio::spawn(async move { consumer.consume(queue, slow).await });
    broker.publish(queue, &event()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.shutdown().await;
    assert!(handler.finished.load(Ordering::SeqCst), "shutdown waited for the handler");
    assert!(consuming.await.unwrap().is_ok(), "consume returned");
    // The message was acked before shutdown returned: a new consumer gets nothing.
    let again = Recorder::new(false, false);
    let (_, consumer) = start(&vhost, &[100], Arc::clone(&again)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(again.seen().is_empty(), "nothing was left to redeliver");
    consumer.abort();
}
