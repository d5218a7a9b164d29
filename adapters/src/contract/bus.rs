//! The command bus contract (`CommandPublisher`, `CommandConsumer` and `DeadLetterAdmin` together): order,
//! confirmed batches, the retry ladder, dead letters and their operations, queue depth, and a graceful
//! shutdown that settles what is in flight. Each check gets a fresh bus from a [`BusFixture`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use orderflow_domain::OrderId;
use orderflow_messages::CancelRequested;
use orderflow_messages::{CloudEvent, EventBody, RoutingKey, Source};
use orderflow_ports::messaging::{
    CommandConsumer, CommandPublisher, ConsumeError, DeadLetter, DeadLetterAdmin, Delivery, HandlerOutcome,
    MessageHandler,
};
use uuid::Uuid;

use super::fixtures::event_id;

/// The queue the checks publish to and consume; every fixture's bus has it (and [`OTHER`]) declared.
pub const QUEUE: RoutingKey = RoutingKey::OrdersCancelRequested;
/// A second queue, to show that queues keep to themselves.
pub const OTHER: RoutingKey = RoutingKey::OrdersShipped;

/// What a check asks of the bus it gets.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The delay of each retry level, first to last.
    pub retry_delays: Vec<Duration>,
    /// Deliveries of one queue handled at once (and taken off the queue at most).
    pub prefetch: u16,
}

impl BusOptions {
    /// Three quick retry levels and room for batches.
    fn quick() -> Self {
        Self { retry_delays: vec![Duration::from_millis(30); 3], prefetch: 8 }
    }

    fn prefetch(self, prefetch: u16) -> Self {
        Self { prefetch, ..self }
    }
}

/// A whole command bus: publisher, consumer and dead-letter operations over the same queues.
pub trait CommandBus: CommandPublisher + CommandConsumer + DeadLetterAdmin {}

impl<T: CommandPublisher + CommandConsumer + DeadLetterAdmin> CommandBus for T {}

/// Makes the bus of one check.
#[async_trait]
pub trait BusFixture: Send + Sync {
    /// A bus with `options` whose queues [`QUEUE`] and [`OTHER`] exist and are empty, as are their retry
    /// levels and dead letters. Called once per check; the fixture cleans up when dropped.
    async fn bus(&self, options: BusOptions) -> Arc<dyn CommandBus>;
}

/// A command about a fresh order, with a fresh id.
fn command() -> CloudEvent {
    let order_id = OrderId::from_uuid(Uuid::now_v7());
    let body = EventBody::of(order_id, &CancelRequested { order_id });
    CloudEvent::wrap(event_id(), Source::Sales, body, Utc::now(), None)
}

fn ids(events: &[CloudEvent]) -> Vec<String> {
    events.iter().map(|event| event.id.to_string()).collect()
}

/// How a [`Recorder`] answers.
#[derive(Debug, Clone)]
enum Answer {
    Done,
    /// Transient for the first `n` deliveries it sees, then done.
    TransientFor(usize),
    Permanent(String),
}

/// Records every delivery with the time it arrived, optionally waits for a gate, and answers as told.
struct Recorder {
    seen: Mutex<Vec<(Delivery, Instant)>>,
    answer: Mutex<Answer>,
    /// While `false`, deliveries wait (after being recorded) until it turns `true`.
    gate: tokio::sync::watch::Sender<bool>,
    finished: AtomicUsize,
}

impl Recorder {
    fn new(answer: Answer) -> Arc<Self> {
        Self::gated(answer, true)
    }

    fn gated(answer: Answer, open: bool) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::default(),
            answer: Mutex::new(answer),
            gate: tokio::sync::watch::channel(open).0,
            finished: AtomicUsize::new(0),
        })
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("answer lock") = answer;
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().expect("seen lock").iter().map(|(delivery, _)| delivery.clone()).collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().expect("seen lock").iter().map(|(_, at)| *at).collect()
    }

    fn seen_ids(&self) -> Vec<String> {
        self.seen().into_iter().map(|delivery| delivery.message_id.unwrap_or_default()).collect()
    }

    fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        let count = {
            let mut seen = self.seen.lock().expect("seen lock");
            seen.push((delivery.clone(), Instant::now()));
            seen.len()
        };
        let _ = self.gate.subscribe().wait_for(|open| *open).await;
        let answer = self.answer.lock().expect("answer lock").clone();
        self.finished.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Done => HandlerOutcome::Done,
            Answer::TransientFor(n) if count <= n => HandlerOutcome::Transient("database down".into()),
            Answer::TransientFor(_) => HandlerOutcome::Done,
            Answer::Permanent(error) => HandlerOutcome::Permanent(error),
        }
    }
}

/// Handles deliveries in batches, as a store committing several at once does, and records each batch.
/// The second delivery of the first batch of several is poison: it fails, alone, every time.
#[derive(Default)]
struct Batches {
    batches: Mutex<Vec<Vec<String>>>,
    poison: Mutex<Option<String>>,
}

impl Batches {
    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().expect("batches lock").clone()
    }

    fn handled(&self) -> Vec<String> {
        self.batches().into_iter().flatten().collect()
    }

    fn poison(&self) -> Option<String> {
        self.poison.lock().expect("poison lock").clone()
    }
}

#[async_trait]
impl MessageHandler for Batches {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.message_id.clone().unwrap_or_default()).collect();
        self.batches.lock().expect("batches lock").push(ids.clone());
        let poison = {
            let mut poison = self.poison.lock().expect("poison lock");
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

/// Handles deliveries in batches, all done; the first batch waits for a gate while later ones finish, so
/// batches are settled in another order than they arrived.
struct FirstBatchWaits {
    batches: Mutex<Vec<Vec<String>>>,
    finished: AtomicUsize,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Default for FirstBatchWaits {
    fn default() -> Self {
        Self { batches: Mutex::default(), finished: AtomicUsize::new(0), gate: tokio::sync::watch::channel(false).0 }
    }
}

impl FirstBatchWaits {
    fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().expect("batches lock").clone()
    }

    fn handled(&self) -> Vec<String> {
        self.batches().into_iter().flatten().collect()
    }
}

#[async_trait]
impl MessageHandler for FirstBatchWaits {
    async fn handle(&self, delivery: &Delivery) -> HandlerOutcome {
        self.handle_batch(std::slice::from_ref(delivery)).await.remove(0)
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Vec<HandlerOutcome> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.message_id.clone().unwrap_or_default()).collect();
        let first = {
            let mut batches = self.batches.lock().expect("batches lock");
            batches.push(ids);
            batches.len() == 1
        };
        if first {
            let _ = self.gate.subscribe().wait_for(|open| *open).await;
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
        deliveries.iter().map(|_| HandlerOutcome::Done).collect()
    }
}

/// Long enough for anything the bus does on loopback; checks poll, so they only take it when failing.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a check watches for something that must not happen (a redelivery, a requeue).
const QUIET: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it gives a value, failing after [`DEADLINE`].
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `holds` for [`QUIET`], failing as soon as it does not.
async fn throughout(what: &str, mut holds: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        assert!(holds().await, "{what} stopped holding");
        tokio::time::sleep(POLL).await;
    }
}

async fn waiting(bus: &dyn CommandBus, queue: RoutingKey) -> u64 {
    bus.waiting(queue).await.expect("the queue depth is read")
}

async fn dead_letter_depth(bus: &dyn CommandBus, queue: RoutingKey) -> u64 {
    let queues = bus.queues(&[queue]).await.expect("the dead-letter queues are listed");
    assert_eq!(queues.len(), 1, "one entry per queue asked: {queues:?}");
    assert_eq!(queues[0].queue, queue);
    queues[0].depth
}

async fn peek(bus: &dyn CommandBus, queue: RoutingKey, limit: usize) -> Vec<DeadLetter> {
    bus.peek(queue, limit).await.expect("dead letters are peeked")
}

/// Waits until `queue` holds `depth` dead letters.
async fn dead_letters_reach(bus: &dyn CommandBus, queue: RoutingKey, depth: u64) {
    eventually(&format!("{depth} dead letters in {}", queue.as_str()), async || {
        (dead_letter_depth(bus, queue).await == depth).then_some(())
    })
    .await;
}

async fn publish(bus: &dyn CommandBus, queue: RoutingKey, count: usize) -> Vec<CloudEvent> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let event = command();
        bus.publish(queue, &event).await.expect("the broker confirms the command");
        events.push(event);
    }
    events
}

type Consuming = tokio::task::JoinHandle<Result<(), ConsumeError>>;

fn consume(bus: &Arc<dyn CommandBus>, queue: RoutingKey, handler: Arc<dyn MessageHandler>) -> Consuming {
    let bus = Arc::clone(bus);
    tokio::spawn(async move { bus.consume(queue, handler).await })
}

/// Shuts the bus's consumers down and checks that every `consume` returned cleanly.
async fn stop(bus: &dyn CommandBus, consumers: impl IntoIterator<Item = Consuming>) {
    tokio::time::timeout(DEADLINE, bus.shutdown()).await.expect("shutdown returns");
    for consumer in consumers {
        let returned = tokio::time::timeout(DEADLINE, consumer).await.expect("consume returns after shutdown");
        returned.expect("consume did not panic").expect("consume returned cleanly");
    }
}

/// Commands published one after another reach the queue's consumer in that order, each once, whole,
/// with its event id as message id and no retries yet.
pub async fn published_commands_reach_the_consumer_in_publish_order(fixture: Arc<dyn BusFixture>) {
    // One delivery at a time, so the order seen is the queue's order, not the handler's scheduling.
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let handler = Recorder::new(Answer::Done);
    let consumer = consume(&bus, QUEUE, handler.clone());

    let events = publish(bus.as_ref(), QUEUE, 10).await;

    eventually("ten deliveries", async || (handler.seen().len() >= 10).then_some(())).await;
    assert_eq!(handler.seen_ids(), ids(&events), "in publish order, each once");
    for (delivery, event) in handler.seen().iter().zip(&events) {
        assert_eq!(delivery.queue, QUEUE);
        assert_eq!(delivery.retries, 0, "a first delivery");
        assert_eq!(&CloudEvent::decode(&delivery.body).expect("the body is the CloudEvent"), event);
    }
    stop(bus.as_ref(), [consumer]).await;
}

/// `publish_all` confirms every command of a batch and queues them in the batch's order.
pub async fn publish_all_confirms_each_command_and_keeps_their_order(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let events: Vec<CloudEvent> = (0..200).map(|_| command()).collect();
    let batch: Vec<(RoutingKey, &CloudEvent)> = events.iter().map(|event| (QUEUE, event)).collect();

    let published = bus.publish_all(&batch).await;

    assert!(published.failure.is_none(), "{:?}", published.failure);
    assert_eq!(published.confirmed, vec![true; events.len()], "each confirmed");
    eventually("the batch queued", async || (waiting(bus.as_ref(), QUEUE).await == 200).then_some(())).await;
    let handler = Recorder::new(Answer::Done);
    let consumer = consume(&bus, QUEUE, handler.clone());
    eventually("the batch delivered", async || (handler.seen().len() >= 200).then_some(())).await;
    assert_eq!(handler.seen_ids(), ids(&events), "in the batch's order");
    stop(bus.as_ref(), [consumer]).await;
}

/// Commands published before any consumer exists wait in their queue, counted by `waiting` (and only
/// there), until a consumer takes them.
pub async fn messages_wait_in_their_queue_until_a_consumer_takes_them(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let events = publish(bus.as_ref(), QUEUE, 5).await;

    eventually("five waiting", async || (waiting(bus.as_ref(), QUEUE).await == 5).then_some(())).await;
    assert_eq!(waiting(bus.as_ref(), OTHER).await, 0, "another queue holds none");
    let handler = Recorder::new(Answer::Done);
    let consumer = consume(&bus, QUEUE, handler.clone());

    eventually("five deliveries", async || (handler.seen().len() >= 5).then_some(())).await;
    eventually("none waiting", async || (waiting(bus.as_ref(), QUEUE).await == 0).then_some(())).await;
    let mut seen = handler.seen_ids();
    seen.sort();
    let mut sent = ids(&events);
    sent.sort();
    assert_eq!(seen, sent, "each kept and delivered once");
    stop(bus.as_ref(), [consumer]).await;
}

/// Deliveries a consumer is handling no longer count as waiting, and it takes no more than its prefetch
/// off the queue: the rest keep waiting there.
pub async fn deliveries_being_handled_are_not_waiting_and_the_rest_are(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(2)).await;
    let handler = Recorder::gated(Answer::Done, false);
    publish(bus.as_ref(), QUEUE, 5).await;
    let consumer = consume(&bus, QUEUE, handler.clone());

    eventually("two deliveries in flight", async || (handler.seen().len() == 2).then_some(())).await;
    eventually("three waiting", async || (waiting(bus.as_ref(), QUEUE).await == 3).then_some(())).await;
    throughout("two in flight, three waiting", async || {
        handler.seen().len() == 2 && waiting(bus.as_ref(), QUEUE).await == 3
    })
    .await;

    handler.open();
    eventually("all five handled", async || (handler.finished() == 5).then_some(())).await;
    eventually("none waiting", async || (waiting(bus.as_ref(), QUEUE).await == 0).then_some(())).await;
    stop(bus.as_ref(), [consumer]).await;
}

/// A delivery handled as done is acknowledged: never redelivered, retried or dead-lettered, and not back
/// in the queue once the consumer has stopped.
pub async fn a_done_delivery_is_not_redelivered(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let handler = Recorder::new(Answer::Done);
    let consumer = consume(&bus, QUEUE, handler.clone());
    publish(bus.as_ref(), QUEUE, 3).await;

    eventually("three handled", async || (handler.finished() == 3).then_some(())).await;
    // Longer than every retry level together: a retried delivery would be back by then.
    throughout("each handled once", async || handler.seen().len() == 3).await;
    stop(bus.as_ref(), [consumer]).await;

    throughout("nothing back in the queue", async || waiting(bus.as_ref(), QUEUE).await == 0).await;
    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0, "nothing dead-lettered");
    assert!(handler.seen().iter().all(|d| d.retries == 0), "never retried");
}

/// A transient failure is delivered again after each retry level's delay with its retry count one
/// higher; failing after the last level it is dead-lettered with that count and the last error.
pub async fn a_transient_failure_climbs_the_retry_ladder_then_is_dead_lettered(fixture: Arc<dyn BusFixture>) {
    let delays = [100, 200, 300].map(Duration::from_millis);
    let bus = fixture.bus(BusOptions { retry_delays: delays.to_vec(), prefetch: 8 }).await;
    let handler = Recorder::new(Answer::TransientFor(usize::MAX));
    let consumer = consume(&bus, QUEUE, handler.clone());
    let event = command();
    let started = Utc::now();

    bus.publish(QUEUE, &event).await.expect("published");

    dead_letters_reach(bus.as_ref(), QUEUE, 1).await;
    let seen = handler.seen();
    assert_eq!(seen.iter().map(|d| d.retries).collect::<Vec<_>>(), [0, 1, 2, 3], "one delivery per level");
    assert!(seen.iter().all(|d| d.message_id == Some(event.id.to_string())), "the same message each time");
    let times = handler.times();
    for (level, delay) in delays.iter().enumerate() {
        let gap = times[level + 1] - times[level];
        // The level's own delay, not another's; scheduling and round trips add a little.
        assert!(gap >= delay.mul_f64(0.8), "retry {} came after {gap:?}, configured {delay:?}", level + 1);
        assert!(gap <= delay.mul_f64(1.2) + Duration::from_millis(150), "retry {} came after {gap:?}", level + 1);
    }
    let letters = peek(bus.as_ref(), QUEUE, 10).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.message_id, Some(event.id.to_string()));
    assert_eq!(letter.original_queue, QUEUE);
    assert_eq!(letter.retries, 3, "the retries it had");
    assert_eq!(letter.error, "database down", "the last error");
    assert_eq!(CloudEvent::decode(&letter.body).expect("the body as received"), event);
    assert!(letter.failed_at >= started - chrono::Duration::seconds(1), "failed after it was sent");
    assert!(letter.failed_at <= Utc::now() + chrono::Duration::seconds(1), "failed before it was peeked");
    throughout("no delivery after the dead letter", async || handler.seen().len() == 4).await;
    stop(bus.as_ref(), [consumer]).await;
}

/// A transient failure that succeeds on a retry is done: no dead letter, no further delivery.
pub async fn a_transient_failure_is_retried_until_it_succeeds(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let handler = Recorder::new(Answer::TransientFor(2));
    let consumer = consume(&bus, QUEUE, handler.clone());

    publish(bus.as_ref(), QUEUE, 1).await;

    eventually("the third delivery handled", async || (handler.finished() == 3).then_some(())).await;
    assert_eq!(handler.seen().iter().map(|d| d.retries).collect::<Vec<_>>(), [0, 1, 2]);
    throughout("no fourth delivery", async || handler.seen().len() == 3).await;
    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0, "nothing dead-lettered");
    stop(bus.as_ref(), [consumer]).await;
}

/// A permanent failure goes straight to the dead letters, with no retry, its error and a retry count of 0.
pub async fn a_permanent_failure_is_dead_lettered_without_retries(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let handler = Recorder::new(Answer::Permanent("cannot be handled".into()));
    let consumer = consume(&bus, QUEUE, handler.clone());
    let event = command();

    bus.publish(QUEUE, &event).await.expect("published");

    dead_letters_reach(bus.as_ref(), QUEUE, 1).await;
    let letters = peek(bus.as_ref(), QUEUE, 10).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, Some(event.id.to_string()));
    assert_eq!(letters[0].original_queue, QUEUE);
    assert_eq!(letters[0].error, "cannot be handled");
    assert_eq!(letters[0].retries, 0);
    throughout("no retry", async || handler.seen().len() == 1).await;
    stop(bus.as_ref(), [consumer]).await;
}

/// A dead letter keeps at most the first 1000 characters of the error, as docs/design.md says.
pub async fn a_dead_letter_keeps_at_most_1000_characters_of_the_error(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let error: String = "é".repeat(700) + &"x".repeat(700);
    let handler = Recorder::new(Answer::Permanent(error.clone()));
    let consumer = consume(&bus, QUEUE, handler.clone());

    publish(bus.as_ref(), QUEUE, 1).await;

    dead_letters_reach(bus.as_ref(), QUEUE, 1).await;
    let letter = peek(bus.as_ref(), QUEUE, 1).await.remove(0);
    assert_eq!(letter.error, error.chars().take(1000).collect::<String>());
    stop(bus.as_ref(), [consumer]).await;
}

/// In a batch handled together, the poison delivery alone is dead-lettered; the others are acknowledged
/// once and never redelivered.
pub async fn a_poison_delivery_in_a_batch_is_dead_lettered_alone_and_the_rest_acknowledged(
    fixture: Arc<dyn BusFixture>,
) {
    let bus = fixture.bus(BusOptions::quick()).await;
    // Queued before the consumer starts, so they arrive together and are handed over in batches.
    publish(bus.as_ref(), QUEUE, 25).await;
    eventually("all queued", async || (waiting(bus.as_ref(), QUEUE).await == 25).then_some(())).await;
    let handler = Arc::new(Batches::default());
    let consumer = consume(&bus, QUEUE, handler.clone());

    dead_letters_reach(bus.as_ref(), QUEUE, 1).await;
    eventually("every delivery handled", async || (handler.handled().len() >= 25).then_some(())).await;
    throughout("none redelivered", async || handler.handled().len() == 25).await;
    stop(bus.as_ref(), [consumer]).await;

    let poison = handler.poison().expect("a batch of several deliveries");
    let batches = handler.batches();
    assert!(batches.iter().any(|b| b.len() > 1 && b.contains(&poison)), "{batches:?}");
    let letters = peek(bus.as_ref(), QUEUE, 10).await;
    assert_eq!(letters.len(), 1, "only the poison is dead-lettered");
    assert_eq!(letters[0].message_id.as_deref(), Some(poison.as_str()));
    assert_eq!(letters[0].retries, 0);
    let mut handled = handler.handled();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 25, "each delivery handled once: {batches:?}");
    assert_eq!(waiting(bus.as_ref(), QUEUE).await, 0, "the rest acknowledged");
}

/// Batches settled in another order than they arrived (the first still being handled while later ones
/// finish) are each acknowledged once: none is redelivered, none is left in the queue, and the consumer
/// goes on taking new commands.
pub async fn batches_settled_out_of_order_are_each_acknowledged_once(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    // Queued before the consumer starts, so they arrive together and are handed over in batches.
    publish(bus.as_ref(), QUEUE, 8).await;
    eventually("all queued", async || (waiting(bus.as_ref(), QUEUE).await == 8).then_some(())).await;
    let handler = Arc::new(FirstBatchWaits::default());
    let consumer = consume(&bus, QUEUE, handler.clone());

    eventually("every batch but the first finished", async || {
        let batches = handler.batches();
        let all_in = batches.iter().map(Vec::len).sum::<usize>() == 8;
        (all_in && batches.len() > 1 && handler.finished.load(Ordering::SeqCst) == batches.len() - 1).then_some(())
    })
    .await;
    handler.gate.send_replace(true);
    eventually("the first batch finished", async || {
        (handler.finished.load(Ordering::SeqCst) == handler.batches().len()).then_some(())
    })
    .await;
    publish(bus.as_ref(), QUEUE, 4).await;
    eventually("the later commands handled", async || (handler.handled().len() >= 12).then_some(())).await;
    throughout("none redelivered", async || handler.handled().len() == 12).await;
    stop(bus.as_ref(), [consumer]).await;

    let mut handled = handler.handled();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 12, "each delivery handled once: {:?}", handler.batches());
    throughout("nothing back in the queue", async || waiting(bus.as_ref(), QUEUE).await == 0).await;
    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0, "nothing dead-lettered");
}

/// Peeking shows dead letters oldest first, up to the limit, and leaves them in the dead-letter queue;
/// each queue's dead letters are its own.
pub async fn dead_letters_are_peeked_oldest_first_and_left_in_place(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let handler = Recorder::new(Answer::Permanent("cannot be handled".into()));
    let consumer = consume(&bus, QUEUE, handler.clone());
    let events = publish(bus.as_ref(), QUEUE, 3).await;
    dead_letters_reach(bus.as_ref(), QUEUE, 3).await;
    let letter_ids = |letters: &[DeadLetter]| letters.iter().map(|l| l.message_id.clone()).collect::<Vec<_>>();
    let sent = |events: &[CloudEvent]| ids(events).into_iter().map(Some).collect::<Vec<_>>();

    let all = peek(bus.as_ref(), QUEUE, 10).await;
    let first_two = peek(bus.as_ref(), QUEUE, 2).await;

    assert_eq!(letter_ids(&all), sent(&events), "all of them, oldest first");
    assert_eq!(letter_ids(&first_two), sent(&events[..2]), "the oldest two");
    // A quorum queue applies the requeue of peeked letters through its log: the depth catches up shortly.
    dead_letters_reach(bus.as_ref(), QUEUE, 3).await;
    // Only the set is compared: RabbitMQ 3.x quorum queues put what a partial peek requeued at the back.
    let mut after = letter_ids(&peek(bus.as_ref(), QUEUE, 10).await);
    after.sort();
    let mut expected = sent(&events);
    expected.sort();
    assert_eq!(after, expected, "peeking removed none");
    assert!(peek(bus.as_ref(), OTHER, 10).await.is_empty(), "another queue has none");
    stop(bus.as_ref(), [consumer]).await;
}

/// Replaying moves up to the limit of dead letters back to their queue, oldest first, where they are
/// consumed again with their retry count reset; the rest stay dead-lettered.
pub async fn replayed_dead_letters_are_consumed_again_with_their_retry_count_reset(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let handler = Recorder::new(Answer::Permanent("cannot be handled".into()));
    let consumer = consume(&bus, QUEUE, handler.clone());
    let events = publish(bus.as_ref(), QUEUE, 3).await;
    dead_letters_reach(bus.as_ref(), QUEUE, 3).await;
    let failed = handler.seen().len();
    assert_eq!(failed, 3);
    handler.answer(Answer::Done);

    let replayed = bus.replay(QUEUE, 2).await.expect("replayed");

    assert_eq!(replayed, 2);
    eventually("the replayed deliveries", async || (handler.seen().len() == failed + 2).then_some(())).await;
    throughout("each replayed once", async || handler.seen().len() == failed + 2).await;
    let again = &handler.seen()[failed..];
    assert_eq!(
        again.iter().map(|d| d.message_id.clone()).collect::<Vec<_>>(),
        ids(&events[..2]).into_iter().map(Some).collect::<Vec<_>>(),
        "the oldest two"
    );
    assert!(again.iter().all(|d| d.retries == 0), "the retry count is reset: {again:?}");
    dead_letters_reach(bus.as_ref(), QUEUE, 1).await;
    let left = peek(bus.as_ref(), QUEUE, 10).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message_id, Some(events[2].id.to_string()), "the newest stays");
    stop(bus.as_ref(), [consumer]).await;
}

/// Purging deletes every dead letter of the queue and says how many; another queue's stay.
pub async fn purging_deletes_every_dead_letter_of_the_queue(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick()).await;
    let handler = Recorder::new(Answer::Permanent("cannot be handled".into()));
    let consumers = [consume(&bus, QUEUE, handler.clone()), consume(&bus, OTHER, handler.clone())];
    publish(bus.as_ref(), QUEUE, 3).await;
    publish(bus.as_ref(), OTHER, 1).await;
    dead_letters_reach(bus.as_ref(), QUEUE, 3).await;
    dead_letters_reach(bus.as_ref(), OTHER, 1).await;

    assert_eq!(bus.purge(QUEUE).await.expect("purged"), 3);

    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0);
    assert!(peek(bus.as_ref(), QUEUE, 10).await.is_empty());
    assert_eq!(dead_letter_depth(bus.as_ref(), OTHER).await, 1, "another queue's dead letters stay");
    stop(bus.as_ref(), consumers).await;
}

/// Shutting down stops taking deliveries but waits for the one being handled, acknowledges it once the
/// handler returned (not before), and only then returns; `consume` returns too.
pub async fn shutting_down_waits_for_the_delivery_in_flight_and_acknowledges_it(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let handler = Recorder::gated(Answer::Done, false);
    let consumer = consume(&bus, QUEUE, handler.clone());
    publish(bus.as_ref(), QUEUE, 2).await;
    eventually("a delivery in flight", async || (handler.seen().len() == 1).then_some(())).await;

    let shutting_down = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move { bus.shutdown().await })
    };
    throughout("shutdown waits for the handler", async || !shutting_down.is_finished()).await;
    handler.open();
    tokio::time::timeout(DEADLINE, shutting_down).await.expect("shutdown returns").expect("shutdown did not panic");

    assert_eq!(handler.finished(), 1, "the handler in flight had finished when shutdown returned");
    stop(bus.as_ref(), [consumer]).await;
    assert_eq!(handler.seen().len(), 1, "no delivery taken after the shutdown began");
    // What the consumer had prefetched but not started goes back to the queue: only the untouched command.
    eventually("the untouched command waiting", async || (waiting(bus.as_ref(), QUEUE).await == 1).then_some(())).await;
    throughout("the finished delivery stays acknowledged", async || waiting(bus.as_ref(), QUEUE).await == 1).await;
    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0);
}

/// A delivery that fails transiently while the consumer shuts down is still settled through the retry
/// ladder: after its delay it is back in its queue, waiting for the next consumer, not lost.
pub async fn a_delivery_failing_during_shutdown_is_still_retried(fixture: Arc<dyn BusFixture>) {
    let bus = fixture.bus(BusOptions::quick().prefetch(1)).await;
    let handler = Recorder::gated(Answer::TransientFor(usize::MAX), false);
    let consumer = consume(&bus, QUEUE, handler.clone());
    publish(bus.as_ref(), QUEUE, 1).await;
    eventually("the delivery in flight", async || (handler.seen().len() == 1).then_some(())).await;

    let shutting_down = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move { bus.shutdown().await })
    };
    // Give the shutdown a moment to begin before the handler fails.
    tokio::time::sleep(Duration::from_millis(100)).await;
    handler.open();
    tokio::time::timeout(DEADLINE, shutting_down).await.expect("shutdown returns").expect("shutdown did not panic");
    stop(bus.as_ref(), [consumer]).await;

    eventually("the retried command back in its queue", async || {
        (waiting(bus.as_ref(), QUEUE).await == 1).then_some(())
    })
    .await;
    assert_eq!(handler.seen().len(), 1, "no consumer took it again");
    assert_eq!(dead_letter_depth(bus.as_ref(), QUEUE).await, 0, "a transient failure is not dead-lettered");
}

/// The in-memory bus as a [`BusFixture`]: a new [`InMemoryBus`](crate::memory::InMemoryBus) per check.
#[derive(Debug, Default, Clone, Copy)]
pub struct InMemoryBusFixture;

#[async_trait]
impl BusFixture for InMemoryBusFixture {
    async fn bus(&self, options: BusOptions) -> Arc<dyn CommandBus> {
        let settings =
            crate::memory::BusSettings { retry_delays: options.retry_delays, prefetch: usize::from(options.prefetch) };
        Arc::new(crate::memory::InMemoryBus::new(settings, Arc::new(crate::system::SystemClock)))
    }
}
