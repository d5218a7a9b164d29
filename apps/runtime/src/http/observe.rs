//! Per-request observability: a SERVER span continuing the caller's trace, a correlation id on every
//! request and log line, Prometheus metrics per operation, and the conversion of every error into a
//! problem.

use std::sync::Arc;
use std::time::Instant;

use orderflow_ports::trace;
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, IntoResponse, Middleware, Request, Response};
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

/// The middleware: correlation id, SERVER span, metrics, and problem+json for every error.
pub struct Observe {
    metrics: HttpMetrics,
    routes: Arc<Routes>,
}

impl Observe {
    /// Records in `metrics`; names the SERVER spans by the route a request matches: the paths of the
    /// OpenAPI document `spec` (JSON) and the `fixed` routes served beside it, each a path template
    /// (`/console/shipments/{id}`) with the methods it answers (`GET`, or `GET, POST`).
    pub fn new<P: AsRef<str>>(metrics: HttpMetrics, spec: &str, fixed: &[(P, &str)]) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut templates: Vec<(Vec<String>, String)> =
            fixed.iter().map(|(path, methods)| (segments(path.as_ref()), (*methods).to_owned())).collect();
        templates.extend(spec["paths"].as_object().into_iter().flatten().map(|(path, operations)| {
            let methods: Vec<String> =
                operations.as_object().into_iter().flat_map(|o| o.keys()).map(|m| m.to_uppercase()).collect();
            (segments(path), methods.join(", "))
        }));
        Self { metrics, routes: Arc::new(Routes { templates }) }
    }
}

/// The route templates a service serves with their methods, to name a request's span before the router
/// has seen it (a span's name cannot change once it started) and to say what a 405 allows.
struct Routes {
    templates: Vec<(Vec<String>, String)>,
}

/// A route template a request matched.
struct Matched<'a> {
    template: String,
    /// Its methods, as an `Allow` header lists them.
    methods: &'a str,
}

impl Routes {
    /// The template `path` matches (`/orders/{id}` for `/orders/0190…`), literal segments winning.
    fn matching(&self, path: &str) -> Option<Matched<'_>> {
        let path: Vec<&str> = path.split('/').collect();
        let fits = |template: &[String]| {
            template.len() == path.len()
                && template.iter().zip(&path).all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
        };
        let literal = |template: &[String]| template.iter().filter(|t| !t.starts_with('{')).count();
        let (template, methods) = self.templates.iter().filter(|(t, _)| fits(t)).max_by_key(|(t, _)| literal(t))?;
        Some(Matched { template: template.join("/"), methods })
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint { inner, metrics: self.metrics.clone(), routes: Arc::clone(&self.routes) }
    }
}

/// See [`Observe`].
pub struct ObserveEndpoint<E> {
    inner: E,
    metrics: HttpMetrics,
    routes: Arc<Routes>,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let request_id = correlation_id(&req);
        let method = req.method().to_string();
        let matched = self.routes.matching(req.uri().path());
        let route = matched.as_ref().map(|m| m.template.as_str());
        let name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.clone(),
        };
        let span = tracing::info_span!(
            "http",
            %request_id,
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            url.path = %req.uri().path(),
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        );
        trace::continue_trace(&span, req.header(trace::TRACEPARENT));
        let started = Instant::now();
        // The operation a request reached is on its response, or on its error when it was refused there
        // (a 401, a 404, a 422): a refusal counts under its operation, not as unmatched.
        let (mut response, operation) = match self.inner.call(req).instrument(span.clone()).await {
            Ok(output) => {
                let response = output.into_response();
                let operation = response.data::<OperationId>().map(|id| id.0);
                (response, operation)
            }
            Err(error) => {
                let operation = error.data::<OperationId>().map(|id| id.0);
                (span.in_scope(|| into_problem(error)), operation)
            }
        };
        let operation = operation.unwrap_or("unmatched");
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
        self.metrics.requests.with_label_values(&[operation, method.as_str(), status.as_str()]).inc();
        self.metrics.latency.with_label_values(&[operation, method.as_str()]).observe(started.elapsed().as_secs_f64());
        span.in_scope(|| tracing::info!(%operation, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis(), "request"));
        if let Ok(value) = request_id.parse() {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED
            && let Some(Ok(allowed)) = matched.map(|m| m.methods.parse())
        {
            response.headers_mut().insert(poem::http::header::ALLOW, allowed);
        }
        Ok(response)
    }
}

/// `endpoint`, counted in the HTTP metrics and named in the request log as `operation`, as an API
/// operation is by its id: for pages served beside the API, which would otherwise count as unmatched.
pub fn counted_as<E: Endpoint + 'static>(operation: &'static str, endpoint: E) -> impl Endpoint<Output = Response> {
    endpoint.after(move |result| async move {
        let mut result = result.map(IntoResponse::into_response);
        match &mut result {
            Ok(response) => response.set_data(OperationId(operation)),
            Err(error) => error.set_data(OperationId(operation)),
        }
        result
    })
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
        return Problem::invalid(param.name, readable(&param.reason)).as_response();
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

/// A parameter validator's refusal in words (`must be at least 1`) instead of the framework's
/// `verification failed. minimum(1, exclusive: false)`; any other reason as it is.
fn readable(reason: &str) -> String {
    let Some(rule) = reason.strip_prefix("verification failed. ") else { return reason.to_owned() };
    let bound = |name: &str| {
        let (n, exclusive) = rule.strip_prefix(name)?.strip_suffix(')')?.split_once(", exclusive: ")?;
        Some((n.to_owned(), exclusive == "true"))
    };
    match (bound("minimum("), bound("maximum(")) {
        (Some((n, false)), _) => format!("must be at least {n}"),
        (Some((n, true)), _) => format!("must be more than {n}"),
        (_, Some((n, false))) => format!("must be at most {n}"),
        (_, Some((n, true))) => format!("must be less than {n}"),
        _ => reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use poem::Route;
    use poem::http::StatusCode;
    use poem_openapi::param::Path;
    use poem_openapi::payload::PlainText;
    use poem_openapi::{OpenApi, OpenApiService};

    use super::*;

    struct Things;

    #[OpenApi]
    impl Things {
        #[oai(path = "/things/:id", method = "get", operation_id = "get_thing")]
        async fn get(&self, id: Path<u32>) -> poem::Result<PlainText<&'static str>> {
            match id.0 {
                1 => Ok(PlainText("one")),
                _ => Err(poem::Error::from_status(StatusCode::NOT_FOUND)),
            }
        }
    }

    #[tokio::test]
    async fn requests_count_under_their_operation_refused_or_not_and_pages_under_their_name() {
        let registry = prometheus::Registry::new();
        let metrics = HttpMetrics::register(&registry).expect("registers");
        let api = OpenApiService::new(Things, "things", "1");
        let spec = api.spec();
        let refusing =
            poem::endpoint::make(|_| async { Err::<String, _>(poem::Error::from_status(StatusCode::FORBIDDEN)) });
        let app = Route::new()
            .nest("/", api)
            .at("/page", counted_as("a_page", poem::endpoint::make_sync(|_| "a page")))
            .at("/refusing-page", counted_as("a_refusing_page", refusing))
            .with(Observe::new(metrics, &spec, &[] as &[(&str, &str)]));
        let client = poem::test::TestClient::new(app);

        for (path, status) in [
            ("/things/1", StatusCode::OK),
            ("/things/2", StatusCode::NOT_FOUND),
            ("/things/two", StatusCode::BAD_REQUEST),
            ("/page", StatusCode::OK),
            ("/refusing-page", StatusCode::FORBIDDEN),
            ("/nowhere", StatusCode::NOT_FOUND),
        ] {
            client.get(path).send().await.assert_status(status);
        }

        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encodes");
        for counted in [
            r#"{method="GET",operation="get_thing",status="200"} 1"#,
            r#"{method="GET",operation="get_thing",status="404"} 1"#,
            r#"{method="GET",operation="get_thing",status="400"} 1"#,
            r#"{method="GET",operation="a_page",status="200"} 1"#,
            r#"{method="GET",operation="a_refusing_page",status="403"} 1"#,
            r#"{method="GET",operation="unmatched",status="404"} 1"#,
        ] {
            assert!(text.contains(&format!("http_requests_total{counted}")), "no {counted} in\n{text}");
        }
    }

    #[test]
    fn a_validators_refusal_is_said_in_words() {
        assert_eq!(readable("verification failed. minimum(1, exclusive: false)"), "must be at least 1");
        assert_eq!(readable("verification failed. maximum(100, exclusive: false)"), "must be at most 100");
        assert_eq!(readable("verification failed. maximum(100, exclusive: true)"), "must be less than 100");
        assert_eq!(
            readable("failed to parse \"integer(int64)\": invalid digit"),
            "failed to parse \"integer(int64)\": invalid digit"
        );
    }

    #[test]
    fn a_request_is_named_by_the_route_it_matches_api_or_page_with_literal_segments_winning() {
        let spec = r#"{"paths": {"/orders": {"get": {}, "post": {}}, "/orders/{id}": {"get": {}}, "/orders/{id}/cancel": {"post": {}}, "/shipments/by-order/{order_id}": {"get": {}}, "/shipments/{id}": {"get": {}}}}"#;
        let metrics = HttpMetrics::register(&prometheus::Registry::new()).expect("registers");
        let pages = [("/health/live", "GET"), ("/console/shipments/{id}/ship", "POST")];
        let routes = Observe::new(metrics, spec, &pages).routes;

        let template = |path: &str| routes.matching(path).map(|m| m.template);
        assert_eq!(template("/orders").as_deref(), Some("/orders"));
        assert_eq!(template("/orders/0190aa").as_deref(), Some("/orders/{id}"));
        assert_eq!(template("/orders/0190aa/cancel").as_deref(), Some("/orders/{id}/cancel"));
        assert_eq!(template("/shipments/by-order/42").as_deref(), Some("/shipments/by-order/{order_id}"));
        assert_eq!(template("/health/live").as_deref(), Some("/health/live"));
        assert_eq!(template("/console/shipments/0190aa/ship").as_deref(), Some("/console/shipments/{id}/ship"));
        assert_eq!(routes.matching("/console/shipments/0190aa/ship").map(|m| m.methods), Some("POST"));
        assert_eq!(template("/orders/"), None, "an empty segment is no id");
        assert_eq!(template("/nowhere"), None);
        assert_eq!(routes.matching("/orders").map(|m| m.methods), Some("GET, POST"), "what a 405 allows");
    }
}
