//! The Delivery HTTP API: routes, documentation, health and metrics.

mod shipments;

use std::sync::Arc;

use orderflow_adapters::http::{AuthContext, BodyLimit, HttpMetrics, Observe};
use poem::web::Data;
use poem::{EndpointExt, IntoEndpoint, Route, handler};
use poem_openapi::OpenApiService;

use crate::service::DeliveryService;

/// Request bodies above this are refused with 413 before they are parsed.
const BODY_LIMIT: usize = 64 * 1024;

/// Builds the whole HTTP application.
pub fn routes(
    service: DeliveryService,
    auth: AuthContext,
    metrics: HttpMetrics,
    registry: prometheus::Registry,
    server_url: String,
) -> impl poem::Endpoint<Output = poem::Response> {
    let api = OpenApiService::new(
        shipments::ShipmentsApi { service: service.clone() },
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
        .at("/health/ready", ready.data(service))
        .at("/metrics", metrics_endpoint.data(Arc::new(registry)))
        .data(auth)
        .with(Observe { metrics })
        .into_endpoint()
}

#[handler]
fn live() -> &'static str {
    "ok"
}

#[handler]
async fn ready(service: Data<&DeliveryService>) -> poem::Response {
    use orderflow_ports::delivery::ShipmentQuery;
    use poem::IntoResponse;
    use poem::http::StatusCode;
    let store = service.store.shipments(ShipmentQuery { limit: 1, ..Default::default() }).await.is_ok();
    let body =
        serde_json::json!({ "status": if store { "ready" } else { "unavailable" }, "checks": { "store": store } });
    let status = if store { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    poem::web::Json(body).with_status(status).into_response()
}

#[handler]
fn metrics_endpoint(registry: Data<&Arc<prometheus::Registry>>) -> poem::Response {
    use poem::IntoResponse;
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default();
    text.with_content_type("text/plain; version=0.0.4").into_response()
}
