//! Graceful shutdown of a consumer, shared by the bus adapters: each `consume` loop registers while it
//! runs and watches for the stop, and `shutdown` waits until every loop has settled and returned.

use std::sync::Arc;

/// Coordinates a consumer's graceful shutdown: each `consume` loop registers while it runs and watches
/// for the stop; [`ConsumerShutdown::shutdown`] signals the stop and waits until every loop has settled
/// its in-flight deliveries and returned.
#[derive(Debug)]
pub(crate) struct ConsumerShutdown {
    stopping: tokio::sync::watch::Sender<bool>,
    running: Arc<tokio::sync::watch::Sender<usize>>,
}

/// Held by a running `consume` loop; dropping it tells [`ConsumerShutdown`] the loop is done.
#[derive(Debug)]
pub(crate) struct Running {
    running: Arc<tokio::sync::watch::Sender<usize>>,
    /// Resolves (`wait_for(|s| *s)`) when the consumer is asked to stop.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for ConsumerShutdown {
    fn default() -> Self {
        Self { stopping: tokio::sync::watch::channel(false).0, running: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl ConsumerShutdown {
    /// Registers a `consume` loop.
    pub(crate) fn register(&self) -> Running {
        self.running.send_modify(|n| *n += 1);
        Running { running: Arc::clone(&self.running), stopping: self.stopping.subscribe() }
    }

    /// Asks every registered loop to stop and waits until all have returned.
    pub(crate) async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }
}
