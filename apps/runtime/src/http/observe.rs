//! Per-request observability: a correlation id on every request and log line, Prometheus metrics per
//! operation, and the conversion of every error into a problem.

use std::time::Instant;

use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::OperationId;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::Instrument;

use super::Problem;
use super::auth::unauthorized;

/// The header carrying the correlation id in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// HTTP metrics of one service.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    /// Registers the HTTP metrics in `registry`.
    ///
    /// # Errors
    /// When a metric with the same name is already registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by operation and status"),
            &["operation", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by operation"),
            &["operation", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self { requests, latency })
    }
}

/// The middleware: correlation id, span, metrics, and problem+json for every error.
pub struct Observe {
    /// Where to record.
    pub metrics: HttpMetrics,
}

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint { inner, metrics: self.metrics.clone() }
    }
}

/// See [`Observe`].
pub struct ObserveEndpoint<E> {
    inner: E,
    metrics: HttpMetrics,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let request_id = correlation_id(&req);
        let method = req.method().to_string();
        let span = tracing::info_span!("http", %request_id, %method, path = %req.uri().path());
        let started = Instant::now();
        let mut response = match self.inner.call(req).instrument(span.clone()).await {
            Ok(output) => output.into_response(),
            Err(error) => span.in_scope(|| into_problem(error)),
        };
        let operation = response.data::<OperationId>().map_or("unmatched", |id| id.0);
        let status = response.status();
        self.metrics.requests.with_label_values(&[operation, method.as_str(), status.as_str()]).inc();
        self.metrics.latency.with_label_values(&[operation, method.as_str()]).observe(started.elapsed().as_secs_f64());
        span.in_scope(|| tracing::info!(%operation, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis(), "request"));
        if let Ok(value) = request_id.parse() {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }
}

/// The request's correlation id: `X-Request-Id` when the client sent a sane one, else the trace id of
/// its `traceparent`, else a new one.
fn correlation_id(req: &Request) -> String {
    let sane = |v: &&str| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic());
    if let Some(id) = req.header(REQUEST_ID_HEADER).filter(sane) {
        return id.to_owned();
    }
    req.header("traceparent")
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|trace| trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// Renders any error as problem+json: our own problems as they are, the framework's (bad path
/// parameter, missing token, wrong content type, body too large, unknown route) with the right status
/// and the field at fault.
pub fn into_problem(error: poem::Error) -> Response {
    use poem::error::ResponseError;
    if let Some(problem) = error.downcast_ref::<Problem>() {
        return problem.as_response();
    }
    if let Some(param) = error.downcast_ref::<poem_openapi::error::ParseParamError>() {
        return Problem::invalid(param.name, param.reason.clone()).as_response();
    }
    if error.is::<poem_openapi::error::AuthorizationError>() {
        return unauthorized("a bearer token is required").as_response();
    }
    let status = error.status();
    let problem = match status {
        StatusCode::NOT_FOUND => Problem::new(status, "not-found", "Not found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => {
            Problem::new(status, "method-not-allowed", "Method not allowed", error.to_string())
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(status, "payload-too-large", "Payload too large", "the request body is too large")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Problem::new(status, "unsupported-media-type", "Unsupported media type", error.to_string())
        }
        s if s.is_client_error() => Problem::new(s, "bad-request", "Bad request", error.to_string()),
        _ => Problem::internal(&error),
    };
    problem.as_response()
}
