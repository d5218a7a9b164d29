//! `orderflow dlq list|peek|replay|purge`: the dead-letter queues, operated directly on RabbitMQ.
//!
//! The CLI connects as the services do (`RabbitBroker::connect` with every queue of `RoutingKey::ALL`), which
//! declares the topology when it is missing; the broker refuses that declaration when the retry delays differ
//! from the ones the queues were declared with, so `--retry-delays` must match the services'
//! `AMQP_RETRY_DELAYS`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_messages::RoutingKey;
use orderflow_ports::messaging::{DeadLetter, DeadLetterAdmin};
use serde_json::json;

/// How long connecting (and declaring the topology) may take before the CLI gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How output is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line, nothing else (for `jq`).
    Jsonl,
}

/// The retry delays, one per retry level (`1s,5s,25s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

/// Parses `1s,5s,25s` as the services parse `AMQP_RETRY_DELAYS`.
///
/// # Errors
/// When a part is not a duration.
pub fn parse_retry_delays(raw: &str) -> Result<RetryDelays, String> {
    raw.split(',')
        .map(|part| humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?}: {e} (use e.g. 1s,5s,25s)")))
        .collect::<Result<Vec<_>, _>>()
        .map(RetryDelays)
}

fn valid_queues() -> String {
    RoutingKey::ALL.iter().map(|q| q.as_str()).collect::<Vec<_>>().join(", ")
}

/// Parses a queue name (a routing key such as `orders.created`; its DLQ name `orders.created.dlq` is
/// accepted too).
///
/// # Errors
/// When no queue has that name; the message lists the valid ones.
pub fn parse_queue(raw: &str) -> Result<RoutingKey, String> {
    let name = raw.strip_suffix(".dlq").unwrap_or(raw);
    RoutingKey::ALL
        .into_iter()
        .find(|q| q.as_str() == name)
        .ok_or_else(|| format!("unknown queue {raw:?}; the queues are: {}", valid_queues()))
}

/// Where the broker is and how its queues are laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerOptions {
    /// The broker, with credentials and vhost (`%2f` is the default vhost `/`).
    #[arg(long, global = true, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The TTL of each retry level, comma-separated. Must match the services' AMQP_RETRY_DELAYS: the CLI
    /// declares the queue topology as the services do, and the broker refuses a declaration whose retry
    /// queues' TTLs differ from the existing ones.
    #[arg(long, global = true, env = "AMQP_RETRY_DELAYS", default_value = "1s,5s,25s", value_parser = parse_retry_delays)]
    pub retry_delays: RetryDelays,
}

/// Options of `orderflow dlq`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqOptions {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter operations.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Every queue with the depth of its dead-letter queue.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show dead letters of a queue, oldest first, leaving them in place.
    Peek {
        /// The queue (routing key) whose dead letters to show, e.g. `orders.created`.
        #[arg(value_parser = parse_queue)]
        queue: RoutingKey,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format (`jsonl` includes the bodies).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Move dead letters back to their queue (retry count reset) to be consumed again.
    Replay {
        /// The queue (routing key), e.g. `orders.created`.
        #[arg(value_parser = parse_queue)]
        queue: RoutingKey,
        /// At most this many (default: every message in the dead-letter queue when the command starts).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete every dead letter of a queue.
    Purge {
        /// The queue (routing key), e.g. `orders.created`.
        #[arg(value_parser = parse_queue)]
        queue: RoutingKey,
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// `amqp://user:secret@host/vhost` without the credentials, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

async fn connect(options: &BrokerOptions) -> anyhow::Result<RabbitBroker> {
    let settings = RabbitSettings {
        retry_delays: options.retry_delays.0.clone(),
        ..RabbitSettings::new(options.amqp_url.clone())
    };
    let url = redacted(&options.amqp_url);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, RabbitBroker::connect(settings, &RoutingKey::ALL))
        .await
        .with_context(|| format!("connecting to RabbitMQ at {url} timed out after {CONNECT_TIMEOUT:?}"))?;
    connected.map_err(|error| {
        let text = format!("{error:?}");
        let hint = if text.contains("inequivalent") || text.contains("PRECONDITION_FAILED") {
            " — the retry queues exist with other TTLs: pass the services' AMQP_RETRY_DELAYS as --retry-delays"
        } else {
            ""
        };
        anyhow::anyhow!("connecting to RabbitMQ at {url} and declaring the queues failed: {error}{hint}")
    })
}

/// Prints one line to stdout; `false` when stdout is closed (e.g. piped into `head`), so callers stop.
pub(crate) fn emit(line: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error).context("writing to stdout"),
    }
}

/// Renders rows under a header with the columns aligned; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// A dead letter as JSON, in the shape of the admin API's DLQ entry: the body as JSON when it parses, else
/// base64 of the raw bytes; `type` from the CloudEvent body when there is one.
pub fn entry_json(letter: &DeadLetter) -> serde_json::Value {
    let body = serde_json::from_slice::<serde_json::Value>(&letter.body)
        .unwrap_or_else(|_| serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&letter.body)));
    json!({
        "message_id": letter.message_id,
        "type": body.get("type").and_then(|t| t.as_str()),
        "original_queue": letter.original_queue.as_str(),
        "error": letter.error,
        "failed_at": letter.failed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "retries": letter.retries,
        "body": body,
    })
}

fn event_type(letter: &DeadLetter) -> Option<String> {
    let body = serde_json::from_slice::<serde_json::Value>(&letter.body).ok()?;
    body.get("type").and_then(|t| t.as_str()).map(str::to_owned)
}

/// Runs `orderflow dlq …`.
///
/// # Errors
/// When the broker cannot be reached or refuses, a queue is unknown, or `purge` lacks `--yes`.
pub async fn run(options: DlqOptions) -> anyhow::Result<()> {
    if let DlqCommand::Purge { queue, yes: false } = &options.command {
        bail!(
            "refusing to delete the dead letters of {q} without --yes (see them first with `orderflow dlq peek {q}`)",
            q = queue.as_str()
        );
    }
    let broker = connect(&options.broker).await?;
    match options.command {
        DlqCommand::List { format } => {
            let queues = broker.queues(&RoutingKey::ALL).await.context("reading the dead-letter queue depths")?;
            match format {
                Format::Table => {
                    let rows: Vec<Vec<String>> = queues
                        .iter()
                        .map(|q| {
                            vec![q.queue.as_str().to_owned(), format!("{}.dlq", q.queue.as_str()), q.depth.to_string()]
                        })
                        .collect();
                    emit(&table(&["QUEUE", "DEAD-LETTER QUEUE", "DEPTH"], &rows))?;
                }
                Format::Jsonl => {
                    for q in &queues {
                        let line = json!({ "queue": q.queue.as_str(), "dlq": format!("{}.dlq", q.queue.as_str()), "depth": q.depth });
                        if !emit(&line.to_string())? {
                            break;
                        }
                    }
                }
            }
        }
        DlqCommand::Peek { queue, limit, format } => {
            let letters = broker.peek(queue, limit).await.with_context(|| format!("reading {}.dlq", queue.as_str()))?;
            match format {
                Format::Table => {
                    let rows: Vec<Vec<String>> = letters
                        .iter()
                        .map(|l| {
                            vec![
                                l.message_id.clone().unwrap_or_else(|| "-".to_owned()),
                                event_type(l).unwrap_or_else(|| "-".to_owned()),
                                l.failed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                l.retries.to_string(),
                                l.error.clone(),
                            ]
                        })
                        .collect();
                    emit(&table(&["MESSAGE_ID", "TYPE", "FAILED_AT", "RETRIES", "ERROR"], &rows))?;
                    if letters.is_empty() {
                        eprintln!("{}.dlq is empty", queue.as_str());
                    }
                }
                Format::Jsonl => {
                    for letter in &letters {
                        if !emit(&entry_json(letter).to_string())? {
                            break;
                        }
                    }
                }
            }
        }
        DlqCommand::Replay { queue, limit } => {
            let limit = match limit {
                Some(limit) => limit,
                // Only what is there now: messages that fail again while replaying are not replayed twice.
                None => {
                    let depths = broker.queues(&[queue]).await.context("reading the dead-letter queue depth")?;
                    let depth = depths.first().map_or(0, |q| q.depth);
                    usize::try_from(depth).unwrap_or(usize::MAX)
                }
            };
            let moved = broker.replay(queue, limit).await.with_context(|| {
                format!("replaying {q}.dlq (messages not yet moved stay in it)", q = queue.as_str())
            })?;
            emit(&format!("moved {moved} message(s) from {q}.dlq back to {q}", q = queue.as_str()))?;
        }
        DlqCommand::Purge { queue, .. } => {
            let purged = broker.purge(queue).await.with_context(|| format!("purging {}.dlq", queue.as_str()))?;
            emit(&format!("deleted {purged} message(s) from {}.dlq", queue.as_str()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_routing_keys_or_their_dead_letter_queues() {
        assert_eq!(parse_queue("orders.created"), Ok(RoutingKey::OrdersCreated));
        assert_eq!(parse_queue("orders.created.dlq"), Ok(RoutingKey::OrdersCreated));
        let error = parse_queue("orders.nope").unwrap_err();
        assert!(error.contains("orders.nope") && error.contains("shipments.cancelled"), "{error}");
    }

    #[test]
    fn retry_delays_parse_as_the_services_parse_them() {
        assert_eq!(parse_retry_delays("1s, 5s,25s"), Ok(RetryDelays([1, 5, 25].map(Duration::from_secs).to_vec())));
        assert!(parse_retry_delays("1s,soon").is_err());
    }

    #[test]
    fn credentials_are_left_out_of_messages() {
        assert_eq!(redacted("amqp://guest:secret@host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redacted("amqp://host/v"), "amqp://host/v");
    }

    #[test]
    fn tables_align_every_column_but_the_last() {
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()], vec!["bbb".to_owned(), "x".to_owned()]];
        assert_eq!(table(&["K", "V"], &rows), "K    V\na    long value\nbbb  x");
    }
}
