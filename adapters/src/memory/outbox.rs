//! The in-memory outbox table shared by both in-memory stores.

use std::time::{Duration, Instant};

use orderflow_domain::EventId;
use orderflow_ports::outbox::{ClaimedMessage, Destination, OutboxMessage};

struct Row {
    message: OutboxMessage,
    pending: Vec<Destination>,
    claimed_until: Option<Instant>,
}

/// Outbox rows in commit order. Published rows are dropped at once: nothing reads them back.
#[derive(Default)]
pub(super) struct OutboxRows {
    rows: Vec<Row>,
}

impl OutboxRows {
    pub(super) fn push(&mut self, messages: Vec<OutboxMessage>) {
        for message in messages {
            let pending = [message.command.map(|_| Destination::Command), message.audit.then_some(Destination::Audit)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            // A message bound nowhere has nothing to publish; keeping it would be claimed forever.
            if !pending.is_empty() {
                self.rows.push(Row { message, pending, claimed_until: None });
            }
        }
    }

    pub(super) fn claim(&mut self, limit: usize, lease: Duration) -> Vec<ClaimedMessage> {
        let now = Instant::now();
        self.rows
            .iter_mut()
            .filter(|r| r.claimed_until.is_none_or(|until| until <= now))
            .take(limit)
            .map(|r| {
                r.claimed_until = Some(now + lease);
                ClaimedMessage { message: r.message.clone(), pending: r.pending.clone() }
            })
            .collect()
    }

    pub(super) fn mark(&mut self, id: EventId, destination: Destination) {
        if let Some(i) = self.rows.iter().position(|r| r.message.id() == id) {
            self.rows[i].pending.retain(|d| *d != destination);
            if self.rows[i].pending.is_empty() {
                self.rows.remove(i);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Implements `OutboxStore` for a store with an `outbox()` accessor and a `Notify`.
macro_rules! outbox_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl orderflow_ports::outbox::OutboxStore for $store {
            async fn claim(
                &self,
                limit: usize,
                lease: std::time::Duration,
            ) -> Result<Vec<orderflow_ports::outbox::ClaimedMessage>, orderflow_ports::ReadError> {
                Ok(super::lock(&self.state).outbox.claim(limit, lease))
            }

            async fn mark_published(
                &self,
                id: orderflow_domain::EventId,
                destination: orderflow_ports::outbox::Destination,
            ) -> Result<(), orderflow_ports::ReadError> {
                super::lock(&self.state).outbox.mark(id, destination);
                Ok(())
            }

            async fn wait_for_new(&self, max_wait: std::time::Duration) {
                let _ = tokio::time::timeout(max_wait, self.written.notified()).await;
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
