//! Notifiers that keep e-mail inside the process: one that records what it was given (tests), one that
//! writes it to the log (`orderflow dev`, and a service started without `SMTP_URL`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use orderflow_ports::notify::{Email, Notifier, NotifyError};

use super::{inconsistent, lock};

/// Records every e-mail it is given; can be told to fail as a mail server that is down would.
#[derive(Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<Email>>,
    down: AtomicBool,
}

impl RecordingNotifier {
    /// A notifier that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// The e-mail accepted so far, in the order they came.
    pub fn sent(&self) -> Vec<Email> {
        lock(&self.sent).clone()
    }

    /// While `down`, every send fails as an unreachable server's would (a transient failure).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn send(&self, email: &Email) -> Result<(), NotifyError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(NotifyError::Unexpected(inconsistent("the mail server is down")));
        }
        lock(&self.sent).push(email.clone());
        Ok(())
    }
}

/// Writes each e-mail to the log (`info`, target `orderflow::email`) instead of sending it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn send(&self, email: &Email) -> Result<(), NotifyError> {
        tracing::info!(
            target: "orderflow::email",
            to = %email.to,
            subject = %email.subject,
            message_id = %email.message_id,
            "e-mail not sent (no SMTP server configured):\n{}",
            email.text
        );
        Ok(())
    }
}
