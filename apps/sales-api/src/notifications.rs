//! Notifying customers: each notification request becomes an e-mail, written from the templates in
//! `templates/` (plain text and HTML, the wording per notice here), and is sent at most once per message.

use std::sync::Arc;

use askama::Template;
use orderflow_domain::{EmailAddress, Money, OrderId};
use orderflow_messages::Notice;
use orderflow_ports::messaging::InboxEntry;
use orderflow_ports::notify::{Email, Notifier, NotifyError};
use orderflow_ports::sales::{NotifyOnceError, SalesStore};
use tokio::sync::Semaphore;

/// How many e-mails are handed to the mail server at once. Each holds a database connection while it is
/// sent (the claim on its inbox entry), so a slow mail server may occupy only these, never the pool.
const CONCURRENT_SENDS: usize = 4;

/// A request to tell an order's contact what happened, as the notification command carries it.
#[derive(Debug, Clone)]
pub struct NotificationRequest {
    /// The order.
    pub order_id: OrderId,
    /// Whom to tell.
    pub contact_email: EmailAddress,
    /// What to tell.
    pub notice: Notice,
    /// The message that asks for it; its id names the e-mail.
    pub inbox: InboxEntry,
}

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyFailure {
    /// The mail server refused it for good, or it cannot be written: retrying cannot help.
    #[error("the notification cannot be sent: {0}")]
    Refused(String),
    /// The mail server or the store failed for now; worth retrying.
    #[error("the notification was not sent: {0}")]
    Transient(String),
}

/// An e-mail's words before they are put in a template.
#[derive(Debug)]
struct Wording {
    subject: String,
    headline: String,
    facts: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "notification.txt")]
struct TextBody<'a> {
    headline: &'a str,
    facts: &'a [(&'static str, String)],
    order_id: &'a str,
}

#[derive(Template)]
#[template(path = "notification.html")]
struct HtmlBody<'a> {
    subject: &'a str,
    headline: &'a str,
    facts: &'a [(&'static str, String)],
    order_id: &'a str,
}

/// An amount in its currency's major unit, e.g. `19.99 EUR` (`500 JPY`, `1.250 KWD`).
fn amount(money: Money) -> String {
    let code = money.currency.as_str();
    // ISO 4217 minor units: most currencies have 2; these have none or 3.
    let decimals = match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let minor = money.amount_minor;
    if decimals == 0 {
        return format!("{minor} {code}");
    }
    let unit = 10_i64.pow(decimals);
    format!("{}.{:0width$} {code}", minor / unit, minor % unit, width = decimals as usize)
}

fn wording(notice: &Notice) -> Wording {
    let (subject, headline, facts) = match notice {
        Notice::Confirmed { amount: paid } => (
            "Your order is confirmed",
            "Thank you: your payment went through and your order is confirmed. We will write again when it ships."
                .to_owned(),
            vec![("Paid", amount(*paid))],
        ),
        Notice::PaymentFailed { reason } => (
            "Your payment did not go through",
            "We could not take payment for your order, so it is closed and nothing was charged.".to_owned(),
            vec![("Reason", reason.clone())],
        ),
        Notice::OutOfStock { skus } => (
            "We could not take your order",
            "Some of what you ordered is out of stock, so the order was not placed and nothing was charged.".to_owned(),
            vec![("Out of stock", skus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))],
        ),
        Notice::Cancelled => {
            ("Your order is cancelled", "Your order is cancelled. Anything you paid is refunded.".to_owned(), vec![])
        }
        Notice::Shipped { carrier, tracking_number } => (
            "Your order is on its way",
            "Your order has left our warehouse.".to_owned(),
            vec![("Carrier", carrier.to_string()), ("Tracking number", tracking_number.to_string())],
        ),
        Notice::Delivered => ("Your order was delivered", "Your order was delivered. Enjoy!".to_owned(), vec![]),
    };
    Wording { subject: subject.to_owned(), headline, facts }
}

/// The e-mail a notification request becomes.
///
/// # Errors
/// When a template fails to render (a bug: the templates are checked when the service is compiled).
fn email(request: &NotificationRequest) -> Result<Email, askama::Error> {
    let words = wording(&request.notice);
    let order_id = request.order_id.to_string();
    let text = TextBody { headline: &words.headline, facts: &words.facts, order_id: &order_id }.render()?;
    let html =
        HtmlBody { subject: &words.subject, headline: &words.headline, facts: &words.facts, order_id: &order_id }
            .render()?;
    Ok(Email {
        message_id: format!("{}@notifications.orderflow", request.inbox.message_id),
        to: request.contact_email.clone(),
        subject: words.subject,
        text,
        html,
    })
}

/// The notification use case: write the e-mail and send it once per message.
pub struct Notifications {
    store: Arc<dyn SalesStore>,
    notifier: Arc<dyn Notifier>,
    sending: Semaphore,
}

impl Notifications {
    /// Notifications recorded in `store`'s inbox and sent through `notifier`.
    pub fn new(store: Arc<dyn SalesStore>, notifier: Arc<dyn Notifier>) -> Self {
        Self { store, notifier, sending: Semaphore::new(CONCURRENT_SENDS) }
    }

    /// Sends the e-mail `request` asks for, unless its message was sent before.
    ///
    /// # Errors
    /// [`NotifyFailure`]: refused for good, or worth retrying.
    #[tracing::instrument(name = "send notification", skip_all, fields(order_id = %request.order_id))]
    pub async fn notify(&self, request: &NotificationRequest) -> Result<(), NotifyFailure> {
        let email = email(request).map_err(|e| NotifyFailure::Refused(e.to_string()))?;
        let _slot = self.sending.acquire().await.map_err(|e| NotifyFailure::Transient(e.to_string()))?;
        let send = async { self.notifier.send(&email).await };
        match self.store.notify_once(&request.inbox, Box::pin(send)).await {
            Ok(_) => Ok(()),
            Err(NotifyOnceError::Send(NotifyError::Refused(reason))) => Err(NotifyFailure::Refused(reason)),
            Err(other) => Err(NotifyFailure::Transient(orderflow_ports::error_chain(&other))),
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_adapters::memory::{InMemorySalesStore, RecordingNotifier};
    use orderflow_domain::{Carrier, Currency, Sku, TrackingNumber};

    use super::*;

    fn request(notice: Notice) -> NotificationRequest {
        NotificationRequest {
            order_id: OrderId::from_uuid(uuid::Uuid::now_v7()),
            contact_email: EmailAddress::parse("ada@example.com").unwrap(),
            notice,
            inbox: InboxEntry {
                message_id: uuid::Uuid::now_v7().to_string(),
                consumer: "notifications.requested".into(),
            },
        }
    }

    #[test]
    fn amounts_are_written_in_their_currencys_major_unit() {
        let money = |minor, code| Money::new(minor, Currency::parse(code).unwrap()).unwrap();
        assert_eq!(amount(money(1999, "EUR")), "19.99 EUR");
        assert_eq!(amount(money(5, "USD")), "0.05 USD");
        assert_eq!(amount(money(500, "JPY")), "500 JPY");
        assert_eq!(amount(money(1250, "KWD")), "1.250 KWD");
    }

    #[test]
    fn every_notice_is_written_in_text_and_html_naming_the_order() {
        let notices = [
            Notice::Confirmed { amount: Money::new(1999, Currency::parse("EUR").unwrap()).unwrap() },
            Notice::PaymentFailed { reason: "declined".into() },
            Notice::OutOfStock { skus: vec![Sku::parse("SKU-1").unwrap(), Sku::parse("SKU-2").unwrap()] },
            Notice::Cancelled,
            Notice::Shipped {
                carrier: Carrier::parse("DHL").unwrap(),
                tracking_number: TrackingNumber::parse("TRK-1").unwrap(),
            },
            Notice::Delivered,
        ];
        let mut subjects = std::collections::HashSet::new();
        for notice in notices {
            let request = request(notice.clone());
            let email = email(&request).unwrap();
            let order = request.order_id.to_string();
            assert!(email.text.contains(&order) && email.html.contains(&order), "{notice:?} names the order");
            assert!(email.html.starts_with("<!DOCTYPE html>"), "{notice:?}: {}", email.html);
            assert!(subjects.insert(email.subject.clone()), "{notice:?} has a subject of its own");
            assert_eq!(email.to.as_str(), "ada@example.com");
            assert_eq!(email.message_id, format!("{}@notifications.orderflow", request.inbox.message_id));
        }
        let shipped = email(&request(Notice::Shipped {
            carrier: Carrier::parse("DHL").unwrap(),
            tracking_number: TrackingNumber::parse("TRK-1").unwrap(),
        }))
        .unwrap();
        assert!(shipped.text.contains("Tracking number: TRK-1"), "{}", shipped.text);
    }

    #[test]
    fn the_text_e_mail_reads_as_a_letter_with_its_facts_one_per_line() {
        let shipped = email(&request(Notice::Shipped {
            carrier: Carrier::parse("DHL").unwrap(),
            tracking_number: TrackingNumber::parse("TRK-1").unwrap(),
        }))
        .unwrap();
        let order = shipped.text.lines().find(|l| l.starts_with("Order: ")).unwrap().to_owned();
        assert_eq!(
            shipped.text,
            format!(
                "Hello,\n\nYour order has left our warehouse.\n\nCarrier: DHL\nTracking number: TRK-1\n\n{order}\n\n\
                 -- \nThis message was sent because an order named this address for notifications."
            )
        );
        let delivered = email(&request(Notice::Delivered)).unwrap();
        assert!(delivered.text.contains("Enjoy!\n\nOrder: "), "{}", delivered.text);
    }

    #[test]
    fn what_a_client_wrote_is_escaped_in_html_and_kept_in_text() {
        let email = email(&request(Notice::PaymentFailed { reason: "<script>alert(1)</script>".into() })).unwrap();
        assert!(!email.html.contains("<script>"), "{}", email.html);
        assert!(email.html.contains("&#60;script&#62;alert(1)"), "{}", email.html);
        assert!(email.text.contains("<script>alert(1)</script>"), "{}", email.text);
    }

    #[tokio::test]
    async fn a_notification_is_sent_once_however_often_its_message_comes() {
        let notifier = Arc::new(RecordingNotifier::new());
        let notifications = Notifications::new(Arc::new(InMemorySalesStore::new()), notifier.clone());
        let request = request(Notice::Delivered);
        for _ in 0..3 {
            notifications.notify(&request).await.unwrap();
        }
        assert_eq!(notifier.sent().len(), 1);
    }

    #[tokio::test]
    async fn a_mail_server_that_is_down_fails_for_now_and_the_retry_sends() {
        let notifier = Arc::new(RecordingNotifier::new());
        let notifications = Notifications::new(Arc::new(InMemorySalesStore::new()), notifier.clone());
        let request = request(Notice::Cancelled);
        notifier.set_down(true);
        let failed = notifications.notify(&request).await;
        assert!(matches!(failed, Err(NotifyFailure::Transient(_))), "{failed:?}");
        notifier.set_down(false);
        notifications.notify(&request).await.unwrap();
        assert_eq!(notifier.sent().len(), 1);
    }
}
