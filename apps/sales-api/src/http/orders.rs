//! `/orders`: place, read, list, follow and cancel orders.

use orderflow_domain::{CustomerId, IdempotencyKey, OrderId};
use orderflow_ports::sales::{OrderQuery, PlaceError, PlaceOutcome};
use orderflow_runtime::http::{
    BearerAuth, IdCursor, Listing, Lookup, PathId, Pattern, Problem, Problems, Scope, StrictJson, Text, Transition,
    page_limit,
};
use orderflow_runtime::refusals;
use poem::http::{StatusCode, header};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use sha2::{Digest, Sha256};

use super::dto::{
    IdempotencyKeyShape, OrderDto, OrderList, OrderStatusDto, PlaceOrderRequest, Timeline, TimelineEntry,
};
use super::{ApiTags, read_failed, transition_failed};
use crate::service::{Idempotency, PlaceOrderError, SalesService};

/// The orders endpoints.
pub struct OrdersApi {
    pub(crate) service: SalesService,
}

refusals!(
    /// Placing an order: a malformed body or key, out of stock or the key in flight, too large, not JSON,
    /// unknown SKUs or the key reused.
    Placing: 400, 409, 413, 415, 422
);

#[derive(ApiResponse)]
enum PlaceResponse {
    /// The order was placed (or, for a repeated idempotency key, this is the first response again).
    #[oai(status = 201)]
    Created(Json<OrderDto>, #[oai(header = "Location")] String, #[oai(header = "Idempotent-Replayed")] Option<String>),
}

#[derive(ApiResponse)]
enum OrderResponse {
    /// The order.
    #[oai(status = 200)]
    Ok(Json<OrderDto>),
}

#[OpenApi(tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Place an order: reserves stock and requests payment. Send an `Idempotency-Key` to retry safely.
    #[oai(path = "/orders", method = "post", operation_id = "place_order")]
    async fn place(
        &self,
        #[oai(scope = "Scope::OrdersWrite")] auth: BearerAuth,
        /// Any unique string of 1-255 printable ASCII characters (e.g. a UUID); remembered for 24 hours.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<Pattern<IdempotencyKeyShape>>>,
        /// W3C trace context to continue (read by the tracing middleware, like on every endpoint).
        #[oai(name = "traceparent")]
        _traceparent: Header<Option<String>>,
        body: StrictJson<PlaceOrderRequest>,
    ) -> Result<PlaceResponse, Problems<Placing>> {
        let BearerAuth(principal) = auth;
        let request = body.0.parse()?;
        let idempotency = match idempotency_key.0 {
            None => None,
            Some(raw) => {
                let key = IdempotencyKey::parse(raw.as_str()).map_err(|e| Problem::invalid(e.field, e.reason))?;
                // The request as it was sent: the same key with another body is refused.
                let canonical = serde_json::to_vec(&body.0).unwrap_or_default();
                let fingerprint = format!("{:x}", Sha256::digest(&canonical));
                Some(Idempotency { client: principal.client_id.clone(), key, fingerprint })
            }
        };
        let outcome = self.service.place_order(request, idempotency).await.map_err(place_failed)?;
        let (order, replayed) = match outcome {
            PlaceOutcome::Created(order) => (order, None),
            PlaceOutcome::Replayed(order) => (order, Some("true".to_owned())),
        };
        let location = format!("/orders/{}", order.id);
        Ok(PlaceResponse::Created(Json(order.into()), location, replayed))
    }

    /// One order (cached; never older than its last committed change).
    #[oai(path = "/orders/:id", method = "get", operation_id = "get_order")]
    async fn get(
        &self,
        #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
        id: Path<PathId>,
    ) -> Result<OrderResponse, Problems<Lookup>> {
        let order = self.service.order(OrderId::from_uuid(id.0.parse("id")?)).await.map_err(|e| read_failed(&e))?;
        order.map(|o| OrderResponse::Ok(Json(o.into()))).ok_or_else(|| Problem::not_found("the order").into())
    }

    /// Orders, newest first, optionally filtered by customer and status.
    #[oai(path = "/orders", method = "get", operation_id = "list_orders")]
    async fn list(
        &self,
        #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
        /// Only this customer's orders.
        customer_id: Query<Option<Text<64>>>,
        /// Only orders in this status.
        status: Query<Option<OrderStatusDto>>,
        /// Page size, 1-100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<IdCursor>>,
    ) -> Result<Json<OrderList>, Problems<Listing>> {
        let customer_id = customer_id
            .0
            .map(|c| CustomerId::parse(c.as_str()))
            .transpose()
            .map_err(|e| Problem::invalid(e.field, e.reason))?;
        let query = OrderQuery {
            customer_id: customer_id.map(String::from),
            status: status.0.map(Into::into),
            limit: page_limit(limit.0)?,
            after: cursor.0.map(|c| OrderId::from_uuid(c.0)),
        };
        let page = self.service.orders(query).await.map_err(|e| read_failed(&e))?;
        Ok(Json(OrderList::from(page)))
    }

    /// The order's lifecycle events, oldest first.
    #[oai(path = "/orders/:id/events", method = "get", operation_id = "get_order_events")]
    async fn events(
        &self,
        #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
        id: Path<PathId>,
    ) -> Result<Json<Timeline>, Problems<Lookup>> {
        let events = self.service.timeline(OrderId::from_uuid(id.0.parse("id")?)).await.map_err(|e| read_failed(&e))?;
        let events = events.ok_or_else(|| Problem::not_found("the order"))?;
        Ok(Json(Timeline {
            items: events
                .into_iter()
                .map(|e| TimelineEntry { event_type: e.event_type, at: e.time, data: e.data })
                .collect(),
        }))
    }

    /// Cancel an order: immediate before payment; after payment Delivery confirms first
    /// (`cancellation_requested`). Refused once shipped.
    #[oai(path = "/orders/:id/cancel", method = "post", operation_id = "cancel_order")]
    async fn cancel(
        &self,
        #[oai(scope = "Scope::OrdersWrite")] _auth: BearerAuth,
        id: Path<PathId>,
        /// W3C trace context to continue (read by the tracing middleware, like on every endpoint).
        #[oai(name = "traceparent")]
        _traceparent: Header<Option<String>>,
    ) -> Result<OrderResponse, Problems<Transition>> {
        let order =
            self.service.cancel_order(OrderId::from_uuid(id.0.parse("id")?)).await.map_err(transition_failed)?;
        Ok(OrderResponse::Ok(Json(order.into())))
    }
}

fn place_failed(error: PlaceOrderError) -> Problem {
    use orderflow_domain::PricingError;
    match error {
        PlaceOrderError::Pricing(PricingError::UnknownSkus(skus))
        | PlaceOrderError::Store(PlaceError::UnknownSkus(skus)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-sku",
            "Unknown SKU",
            "these SKUs are not in the catalogue",
        )
        .with_field("lines")
        .with("skus", skus),
        PlaceOrderError::Pricing(PricingError::MixedCurrencies) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "mixed-currencies",
            "Mixed currencies",
            "the products are priced in different currencies; place separate orders",
        )
        .with_field("lines"),
        PlaceOrderError::Pricing(PricingError::TotalTooLarge) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "total-too-large",
            "Total too large",
            "at catalogue prices the order total is larger than the system accepts; place smaller orders",
        )
        .with_field("lines"),
        PlaceOrderError::Store(PlaceError::InsufficientStock(skus)) => Problem::new(
            StatusCode::CONFLICT,
            "insufficient-stock",
            "Insufficient stock",
            "not enough stock for these SKUs; nothing was reserved",
        )
        .with("skus", skus),
        PlaceOrderError::Store(PlaceError::KeyReused) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request body",
        )
        .with_field("Idempotency-Key"),
        PlaceOrderError::Store(PlaceError::KeyInFlight) => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        .with_field("Idempotency-Key"),
        PlaceOrderError::Overloaded => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "orders are arriving faster than they can be processed; retry after the given delay",
        )
        .with_header(header::RETRY_AFTER, "1"),
        other => Problem::internal(&other),
    }
}
