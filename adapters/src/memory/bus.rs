//! The in-process command bus and audit log: the broker semantics orderflow relies on — at-least-once
//! delivery, ack only on success, retries at growing delays, a dead-letter list — without a broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::messaging::{
    AdminError, AuditLog, CommandConsumer, CommandPublisher, ConsumeError, DeadLetter, DeadLetterAdmin,
    DeadLetterQueue, Delivery, HandlerOutcome, MessageHandler, PublishError,
};
use orderflow_ports::system::Clock;
use orderflow_ports::trace;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, Span};

use super::{inconsistent, lock};
use crate::shutdown::ConsumerShutdown;

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
        self.sender(queue).send(Delivery { queue, message_id, body, retries: 0, span: Span::none() });
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
        let delivery =
            Delivery { queue: key, message_id: Some(event.id.to_string()), body, retries: 0, span: Span::none() };
        if self.sender(key).send(delivery) {
            Ok(())
        } else {
            Err(PublishError::Unexpected(inconsistent("queue closed")))
        }
    }
}

/// The one attribute of a CloudEvent the bus reads: its trace context.
#[derive(serde::Deserialize)]
struct Traced {
    traceparent: Option<String>,
}

/// The most of a handler's error a dead letter keeps, as docs/design.md says of `x-error`.
const MAX_ERROR_CHARS: usize = 1000;

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
                    trace::mark_failed(&delivery.span, &error);
                    tracing::warn!(parent: &delivery.span, queue = queue.as_str(), retries = delivery.retries, %error, "retrying");
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
        trace::mark_failed(&delivery.span, &error);
        tracing::error!(parent: &delivery.span, queue = queue.as_str(), retries = delivery.retries, %error, "dead-lettered");
        // As the broker's `x-error` header: at most 1000 characters.
        let error = error.chars().take(MAX_ERROR_CHARS).collect();
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
        // A permit per delivery taken off the queue, held until it is settled: as a broker's prefetch, no
        // more than `prefetch` deliveries are out of the queue at once, and the rest count as waiting.
        let permits = Arc::new(Semaphore::new(prefetch));
        let mut running = self.shutdown.register();
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = running.stopping.wait_for(|stop| *stop) => break,
            };
            let first = tokio::select! {
                delivery = receiver.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
                _ = running.stopping.wait_for(|stop| *stop) => break,
            };
            let (mut batch, mut permit) = (vec![first], permit);
            while batch.len() < most {
                let Ok(more) = Arc::clone(&permits).try_acquire_owned() else { break };
                match receiver.try_recv() {
                    Ok(delivery) => {
                        permit.merge(more);
                        batch.push(delivery);
                    }
                    Err(_) => break,
                }
            }
            sender.waiting.fetch_sub(batch.len() as u64, Ordering::Relaxed);
            for delivery in &mut batch {
                // The bus carries the trace context inside the CloudEvent, as its `traceparent` attribute.
                let traceparent = serde_json::from_slice::<Traced>(&delivery.body).ok().and_then(|t| t.traceparent);
                delivery.span = trace::consumer_span(
                    "in_process",
                    queue.as_str(),
                    delivery.message_id.as_deref(),
                    delivery.retries,
                    traceparent.as_deref(),
                );
            }
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
                let spans: Vec<&Span> = batch.iter().map(|d| &d.span).collect();
                let joint = trace::batch_span(queue.as_str(), &spans);
                let outcomes = handler.handle_batch(&batch).instrument(joint).await;
                let elapsed = started.elapsed().as_secs_f64();
                let mut outcomes = outcomes.into_iter();
                for delivery in batch {
                    crate::metrics::HANDLER_SECONDS.with_label_values(&[queue.as_str()]).observe(elapsed);
                    let outcome = outcomes.next().unwrap_or_else(|| {
                        HandlerOutcome::Transient("the handler gave no outcome for this delivery".into())
                    });
                    settle.settle(delivery, outcome).await;
                }
                // Released only once every delivery is settled, so a shutdown waiting for the permits
                // returns after the settling, as the broker's consumer acks before it returns.
                drop(permit);
            });
        }
        // Wait until every delivery in flight is handled and settled (each holds its permits until then).
        let _ = permits.acquire_many(u32::try_from(prefetch).unwrap_or(u32::MAX)).await;
        // Give the queue its receiver back, as a broker keeps a queue without consumers: what is still
        // queued, and retries of deliveries settled above, wait there instead of being dropped.
        if let Some(entry) = lock(&self.queues).get_mut(&queue) {
            entry.receiver = Some(receiver);
        }
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
                let delivery = Delivery {
                    queue,
                    message_id: letter.message_id.clone(),
                    body: letter.body.clone(),
                    retries: 0,
                    span: Span::none(),
                };
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
