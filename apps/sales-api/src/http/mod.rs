//! The Sales HTTP API: routes, documentation, health and metrics.

mod dto;
mod orders;
mod products;

use std::sync::Arc;

use orderflow_adapters::http::{AuthContext, BodyLimit, HttpMetrics, Observe, Problem};
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

/// Builds the whole HTTP application.
pub fn routes(
    service: SalesService,
    auth: AuthContext,
    metrics: HttpMetrics,
    registry: prometheus::Registry,
    server_url: String,
) -> impl poem::Endpoint<Output = poem::Response> {
    let api = OpenApiService::new(
        (orders::OrdersApi { service: service.clone() }, products::ProductsApi { service: service.clone() }),
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
async fn ready(service: Data<&SalesService>) -> poem::Response {
    use poem::IntoResponse;
    use poem::http::StatusCode;
    let store = service.store.products(1, None).await.is_ok();
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
