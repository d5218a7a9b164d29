//! The Delivery HTTP API: shipments, and the dead-letter endpoints.

mod shipments;

use std::sync::Arc;

use orderflow_messages::RoutingKey;
use orderflow_ports::messaging::DeadLetterAdmin;
use orderflow_runtime::http::DlqApi;
use poem_openapi::OpenApi;

use crate::service::DeliveryService;

/// Request bodies above this are refused with 413 before they are parsed.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The Delivery operations, with the dead-letter endpoints of the queues Delivery consumes.
pub fn api(service: &DeliveryService, dead_letters: Arc<dyn DeadLetterAdmin>) -> impl OpenApi + Send + Sync + 'static {
    (
        shipments::ShipmentsApi { service: service.clone() },
        DlqApi { admin: dead_letters, queues: RoutingKey::DELIVERY.to_vec() },
    )
}
