//! The in-memory outbox both in-memory stores keep: the rows owed to each destination, in commit order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orderflow_domain::EventId;
use orderflow_ports::ReadError;
use orderflow_ports::outbox::{Backlog, Destination, OutboxBatch, OutboxMessage};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::lock;

struct Row {
    seq: u64,
    message: OutboxMessage,
    written_at: Instant,
}

#[derive(Default)]
struct Owed {
    next_seq: u64,
    command: VecDeque<Row>,
    audit: VecDeque<Row>,
}

impl Owed {
    fn of(&mut self, destination: Destination) -> &mut VecDeque<Row> {
        match destination {
            Destination::Command => &mut self.command,
            Destination::Audit => &mut self.audit,
        }
    }
}

/// One destination's side: who holds its rows, and the signal its relay waits on.
#[derive(Default)]
struct Side {
    holder: Arc<tokio::sync::Mutex<()>>,
    written: Notify,
}

/// The outbox of one in-memory store. A batch holds its whole destination (one process has one relay per
/// destination; a second relay sharing the store gets nothing until the batch settles).
#[derive(Default)]
pub(super) struct Outbox {
    owed: Mutex<Owed>,
    command: Side,
    audit: Side,
}

impl Outbox {
    const fn side(&self, destination: Destination) -> &Side {
        match destination {
            Destination::Command => &self.command,
            Destination::Audit => &self.audit,
        }
    }

    /// Records what a change sends, a row per destination of each message, and wakes the relays. Called
    /// while the store's state is locked, so one order's rows queue in the order of its changes.
    pub(super) fn push(&self, messages: Vec<OutboxMessage>) {
        let mut owed = lock(&self.owed);
        let written_at = Instant::now();
        for message in messages {
            for (destination, owes) in
                [(Destination::Command, message.command.is_some()), (Destination::Audit, message.audit)]
            {
                if owes {
                    let seq = owed.next_seq;
                    owed.next_seq += 1;
                    let message = OutboxMessage {
                        command: message.command.filter(|_| destination == Destination::Command),
                        audit: destination == Destination::Audit,
                        event: message.event.clone(),
                    };
                    owed.of(destination).push_back(Row { seq, message, written_at });
                }
            }
        }
        drop(owed);
        self.command.written.notify_one();
        self.audit.written.notify_one();
    }

    pub(super) fn take(self: &Arc<Self>, destination: Destination, limit: usize) -> Box<dyn OutboxBatch> {
        let Ok(guard) = Arc::clone(&self.side(destination).holder).try_lock_owned() else {
            return Box::new(MemoryBatch {
                outbox: Arc::clone(self),
                destination,
                _held: None,
                rows: vec![],
                messages: vec![],
            });
        };
        let mut owed = lock(&self.owed);
        let (rows, messages) =
            owed.of(destination).iter().take(limit).map(|row| (row.seq, row.message.clone())).unzip();
        Box::new(MemoryBatch { outbox: Arc::clone(self), destination, _held: Some(guard), rows, messages })
    }

    pub(super) async fn wait(&self, destination: Destination, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.side(destination).written.notified()).await;
    }

    pub(super) fn command_backlog(&self) -> Backlog {
        let mut owed = lock(&self.owed);
        let commands = owed.of(Destination::Command);
        // Rows are in commit order, so the first is the oldest.
        let oldest = commands.front().map(|row| row.written_at.elapsed()).unwrap_or_default();
        Backlog { rows: u64::try_from(commands.len()).unwrap_or(u64::MAX), oldest }
    }
}

struct MemoryBatch {
    outbox: Arc<Outbox>,
    destination: Destination,
    _held: Option<OwnedMutexGuard<()>>,
    rows: Vec<u64>,
    messages: Vec<OutboxMessage>,
}

#[async_trait]
impl OutboxBatch for MemoryBatch {
    fn messages(&self) -> &[OutboxMessage] {
        &self.messages
    }

    async fn settle(self: Box<Self>, ids: &[EventId]) -> Result<(), ReadError> {
        let published: Vec<u64> =
            self.rows.iter().zip(&self.messages).filter(|(_, m)| ids.contains(&m.id())).map(|(seq, _)| *seq).collect();
        lock(&self.outbox.owed).of(self.destination).retain(|row| !published.contains(&row.seq));
        Ok(())
    }
}

/// Implements `OutboxStore` for a store with an `outbox: Arc<Outbox>` field.
macro_rules! outbox_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl orderflow_ports::outbox::OutboxStore for $store {
            async fn take(
                &self,
                destination: orderflow_ports::outbox::Destination,
                limit: usize,
            ) -> Result<Box<dyn orderflow_ports::outbox::OutboxBatch>, orderflow_ports::ReadError> {
                Ok(self.outbox.take(destination, limit))
            }

            async fn wait_for_new(
                &self,
                destination: orderflow_ports::outbox::Destination,
                max_wait: std::time::Duration,
            ) {
                self.outbox.wait(destination, max_wait).await;
            }

            async fn command_backlog(&self) -> Result<orderflow_ports::outbox::Backlog, orderflow_ports::ReadError> {
                Ok(self.outbox.command_backlog())
            }

            /// The inbox of an in-memory store lives as long as the process, so there is never anything
            /// to purge.
            async fn purge(&self, _retention: std::time::Duration) -> Result<u64, orderflow_ports::ReadError> {
                Ok(0)
            }
        }
    };
}
pub(super) use outbox_store;
