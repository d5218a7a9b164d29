//! The SMTP notifier against a real SMTP server (aiosmtpd, started by each test on a port of its own).

use orderflow_domain::EmailAddress;
use orderflow_ports::notify::{Email, Notifier, NotifyError};
use proptest::prelude::*;

use super::SmtpNotifier;
use crate::contract::mail_server::MailServer;

fn email(message_id: &str) -> Email {
    Email {
        message_id: message_id.to_owned(),
        to: EmailAddress::parse("ada@example.com").expect("an address"),
        subject: "Your order is confirmed".to_owned(),
        text: "Order 42 is paid.".to_owned(),
        html: "<p>Order <b>42</b> is paid.</p>".to_owned(),
    }
}

#[tokio::test]
async fn an_email_reaches_the_server_with_its_message_id_sender_recipient_and_both_parts() {
    let server = MailServer::start().await;
    let notifier = SmtpNotifier::new(&server.url(), "Orders <orders@shop.example>").expect("the notifier");

    notifier.send(&email("n-1@orderflow")).await.expect("the server takes it");

    let received = server.received();
    assert_eq!(received.len(), 1, "one message: {received:?}");
    let mail = &received[0];
    assert_eq!(mail.header("Message-ID").as_deref(), Some("<n-1@orderflow>"));
    assert_eq!(mail.header("X-RcptTo").as_deref(), Some("ada@example.com"), "sent to the recipient");
    assert_eq!(mail.header("X-MailFrom").as_deref(), Some("orders@shop.example"), "sent from NOTIFY_FROM");
    assert_eq!(mail.header("Subject").as_deref(), Some("Your order is confirmed"));
    assert!(mail.contains("multipart/alternative"), "text and HTML as alternatives: {}", mail.0);
    assert!(mail.contains("Order 42 is paid."), "the text part: {}", mail.0);
    assert!(mail.contains("<p>Order <b>42</b> is paid.</p>"), "the HTML part: {}", mail.0);
}

#[tokio::test]
async fn an_address_with_a_local_part_over_64_characters_is_left_to_the_server() {
    let server = MailServer::start().await;
    let notifier = SmtpNotifier::new(&server.url(), "orders@shop.example").expect("the notifier");
    let long = format!("{}@example.com", "a".repeat(70));
    let to_long = Email { to: EmailAddress::parse(&long).expect("the domain accepts it"), ..email("n-3@orderflow") };

    notifier.send(&to_long).await.expect("this server takes it");

    assert_eq!(server.received()[0].header("X-RcptTo"), Some(long));
}

#[tokio::test]
async fn a_server_that_is_down_is_a_failure_worth_retrying_and_one_that_is_back_takes_the_mail() {
    let mut server = MailServer::start().await;
    let notifier = SmtpNotifier::new(&server.url(), "orders@shop.example").expect("the notifier");
    server.stop();

    let failed = notifier.send(&email("n-2@orderflow")).await;
    assert!(matches!(failed, Err(NotifyError::Unexpected(_))), "transient, not refused: {failed:?}");

    server.resume().await;
    notifier.send(&email("n-2@orderflow")).await.expect("the server is back");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn unusable_settings_are_refused_naming_the_variable() {
    let url = SmtpNotifier::new("http://mail.example", "orders@shop.example").err().expect("refused");
    assert!(url.to_string().contains("SMTP_URL"), "{url}");
    let from = SmtpNotifier::new("smtp://127.0.0.1:25", "not a mailbox").err().expect("refused");
    assert!(from.to_string().contains("NOTIFY_FROM"), "{from}");
}

/// Addresses of [`EmailAddress::PATTERN`]'s shape, of lengths around the limits.
const ADDRESSES: &str = concat!(
    "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}){0,2}",
    "@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?){1,2}"
);

proptest! {
    #[test]
    fn every_address_the_domain_accepts_is_one_the_smtp_library_accepts_but_for_long_local_parts(
        raw in proptest::string::string_regex(ADDRESSES).expect("the pattern is a generator")
    ) {
        prop_assume!(EmailAddress::parse(&raw).is_ok());
        let local = raw.split('@').next().unwrap_or_default();
        prop_assert!(local.len() > 64 || raw.parse::<lettre::Address>().is_ok(), "{:?}", raw);
    }
}
