//! Kafka adapters on `rdkafka` (bundled librdkafka): the audit log the outbox relay appends every event to,
//! and the reader the analysts' `orderflow audit` commands consume it with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_messages::{CloudEvent, DecodeError};
use orderflow_ports::BoxError;
use orderflow_ports::messaging::{AuditLog, PublishError};
use orderflow_ports::system::HealthCheck;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The topic of docs/design.md.
pub const DEFAULT_TOPIC: &str = "orders.audit";

/// Header carrying the CloudEvent type, so consumers can filter without parsing the value.
pub const HEADER_TYPE: &str = "ce_type";
/// Header carrying the CloudEvent id (the event id consumers de-duplicate on).
pub const HEADER_ID: &str = "ce_id";
/// Header carrying the W3C trace context, when the event has one.
pub const HEADER_TRACEPARENT: &str = orderflow_ports::trace::TRACEPARENT;

/// How long metadata look-ups (readiness, topic layout) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`AuditReader::history`] reads on past the high watermarks before it takes the topic as read.
const HISTORY_QUIET: Duration = Duration::from_millis(300);
/// How often, and how long each time, a relay waiting out a failure asks whether a broker answers.
const REACHABLE_EVERY: Duration = Duration::from_millis(250);

/// How to reach the cluster and lay out the topic.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// The audit topic.
    pub topic: String,
    /// Partitions of the topic when this adapter creates it; more partitions, more parallel consumers.
    pub partitions: i32,
    /// Replication factor of the topic when this adapter creates it (1 for a single local broker).
    pub replication: i32,
    /// How long an append may wait for the delivery report (librdkafka's `message.timeout.ms`, which
    /// includes retries): bounded, so the outbox relay gets an error and keeps the row when Kafka is down.
    /// Short, because an append in flight when a broker comes back without its state (tansu in memory)
    /// only fails when it runs out, and the audit stream resumes only after that.
    pub message_timeout: Duration,
    /// Extra librdkafka properties applied last to every client (e.g. `client.id`, `socket.timeout.ms`).
    pub client_config: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The defaults of docs/design.md: topic `orders.audit`, 6 partitions, replication 1, 3 s message timeout.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.to_owned(),
            partitions: 6,
            replication: 1,
            message_timeout: Duration::from_secs(3),
            client_config: BTreeMap::new(),
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("client.id", "orderflow");
        config
    }

    fn with_extras(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.client_config {
            config.set(key, value);
        }
        config
    }
}

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    Box::new(error)
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// Creates the audit topic with the configured partitions and replication unless it exists already.
///
/// # Errors
/// When the cluster cannot be reached within the message timeout or refuses to create the topic.
pub async fn ensure_topic(settings: &KafkaSettings) -> Result<(), BoxError> {
    let admin: AdminClient<DefaultClientContext> = settings.with_extras(settings.client_config()).create()?;
    let options = AdminOptions::new()
        .request_timeout(Some(settings.message_timeout))
        .operation_timeout(Some(settings.message_timeout));
    let topic = NewTopic::new(&settings.topic, settings.partitions, TopicReplication::Fixed(settings.replication));
    for result in admin.create_topics([&topic], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating topic {name} failed: {code}").into()),
        }
    }
    Ok(())
}

/// The audit stream on Kafka: an idempotent, `acks=all`, lz4-compressed producer; each event keyed by its
/// order id, its value the CloudEvent JSON, its headers `ce_type`, `ce_id` and `traceparent`.
pub struct KafkaAuditLog {
    /// The producer in use, with a generation number so concurrent failures replace it only once.
    producer: Mutex<(u64, FutureProducer)>,
    settings: KafkaSettings,
    /// Whether the topic is known to exist. It is created (with its partitions) before the first event even
    /// when Kafka was down at start-up, and again when the cluster stops knowing it (a broker with in-memory
    /// storage restarted), rather than auto-created with the broker's defaults.
    topic_ready: AtomicBool,
}

impl std::fmt::Debug for KafkaAuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAuditLog").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl KafkaAuditLog {
    /// Creates the topic if missing, then the producer; fails when Kafka cannot be reached.
    ///
    /// # Errors
    /// When the topic cannot be created (Kafka down, refused) or the configuration is invalid.
    pub async fn connect(settings: KafkaSettings) -> Result<Self, BoxError> {
        let log = Self::new(settings)?;
        log.ensure_topic().await?;
        Ok(log)
    }

    /// Creates the producer without contacting Kafka, so a service can start while Kafka is down; the topic
    /// is created before the first append.
    ///
    /// # Errors
    /// When the configuration is invalid.
    pub fn new(settings: KafkaSettings) -> Result<Self, BoxError> {
        let producer = producer(&settings)?;
        Ok(Self { producer: Mutex::new((0, producer)), settings, topic_ready: AtomicBool::new(false) })
    }

    async fn ensure_topic(&self) -> Result<(), BoxError> {
        if !self.topic_ready.load(Ordering::Acquire) {
            // Concurrent appends may both try; the loser's `TopicAlreadyExists` is tolerated.
            ensure_topic(&self.settings).await?;
            self.topic_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn current(&self) -> (u64, FutureProducer) {
        // The guarded value is a handle that is never left half-updated: a poisoned lock is still usable.
        self.producer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the producer of `generation` after a failed delivery. A broker that lost its state (tansu in
    /// memory after a restart; producer state expired in Kafka) refuses the old producer id for ever, and
    /// librdkafka only bumps its epoch locally; a new producer asks for a new id.
    fn replace(&self, generation: u64, failed: FutureProducer) {
        let fresh = match producer(&self.settings) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(error = %error, "could not create a new Kafka producer; keeping the old one");
                return;
            }
        };
        let old = {
            let mut current = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
            if current.0 != generation {
                return;
            }
            std::mem::replace(&mut *current, (generation + 1, fresh))
        };
        // Dropping a producer purges and flushes it and joins its thread: not on an async worker.
        tokio::task::spawn_blocking(move || drop((old, failed)));
    }

    /// The topic events are appended to.
    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    /// Whether a broker answers a metadata request within a few seconds (for `/health/ready`).
    pub async fn ping(&self) -> bool {
        self.answers_within(METADATA_TIMEOUT).await
    }

    async fn answers_within(&self, timeout: Duration) -> bool {
        let (_, producer) = self.current();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

fn producer(settings: &KafkaSettings) -> Result<FutureProducer, BoxError> {
    let mut config = settings.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        // The Java clients' partitioner, so every producer maps an order id to the same partition.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", millis(settings.message_timeout))
        // Only `ensure_topic` creates the topic, with its partitions; not a metadata request with the broker's
        // defaults.
        .set("allow.auto.create.topics", "false")
        // A broker thread waiting out a long reconnect back-off notices timed-out messages late and reconnects
        // late when Kafka is back.
        .set("reconnect.backoff.max.ms", "1000")
        .set("linger.ms", "5");
    Ok(settings.with_extras(config).create()?)
}

#[async_trait]
impl AuditLog for KafkaAuditLog {
    async fn append(&self, event: &CloudEvent) -> Result<(), PublishError> {
        self.ensure_topic().await.map_err(PublishError::Unexpected)?;
        let value = serde_json::to_vec(event).map_err(|e| PublishError::Unexpected(boxed(e)))?;
        let id = event.id.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: HEADER_TYPE, value: Some(event.event_type.as_str()) })
            .insert(Header { key: HEADER_ID, value: Some(id.as_str()) });
        if let Some(traceparent) = &event.traceparent {
            headers = headers.insert(Header { key: HEADER_TRACEPARENT, value: Some(traceparent.as_str()) });
        }
        let record = FutureRecord::to(&self.settings.topic).key(&event.subject).payload(&value).headers(headers);
        let (generation, producer) = self.current();
        let started = std::time::Instant::now();
        // Resolves with the delivery report: Ok only once the leader and its in-sync replicas have the event,
        // an error once `message.timeout.ms` has passed without that. The outer bound is a safety net.
        let delivery = tokio::time::timeout(
            self.settings.message_timeout * 2,
            producer.send(record, self.settings.message_timeout),
        )
        .await;
        let result = if matches!(delivery, Ok(Ok(_))) { "ok" } else { "failed" };
        crate::metrics::AUDIT_APPEND_SECONDS.with_label_values(&[result]).observe(started.elapsed().as_secs_f64());
        let error: BoxError = match delivery {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err((error, _))) => boxed(error),
            Err(elapsed) => boxed(elapsed),
        };
        // Kafka failed us: make sure of the topic again (a broker with in-memory storage forgets it when it
        // restarts; librdkafka would report that only as a timeout) and start a fresh producer.
        self.topic_ready.store(false, Ordering::Release);
        self.replace(generation, producer);
        Err(PublishError::Unexpected(error))
    }

    async fn wait_until_reachable(&self, at_most: Duration) {
        let deadline = tokio::time::Instant::now() + at_most;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || self.answers_within(REACHABLE_EVERY.min(left)).await {
                return;
            }
            tokio::time::sleep(REACHABLE_EVERY.min(deadline.saturating_duration_since(tokio::time::Instant::now())))
                .await;
        }
    }
}

/// One audit event as read from the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The message key (the order id).
    pub key: Option<String>,
    /// The message headers, in order, values read as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The event.
    pub event: CloudEvent,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The record is not a CloudEvent (another producer wrote to the topic); the reader can go on.
    #[error("record {partition}/{offset} is not a CloudEvent")]
    Malformed {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// The cluster failed.
    #[error("reading the audit stream failed")]
    Unexpected(#[source] BoxError),
}

/// Where an [`AuditReader`] starts and whether it shares progress with others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Start at the oldest retained event rather than at the end. In a group that has committed offsets,
    /// those win (as with Kafka's console consumer).
    pub from_beginning: bool,
    /// Join this consumer group: partitions are shared with its other members and progress is committed.
    /// Without a group the reader reads every partition and commits nothing.
    pub group: Option<String>,
}

/// Reads the audit stream, for `orderflow audit tail` and `orderflow audit timeline`.
pub struct AuditReader {
    consumer: Arc<StreamConsumer>,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader").finish_non_exhaustive()
    }
}

impl AuditReader {
    /// Starts reading `settings.topic` as `options` say.
    ///
    /// # Errors
    /// When the cluster cannot be reached or the topic does not exist.
    pub async fn open(settings: &KafkaSettings, options: &ReadOptions) -> Result<Self, BoxError> {
        let reset = if options.from_beginning { "earliest" } else { "latest" };
        let mut config = settings.client_config();
        config
            .set("auto.offset.reset", reset)
            // tansu (and small clusters) join groups much faster with a short session than the 45 s default.
            .set("session.timeout.ms", "6000");
        match &options.group {
            Some(group) => config.set("group.id", group).set("enable.auto.commit", "true"),
            // librdkafka wants a group id even for assigned partitions; nothing is committed under it.
            None => config
                .set("group.id", format!("orderflow-audit-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false"),
        };
        let consumer: Arc<StreamConsumer> = Arc::new(settings.with_extras(config).create()?);
        let (topic, group, from_beginning) = (settings.topic.clone(), options.group.is_some(), options.from_beginning);
        let setup = Arc::clone(&consumer);
        // Metadata look-ups block: keep them off the async workers.
        tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
            if group {
                setup.subscribe(&[&topic])?;
                return Ok(());
            }
            let mut assignment = TopicPartitionList::new();
            for partition in partitions(&setup, &topic)? {
                // The end is resolved now rather than when fetching starts, so every event appended after
                // `open` returns is read.
                let start = if from_beginning {
                    Offset::Beginning
                } else {
                    Offset::Offset(setup.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)?.1)
                };
                assignment.add_partition_offset(&topic, partition, start)?;
            }
            setup.assign(&assignment)?;
            Ok(())
        })
        .await
        .map_err(boxed)??;
        Ok(Self { consumer })
    }

    /// Waits for the next record.
    ///
    /// # Errors
    /// [`ReadError::Malformed`] for a record that is not a CloudEvent (reading may go on);
    /// [`ReadError::Unexpected`] when the cluster fails.
    pub async fn next(&self) -> Result<AuditRecord, ReadError> {
        let message = self.consumer.recv().await.map_err(|e| ReadError::Unexpected(boxed(e)))?;
        record(&message)
    }

    /// Every event of the topic up to its current end (of one order when `subject` is given), partition by
    /// partition in offset order, so one order's events come oldest first. Records that are not
    /// CloudEvents are skipped.
    ///
    /// # Errors
    /// When the cluster cannot be reached, the topic does not exist, or the end is not reached because no
    /// record arrives for `settings.message_timeout`.
    pub async fn history(settings: &KafkaSettings, subject: Option<&str>) -> Result<Vec<AuditRecord>, BoxError> {
        let mut config = settings.client_config();
        config.set("group.id", format!("orderflow-audit-{}", uuid::Uuid::new_v4())).set("enable.auto.commit", "false");
        let consumer: Arc<StreamConsumer> = Arc::new(settings.with_extras(config).create()?);
        let topic = settings.topic.clone();
        let setup = Arc::clone(&consumer);
        // The end of each non-empty partition, as offset of its last record.
        let mut ends: BTreeMap<i32, i64> = tokio::task::spawn_blocking(move || -> Result<_, BoxError> {
            let mut ends = BTreeMap::new();
            let mut assignment = TopicPartitionList::new();
            for partition in partitions(&setup, &topic)? {
                let (low, high) = setup.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)?;
                if high > low {
                    ends.insert(partition, high - 1);
                    assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
                }
            }
            setup.assign(&assignment)?;
            Ok(ends)
        })
        .await
        .map_err(boxed)??;

        let mut records = Vec::new();
        let mut keep = |message: &rdkafka::message::BorrowedMessage<'_>| match record(message) {
            Ok(record) if subject.is_none_or(|s| s == record.event.subject) => records.push(record),
            Ok(_) => {}
            Err(error) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                error = %error,
                "skipping a record that is not a CloudEvent"
            ),
        };
        while !ends.is_empty() {
            let message = tokio::time::timeout(settings.message_timeout, consumer.recv()).await.map_err(|_| {
                format!("no record arrived for {:?} before the end of the topic", settings.message_timeout)
            })??;
            keep(&message);
            if ends.get(&message.partition()).is_some_and(|end| message.offset() >= *end) {
                ends.remove(&message.partition());
            }
        }
        // Some brokers (tansu) report a high watermark short of the last record when the last batch holds
        // several: what follows it arrives with the same fetch, so read on until the topic is quiet.
        while let Ok(message) = tokio::time::timeout(HISTORY_QUIET, consumer.recv()).await {
            keep(&message?);
        }
        Ok(records)
    }
}

/// The partition ids of `topic`.
fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, BoxError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let topic_metadata = metadata.topics().iter().find(|t| t.name() == topic).ok_or("no metadata for the topic")?;
    if let Some(error) = topic_metadata.error() {
        return Err(boxed(KafkaError::MetadataFetch(error.into())));
    }
    Ok(topic_metadata.partitions().iter().map(|p| p.id()).collect())
}

fn record(message: &BorrowedMessage<'_>) -> Result<AuditRecord, ReadError> {
    let (partition, offset) = (message.partition(), message.offset());
    let event = CloudEvent::decode(message.payload().unwrap_or_default()).map_err(|source| ReadError::Malformed {
        partition,
        offset,
        source,
    })?;
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(AuditRecord {
        partition,
        offset,
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        event,
    })
}

/// Reported as `audit` by `/health/ready`: whether a broker answers [`KafkaAuditLog::ping`].
#[async_trait]
impl HealthCheck for KafkaAuditLog {
    fn name(&self) -> &'static str {
        "audit"
    }

    async fn check(&self) -> bool {
        self.ping().await
    }
}

#[cfg(test)]
mod tests;
