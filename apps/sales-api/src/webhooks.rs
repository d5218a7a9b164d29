//! Webhooks: admins register endpoints; every order event is owed to each endpoint subscribed to it (the
//! store writes the delivery with the change), and the dispatcher sends what is due, one order at a time
//! per endpoint so each order's events arrive in order, retrying on a ladder and giving up after its last
//! step; an endpoint that has failed for a day is disabled.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use orderflow_domain::Timestamp;
use orderflow_ports::system::{Clock, IdGenerator};
use orderflow_ports::webhooks::{
    Attempt, DueDelivery, SendError, Settlement, WebhookDelivery, WebhookEndpoint, WebhookError, WebhookSender,
    WebhookStore,
};
use rand::RngCore;
use uuid::Uuid;

/// How long a taken delivery is leased: longer than a send may take, so no one else sends it meanwhile.
const LEASE: Duration = Duration::from_secs(60);
/// Deliveries taken per round.
const BATCH: usize = 32;
/// How long delivered deliveries stay in the log, and how often older ones are deleted.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// How webhooks are retried and polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The waits after each failed attempt; after the last, the delivery is dead-lettered.
    pub retry_delays: Vec<Duration>,
    /// An endpoint whose deliveries have failed this long without a success is disabled.
    pub disable_after: Duration,
    /// How often the dispatcher looks for due deliveries when the last round found none.
    pub poll: Duration,
    /// Whether endpoints on loopback addresses may be registered and called (dev and tests).
    pub allow_loopback: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_delays: [1, 5, 25, 120, 600, 3600, 21_600].map(Duration::from_secs).to_vec(),
            disable_after: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(250),
            allow_loopback: false,
        }
    }
}

/// Why an endpoint was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The URL may not be called (scheme, credentials, an address webhooks may not reach, no address).
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] WebhookError),
}

/// The webhook use cases and the dispatcher.
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    sender: Arc<dyn WebhookSender>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    settings: WebhookSettings,
}

impl Webhooks {
    /// Webhooks kept in `store` and sent by `sender`.
    pub fn new(
        store: Arc<dyn WebhookStore>,
        sender: Arc<dyn WebhookSender>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        settings: WebhookSettings,
    ) -> Self {
        Self { store, sender, clock, ids, settings }
    }

    /// Registers an endpoint for `event_types` (all when `None`) with a fresh secret, which the result
    /// holds and nothing shows again.
    ///
    /// # Errors
    /// [`RegisterError::Refused`] when the URL may not be called; [`RegisterError::Store`].
    pub async fn register(
        &self,
        url: String,
        event_types: Option<Vec<String>>,
    ) -> Result<WebhookEndpoint, RegisterError> {
        self.sender.check_url(&url).await.map_err(|e| match e {
            SendError::Forbidden(reason) => RegisterError::Refused(reason),
            other => RegisterError::Refused(other.to_string()),
        })?;
        let mut key = [0_u8; 24];
        rand::rng().fill_bytes(&mut key);
        let endpoint = WebhookEndpoint {
            id: self.ids.new_id(),
            url,
            event_types,
            secret: format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)),
            created_at: self.clock.now(),
            failing_since: None,
            disabled: None,
        };
        self.store.add_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    /// Every endpoint, oldest first.
    ///
    /// # Errors
    /// [`WebhookError`] when the store fails.
    pub async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        self.store.endpoints().await
    }

    /// Removes an endpoint; `false` when there was none.
    ///
    /// # Errors
    /// [`WebhookError`] when the store fails.
    pub async fn remove(&self, id: Uuid) -> Result<bool, WebhookError> {
        self.store.remove_endpoint(id).await
    }

    /// The newest deliveries of an endpoint with their attempts; `None` when there is no such endpoint.
    ///
    /// # Errors
    /// [`WebhookError`] when the store fails.
    pub async fn deliveries(&self, endpoint: Uuid, limit: usize) -> Result<Option<Vec<WebhookDelivery>>, WebhookError> {
        self.store.deliveries(endpoint, limit).await
    }

    /// Sends a delivery again (it becomes pending, due now); `false` when there is no such delivery.
    ///
    /// # Errors
    /// [`WebhookError`] when the store fails.
    pub async fn redeliver(&self, endpoint: Uuid, delivery: Uuid) -> Result<bool, WebhookError> {
        self.store.redeliver(endpoint, delivery, self.clock.now()).await
    }

    /// Sends what is due, each delivery concurrently with the others; returns how many were sent.
    ///
    /// # Errors
    /// [`WebhookError`] when the store fails.
    pub async fn dispatch(&self) -> Result<usize, WebhookError> {
        let due = self.store.take_due(self.clock.now(), LEASE, BATCH).await?;
        let sent = futures::future::join_all(due.iter().map(|d| self.deliver(d))).await;
        sent.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(due.len())
    }

    /// Makes one attempt and records it.
    #[tracing::instrument(name = "deliver webhook", skip_all, fields(
        otel.kind = "client", webhook.delivery_id = %due.delivery.id, order_id = %due.delivery.order_id,
        event_type = %due.delivery.event_type,
    ))]
    async fn deliver(&self, due: &DueDelivery) -> Result<(), WebhookError> {
        let sent = self.sender.send(due, self.clock.now()).await;
        let at = self.clock.now();
        let (settlement, attempt) = match sent {
            Ok(status) => (Settlement::Delivered, Attempt { at, status_code: Some(status), error: None }),
            Err(error) => {
                let status_code = match error {
                    SendError::Status(status) => Some(status),
                    _ => None,
                };
                let tried = due.delivery.attempts.len();
                let settlement = match self.settings.retry_delays.get(tried) {
                    Some(wait) => Settlement::RetryAt(at + chrono::Duration::from_std(*wait).unwrap_or_default()),
                    None => Settlement::DeadLettered,
                };
                tracing::warn!(%error, attempt = tried + 1, "webhook delivery failed");
                (settlement, Attempt { at, status_code, error: Some(error.to_string()) })
            }
        };
        let disable = self.disable_reason(due, &settlement, at);
        let outcome = match settlement {
            Settlement::Delivered => "delivered",
            Settlement::RetryAt(_) => "retried",
            Settlement::DeadLettered => "dead_lettered",
        };
        orderflow_adapters::metrics::WEBHOOK_ATTEMPTS.with_label_values(&[outcome]).inc();
        self.store.settle(&due.delivery, attempt, settlement, disable).await
    }

    /// Why the endpoint is to be disabled after this attempt, if it is: it failed, and has kept failing
    /// for longer than allowed.
    fn disable_reason(&self, due: &DueDelivery, settlement: &Settlement, at: Timestamp) -> Option<String> {
        let since = due.failing_since.filter(|_| *settlement != Settlement::Delivered)?;
        let allowed = chrono::Duration::from_std(self.settings.disable_after).unwrap_or(chrono::Duration::MAX);
        (at - since >= allowed).then(|| format!("every delivery has failed since {}", since.to_rfc3339()))
    }

    /// Dispatches until the process stops: at once again after a round that sent something, else after
    /// the poll interval. A store that fails is tried again after the interval. Every ten minutes it
    /// deletes what was delivered more than a week ago (dead letters stay until redelivered).
    pub async fn run(self: Arc<Self>) {
        let mut purged = tokio::time::Instant::now();
        loop {
            if purged.elapsed() >= PURGE_EVERY {
                purged = tokio::time::Instant::now();
                let before = self.clock.now() - chrono::Duration::from_std(KEEP_DELIVERED).unwrap_or_default();
                if let Err(error) = self.store.purge_delivered(before).await {
                    tracing::warn!(%error, "could not purge delivered webhooks");
                }
            }
            match self.dispatch().await {
                Ok(sent) if sent > 0 => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "webhook dispatch failed; trying again"),
            }
            tokio::time::sleep(self.settings.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use orderflow_adapters::memory::{InMemorySalesStore, ManualClock};
    use orderflow_adapters::system::UuidV7Ids;
    use orderflow_ports::webhooks::DeliveryStatus;

    use super::*;

    /// Fails every send while `down`, and records what it was given.
    #[derive(Default)]
    struct Endpoint {
        down: std::sync::atomic::AtomicBool,
        received: Mutex<Vec<WebhookDelivery>>,
    }

    #[async_trait]
    impl WebhookSender for Endpoint {
        async fn send(&self, due: &DueDelivery, _: Timestamp) -> Result<u16, SendError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SendError::Status(503));
            }
            self.received.lock().unwrap().push(due.delivery.clone());
            Ok(200)
        }

        async fn check_url(&self, url: &str) -> Result<(), SendError> {
            if url.contains("10.0.0.1") { Err(SendError::Forbidden("private".into())) } else { Ok(()) }
        }
    }

    struct Fixture {
        store: Arc<InMemorySalesStore>,
        endpoint: Arc<Endpoint>,
        clock: Arc<ManualClock>,
        webhooks: Webhooks,
    }

    fn fixture() -> Fixture {
        let store = Arc::new(InMemorySalesStore::new());
        let endpoint = Arc::new(Endpoint::default());
        // A second ahead of the events the tests record (stamped with the real time), so they are due.
        let clock = Arc::new(ManualClock::at(chrono::Utc::now() + chrono::Duration::seconds(1)));
        let settings = WebhookSettings {
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
            disable_after: Duration::from_secs(60),
            poll: Duration::from_millis(10),
            allow_loopback: false,
        };
        let webhooks = Webhooks::new(store.clone(), endpoint.clone(), clock.clone(), Arc::new(UuidV7Ids), settings);
        Fixture { store, endpoint, clock, webhooks }
    }

    async fn an_event(store: &InMemorySalesStore) {
        use orderflow_ports::sales::SalesStore;
        let placement = orderflow_adapters::contract::fixtures::OrderDraft::new("hooked").line("W-1", 1).placement();
        let sku = orderflow_domain::Sku::parse("W-1").unwrap();
        let name = orderflow_domain::ProductName::parse("Hook").unwrap();
        store.put_product(sku, name, orderflow_adapters::contract::fixtures::eur(100), 10).await.unwrap();
        store.place_order(placement).await.unwrap();
    }

    #[tokio::test]
    async fn a_registered_endpoint_gets_a_secret_and_a_private_url_is_refused() {
        let f = fixture();
        let endpoint = f.webhooks.register("https://shop.example/hook".into(), None).await.unwrap();
        assert!(endpoint.secret.starts_with("whsec_") && endpoint.secret.len() > 30, "{}", endpoint.secret);
        let refused = f.webhooks.register("http://10.0.0.1/hook".into(), None).await;
        assert!(matches!(refused, Err(RegisterError::Refused(_))), "{refused:?}");
        assert_eq!(f.webhooks.endpoints().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_failing_delivery_is_retried_on_the_ladder_then_dead_lettered_and_the_endpoint_disabled_after_a_while() {
        let f = fixture();
        let hook = f.webhooks.register("https://shop.example/hook".into(), None).await.unwrap();
        an_event(&f.store).await;
        f.endpoint.down.store(true, std::sync::atomic::Ordering::SeqCst);

        assert_eq!(f.webhooks.dispatch().await.unwrap(), 1, "the first attempt");
        assert_eq!(f.webhooks.dispatch().await.unwrap(), 0, "not due before its retry");
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(f.webhooks.dispatch().await.unwrap(), 1, "the retry after 1 s");
        f.clock.advance(Duration::from_secs(5));
        assert_eq!(f.webhooks.dispatch().await.unwrap(), 1, "the last retry after 5 more");
        let log = f.webhooks.deliveries(hook.id, 10).await.unwrap().unwrap();
        assert_eq!(log[0].status, DeliveryStatus::DeadLettered);
        assert_eq!(log[0].attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [Some(503); 3]);

        an_event(&f.store).await;
        f.clock.advance(Duration::from_secs(60));
        f.webhooks.dispatch().await.unwrap();
        let disabled = f.webhooks.endpoints().await.unwrap().remove(0).disabled;
        assert!(disabled.is_some_and(|reason| reason.contains("failed since")), "disabled after a minute of failures");
    }

    #[tokio::test]
    async fn a_dead_letter_delivered_again_on_request_reaches_the_endpoint() {
        let f = fixture();
        let hook = f.webhooks.register("https://shop.example/hook".into(), None).await.unwrap();
        an_event(&f.store).await;
        f.endpoint.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..3 {
            f.webhooks.dispatch().await.unwrap();
            f.clock.advance(Duration::from_secs(5));
        }
        f.endpoint.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let dead = f.webhooks.deliveries(hook.id, 10).await.unwrap().unwrap().remove(0);
        assert!(f.webhooks.redeliver(hook.id, dead.id).await.unwrap());
        assert_eq!(f.webhooks.dispatch().await.unwrap(), 1);
        assert_eq!(f.endpoint.received.lock().unwrap().len(), 1);
        let log = f.webhooks.deliveries(hook.id, 10).await.unwrap().unwrap();
        assert_eq!(log[0].status, DeliveryStatus::Delivered);
        assert_eq!(log[0].attempts.len(), 4, "every attempt is in the log");
    }
}
