//! Notifications on the real servers: both binaries, with Sales sending e-mail to a real SMTP server
//! (aiosmtpd, started by each test): one e-mail per notification to the order's `contact_email`, none for
//! an order without one, the payment failure, out-of-stock and cancellation notices, a redelivered
//! notification sent once, and a mail server that was down getting its mail after it is back.

mod processes;
mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use orderflow_adapters::contract::mail_server::{MailServer, ReceivedMail};
use orderflow_adapters::rabbitmq::{RabbitBroker, RabbitSettings};
use orderflow_domain::{EmailAddress, EventId, OrderId};
use orderflow_messages::{CloudEvent, EventBody, Notice, NotificationRequested, RoutingKey, Source};
use orderflow_ports::messaging::CommandPublisher;
use processes::{Options, Services};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{expect_status, order_body, string};
use uuid::Uuid;

const SKU: &str = "SKU-MAIL-1";
const CONTACT: &str = "ada@example.com";

fn options(mail: &MailServer, autopilot: Option<(&'static str, &'static str)>) -> Options {
    Options {
        autopilot,
        env: vec![("SMTP_URL", mail.url()), ("NOTIFY_FROM", "Shop <orders@shop.example>".to_owned())],
        ..Options::default()
    }
}

/// Places an order of one unit of `sku` asking for notifications to `contact`; returns the response body.
async fn place_with_contact(s: &Services, sku: &str, contact: Option<&str>) -> anyhow::Result<reqwest::Response> {
    let mut body = order_body("cust-mail", &[(sku, 1)]);
    if let Some(contact) = contact {
        body["contact_email"] = contact.into();
    }
    Ok(s.sales(Method::POST, "/orders").json(&body).send().await?)
}

/// The mail about order `id` received so far.
fn about(mail: &MailServer, id: &str) -> Vec<ReceivedMail> {
    mail.received().into_iter().filter(|m| m.contains(id)).collect()
}

/// Waits until `count` messages about order `id` arrived, then a second more to see that no more come.
async fn settle_on(mail: &MailServer, id: &str, count: usize) -> anyhow::Result<Vec<ReceivedMail>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while about(mail, id).len() < count {
        ensure!(tokio::time::Instant::now() < deadline, "only {:?} about {id} after 30 s", subjects(&about(mail, id)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(about(mail, id))
}

fn subjects(mail: &[ReceivedMail]) -> Vec<String> {
    mail.iter().map(|m| m.header("Subject").unwrap_or_default()).collect()
}

/// Notifications of one order are sent concurrently, so their arrival order is not part of the contract.
fn sorted(mut subjects: Vec<String>) -> Vec<String> {
    subjects.sort();
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_through_its_life_yields_one_e_mail_per_notification_and_an_order_without_a_contact_none()
-> anyhow::Result<()> {
    let mail = MailServer::start().await;
    let s = Services::start(options(&mail, Some(("100ms", "100ms")))).await?;
    s.put_product(SKU, 1999, 10).await?;

    let placed = expect_status(place_with_contact(&s, SKU, Some(CONTACT)).await?, StatusCode::CREATED).await?;
    assert_eq!(placed["contact_email"], CONTACT, "the order shows whom it notifies");
    let id = string(&placed["id"])?;
    let silent = string(&expect_status(place_with_contact(&s, SKU, None).await?, StatusCode::CREATED).await?["id"])?;
    s.wait_all_delivered(&[id.clone(), silent.clone()], Duration::from_secs(30)).await?;
    let read = expect_status(s.sales(Method::GET, &format!("/orders/{id}")).send().await?, StatusCode::OK).await?;
    assert_eq!(read["contact_email"], CONTACT);

    let received = settle_on(&mail, &id, 3).await?;
    assert_eq!(
        sorted(subjects(&received)),
        ["Your order is confirmed", "Your order is on its way", "Your order was delivered"],
        "one e-mail per notification"
    );
    for message in &received {
        assert_eq!(message.header("X-RcptTo").as_deref(), Some(CONTACT), "to the contact");
        assert_eq!(message.header("X-MailFrom").as_deref(), Some("orders@shop.example"), "from NOTIFY_FROM");
    }
    let ids: std::collections::HashSet<_> = received.iter().map(|m| m.header("Message-ID")).collect();
    assert_eq!(ids.len(), 3, "each e-mail has its own Message-ID");
    let shipped = received.iter().find(|m| m.header("Subject").as_deref() == Some("Your order is on its way"));
    let shipped = shipped.context("the shipped e-mail")?;
    assert!(shipped.contains("autopilot") && shipped.contains("AUTO-"), "it names the carrier and tracking number");
    assert!(about(&mail, &silent).is_empty(), "an order without a contact sends nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_payment_an_order_out_of_stock_and_a_cancellation_each_yield_their_e_mail() -> anyhow::Result<()> {
    let mail = MailServer::start().await;
    let s = Services::start(Options { decline_above_minor: 5_000, ..options(&mail, None) }).await?;
    s.put_product(SKU, 1999, 10).await?;
    s.put_product("SKU-MAIL-DEAR", 9999, 10).await?;
    s.put_product("SKU-MAIL-GONE", 1999, 0).await?;

    let declined = place_with_contact(&s, "SKU-MAIL-DEAR", Some(CONTACT)).await?;
    let declined = string(&expect_status(declined, StatusCode::CREATED).await?["id"])?;
    s.wait_for_status(&declined, "payment_failed", Duration::from_secs(20)).await?;
    let failed = settle_on(&mail, &declined, 1).await?;
    assert_eq!(subjects(&failed), ["Your payment did not go through"]);

    let refused = place_with_contact(&s, "SKU-MAIL-GONE", Some(CONTACT)).await?;
    let problem: Value = expect_status(refused, StatusCode::CONFLICT).await?;
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    let out_of_stock = eventually_one(&mail, "SKU-MAIL-GONE").await?;
    assert_eq!(out_of_stock.header("Subject").as_deref(), Some("We could not take your order"));
    assert_eq!(out_of_stock.header("X-RcptTo").as_deref(), Some(CONTACT));

    let cancelled = place_with_contact(&s, SKU, Some(CONTACT)).await?;
    let cancelled = string(&expect_status(cancelled, StatusCode::CREATED).await?["id"])?;
    s.wait_for_status(&cancelled, "pending_shipment", Duration::from_secs(20)).await?;
    s.shipment_of(&cancelled).await?;
    let response = s.sales(Method::POST, &format!("/orders/{cancelled}/cancel")).send().await?;
    expect_status(response, StatusCode::OK).await?;
    s.wait_for_status(&cancelled, "cancelled", Duration::from_secs(20)).await?;
    let trail = settle_on(&mail, &cancelled, 2).await?;
    assert_eq!(sorted(subjects(&trail)), ["Your order is cancelled", "Your order is confirmed"]);
    Ok(())
}

/// Waits for the one message that mentions `text`, then a second more to see that it stays one.
async fn eventually_one(mail: &MailServer, text: &str) -> anyhow::Result<ReceivedMail> {
    let found = settle_on(mail, text, 1).await?;
    ensure!(found.len() == 1, "one message mentions {text}, not {:?}", subjects(&found));
    found.into_iter().next().context("the message")
}

fn notification(order_id: OrderId) -> anyhow::Result<CloudEvent> {
    let request =
        NotificationRequested { order_id, contact_email: EmailAddress::parse(CONTACT)?, notice: Notice::Delivered };
    Ok(CloudEvent::wrap(
        EventId::from_uuid(Uuid::now_v7()),
        Source::Sales,
        EventBody::of(order_id, &request),
        chrono::Utc::now(),
        None,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_notification_is_sent_once_and_a_mail_server_down_for_a_while_gets_it_when_back()
-> anyhow::Result<()> {
    let mut mail = MailServer::start().await;
    let s = Services::start(Options { retry_delays: "1s,2s,4s", ..options(&mail, None) }).await?;
    let delays = [1, 2, 4].map(Duration::from_secs).to_vec();
    let settings = RabbitSettings { retry_delays: delays, ..RabbitSettings::new(&s.amqp_url) };
    let broker =
        RabbitBroker::connect(settings, &[RoutingKey::NotificationsRequested]).await.map_err(|e| anyhow::anyhow!(e))?;

    let twice = OrderId::from_uuid(Uuid::now_v7());
    let event = notification(twice)?;
    broker.publish(RoutingKey::NotificationsRequested, &event).await?;
    broker.publish(RoutingKey::NotificationsRequested, &event).await?;
    let sent = eventually_one(&mail, &twice.to_string()).await?;
    assert_eq!(sent.header("Message-ID"), Some(format!("<{}@notifications.orderflow>", event.id)));

    mail.stop();
    let late = OrderId::from_uuid(Uuid::now_v7());
    broker.publish(RoutingKey::NotificationsRequested, &notification(late)?).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mail.resume().await;
    let arrived = eventually_one(&mail, &late.to_string()).await?;
    assert_eq!(arrived.header("Subject").as_deref(), Some("Your order was delivered"));
    assert_eq!(s.dlq_depth("notifications.requested").await?, 0, "nothing was given up");
    Ok(())
}
