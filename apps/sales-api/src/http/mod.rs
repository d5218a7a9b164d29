//! The Sales HTTP API: orders, products, webhooks, and the dead-letter endpoints.

mod dto;
mod orders;
mod products;
mod webhooks;

use std::sync::Arc;

use orderflow_messages::RoutingKey;
use orderflow_ports::ReadError;
use orderflow_ports::messaging::DeadLetterAdmin;
use orderflow_runtime::http::{DlqApi, Problem};
use poem_openapi::{OpenApi, Tags};

use crate::service::{SalesService, TransitionFailure};
use crate::webhooks::Webhooks;

pub use dto::{OrderDto, PlaceOrderRequest};

/// Request bodies above this are refused with 413 before they are parsed.
pub const BODY_LIMIT: usize = 256 * 1024;

#[derive(Tags)]
enum ApiTags {
    /// Placing and following orders.
    Orders,
    /// The product catalogue and stock.
    Products,
    /// Webhook endpoints and their delivery logs (admin).
    Webhooks,
}

fn read_failed(error: &ReadError) -> Problem {
    Problem::unavailable(error)
}

fn transition_failed(error: TransitionFailure) -> Problem {
    use poem::http::StatusCode;
    match error {
        TransitionFailure::NotFound => Problem::not_found("the order"),
        TransitionFailure::NotAllowed(e) => {
            Problem::new(StatusCode::CONFLICT, "transition-not-allowed", "Not allowed now", e.to_string())
        }
        TransitionFailure::Contended => Problem::new(
            StatusCode::CONFLICT,
            "concurrent-change",
            "Concurrent change",
            "the order changed while this request ran; retry",
        ),
        TransitionFailure::Unexpected(e) => Problem::unavailable(e.as_ref()),
    }
}

/// The Sales operations, with the webhook endpoints and the dead-letter endpoints of the queues Sales
/// consumes.
pub fn api(
    service: &SalesService,
    webhooks: Arc<Webhooks>,
    dead_letters: Arc<dyn DeadLetterAdmin>,
) -> impl OpenApi + Send + Sync + 'static {
    (
        orders::OrdersApi { service: service.clone() },
        products::ProductsApi { service: service.clone() },
        webhooks::WebhooksApi { webhooks },
        DlqApi { admin: dead_letters, queues: RoutingKey::SALES.to_vec() },
    )
}
