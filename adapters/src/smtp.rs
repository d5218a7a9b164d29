//! The [`Notifier`] on an SMTP server (lettre, pooled connections, `SMTP_URL` as lettre reads it:
//! `smtp://host:port` in the clear, `smtp://…?tls=required` with STARTTLS, `smtps://` with TLS, and
//! `user:password@` when the server wants a login).

use std::time::Duration;

use async_trait::async_trait;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orderflow_ports::notify::{Email, Notifier, NotifyError};

#[cfg(test)]
mod tests;

/// How long one SMTP exchange may take before the send counts as failed (and is retried later).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the SMTP notifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    /// The URL is not one lettre can use.
    #[error("SMTP_URL is not a usable SMTP URL: {0}")]
    Url(String),
    /// The sender is not a mailbox (`name <address>` or a bare address).
    #[error("NOTIFY_FROM is not a mailbox such as 'Orders <orders@example.com>': {0}")]
    From(String),
}

/// Sends e-mail through an SMTP server.
pub struct SmtpNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpNotifier {
    /// A notifier sending through the server at `url`, from `from`. Nothing is contacted yet.
    ///
    /// # Errors
    /// [`SmtpSetupError`] when the URL or the sender cannot be used.
    pub fn new(url: &str, from: &str) -> Result<Self, SmtpSetupError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| SmtpSetupError::Url(e.to_string()))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from = from.parse::<Mailbox>().map_err(|e| SmtpSetupError::From(e.to_string()))?;
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Notifier for SmtpNotifier {
    async fn send(&self, email: &Email) -> Result<(), NotifyError> {
        // The domain's addresses are dot-atoms at a domain name, which lettre's check also accepts, except
        // that it holds local parts to RFC 5321's 64 characters; a longer one is for the server to judge.
        let (user, domain) = email.to.as_str().rsplit_once('@').unwrap_or((email.to.as_str(), ""));
        let to = Address::new_dangerous(user, domain);
        // The envelope is given, not read back from the headers, where lettre would check the address again.
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.clone()])
            .map_err(|e| NotifyError::Refused(format!("the envelope cannot be built: {e}")))?;
        let message = Message::builder()
            .envelope(envelope)
            .message_id(Some(format!("<{}>", email.message_id)))
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(email.subject.clone())
            .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
            .map_err(|e| NotifyError::Refused(format!("the e-mail cannot be built: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // A 5xx reply (unknown recipient, message refused) will not change on a retry.
            Err(error) if error.is_permanent() => Err(NotifyError::Refused(error.to_string())),
            Err(error) => Err(NotifyError::Unexpected(error.into())),
        }
    }
}
