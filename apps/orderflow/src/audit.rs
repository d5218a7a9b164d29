//! `orderflow audit tail|timeline`: the analysts' view of the Kafka audit stream — follow it live (or from
//! the beginning) with filters, or print one order's history oldest first.
//!
//! Events go to stdout (`jsonl`: one CloudEvent JSON per line and nothing else, so `jq` works; `table`: one
//! aligned line per event); warnings and errors go to stderr.

use anyhow::{Context as _, bail};
use orderflow_adapters::kafka::{AuditReader, AuditRecord, KafkaSettings, ReadError, ReadOptions};

use crate::dlq::emit;

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One CloudEvent JSON per line.
    Jsonl,
    /// Time, type, subject (order id), source and partition/offset, aligned.
    Table,
}

/// Where the audit stream is.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaOptions {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, global = true, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The audit topic.
    #[arg(long, global = true, env = "AUDIT_TOPIC", default_value = "orders.audit")]
    pub topic: String,
}

impl KafkaOptions {
    fn settings(&self) -> KafkaSettings {
        KafkaSettings { topic: self.topic.clone(), ..KafkaSettings::new(self.brokers.clone()) }
    }
}

/// Options of `orderflow audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditOptions {
    /// The cluster and topic.
    #[command(flatten)]
    pub kafka: KafkaOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The audit commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Print audit events as they arrive, until Ctrl-C (or `--limit` events printed).
    Tail(TailOptions),
    /// Print every audit event of one order, oldest first, and exit.
    Timeline {
        /// The order id.
        order_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
    },
}

/// Options of `orderflow audit tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailOptions {
    /// Start at the oldest retained event instead of only new ones (in a group with committed offsets,
    /// those win).
    #[arg(long)]
    pub from_beginning: bool,
    /// Only events of this order (the CloudEvent subject).
    #[arg(long = "order", value_name = "ORDER_ID")]
    pub order: Option<String>,
    /// Only events of this type: the full type (`orderflow.order.paid.v1`) or its short form (`order.paid`).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Join this consumer group: partitions are shared with its other members and progress is committed.
    /// Without it every partition is read and nothing is committed.
    #[arg(long)]
    pub group: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Stop after printing this many events (after filtering).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Whether `actual` (e.g. `orderflow.order.paid.v1`) is the type `wanted` names, in full or in short
/// (`order.paid`, without the `orderflow.` prefix and the `.vN` version).
pub fn type_matches(wanted: &str, actual: &str) -> bool {
    if wanted == actual {
        return true;
    }
    let short = actual.strip_prefix("orderflow.").unwrap_or(actual);
    let unversioned = match short.rsplit_once(".v") {
        Some((head, version)) if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit()) => head,
        _ => short,
    };
    wanted == short || wanted == unversioned
}

fn render(record: &AuditRecord, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Jsonl => serde_json::to_string(&record.event).context("encoding an event")?,
        Format::Table => {
            let event = &record.event;
            format!(
                "{:<24}  {:<36}  {:<36}  {:<12}  {}/{}",
                event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                event.event_type,
                event.subject,
                event.source,
                record.partition,
                record.offset
            )
        }
    })
}

fn header(format: Format) -> Option<String> {
    (format == Format::Table).then(|| {
        format!("{:<24}  {:<36}  {:<36}  {:<12}  {}", "TIME", "TYPE", "SUBJECT (ORDER)", "SOURCE", "PARTITION/OFFSET")
    })
}

/// Runs `orderflow audit …`.
///
/// # Errors
/// When the cluster cannot be reached, the topic does not exist, reading fails, or (timeline) the order has
/// no events.
pub async fn run(options: AuditOptions) -> anyhow::Result<()> {
    let settings = options.kafka.settings();
    let place = format!("topic {} on {}", settings.topic, settings.brokers);
    match options.command {
        AuditCommand::Tail(tail_options) => tail(&settings, &place, tail_options).await,
        AuditCommand::Timeline { order_id, format } => {
            let records = AuditReader::history(&settings, Some(&order_id))
                .await
                .map_err(|e| anyhow::anyhow!("reading {place} failed: {e}"))?;
            if records.is_empty() {
                bail!("no audit events for order {order_id} in {place}");
            }
            if let Some(header) = header(format) {
                emit(&header)?;
            }
            for record in &records {
                if !emit(&render(record, format)?)? {
                    break;
                }
            }
            Ok(())
        }
    }
}

async fn tail(settings: &KafkaSettings, place: &str, options: TailOptions) -> anyhow::Result<()> {
    if options.limit == Some(0) {
        return Ok(());
    }
    let read = ReadOptions { from_beginning: options.from_beginning, group: options.group.clone() };
    let reader =
        AuditReader::open(settings, &read).await.map_err(|e| anyhow::anyhow!("reading {place} failed: {e}"))?;
    if let Some(header) = header(options.format) {
        emit(&header)?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed = 0usize;
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = reader.next() => next,
        };
        let record = match next {
            Ok(record) => record,
            Err(error @ ReadError::Malformed { .. }) => {
                eprintln!("warning: skipping {error}: {}", source_text(&error));
                continue;
            }
            Err(error) => {
                // librdkafka reports passing trouble (a broker restarting) here and recovers by itself.
                eprintln!("warning: {error}: {}; still reading", source_text(&error));
                tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if options.order.as_ref().is_some_and(|order| *order != record.event.subject) {
            continue;
        }
        if options.event_type.as_ref().is_some_and(|t| !type_matches(t, &record.event.event_type)) {
            continue;
        }
        if !emit(&render(&record, options.format)?)? {
            return Ok(());
        }
        printed += 1;
        if options.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
    }
}

fn source_text(error: &dyn std::error::Error) -> String {
    error.source().map_or_else(String::new, ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_in_full_or_in_short() {
        assert!(type_matches("orderflow.order.paid.v1", "orderflow.order.paid.v1"));
        assert!(type_matches("order.paid", "orderflow.order.paid.v1"));
        assert!(type_matches("order.paid.v1", "orderflow.order.paid.v1"));
        assert!(!type_matches("order.paid", "orderflow.order.placed.v1"));
        assert!(!type_matches("paid", "orderflow.order.paid.v1"));
        assert!(!type_matches("orderflow.order.paid.v2", "orderflow.order.paid.v1"));
    }
}
