//! Webhooks: the endpoints admins register, the deliveries each order event owes them, and the port that
//! makes one delivery (an HTTP POST signed as Standard Webhooks say).

use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::{EventId, OrderId, Timestamp};
use uuid::Uuid;

use crate::BoxError;

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// The event types it receives (`orderflow.order.paid.v1`, …); `None`: all of them.
    pub event_types: Option<Vec<String>>,
    /// The signing secret, `whsec_` and the base64 of its bytes.
    pub secret: String,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Since when its deliveries have kept failing, if they do.
    pub failing_since: Option<Timestamp>,
    /// Why it no longer receives anything, when it was disabled.
    pub disabled: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet acknowledged by the endpoint; tried again when due.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the last retry; an admin may deliver it again.
    DeadLettered,
}

/// One try to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The endpoint's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// One event owed to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Its id: the `webhook-id` header, the same on every attempt.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The order event.
    pub event_id: EventId,
    /// Its type.
    pub event_type: String,
    /// The order.
    pub order_id: OrderId,
    /// The body sent: `{"type", "timestamp", "data"}`.
    pub body: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// When it was owed.
    pub created_at: Timestamp,
}

/// A delivery taken to be made now, with what the request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    /// The delivery.
    pub delivery: WebhookDelivery,
    /// The endpoint's URL.
    pub url: String,
    /// The endpoint's signing secret.
    pub secret: String,
    /// Since when the endpoint's deliveries have kept failing, if they do.
    pub failing_since: Option<Timestamp>,
}

/// What became of an attempt, for [`WebhookStore::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The endpoint took it.
    Delivered,
    /// It failed; try again at this instant.
    RetryAt(Timestamp),
    /// It failed for the last time.
    DeadLettered,
}

/// Why a webhook operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The store failed.
    #[error("the webhook store failed")]
    Unexpected(#[source] BoxError),
}

/// Persistence of endpoints and deliveries. A store that implements it also owes each enabled endpoint a
/// delivery of every order event it subscribes to, written with the change that emitted the event.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Registers an endpoint.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn add_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), WebhookError>;

    /// Every endpoint, oldest first.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, WebhookError>;

    /// Removes an endpoint and what it is owed; `false` when there was none.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn remove_endpoint(&self, id: Uuid) -> Result<bool, WebhookError>;

    /// The newest `limit` deliveries of an endpoint, newest first; `None` when there is no such endpoint.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn deliveries(&self, endpoint: Uuid, limit: usize) -> Result<Option<Vec<WebhookDelivery>>, WebhookError>;

    /// Makes a delivery of the endpoint pending again, due now; `false` when there is no such delivery.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn redeliver(&self, endpoint: Uuid, delivery: Uuid, now: Timestamp) -> Result<bool, WebhookError>;

    /// Takes up to `limit` deliveries due at `now` to enabled endpoints, each the oldest pending one of its
    /// endpoint and order (so one order's events reach an endpoint in order), and leases them for `lease`:
    /// until then no caller takes them again, so replicas share the work and a taker that dies leaves
    /// them to be taken after the lease.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn take_due(&self, now: Timestamp, lease: Duration, limit: usize) -> Result<Vec<DueDelivery>, WebhookError>;

    /// Deletes deliveries delivered before `before`; returns how many. Pending and dead-lettered ones stay.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, WebhookError>;

    /// Records an attempt and its outcome. A failure sets the endpoint's `failing_since` if unset; a
    /// success clears it; `disable` (a reason) disables the endpoint.
    ///
    /// # Errors
    /// [`WebhookError::Unexpected`] when the store fails.
    async fn settle(
        &self,
        delivery: &WebhookDelivery,
        attempt: Attempt,
        settlement: Settlement,
        disable: Option<String>,
    ) -> Result<(), WebhookError>;
}

/// Why a delivery did not land.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The endpoint answered, but not 2xx.
    #[error("the endpoint answered {0}")]
    Status(u16),
    /// The URL may not be called: it resolves to an address outside what is allowed.
    #[error("refused: {0}")]
    Forbidden(String),
    /// No answer: connection refused, timeout, TLS.
    #[error("no answer: {0}")]
    Unexpected(#[source] BoxError),
}

/// POSTs deliveries to endpoints.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    /// Sends `due` signed with its endpoint's secret at `now`; returns the endpoint's 2xx status.
    ///
    /// # Errors
    /// [`SendError`]: a non-2xx answer, a forbidden address, or no answer.
    async fn send(&self, due: &DueDelivery, now: Timestamp) -> Result<u16, SendError>;

    /// Whether `url` may be registered: `http` or `https`, and every address its host resolves to allowed.
    ///
    /// # Errors
    /// [`SendError::Forbidden`] naming why not; [`SendError::Unexpected`] when the name cannot be resolved.
    async fn check_url(&self, url: &str) -> Result<(), SendError>;
}
