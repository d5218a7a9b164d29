//! `/admin/webhooks`: register, list and remove webhook endpoints, read their delivery logs, deliver again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderflow_messages::{
    OrderCancellationRequested, OrderCancelled, OrderDelivered, OrderPaid, OrderPaymentFailed, OrderPlaced,
    OrderShipped, Payload,
};
use orderflow_ports::webhooks::{Attempt, DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookError};
use orderflow_runtime::http::{
    BearerAuth, Lookup, PathId, Pattern, Problem, Problems, Scope, Shape, StrictJson, admin_limit, with_pattern,
};
use orderflow_runtime::refusals;
use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::MetaSchema;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ApiTags;
use crate::webhooks::{RegisterError, Webhooks};

/// The webhook endpoints.
pub struct WebhooksApi {
    pub(crate) webhooks: Arc<Webhooks>,
}

refusals!(
    /// Registering an endpoint: a malformed body, too large, not JSON, or a URL that may not be called.
    Registering: 400, 413, 415, 422
);
refusals!(
    /// Listing the endpoints: nothing beyond what every operation can answer.
    Everything:
);

/// The longest endpoint URL.
const MAX_URL: usize = 2048;

/// An endpoint URL as it may be registered: `http://` or `https://` and printable ASCII; which hosts it
/// may name is for the service to say (422).
pub enum UrlShape {}

impl Shape for UrlShape {
    fn schema() -> MetaSchema {
        let mut schema = with_pattern("^https?://[!-~]+$".to_owned());
        schema.max_length = Some(MAX_URL);
        schema
    }
}

/// The order events an endpoint may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum EventType {
    #[oai(rename = "orderflow.order.placed.v1")]
    #[serde(rename = "orderflow.order.placed.v1")]
    Placed,
    #[oai(rename = "orderflow.order.paid.v1")]
    #[serde(rename = "orderflow.order.paid.v1")]
    Paid,
    #[oai(rename = "orderflow.order.payment_failed.v1")]
    #[serde(rename = "orderflow.order.payment_failed.v1")]
    PaymentFailed,
    #[oai(rename = "orderflow.order.cancellation_requested.v1")]
    #[serde(rename = "orderflow.order.cancellation_requested.v1")]
    CancellationRequested,
    #[oai(rename = "orderflow.order.cancelled.v1")]
    #[serde(rename = "orderflow.order.cancelled.v1")]
    Cancelled,
    #[oai(rename = "orderflow.order.shipped.v1")]
    #[serde(rename = "orderflow.order.shipped.v1")]
    Shipped,
    #[oai(rename = "orderflow.order.delivered.v1")]
    #[serde(rename = "orderflow.order.delivered.v1")]
    Delivered,
}

impl EventType {
    /// The CloudEvents type.
    const fn as_str(self) -> &'static str {
        match self {
            Self::Placed => OrderPlaced::TYPE,
            Self::Paid => OrderPaid::TYPE,
            Self::PaymentFailed => OrderPaymentFailed::TYPE,
            Self::CancellationRequested => OrderCancellationRequested::TYPE,
            Self::Cancelled => OrderCancelled::TYPE,
            Self::Shipped => OrderShipped::TYPE,
            Self::Delivered => OrderDelivered::TYPE,
        }
    }
}

/// `POST /admin/webhooks` body.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterWebhook {
    /// Where deliveries are POSTed.
    pub url: Pattern<UrlShape>,
    /// The order events to deliver; all of them when absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none, nullable, validator(min_items = 1, max_items = 7, unique_items))]
    pub event_types: Option<Vec<EventType>>,
}

/// A registered endpoint, with its secret: the only time it is shown.
#[derive(Debug, Clone, Object)]
pub struct CreatedWebhook {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives; all when `null`.
    #[oai(nullable)]
    pub event_types: Option<Vec<String>>,
    /// The signing secret (`whsec_` and base64): verify `webhook-signature` with it. Shown only here.
    pub secret: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// A registered endpoint.
#[derive(Debug, Clone, Object)]
pub struct WebhookDto {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives; all when `null`.
    #[oai(nullable)]
    pub event_types: Option<Vec<String>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Since when every delivery has failed, if they do.
    #[oai(nullable)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Why it receives nothing any more (it failed for a day), or `null` while it is enabled.
    #[oai(nullable)]
    pub disabled: Option<String>,
}

impl From<WebhookEndpoint> for WebhookDto {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            created_at: e.created_at,
            failing_since: e.failing_since,
            disabled: e.disabled,
        }
    }
}

/// The endpoints.
#[derive(Debug, Clone, Object)]
pub struct WebhookList {
    /// Oldest first.
    pub items: Vec<WebhookDto>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum DeliveryStatusDto {
    Pending,
    Delivered,
    DeadLettered,
}

/// One attempt to deliver.
#[derive(Debug, Clone, Object)]
pub struct AttemptDto {
    /// When.
    pub at: DateTime<Utc>,
    /// The endpoint's HTTP status, when it answered.
    #[oai(nullable)]
    pub status_code: Option<u16>,
    /// What went wrong, when something did.
    #[oai(nullable)]
    pub error: Option<String>,
}

/// One event owed to the endpoint, with every attempt.
#[derive(Debug, Clone, Object)]
pub struct DeliveryDto {
    /// The delivery id: the `webhook-id` header.
    pub id: Uuid,
    /// The order event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The order.
    pub order_id: Uuid,
    /// Where it stands.
    pub status: DeliveryStatusDto,
    /// Oldest first.
    pub attempts: Vec<AttemptDto>,
    /// When it was owed.
    pub created_at: DateTime<Utc>,
}

impl From<WebhookDelivery> for DeliveryDto {
    fn from(d: WebhookDelivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id.as_uuid(),
            event_type: d.event_type,
            order_id: d.order_id.as_uuid(),
            status: match d.status {
                DeliveryStatus::Pending => DeliveryStatusDto::Pending,
                DeliveryStatus::Delivered => DeliveryStatusDto::Delivered,
                DeliveryStatus::DeadLettered => DeliveryStatusDto::DeadLettered,
            },
            attempts: d
                .attempts
                .into_iter()
                .map(|Attempt { at, status_code, error }| AttemptDto { at, status_code, error })
                .collect(),
            created_at: d.created_at,
        }
    }
}

/// An endpoint's delivery log.
#[derive(Debug, Clone, Object)]
pub struct DeliveryList {
    /// Newest first.
    pub items: Vec<DeliveryDto>,
}

#[derive(ApiResponse)]
enum Registered {
    /// Registered; the secret is shown this once.
    #[oai(status = 201)]
    Created(Json<CreatedWebhook>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
enum Removed {
    /// Removed, with what it was owed.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
enum Redelivering {
    /// The delivery is pending again and will be sent shortly.
    #[oai(status = 202)]
    Accepted,
}

fn failed(error: &WebhookError) -> Problem {
    Problem::unavailable(error)
}

fn no_endpoint() -> Problem {
    Problem::not_found("the webhook endpoint")
}

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register an endpoint for order events (admin). The answer holds its signing secret, shown once.
    #[oai(path = "/admin/webhooks", method = "post", operation_id = "register_webhook")]
    async fn register(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        body: StrictJson<RegisterWebhook>,
    ) -> Result<Registered, Problems<Registering>> {
        let url = body.0.url.as_str();
        if url.len() > MAX_URL || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Problem::invalid("url", format!("must be at most {MAX_URL} printable ASCII characters")).into());
        }
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if rest.is_none_or(str::is_empty) {
            return Err(Problem::invalid("url", "must be an http:// or https:// URL").into());
        }
        // The body is read with serde, so the documented item rules are applied here.
        if let Some(types) = &body.0.event_types {
            let distinct: std::collections::HashSet<_> = types.iter().collect();
            if types.is_empty() || distinct.len() < types.len() {
                return Err(Problem::invalid("event_types", "must name each event type once, at least one").into());
            }
        }
        let types = body.0.event_types.map(|t| t.into_iter().map(|t| t.as_str().to_owned()).collect());
        let endpoint = self.webhooks.register(url.to_owned(), types).await.map_err(|e| match e {
            RegisterError::Refused(reason) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhook-url-refused",
                "URL refused",
                format!("webhooks may not be sent to this URL: {reason}"),
            )
            .with_field("url"),
            RegisterError::Store(e) => failed(&e),
        })?;
        let location = format!("/admin/webhooks/{}", endpoint.id);
        Ok(Registered::Created(
            Json(CreatedWebhook {
                id: endpoint.id,
                url: endpoint.url,
                event_types: endpoint.event_types,
                secret: endpoint.secret,
                created_at: endpoint.created_at,
            }),
            location,
        ))
    }

    /// The registered endpoints, oldest first, without their secrets (admin).
    #[oai(path = "/admin/webhooks", method = "get", operation_id = "list_webhooks")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
    ) -> Result<Json<WebhookList>, Problems<Everything>> {
        let endpoints = self.webhooks.endpoints().await.map_err(|e| failed(&e))?;
        Ok(Json(WebhookList { items: endpoints.into_iter().map(Into::into).collect() }))
    }

    /// Remove an endpoint and what it is owed (admin).
    #[oai(path = "/admin/webhooks/:id", method = "delete", operation_id = "remove_webhook")]
    async fn remove(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        id: Path<PathId>,
    ) -> Result<Removed, Problems<Lookup>> {
        let id = id.0.parse("id")?;
        match self.webhooks.remove(id).await.map_err(|e| failed(&e))? {
            true => Ok(Removed::NoContent),
            false => Err(no_endpoint().into()),
        }
    }

    /// An endpoint's newest deliveries, with every attempt (admin).
    #[oai(path = "/admin/webhooks/:id/deliveries", method = "get", operation_id = "list_webhook_deliveries")]
    async fn deliveries(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        id: Path<PathId>,
        /// How many, 1-1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<DeliveryList>, Problems<Lookup>> {
        let id = id.0.parse("id")?;
        let log = self
            .webhooks
            .deliveries(id, admin_limit(limit.0, 100)?)
            .await
            .map_err(|e| failed(&e))?
            .ok_or_else(no_endpoint)?;
        Ok(Json(DeliveryList { items: log.into_iter().map(Into::into).collect() }))
    }

    /// Deliver again: the delivery becomes pending, due now, behind any earlier pending one of its order (admin).
    #[oai(
        path = "/admin/webhooks/:id/deliveries/:delivery_id/redeliver",
        method = "post",
        operation_id = "redeliver_webhook"
    )]
    async fn redeliver(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        id: Path<PathId>,
        delivery_id: Path<PathId>,
    ) -> Result<Redelivering, Problems<Lookup>> {
        let (id, delivery) = (id.0.parse("id")?, delivery_id.0.parse("delivery_id")?);
        match self.webhooks.redeliver(id, delivery).await.map_err(|e| failed(&e))? {
            true => Ok(Redelivering::Accepted),
            false => Err(Problem::not_found("the delivery").into()),
        }
    }
}
