//! `/shipments`: what delivery staff see and do.

use chrono::{DateTime, Utc};
use orderflow_domain::{Carrier, InvalidValue, OrderId, Shipment, ShipmentId, ShipmentStatus, TrackingNumber};
use orderflow_ports::delivery::ShipmentQuery;
use orderflow_runtime::http::{
    BearerAuth, IdCursor, Listing, Lookup, PathId, Problem, Problems, Scope, StrictJson, Text, Transition,
    TransitionWithBody, page_limit,
};
use orderflow_runtime::page;
use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::service::{DeliveryService, Target, TransitionFailure};

/// The shipment endpoints.
pub struct ShipmentsApi {
    pub(crate) service: DeliveryService,
}

/// Where a shipment is.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ShipmentStatusDto {
    Pending,
    Shipped,
    Delivered,
    Cancelled,
}

impl From<ShipmentStatusDto> for ShipmentStatus {
    fn from(s: ShipmentStatusDto) -> Self {
        match s {
            ShipmentStatusDto::Pending => Self::Pending,
            ShipmentStatusDto::Shipped => Self::Shipped,
            ShipmentStatusDto::Delivered => Self::Delivered,
            ShipmentStatusDto::Cancelled => Self::Cancelled,
        }
    }
}

/// A shipment.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ShipmentDto {
    /// Shipment id.
    pub id: Uuid,
    /// The order it ships.
    pub order_id: Uuid,
    /// Where it is.
    pub status: ShipmentStatusDto,
    /// Set once shipped.
    pub carrier: Option<String>,
    /// Set once shipped.
    pub tracking_number: Option<String>,
    /// When Delivery learned of the order.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Shipment> for ShipmentDto {
    fn from(shipment: Shipment) -> Self {
        // Every field named: one added to the shipment cannot be left out of the API unnoticed.
        let Shipment { id, order, status, carrier, tracking_number, created_at, updated_at, version: _ } = shipment;
        Self {
            id: id.as_uuid(),
            order_id: order.order_id.as_uuid(),
            status: match status {
                ShipmentStatus::Pending => ShipmentStatusDto::Pending,
                ShipmentStatus::Shipped => ShipmentStatusDto::Shipped,
                ShipmentStatus::Delivered => ShipmentStatusDto::Delivered,
                ShipmentStatus::Cancelled => ShipmentStatusDto::Cancelled,
            },
            carrier: carrier.map(|c| c.to_string()),
            tracking_number: tracking_number.map(|t| t.to_string()),
            created_at,
            updated_at,
        }
    }
}

page!(
    /// A page of shipments.
    ShipmentList {
        /// Newest first.
        items: ShipmentDto,
        next_cursor: IdCursor,
    }
);

/// `POST /shipments/{id}/ship` body.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipRequest {
    /// Who carries it.
    pub carrier: Text<64>,
    /// The carrier's tracking number.
    pub tracking_number: Text<64>,
}

fn invalid(e: InvalidValue) -> Problem {
    Problem::invalid(e.field, e.reason)
}

fn failed(error: TransitionFailure) -> Problem {
    match error {
        TransitionFailure::NotFound => Problem::not_found("the shipment"),
        TransitionFailure::NotAllowed(e) => {
            Problem::new(StatusCode::CONFLICT, "transition-not-allowed", "Not allowed now", e.to_string())
        }
        TransitionFailure::Contended => {
            Problem::new(StatusCode::CONFLICT, "concurrent-change", "Concurrent change", "retry the request")
        }
        TransitionFailure::Unexpected(e) => Problem::unavailable(e.as_ref()),
    }
}

fn found(shipment: Option<Shipment>) -> Result<Json<ShipmentDto>, Problems<Lookup>> {
    shipment.map(|s| Json(s.into())).ok_or_else(|| Problem::not_found("the shipment").into())
}

#[OpenApi]
impl ShipmentsApi {
    /// Shipments, newest first, optionally by status.
    #[oai(path = "/shipments", method = "get", operation_id = "list_shipments")]
    async fn list(
        &self,
        #[oai(scope = "Scope::ShipmentsRead")] _auth: BearerAuth,
        /// Only shipments in this status.
        status: Query<Option<ShipmentStatusDto>>,
        /// Page size, 1-100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<IdCursor>>,
    ) -> Result<Json<ShipmentList>, Problems<Listing>> {
        let query = ShipmentQuery {
            status: status.0.map(Into::into),
            limit: page_limit(limit.0)?,
            after: cursor.0.map(|c| ShipmentId::from_uuid(c.0)),
            ..ShipmentQuery::default()
        };
        let page = self.service.shipments(query).await.map_err(|e| Problem::unavailable(&e))?;
        Ok(Json(ShipmentList::from(page)))
    }

    /// One shipment.
    #[oai(path = "/shipments/:id", method = "get", operation_id = "get_shipment")]
    async fn get(
        &self,
        #[oai(scope = "Scope::ShipmentsRead")] _auth: BearerAuth,
        id: Path<PathId>,
    ) -> Result<Json<ShipmentDto>, Problems<Lookup>> {
        found(
            self.service
                .find(Target::Shipment(ShipmentId::from_uuid(id.0.parse("id")?)))
                .await
                .map_err(|e| Problem::unavailable(&e))?,
        )
    }

    /// The shipment of an order.
    #[oai(path = "/shipments/by-order/:order_id", method = "get", operation_id = "get_shipment_by_order")]
    async fn by_order(
        &self,
        #[oai(scope = "Scope::ShipmentsRead")] _auth: BearerAuth,
        order_id: Path<PathId>,
    ) -> Result<Json<ShipmentDto>, Problems<Lookup>> {
        found(
            self.service
                .find(Target::Order(OrderId::from_uuid(order_id.0.parse("order_id")?)))
                .await
                .map_err(|e| Problem::unavailable(&e))?,
        )
    }

    /// Hand the parcel to a carrier. Repeating it with the same details is harmless.
    #[oai(path = "/shipments/:id/ship", method = "post", operation_id = "ship_shipment")]
    async fn ship(
        &self,
        #[oai(scope = "Scope::ShipmentsWrite")] _auth: BearerAuth,
        id: Path<PathId>,
        body: StrictJson<ShipRequest>,
    ) -> Result<Json<ShipmentDto>, Problems<TransitionWithBody>> {
        let carrier = Carrier::parse(body.0.carrier.as_str()).map_err(invalid)?;
        let tracking = TrackingNumber::parse(body.0.tracking_number.as_str()).map_err(invalid)?;
        let id = ShipmentId::from_uuid(id.0.parse("id")?);
        let shipment = self.service.ship(id, carrier, tracking).await.map_err(failed)?;
        Ok(Json(shipment.into()))
    }

    /// Confirm the parcel arrived.
    #[oai(path = "/shipments/:id/deliver", method = "post", operation_id = "deliver_shipment")]
    async fn deliver(
        &self,
        #[oai(scope = "Scope::ShipmentsWrite")] _auth: BearerAuth,
        id: Path<PathId>,
    ) -> Result<Json<ShipmentDto>, Problems<Transition>> {
        let shipment = self.service.deliver(ShipmentId::from_uuid(id.0.parse("id")?)).await.map_err(failed)?;
        Ok(Json(shipment.into()))
    }
}
