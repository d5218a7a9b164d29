//! `/health/ready`: every dependency, checked concurrently.

use std::sync::Arc;

use orderflow_ports::system::HealthCheck;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};

/// Answers 200 `{"status":"ready","checks":{...}}` when every dependency answers, 503 otherwise, naming
/// each check so an operator sees which one is down.
pub async fn readiness(checks: &[Arc<dyn HealthCheck>]) -> Response {
    let results = futures::future::join_all(checks.iter().map(|c| async move { (c.name(), c.check().await) })).await;
    let mut body = serde_json::Map::new();
    for (name, ok) in &results {
        body.insert((*name).to_owned(), (*ok).into());
    }
    let ready = results.iter().all(|(_, ok)| *ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let json = serde_json::json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": body });
    poem::web::Json(json).with_status(status).into_response()
}
