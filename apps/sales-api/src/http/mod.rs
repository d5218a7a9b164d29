//! The Sales HTTP API: routes, documentation, health and metrics.

mod dto;
mod orders;
mod products;

use std::sync::Arc;

use orderflow_adapters::http::{AuthContext, BodyLimit, DlqApi, HttpMetrics, Observe, Problem};
use orderflow_ports::ReadError;
use poem::web::Data;
use poem::{EndpointExt, IntoEndpoint, Route, handler};
use poem_openapi::{OpenApiService, Tags};

use crate::service::{SalesService, TransitionFailure};

pub use dto::{OrderDto, PlaceOrderRequest};

/// Request bodies above this are refused with 413 before they are parsed.
const BODY_LIMIT: usize = 256 * 1024;

#[derive(Tags)]
enum ApiTags {
    /// Placing and following orders.
    Orders,
    /// The product catalogue and stock.
    Products,
}

fn read_failed(error: &ReadError) -> Problem {
    Problem::unavailable(error)
}

fn transition_failed(error: TransitionFailure) -> poem::Error {
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
    .into()
}

/// The operators' side of the API: dead-letter operations and the readiness checks.
pub struct Admin {
    /// Dead-letter operations.
    pub dead_letters: Arc<dyn orderflow_ports::messaging::DeadLetterAdmin>,
    /// Dependencies `/health/ready` checks besides the store.
    pub health: Vec<Arc<dyn orderflow_ports::system::HealthCheck>>,
}

/// Builds the whole HTTP application.
pub fn routes(
    service: SalesService,
    auth: AuthContext,
    admin: Admin,
    metrics: HttpMetrics,
    registry: prometheus::Registry,
    server_url: String,
) -> impl poem::Endpoint<Output = poem::Response> {
    let api = OpenApiService::new(
        (
            orders::OrdersApi { service: service.clone() },
            products::ProductsApi { service: service.clone() },
            DlqApi { admin: admin.dead_letters, queues: orderflow_domain::RoutingKey::SALES.to_vec() },
        ),
        "orderflow Sales API",
        env!("CARGO_PKG_VERSION"),
    )
    .server(server_url);
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api.with(BodyLimit { max: BODY_LIMIT }))
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/health/live", live)
        .at("/health/ready", ready.data(service).data(Arc::new(admin.health)))
        .at("/metrics", metrics_endpoint.data(Arc::new(registry)))
        .data(auth)
        .with(Observe { metrics })
        .into_endpoint()
}

type HealthChecks = Arc<Vec<Arc<dyn orderflow_ports::system::HealthCheck>>>;

#[handler]
fn live() -> &'static str {
    "ok"
}

#[handler]
async fn ready(service: Data<&SalesService>, health: Data<&HealthChecks>) -> poem::Response {
    let database = service.store.products(1, None).await.is_ok();
    orderflow_adapters::http::readiness(database, health.0).await
}

#[handler]
fn metrics_endpoint(registry: Data<&Arc<prometheus::Registry>>) -> poem::Response {
    use poem::IntoResponse;
    // The service's own metrics and the process-wide ones the adapters record.
    let mut families = registry.gather();
    families.extend(prometheus::gather());
    let text = prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default();
    text.with_content_type("text/plain; version=0.0.4").into_response()
}
