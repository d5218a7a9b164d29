//! The in-process command bus and audit log: the broker semantics orderflow relies on — at-least-once
//! delivery, ack only on success, retries at growing delays, a dead-letter list — without a broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::messaging::{
    AdminError, AuditLog, CommandConsumer, CommandPublisher, ConsumeError, ConsumerShutdown, DeadLetter,
    DeadLetterAdmin, DeadLetterQueue, Delivery, HandlerOutcome, MessageHandler, PublishError,
};
use orderflow_ports::system::Clock;
use tokio::sync::{Semaphore, mpsc};

use super::{inconsistent, lock};

/// Delays and concurrency of the bus.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The delay before each retry level; after the last, a transient failure is dead-lettered.
    pub retry_delays: Vec<Duration>,
    /// How many deliveries of one queue are handled at once.
    pub prefetch: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(25)],
            prefetch: 16,
        }
    }
}

struct Queue {
    sender: QueueSender,
    receiver: Option<mpsc::UnboundedReceiver<Delivery>>,
}

/// Puts deliveries on a queue and counts those waiting for its consumer, as a broker's queue depth does.
#[derive(Clone)]
struct QueueSender {
    sender: mpsc::UnboundedSender<Delivery>,
    waiting: Arc<AtomicU64>,
}

impl QueueSender {
    /// Whether the queue took the delivery (it is gone only when the bus is).
    fn send(&self, delivery: Delivery) -> bool {
        // Counted first, so the consumer never takes it out before it is counted in.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.sender.send(delivery).is_ok();
        if !sent {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

/// One bus shared by both services of `orderflow dev`: each queue has one consumer.
pub struct InMemoryBus {
    settings: BusSettings,
    clock: Arc<dyn Clock>,
    queues: Mutex<HashMap<RoutingKey, Queue>>,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
    shutdown: ConsumerShutdown,
}

impl InMemoryBus {
    /// A bus with no queues yet; they are created on first use, and keep messages until consumed.
    pub fn new(settings: BusSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            clock,
            queues: Mutex::new(HashMap::new()),
            dead_letters: Arc::default(),
            shutdown: ConsumerShutdown::default(),
        }
    }

    /// The dead-lettered messages, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.dead_letters).clone()
    }

    /// Puts raw bytes on a queue, as a misbehaving producer could.
    pub fn send_raw(&self, queue: RoutingKey, message_id: Option<String>, body: Vec<u8>) {
        self.sender(queue).send(Delivery { queue, message_id, body, retries: 0 });
    }

    fn sender(&self, queue: RoutingKey) -> QueueSender {
        let mut queues = lock(&self.queues);
        queues
            .entry(queue)
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::unbounded_channel();
                Queue { sender: QueueSender { sender, waiting: Arc::default() }, receiver: Some(receiver) }
            })
            .sender
            .clone()
    }
}

#[async_trait]
impl CommandPublisher for InMemoryBus {
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).map_err(|e| PublishError::Unexpected(Box::new(e)))?;
        let delivery = Delivery { queue: key, message_id: Some(event.id.to_string()), body, retries: 0 };
        if self.sender(key).send(delivery) {
            Ok(())
        } else {
            Err(PublishError::Unexpected(inconsistent("queue closed")))
        }
    }
}

/// What settling a delivery of one queue needs: its queue for retries, the dead letters, the delays.
struct Settle {
    queue: RoutingKey,
    sender: QueueSender,
    dead_letters: Arc<Mutex<Vec<DeadLetter>>>,
    delays: Vec<Duration>,
    clock: Arc<dyn Clock>,
}

impl Settle {
    /// Acts on a delivery's outcome: done; retried after the delay of its level; or dead-lettered.
    async fn settle(&self, delivery: Delivery, outcome: HandlerOutcome) {
        let queue = self.queue;
        let counted = |outcome: &str| crate::metrics::MESSAGES.with_label_values(&[queue.as_str(), outcome]).inc();
        let error = match outcome {
            HandlerOutcome::Done => {
                counted("done");
                return;
            }
            HandlerOutcome::Transient(error) => {
                if let Some(delay) = usize::try_from(delivery.retries).ok().and_then(|i| self.delays.get(i)) {
                    tracing::warn!(queue = queue.as_str(), retries = delivery.retries, %error, "retrying");
                    counted("retried");
                    let (sender, delay) = (self.sender.clone(), *delay);
                    // The retry waits on its own, so the rest of the batch is settled meanwhile.
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        sender.send(Delivery { retries: delivery.retries + 1, ..delivery });
                    });
                    return;
                }
                error
            }
            HandlerOutcome::Permanent(error) => error,
        };
        tracing::error!(queue = queue.as_str(), retries = delivery.retries, %error, "dead-lettered");
        counted("dead_lettered");
        lock(&self.dead_letters).push(DeadLetter {
            message_id: delivery.message_id,
            original_queue: queue,
            error,
            failed_at: self.clock.now(),
            retries: delivery.retries,
            body: delivery.body,
        });
    }
}

#[async_trait]
impl CommandConsumer for InMemoryBus {
    async fn consume(&self, queue: RoutingKey, handler: Arc<dyn MessageHandler>) -> Result<(), ConsumeError> {
        let sender = self.sender(queue);
        let mut receiver = lock(&self.queues).get_mut(&queue).and_then(|q| q.receiver.take()).ok_or_else(|| {
            ConsumeError::Unexpected(inconsistent(format!("{} already has a consumer", queue.as_str())))
        })?;
        let prefetch = self.settings.prefetch.max(1);
        // As the RabbitMQ consumer does: what has arrived together is one batch, up to half the prefetch.
        let most = (prefetch / 2).max(1);
        let permits = Arc::new(Semaphore::new(prefetch));
        let mut running = self.shutdown.register();
        loop {
            let first = tokio::select! {
                delivery = receiver.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
                _ = running.stopping.wait_for(|stop| *stop) => break,
            };
            let mut batch = vec![first];
            while batch.len() < most {
                match receiver.try_recv() {
                    Ok(delivery) => batch.push(delivery),
                    Err(_) => break,
                }
            }
            sender.waiting.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            let size = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            let Ok(permit) = Arc::clone(&permits).acquire_many_owned(size).await else { break };
            let settle = Settle {
                queue,
                sender: sender.clone(),
                dead_letters: Arc::clone(&self.dead_letters),
                delays: self.settings.retry_delays.clone(),
                clock: Arc::clone(&self.clock),
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let outcomes = handler.handle_batch(&batch).await;
                drop(permit);
                let elapsed = started.elapsed().as_secs_f64();
                let mut outcomes = outcomes.into_iter();
                for delivery in batch {
                    crate::metrics::HANDLER_SECONDS.with_label_values(&[queue.as_str()]).observe(elapsed);
                    let outcome = outcomes.next().unwrap_or_else(|| {
                        HandlerOutcome::Transient("the handler gave no outcome for this delivery".into())
                    });
                    settle.settle(delivery, outcome).await;
                }
            });
        }
        // Wait until every handler in flight has finished (each holds a permit while it runs).
        let _ = permits.acquire_many(u32::try_from(prefetch).unwrap_or(u32::MAX)).await;
        Ok(())
    }

    async fn shutdown(&self) {
        self.shutdown.shutdown().await;
    }

    async fn waiting(&self, queue: RoutingKey) -> Result<u64, ConsumeError> {
        Ok(self.sender(queue).waiting.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl DeadLetterAdmin for InMemoryBus {
    async fn queues(&self, queues: &[RoutingKey]) -> Result<Vec<DeadLetterQueue>, AdminError> {
        let dead = lock(&self.dead_letters);
        Ok(queues
            .iter()
            .map(|&queue| DeadLetterQueue {
                queue,
                depth: dead.iter().filter(|d| d.original_queue == queue).count() as u64,
            })
            .collect())
    }

    async fn peek(&self, queue: RoutingKey, limit: usize) -> Result<Vec<DeadLetter>, AdminError> {
        Ok(lock(&self.dead_letters).iter().filter(|d| d.original_queue == queue).take(limit).cloned().collect())
    }

    async fn replay(&self, queue: RoutingKey, limit: usize) -> Result<usize, AdminError> {
        let sender = self.sender(queue);
        let mut dead = lock(&self.dead_letters);
        let mut replayed = 0;
        let mut kept = Vec::with_capacity(dead.len());
        for letter in dead.drain(..) {
            if letter.original_queue == queue && replayed < limit {
                let delivery =
                    Delivery { queue, message_id: letter.message_id.clone(), body: letter.body.clone(), retries: 0 };
                if sender.send(delivery) {
                    replayed += 1;
                    continue;
                }
            }
            kept.push(letter);
        }
        *dead = kept;
        Ok(replayed)
    }

    async fn purge(&self, queue: RoutingKey) -> Result<u64, AdminError> {
        let mut dead = lock(&self.dead_letters);
        let before = dead.len();
        dead.retain(|d| d.original_queue != queue);
        Ok((before - dead.len()) as u64)
    }
}

/// The audit stream in memory: every appended event, in order.
#[derive(Default)]
pub struct InMemoryAuditLog {
    events: Mutex<Vec<CloudEvent>>,
}

impl InMemoryAuditLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything appended so far.
    pub fn events(&self) -> Vec<CloudEvent> {
        lock(&self.events).clone()
    }
}

#[async_trait]
impl AuditLog for InMemoryAuditLog {
    async fn append(&self, event: &CloudEvent) -> Result<(), PublishError> {
        lock(&self.events).push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::system::SystemClock;

    struct FailTimes {
        calls: AtomicU32,
        transient_until: u32,
        permanent: bool,
    }

    #[async_trait]
    impl MessageHandler for FailTimes {
        async fn handle(&self, _: &Delivery) -> HandlerOutcome {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.permanent {
                HandlerOutcome::Permanent("bad".into())
            } else if n < self.transient_until {
                HandlerOutcome::Transient("down".into())
            } else {
                HandlerOutcome::Done
            }
        }
    }

    fn bus() -> Arc<InMemoryBus> {
        let settings = BusSettings { retry_delays: vec![Duration::from_millis(1); 3], prefetch: 4 };
        Arc::new(InMemoryBus::new(settings, Arc::new(SystemClock)))
    }

    async fn run(bus: &Arc<InMemoryBus>, handler: Arc<FailTimes>) {
        let consumer = Arc::clone(bus);
        tokio::spawn(async move { consumer.consume(RoutingKey::OrdersCreated, handler).await });
        bus.send_raw(RoutingKey::OrdersCreated, Some("m-1".into()), b"{}".to_vec());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_until_it_succeeds() {
        let bus = bus();
        let handler = Arc::new(FailTimes { calls: AtomicU32::new(0), transient_until: 2, permanent: false });
        run(&bus, Arc::clone(&handler)).await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
        assert!(bus.dead_letters().is_empty());
    }

    #[tokio::test]
    async fn a_message_failing_after_the_last_retry_is_dead_lettered() {
        let bus = bus();
        let handler = Arc::new(FailTimes { calls: AtomicU32::new(0), transient_until: u32::MAX, permanent: false });
        run(&bus, Arc::clone(&handler)).await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 4);
        let dead = bus.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].retries, 3);
        assert_eq!(dead[0].message_id.as_deref(), Some("m-1"));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_dead_lettered_without_retries() {
        let bus = bus();
        let handler = Arc::new(FailTimes { calls: AtomicU32::new(0), transient_until: 0, permanent: true });
        run(&bus, Arc::clone(&handler)).await;
        assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
        assert_eq!(bus.dead_letters()[0].retries, 0);
    }

    #[tokio::test]
    async fn messages_wait_in_a_queue_until_its_consumer_takes_them() {
        let bus = bus();
        for i in 0..3 {
            bus.send_raw(RoutingKey::OrdersCreated, Some(format!("m-{i}")), b"{}".to_vec());
        }
        let before = bus.waiting(RoutingKey::OrdersCreated).await.unwrap();
        let elsewhere = bus.waiting(RoutingKey::OrdersShipped).await.unwrap();
        let handler = Arc::new(FailTimes { calls: AtomicU32::new(0), transient_until: 0, permanent: false });
        run(&bus, Arc::clone(&handler)).await;

        assert_eq!(before, 3, "three sent, none taken");
        assert_eq!(elsewhere, 0, "another queue holds none");
        assert_eq!(handler.calls.load(Ordering::SeqCst), 4, "the three and the one `run` sends");
        assert_eq!(bus.waiting(RoutingKey::OrdersCreated).await.unwrap(), 0, "all taken");
    }
}
