//! Telling customers what happened to their orders: the e-mail a notification becomes, and the port that
//! sends it (SMTP in production, the log in `orderflow dev`).

use async_trait::async_trait;
use orderflow_domain::EmailAddress;

use crate::BoxError;

/// An e-mail ready to send, in plain text and HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// A globally unique id (the `Message-ID` without its angle brackets), the same for every attempt to
    /// send one notification, so a mailbox that receives it twice can tell.
    pub message_id: String,
    /// The recipient.
    pub to: EmailAddress,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

/// Why an e-mail was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The mail server refused the message for good (a permanent SMTP reply, such as an unknown
    /// recipient): sending it again cannot help.
    #[error("the mail server refused the message: {0}")]
    Refused(String),
    /// The mail server could not be reached, timed out or failed for now; worth trying again.
    #[error("sending the e-mail failed")]
    Unexpected(#[source] BoxError),
}

/// Sends e-mail.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Hands `email` to the mail server, returning once the server accepted it for delivery.
    ///
    /// # Errors
    /// - [`NotifyError::Refused`] when the server refused it for good;
    /// - [`NotifyError::Unexpected`] when it could not be handed over; it may or may not have been.
    async fn send(&self, email: &Email) -> Result<(), NotifyError>;
}
