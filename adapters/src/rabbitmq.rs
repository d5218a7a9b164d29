//! RabbitMQ adapters on `lapin`: confirmed publishing of commands, consumers with the retry ladder
//! (`Q.retry.1..3` with growing TTLs that dead-letter back to `Q`) and a dead-letter queue `Q.dlq`, and
//! the operators' dead-letter operations.

use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::ConsumerShutdown;
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::BoxError;
use orderflow_ports::backoff::Backoff;
use orderflow_ports::messaging::{
    AdminError, CommandConsumer, CommandPublisher, ConsumeError, DeadLetter, DeadLetterAdmin, DeadLetterQueue,
    Delivery, HandlerOutcome, MessageHandler, PublishError, Published,
};
use orderflow_ports::system::HealthCheck;
use orderflow_ports::trace;
use tokio::sync::Mutex;
use tracing::Instrument;

/// The exchange every command is published to.
pub const EXCHANGE: &str = "orderflow";
const RETRY_COUNT: &str = "x-retry-count";
const CONTENT_TYPE: &str = "application/cloudevents+json";

/// How to reach and use the broker.
#[derive(Debug, Clone)]
pub struct RabbitSettings {
    /// `amqp://user:pass@host:port/vhost` (the vhost is part of the URL).
    pub url: String,
    /// The TTL of each retry level; a transient failure after the last is dead-lettered.
    pub retry_delays: Vec<Duration>,
    /// Unacknowledged deliveries per consumer, handled concurrently.
    pub prefetch: u16,
}

impl RabbitSettings {
    /// The defaults of docs/design.md: retries after 1 s, 5 s and 25 s, prefetch 32.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(25)],
            prefetch: 32,
        }
    }
}

/// How long a batch waits to fill while its consumer is still handling another.
const FILL_WAIT: Duration = Duration::from_millis(5);

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(error)
}

#[derive(Debug, thiserror::Error)]
enum BrokerRefused {
    #[error("the broker did not confirm the message")]
    Nacked,
    #[error("no queue is bound for routing key {0}")]
    Unroutable(String),
}

fn retry_queue(queue: RoutingKey, level: usize) -> String {
    format!("{}.retry.{level}", queue.as_str())
}

fn dead_letter_queue(queue: RoutingKey) -> String {
    format!("{}.dlq", queue.as_str())
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_count(headers: Option<&FieldTable>) -> u32 {
    let value = headers.and_then(|h| h.inner().get(RETRY_COUNT));
    let count = match value {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(0)
}

/// Declares the exchange and, for each queue, the queue (quorum, bound to the exchange by its name), its
/// retry levels (TTL, dead-lettering back to the queue through the default exchange) and its dead-letter
/// queue. Idempotent; a changed TTL is refused by the broker (delete the retry queues to change it).
async fn declare(channel: &Channel, queues: &[RoutingKey], delays: &[Duration]) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    for &queue in queues {
        channel.queue_declare(queue.as_str().into(), durable, quorum.clone()).await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for (i, delay) in delays.iter().enumerate() {
            let mut retry = FieldTable::default();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            retry.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            retry.insert("x-dead-letter-exchange".into(), long_string(""));
            retry.insert("x-dead-letter-routing-key".into(), long_string(queue.as_str()));
            channel.queue_declare(retry_queue(queue, i + 1).into(), durable, retry).await?;
        }
        channel.queue_declare(dead_letter_queue(queue).into(), durable, quorum.clone()).await?;
    }
    Ok(())
}

/// The largest frame asked of the broker unless the URL sets `frame_max`. lapin keeps a send and a
/// receive buffer of 32 frames per connection, so the frame size decides its memory: at RabbitMQ's
/// default of 128 KiB that is 8 MiB per connection, most of a service's resident memory. Commands are a
/// few KiB and longer bodies are split into frames, so 16 KiB frames cost nothing but memory: 1 MiB.
const FRAME_MAX: u32 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("invalid AMQP URL: {0}")]
struct InvalidUrl(String);

async fn open_channel(url: &str) -> Result<(Connection, Channel), BoxError> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(InvalidUrl)?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let connection = Connection::connect_uri(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((connection, channel))
}

/// Publishes and waits for the broker's confirm; a returned (unroutable) message is an error, never a
/// silent loss.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BoxError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            body,
            properties,
        )
        .await?;
    confirmed(confirm.await?, routing_key)
}

/// Reads the broker's verdict on one published message.
fn confirmed(confirmation: Confirmation, routing_key: &str) -> Result<(), BoxError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Box::new(BrokerRefused::Unroutable(routing_key.to_owned()))),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(Box::new(BrokerRefused::Nacked)),
    }
}

/// A command as it goes on the wire: the CloudEvent as the body, its id as the message id, persistent.
fn command_message(event: &CloudEvent) -> Result<(Vec<u8>, BasicProperties), BoxError> {
    let body = serde_json::to_vec(event)?;
    let mut headers = FieldTable::default();
    if let Some(traceparent) = &event.traceparent {
        headers.insert(trace::TRACEPARENT.into(), long_string(traceparent));
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(event.id.to_string()))
        .with_content_type(CONTENT_TYPE.into())
        .with_type(ShortString::from(event.event_type.clone()))
        .with_headers(headers);
    Ok((body, properties))
}

/// The broker, as both services use it: publisher, consumer and dead-letter operations. Connections are
/// opened lazily and opened again after a failure, so a broker restart costs retries, never messages.
pub struct RabbitBroker {
    settings: RabbitSettings,
    queues: Vec<RoutingKey>,
    publisher: Mutex<Option<(Connection, Channel)>>,
    shutdown: ConsumerShutdown,
}

impl RabbitBroker {
    /// Connects, declares the topology of `queues` (the ones this service consumes or publishes to), and
    /// keeps the connection for publishing.
    ///
    /// # Errors
    /// When the broker is unreachable or refuses the topology.
    pub async fn connect(settings: RabbitSettings, queues: &[RoutingKey]) -> Result<Self, BoxError> {
        let (connection, channel) = open_channel(&settings.url).await?;
        declare(&channel, queues, &settings.retry_delays).await?;
        Ok(Self {
            settings,
            queues: queues.to_vec(),
            publisher: Mutex::new(Some((connection, channel))),
            shutdown: ConsumerShutdown::default(),
        })
    }

    /// Whether the broker answers (for readiness): a passive declaration of the exchange, which exists
    /// once the topology is declared and costs the channel nothing.
    pub async fn ping(&self) -> bool {
        self.with_channel(|channel| async move {
            let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
            channel.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, passive, FieldTable::default()).await?;
            Ok(())
        })
        .await
        .is_ok()
    }

    /// Runs `work` on the publishing channel, reconnecting first when there is none; drops the channel on
    /// failure so the next call starts afresh.
    async fn with_channel<T, F, Fut>(&self, work: F) -> Result<T, BoxError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, BoxError>>,
    {
        let result = work(self.publishing_channel().await?).await;
        if result.is_err() {
            self.forget_channel().await;
        }
        result
    }

    /// The publishing channel, opened (and the topology declared) when there is none or it broke.
    async fn publishing_channel(&self) -> Result<Channel, BoxError> {
        let mut guard = self.publisher.lock().await;
        match guard.as_ref() {
            Some((connection, channel)) if connection.status().connected() && channel.status().connected() => {
                Ok(channel.clone())
            }
            _ => {
                let (connection, channel) = open_channel(&self.settings.url).await?;
                declare(&channel, &self.queues, &self.settings.retry_delays).await?;
                *guard = Some((connection, channel.clone()));
                Ok(channel)
            }
        }
    }

    /// Drops the publishing channel after a failure, so the next use opens a fresh one.
    async fn forget_channel(&self) {
        *self.publisher.lock().await = None;
    }

    async fn consume_once(
        &self,
        queue: RoutingKey,
        handler: &Arc<dyn MessageHandler>,
        stopping: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BoxError> {
        let (connection, channel) = open_channel(&self.settings.url).await?;
        declare(&channel, &[queue], &self.settings.retry_delays).await?;
        channel.basic_qos(self.settings.prefetch.max(1), BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", queue.as_str(), uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = queue.as_str(), "consuming");
        // Half the prefetch, so a second batch can be handled while the first commits.
        let most = usize::from(self.settings.prefetch / 2).max(1);
        let unsettled = Arc::new(Unsettled::default());
        let mut running = tokio::task::JoinSet::new();
        let mut failed = None;
        loop {
            let first = tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => delivery,
                    // The handlers in flight still finish below rather than being dropped half way.
                    Some(Err(error)) => {
                        failed = Some(error);
                        break;
                    }
                    None => break,
                },
                _ = stopping.wait_for(|stop| *stop) => break,
            };
            // Whatever else has already arrived joins the batch.
            let mut batch = vec![first];
            while batch.len() < most {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(error))) => {
                        failed = Some(error);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            // Reap finished handlers: the set must not grow without bound, and what is left in it is busy.
            while let Some(done) = running.try_join_next() {
                if let Ok(Err(error)) = done {
                    tracing::warn!(queue = queue.as_str(), %error, "could not settle a delivery");
                }
            }
            // While another batch is still being handled the queue is busy: this one gets a few
            // milliseconds to fill, so that under load the consumer commits fewer, larger batches.
            if batch.len() < most && failed.is_none() && !running.is_empty() {
                let deadline = tokio::time::Instant::now() + FILL_WAIT;
                while batch.len() < most {
                    match tokio::time::timeout_at(deadline, consumer.next()).await {
                        Ok(Some(Ok(delivery))) => batch.push(delivery),
                        Ok(Some(Err(error))) => {
                            failed = Some(error);
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            unsettled.hold(batch.iter().map(|delivery| delivery.delivery_tag));
            let handler = Arc::clone(handler);
            let channel = channel.clone();
            let delays = self.settings.retry_delays.len();
            let unsettled = Arc::clone(&unsettled);
            running.spawn(async move { settle_batch(&channel, queue, delays, batch, handler, &unsettled).await });
            if failed.is_some() {
                break;
            }
        }
        // Nothing new from here on: without the cancel, every ack below would free a prefetch slot the
        // broker fills again, only for that delivery to go back to the queue when the channel closes.
        let _ = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await;
        // Let in-flight handlers finish and settle before the connection goes; deliveries prefetched but
        // not started are returned to the queue when the channel closes.
        while running.join_next().await.is_some() {}
        let _ = channel.close(200, "stopping".into()).await;
        drop(connection);
        failed.map_or(Ok(()), |error| Err(boxed(error)))
    }
}

/// The delivery tags of one channel handed to a handler and not yet settled. An ack with `multiple`
/// settles every unsettled tag up to its own, so a batch may be acknowledged in one frame only when no
/// other batch's tag below it is still unsettled; a tag leaves the set only once its ack, nack or
/// republish has been sent, so a later `multiple` can never cover a delivery still being settled.
#[derive(Default)]
struct Unsettled(std::sync::Mutex<std::collections::BTreeSet<u64>>);

impl Unsettled {
    fn hold(&self, tags: impl IntoIterator<Item = u64>) {
        self.tags().extend(tags);
    }

    /// Whether every unsettled tag up to the last of `tags` is one of `tags`.
    fn oldest(&self, tags: &[u64]) -> bool {
        let Some(last) = tags.last() else { return false };
        self.tags().range(..=last).all(|tag| tags.contains(tag))
    }

    fn release(&self, tags: &[u64]) {
        let mut held = self.tags();
        for tag in tags {
            held.remove(tag);
        }
    }

    fn tags(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        // The set stays whole even if a holder panicked: every change to it is one call.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Hands a batch of deliveries to the handler, then settles them: a batch handled in full and holding
/// the channel's oldest unsettled deliveries with one `multiple` ack (for a quorum queue one settlement
/// in its log instead of one a delivery), otherwise each by its own outcome (see [`settle`]).
async fn settle_batch(
    channel: &Channel,
    queue: RoutingKey,
    retry_levels: usize,
    deliveries: Vec<lapin::message::Delivery>,
    handler: Arc<dyn MessageHandler>,
    unsettled: &Unsettled,
) -> Result<(), BoxError> {
    let messages: Vec<Delivery> = deliveries
        .iter()
        .map(|delivery| {
            let headers = delivery.properties.headers().as_ref();
            let message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned());
            let retries = header_count(headers);
            let traceparent = header_text(headers, trace::TRACEPARENT);
            let span = trace::consumer_span(
                "rabbitmq",
                queue.as_str(),
                message_id.as_deref(),
                retries,
                traceparent.as_deref(),
            );
            Delivery { queue, message_id, body: delivery.data.clone(), retries, span }
        })
        .collect();
    let spans: Vec<&tracing::Span> = messages.iter().map(|m| &m.span).collect();
    let joint = trace::batch_span(queue.as_str(), &spans);
    let started = std::time::Instant::now();
    let mut outcomes = handler.handle_batch(&messages).instrument(joint).await.into_iter();
    let elapsed = started.elapsed().as_secs_f64();
    let outcomes: Vec<HandlerOutcome> = deliveries
        .iter()
        .map(|_| {
            outcomes
                .next()
                .unwrap_or_else(|| HandlerOutcome::Transient("the handler gave no outcome for this delivery".into()))
        })
        .collect();
    let handled = crate::metrics::HANDLER_SECONDS.with_label_values(&[queue.as_str()]);
    for _ in &deliveries {
        handled.observe(elapsed);
    }
    let tags: Vec<u64> = deliveries.iter().map(|delivery| delivery.delivery_tag).collect();
    let all_done = outcomes.iter().all(|outcome| matches!(outcome, HandlerOutcome::Done));
    if let Some(&last) = tags.last().filter(|_| all_done && unsettled.oldest(&tags)) {
        let acked = channel.basic_ack(last, BasicAckOptions { multiple: true }).await;
        unsettled.release(&tags);
        acked?;
        crate::metrics::MESSAGES
            .with_label_values(&[queue.as_str(), "done"])
            .inc_by(u64::try_from(tags.len()).unwrap_or(u64::MAX));
        return Ok(());
    }
    let mut result = Ok(());
    for ((delivery, message), outcome) in deliveries.into_iter().zip(&messages).zip(outcomes) {
        let tag = delivery.delivery_tag;
        let settled = settle(channel, queue, retry_levels, delivery, message, outcome).await;
        unsettled.release(&[tag]);
        if let Err(error) = settled {
            result = result.and(Err(error));
        }
    }
    result
}

/// Acts on a delivery's outcome: ack; or republish to the next retry level (or the dead-letter queue)
/// with a confirm, then ack. If the republish fails the delivery is nacked back to its queue, so nothing
/// is lost either way.
async fn settle(
    channel: &Channel,
    queue: RoutingKey,
    retry_levels: usize,
    delivery: lapin::message::Delivery,
    message: &Delivery,
    outcome: HandlerOutcome,
) -> Result<(), BoxError> {
    let (retries, span) = (message.retries, &message.span);
    let headers = delivery.properties.headers().as_ref();
    let counted = |outcome: &str| crate::metrics::MESSAGES.with_label_values(&[queue.as_str(), outcome]).inc();
    let (target, error) = match outcome {
        HandlerOutcome::Done => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            counted("done");
            return Ok(());
        }
        HandlerOutcome::Transient(error) if usize::try_from(retries).is_ok_and(|r| r < retry_levels) => {
            trace::mark_failed(span, &error);
            tracing::warn!(parent: span, queue = queue.as_str(), retries, %error, "retrying later");
            (retry_queue(queue, usize::try_from(retries).unwrap_or(0) + 1), error)
        }
        HandlerOutcome::Transient(error) | HandlerOutcome::Permanent(error) => {
            trace::mark_failed(span, &error);
            tracing::error!(parent: span, queue = queue.as_str(), retries, %error, "dead-lettering");
            (dead_letter_queue(queue), error)
        }
    };
    let going_to_dlq = target.ends_with(".dlq");
    let mut table = headers.cloned().unwrap_or_default();
    let count = if going_to_dlq { retries } else { retries + 1 };
    table.insert(RETRY_COUNT.into(), AMQPValue::LongLongInt(i64::from(count)));
    table.insert("x-error".into(), long_string(&error.chars().take(1000).collect::<String>()));
    if going_to_dlq {
        table.insert("x-failed-at".into(), long_string(&chrono::Utc::now().to_rfc3339()));
        table.insert("x-original-queue".into(), long_string(queue.as_str()));
    }
    let properties = delivery.properties.clone().with_headers(table).with_delivery_mode(2);
    match publish_confirmed(channel, "", &target, &delivery.data, properties).await {
        Ok(()) => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            counted(if going_to_dlq { "dead_lettered" } else { "retried" });
            Ok(())
        }
        Err(error) => {
            delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await?;
            counted("requeued");
            Err(error)
        }
    }
}

#[async_trait]
impl CommandPublisher for RabbitBroker {
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError> {
        match self.publish_all(&[(key, event)]).await.failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn publish_all(&self, events: &[(RoutingKey, &CloudEvent)]) -> Published {
        let mut published = Published { confirmed: vec![false; events.len()], failure: None };
        let channel = match self.publishing_channel().await {
            Ok(channel) => channel,
            Err(error) => {
                published.failure = Some(PublishError::Unexpected(error));
                return published;
            }
        };
        // Send everything first: the broker confirms as it goes, so waiting afterwards costs one round.
        let mut confirms = Vec::with_capacity(events.len());
        let mut broken = None;
        for (key, event) in events {
            let sent = match command_message(event) {
                Ok((body, properties)) => channel
                    .basic_publish(
                        EXCHANGE.into(),
                        key.as_str().into(),
                        BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                        &body,
                        properties,
                    )
                    .await
                    .map_err(boxed),
                Err(error) => Err(error),
            };
            match sent {
                Ok(confirm) => confirms.push(confirm),
                // The channel is gone, or the event cannot be sent: what follows would overtake it.
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            }
        }
        let verdicts = futures::future::join_all(confirms).await;
        for ((verdict, (key, _)), ok) in verdicts.into_iter().zip(events).zip(&mut published.confirmed) {
            match verdict.map_err(boxed).and_then(|confirmation| confirmed(confirmation, key.as_str())) {
                Ok(()) => *ok = true,
                Err(error) => {
                    published.failure.get_or_insert(PublishError::Unexpected(error));
                }
            }
        }
        if let Some(error) = broken {
            self.forget_channel().await;
            published.failure.get_or_insert(PublishError::Unexpected(error));
        }
        published
    }
}

#[async_trait]
impl CommandConsumer for RabbitBroker {
    async fn consume(&self, queue: RoutingKey, handler: Arc<dyn MessageHandler>) -> Result<(), ConsumeError> {
        let mut running = self.shutdown.register();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = self.consume_once(queue, &handler, &mut running.stopping).await;
            if *running.stopping.borrow() {
                return Ok(());
            }
            if result.is_ok() {
                backoff.reset();
            }
            let wait = backoff.next_wait();
            match result {
                Ok(()) => tracing::warn!(queue = queue.as_str(), "consumer closed by the broker; reconnecting"),
                Err(error) => tracing::warn!(queue = queue.as_str(), %error, retry_in = ?wait, "consumer failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = running.stopping.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    async fn shutdown(&self) {
        self.shutdown.shutdown().await;
    }

    async fn waiting(&self, queue: RoutingKey) -> Result<u64, ConsumeError> {
        self.with_channel(|channel| async move {
            // A passive declare reports the messages ready for delivery, not those delivered and unacked.
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                    FieldTable::default(),
                )
                .await?;
            Ok(u64::from(declared.message_count()))
        })
        .await
        .map_err(ConsumeError::Unexpected)
    }
}

fn dead_letter_of(queue: RoutingKey, delivery: &lapin::message::Delivery) -> DeadLetter {
    let headers = delivery.properties.headers().as_ref();
    DeadLetter {
        message_id: delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned()),
        original_queue: queue,
        error: header_text(headers, "x-error").unwrap_or_default(),
        failed_at: header_text(headers, "x-failed-at")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc)),
        retries: header_count(headers),
        body: delivery.data.clone(),
    }
}

#[async_trait]
impl DeadLetterAdmin for RabbitBroker {
    async fn queues(&self, queues: &[RoutingKey]) -> Result<Vec<DeadLetterQueue>, AdminError> {
        let queues = queues.to_vec();
        self.with_channel(|channel| async move {
            let mut depths = Vec::with_capacity(queues.len());
            for queue in queues {
                let declared = channel
                    .queue_declare(
                        dead_letter_queue(queue).into(),
                        QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                        FieldTable::default(),
                    )
                    .await?;
                depths.push(DeadLetterQueue { queue, depth: u64::from(declared.message_count()) });
            }
            Ok(depths)
        })
        .await
        .map_err(AdminError::Unexpected)
    }

    async fn peek(&self, queue: RoutingKey, limit: usize) -> Result<Vec<DeadLetter>, AdminError> {
        // Peeking takes messages without acking and then gives them all back at once: they stay in the
        // queue, and nothing else consumes a dead-letter queue.
        let (connection, channel) = open_channel(&self.settings.url).await.map_err(AdminError::Unexpected)?;
        let mut letters = Vec::new();
        let mut last_tag = None;
        while letters.len() < limit {
            let got = channel
                .basic_get(dead_letter_queue(queue).into(), BasicGetOptions::default())
                .await
                .map_err(|e| AdminError::Unexpected(boxed(e)))?;
            let Some(message) = got else { break };
            last_tag = Some(message.delivery.delivery_tag);
            letters.push(dead_letter_of(queue, &message.delivery));
        }
        if let Some(tag) = last_tag {
            channel
                .basic_nack(tag, BasicNackOptions { multiple: true, requeue: true })
                .await
                .map_err(|e| AdminError::Unexpected(boxed(e)))?;
        }
        // The close handshake completes after the broker processed the nack: the messages are back.
        let _ = channel.close(200, "peeked".into()).await;
        let _ = connection.close(200, "peeked".into()).await;
        Ok(letters)
    }

    async fn replay(&self, queue: RoutingKey, limit: usize) -> Result<usize, AdminError> {
        self.with_channel(|channel| async move {
            let mut replayed = 0;
            while replayed < limit {
                let Some(message) =
                    channel.basic_get(dead_letter_queue(queue).into(), BasicGetOptions::default()).await?
                else {
                    break;
                };
                let delivery = message.delivery;
                let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                let mut kept = FieldTable::default();
                for (name, value) in headers.inner() {
                    if !name.as_str().starts_with("x-") {
                        kept.insert(name.clone(), value.clone());
                    }
                }
                headers = kept;
                let properties = delivery.properties.clone().with_headers(headers);
                match publish_confirmed(&channel, EXCHANGE, queue.as_str(), &delivery.data, properties).await {
                    Ok(()) => {
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                        replayed += 1;
                    }
                    Err(error) => {
                        delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await?;
                        return Err(error);
                    }
                }
            }
            Ok(replayed)
        })
        .await
        .map_err(AdminError::Unexpected)
    }

    async fn purge(&self, queue: RoutingKey) -> Result<u64, AdminError> {
        self.with_channel(|channel| async move {
            Ok(u64::from(channel.queue_purge(dead_letter_queue(queue).into(), QueuePurgeOptions::default()).await?))
        })
        .await
        .map_err(AdminError::Unexpected)
    }
}

/// Reported as `broker` by `/health/ready`: whether the broker answers [`RabbitBroker::ping`] within two
/// seconds.
#[async_trait]
impl HealthCheck for RabbitBroker {
    fn name(&self) -> &'static str {
        "broker"
    }

    async fn check(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.ping()).await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
