//! The Delivery HTTP API: routes, documentation, health and metrics.

mod shipments;

use std::sync::Arc;

use orderflow_adapters::http::{AuthContext, BodyLimit, DlqApi, HttpMetrics, Observe};
use poem::web::Data;
use poem::{EndpointExt, IntoEndpoint, Route, handler};
use poem_openapi::OpenApiService;

use crate::service::DeliveryService;

/// Request bodies above this are refused with 413 before they are parsed.
const BODY_LIMIT: usize = 64 * 1024;

/// The operators' side of the API: dead-letter operations and the readiness checks.
pub struct Admin {
    /// Dead-letter operations.
    pub dead_letters: Arc<dyn orderflow_ports::messaging::DeadLetterAdmin>,
    /// Dependencies `/health/ready` checks besides the store.
    pub health: Vec<Arc<dyn orderflow_ports::system::HealthCheck>>,
}

/// Builds the whole HTTP application.
pub fn routes(
    service: DeliveryService,
    auth: AuthContext,
    admin: Admin,
    metrics: HttpMetrics,
    registry: prometheus::Registry,
    server_url: String,
) -> impl poem::Endpoint<Output = poem::Response> {
    let api = OpenApiService::new(
        (
            shipments::ShipmentsApi { service: service.clone() },
            DlqApi { admin: admin.dead_letters, queues: orderflow_domain::RoutingKey::DELIVERY.to_vec() },
        ),
        "orderflow Delivery API",
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
async fn ready(service: Data<&DeliveryService>, health: Data<&HealthChecks>) -> poem::Response {
    use orderflow_ports::delivery::ShipmentQuery;
    let database = service.store.shipments(ShipmentQuery { limit: 1, ..Default::default() }).await.is_ok();
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
