//! Back-pressure over HTTP: while Sales' command outbox, or the queues its consumers take from, are
//! further behind than configured, `POST /orders` answers 503 `overloaded` and readiness says so; once the
//! back end catches up the service accepts orders again, and every order it accepted is processed.
//!
//! The Sales service runs in process on in-memory adapters with a broker, or a payment gateway, that the
//! test holds back, so the backlog grows exactly when the test says.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use async_trait::async_trait;
use orderflow::dev::AUDIENCE;
use orderflow_adapters::memory::{
    BusSettings, InMemoryAuditLog, InMemoryBus, InMemoryOrderCache, InMemorySalesStore, RecordingNotifier,
};
use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
use orderflow_adapters::system::{SystemClock, UuidV7Ids};
use orderflow_adapters::webhook::HttpWebhookSender;
use orderflow_domain::{Currency, Money, OrderId, PaymentOutcome, ProductName, Sku};
use orderflow_messages::{CloudEvent, RoutingKey};
use orderflow_ports::messaging::{CommandPublisher, PublishError};
use orderflow_ports::payment::{PaymentError, PaymentGateway};
use orderflow_ports::sales::SalesStore;
use orderflow_ports::system::Clock;
use orderflow_runtime::dev_issuer::{DevClient, DevIssuer, RunningIssuer};
use orderflow_runtime::relay::RelaySettings;
use orderflow_runtime::wiring::Wiring;
use reqwest::StatusCode;
use sales_api::pressure::PressureLimits;
use sales_api::webhooks::WebhookSettings;
use sales_api::{SalesAdapters, SalesSettings};
use serde_json::Value;
use support::{eventually, fetch_token, order_body, string};
use tokio::sync::watch;

/// More owed commands, or more messages waiting for the consumers, than this and new orders are refused.
const LIMIT: u64 = 20;

/// A broker that takes nothing while the gate is shut, then passes everything on.
struct Gated {
    inner: Arc<InMemoryBus>,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl CommandPublisher for Gated {
    async fn publish(&self, key: RoutingKey, event: &CloudEvent) -> Result<(), PublishError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        self.inner.publish(key, event).await
    }
}

/// A payment gateway that answers nothing while the gate is shut, so payment requests pile up in their
/// queue behind the deliveries being handled.
struct GatedPayments {
    inner: SimulatedPaymentGateway,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl PaymentGateway for GatedPayments {
    async fn charge(&self, order: OrderId, amount: Money) -> Result<PaymentOutcome, PaymentError> {
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        self.inner.charge(order, amount).await
    }

    async fn refund(&self, order: OrderId) -> Result<(), PaymentError> {
        self.inner.refund(order).await
    }
}

/// A Sales service on in-memory adapters, with a token to place orders.
struct Sales {
    app: sales_api::Application,
    store: Arc<InMemorySalesStore>,
    http: reqwest::Client,
    token: String,
    _issuer: RunningIssuer,
}

impl Sales {
    /// Starts Sales with `pressure`; its commands go through `publisher` (given the bus) and its payments
    /// through `payments`.
    async fn start(
        pressure: PressureLimits,
        publisher: impl FnOnce(Arc<InMemoryBus>) -> Arc<dyn CommandPublisher>,
        payments: Arc<dyn PaymentGateway>,
    ) -> anyhow::Result<Self> {
        let issuer = DevIssuer::start("127.0.0.1:0".parse()?, AUDIENCE, DevClient::defaults()).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let bus = Arc::new(InMemoryBus::new(BusSettings::default(), clock.clone()));
        let wiring = Wiring::in_memory(
            bus.clone(),
            Arc::new(InMemoryAuditLog::new()),
            issuer.issuer_url().into(),
            AUDIENCE.into(),
        );
        let mut shared = wiring.connect("sales", &RoutingKey::ALL).await.map_err(|e| anyhow::anyhow!(e))?;
        shared.publisher = publisher(bus);
        let store = Arc::new(InMemorySalesStore::new());
        let eur = Currency::parse("EUR")?;
        store
            .put_product(Sku::parse("SKU-BP")?, ProductName::parse("Pressure")?, Money::new(100, eur)?, 10_000)
            .await?;
        let app = sales_api::Application::assemble(
            SalesSettings {
                http_addr: "127.0.0.1:0".parse()?,
                relay: RelaySettings { idle_poll: Duration::from_millis(50), ..RelaySettings::default() },
                pressure,
                webhooks: WebhookSettings::default(),
                catalogue: Vec::new(),
            },
            SalesAdapters {
                store: store.clone(),
                webhook_store: store.clone(),
                webhook_sender: Arc::new(HttpWebhookSender::new(true)?),
                cache: Arc::new(InMemoryOrderCache::new()),
                payments,
                notifier: Arc::new(RecordingNotifier::new()),
                shared,
                clock,
                ids: Arc::new(UuidV7Ids),
            },
        )
        .await?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let token = fetch_token(&http, &issuer.token_url(), "sales-client", "dev-secret-sales").await?;
        Ok(Self { app, store, http, token, _issuer: issuer })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.addr())
    }

    async fn place(&self) -> anyhow::Result<reqwest::Response> {
        let body = order_body("cust-pressure", &[("SKU-BP", 1)]);
        Ok(self.http.post(self.url("/orders")).bearer_auth(&self.token).json(&body).send().await?)
    }

    /// Places bursts of 16 until one is refused; returns the ids accepted and the refusal, checked to be
    /// a 503 `overloaded` problem with `Retry-After`, readiness saying so.
    async fn place_until_refused(&self) -> anyhow::Result<Vec<String>> {
        let mut accepted = Vec::new();
        let mut refused = None;
        for _ in 0..50 {
            let burst = futures::future::join_all((0..16).map(|_| self.place())).await;
            for response in burst {
                let response = response?;
                match response.status() {
                    StatusCode::CREATED => accepted.push(string(&response.json::<Value>().await?["id"])?),
                    StatusCode::SERVICE_UNAVAILABLE => refused = Some(response),
                    other => anyhow::bail!("POST /orders answered {other}: {}", response.text().await?),
                }
            }
            if refused.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = refused.context("no 503 while the backlog grew past the limit")?;
        ensure!(accepted.len() as u64 > LIMIT, "refused after only {} orders", accepted.len());
        let retry_after = refused.headers().get("retry-after").context("no Retry-After")?.to_str()?.to_owned();
        ensure!(retry_after.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After: {retry_after}");
        let content_type = refused.headers().get("content-type").context("no Content-Type")?.to_str()?.to_owned();
        ensure!(content_type.starts_with("application/problem+json"), "Content-Type: {content_type}");
        let problem: Value = refused.json().await?;
        ensure!(problem["type"].as_str().is_some_and(|t| t.ends_with("/overloaded")), "{problem}");
        let ready = self.http.get(self.url("/health/ready")).send().await?;
        ensure!(ready.status() == StatusCode::SERVICE_UNAVAILABLE, "readiness answered {}", ready.status());
        let ready: Value = ready.json().await?;
        ensure!(ready["checks"]["outbox"] == Value::Bool(false), "readiness: {ready}");
        Ok(accepted)
    }

    /// Once the back end is let go: an order is accepted again, and every accepted order gets paid with
    /// its stock reserved once.
    async fn accepts_again_and_processes(&self, mut accepted: Vec<String>) -> anyhow::Result<()> {
        let again = eventually("an order accepted again", || async {
            let response = self.place().await?;
            Ok(match response.status() {
                StatusCode::CREATED => Some(string(&response.json::<Value>().await?["id"])?),
                _ => None,
            })
        })
        .await?;
        accepted.push(again);
        for id in &accepted {
            eventually(&format!("order {id} paid"), || async {
                let response =
                    self.http.get(self.url(&format!("/orders/{id}"))).bearer_auth(&self.token).send().await?;
                let order: Value = response.json().await?;
                Ok((order["status"] == "pending_shipment").then_some(()))
            })
            .await?;
        }
        let product = self.store.products_by_sku(&[Sku::parse("SKU-BP")?]).await?;
        let reserved = product.first().context("the product")?.reserved;
        ensure!(
            usize::try_from(reserved)? == accepted.len(),
            "{reserved} units reserved for {} accepted orders",
            accepted.len()
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_beyond_the_backlog_limit_gets_503s_and_every_accepted_order_is_processed() -> anyhow::Result<()> {
    let (gate, open) = watch::channel(false);
    let pressure = PressureLimits { backlog: Some(LIMIT), ..PressureLimits::default() };
    let publisher = |bus: Arc<InMemoryBus>| Arc::new(Gated { inner: bus, open }) as Arc<dyn CommandPublisher>;
    let sales =
        Sales::start(pressure, publisher, Arc::new(SimulatedPaymentGateway::new(PaymentSettings::default()))).await?;

    // The broker takes nothing: the command outbox grows until the sampler sees it past the limit.
    let accepted = sales.place_until_refused().await?;

    gate.send(true)?;
    sales.accepts_again_and_processes(accepted).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_the_consumers_cannot_keep_up_with_gets_503s_and_every_accepted_order_is_processed()
-> anyhow::Result<()> {
    let (gate, open) = watch::channel(false);
    let pressure = PressureLimits { queued: Some(LIMIT), ..PressureLimits::default() };
    let payments = GatedPayments { inner: SimulatedPaymentGateway::new(PaymentSettings::default()), open };
    let publisher = |bus: Arc<InMemoryBus>| bus as Arc<dyn CommandPublisher>;
    let sales = Sales::start(pressure, publisher, Arc::new(payments)).await?;

    // Commands go out at once, but the payment worker is stuck: payment requests wait in their queue
    // (the outbox stays empty) until the sampler sees more than the limit waiting.
    let accepted = sales.place_until_refused().await?;

    gate.send(true)?;
    sales.accepts_again_and_processes(accepted).await
}
