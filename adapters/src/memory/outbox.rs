//! The in-memory outbox table shared by both in-memory stores.

use std::time::{Duration, Instant};

use orderflow_domain::EventId;
use orderflow_ports::outbox::{Backlog, Destination, OutboxMessage};
use tokio::sync::Notify;

/// One destination's state of a row: whether it is still owed, and until when a relay holds it.
#[derive(Default)]
struct Owed {
    pending: bool,
    claimed_until: Option<Instant>,
}

struct Row {
    message: OutboxMessage,
    command: Owed,
    audit: Owed,
    written_at: Instant,
}

/// Outbox rows in commit order. Fully published rows are dropped at once: nothing reads them back.
#[derive(Default)]
pub(super) struct OutboxRows {
    rows: Vec<Row>,
}

impl OutboxRows {
    pub(super) fn push(&mut self, messages: Vec<OutboxMessage>) {
        for message in messages {
            let command = Owed { pending: message.command.is_some(), claimed_until: None };
            let audit = Owed { pending: message.audit, claimed_until: None };
            // A message bound nowhere has nothing to publish; keeping it would be claimed forever.
            if command.pending || audit.pending {
                self.rows.push(Row { message, command, audit, written_at: Instant::now() });
            }
        }
    }

    pub(super) fn claim(&mut self, destination: Destination, limit: usize, lease: Duration) -> Vec<OutboxMessage> {
        let now = Instant::now();
        self.rows
            .iter_mut()
            .filter_map(|Row { message, command, audit, .. }| {
                let owed = match destination {
                    Destination::Command => command,
                    Destination::Audit => audit,
                };
                let free = owed.pending && owed.claimed_until.is_none_or(|until| until <= now);
                free.then(|| {
                    owed.claimed_until = Some(now + lease);
                    message.clone()
                })
            })
            .take(limit)
            .collect()
    }

    pub(super) fn mark(&mut self, destination: Destination, ids: &[EventId]) {
        for row in self.rows.iter_mut().filter(|r| ids.contains(&r.message.id())) {
            match destination {
                Destination::Command => row.command.pending = false,
                Destination::Audit => row.audit.pending = false,
            }
        }
        self.rows.retain(|r| r.command.pending || r.audit.pending);
    }

    pub(super) fn release(&mut self, destination: Destination, ids: &[EventId]) {
        for row in self.rows.iter_mut().filter(|r| ids.contains(&r.message.id())) {
            match destination {
                Destination::Command => row.command.claimed_until = None,
                Destination::Audit => row.audit.claimed_until = None,
            }
        }
    }

    pub(super) fn command_backlog(&self) -> Backlog {
        let mut owed = self.rows.iter().filter(|row| row.command.pending).peekable();
        // Rows are in commit order, so the first owed one is the oldest.
        let oldest = owed.peek().map(|row| row.written_at.elapsed()).unwrap_or_default();
        Backlog { rows: u64::try_from(owed.count()).unwrap_or(u64::MAX), oldest }
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Wakes the relay loop of each destination when rows are written.
#[derive(Default)]
pub(super) struct Written {
    command: Notify,
    audit: Notify,
}

impl Written {
    pub(super) fn notify(&self) {
        self.command.notify_one();
        self.audit.notify_one();
    }

    pub(super) async fn wait(&self, destination: Destination, max_wait: Duration) {
        let notified = match destination {
            Destination::Command => self.command.notified(),
            Destination::Audit => self.audit.notified(),
        };
        let _ = tokio::time::timeout(max_wait, notified).await;
    }
}

/// Implements `OutboxStore` for a store with `state` (holding `outbox: OutboxRows`) and `written: Written`.
macro_rules! outbox_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl orderflow_ports::outbox::OutboxStore for $store {
            async fn claim(
                &self,
                destination: orderflow_ports::outbox::Destination,
                limit: usize,
                lease: std::time::Duration,
            ) -> Result<Vec<orderflow_ports::outbox::OutboxMessage>, orderflow_ports::ReadError> {
                Ok(super::lock(&self.state).outbox.claim(destination, limit, lease))
            }

            async fn mark_published(
                &self,
                destination: orderflow_ports::outbox::Destination,
                ids: &[orderflow_domain::EventId],
            ) -> Result<(), orderflow_ports::ReadError> {
                super::lock(&self.state).outbox.mark(destination, ids);
                Ok(())
            }

            async fn release(
                &self,
                destination: orderflow_ports::outbox::Destination,
                ids: &[orderflow_domain::EventId],
            ) -> Result<(), orderflow_ports::ReadError> {
                super::lock(&self.state).outbox.release(destination, ids);
                Ok(())
            }

            async fn wait_for_new(
                &self,
                destination: orderflow_ports::outbox::Destination,
                max_wait: std::time::Duration,
            ) {
                self.written.wait(destination, max_wait).await;
            }

            async fn command_backlog(&self) -> Result<orderflow_ports::outbox::Backlog, orderflow_ports::ReadError> {
                Ok(super::lock(&self.state).outbox.command_backlog())
            }

            /// Published rows are dropped the moment they are marked, and the inbox of an in-memory
            /// store lives as long as the process, so there is never anything to purge.
            async fn purge(&self, _retention: std::time::Duration) -> Result<u64, orderflow_ports::ReadError> {
                Ok(0)
            }
        }
    };
}
pub(super) use outbox_store;
