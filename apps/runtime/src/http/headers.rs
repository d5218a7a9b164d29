//! Security headers on every response: no MIME sniffing, no framing, no referrer, nothing stored by caches,
//! and a Content-Security-Policy that lets an API response do nothing at all if a browser ever renders it.
//!
//! The Swagger UI under `/docs` is an HTML page with its script and styles inline (poem-openapi embeds them),
//! so it keeps the headers that cannot hurt it but gets neither the API's CSP (which would block those inline
//! assets) nor `no-store` (it is static for a given build).

use poem::http::HeaderValue;
use poem::http::header::{self, HeaderName};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// Where the interactive documentation is served.
const DOCS_PREFIX: &str = "/docs";

/// Headers every response gets.
const ALWAYS: [(HeaderName, &str); 3] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Headers every response but the documentation's gets.
const API_ONLY: [(HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-store"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
];

/// The middleware. Wrap it outermost (after `Observe`), so problems rendered there get the headers too.
/// A header the handler set itself (say, its own `Cache-Control`) is left as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecurityHeaders;

impl<E: Endpoint> Middleware<E> for SecurityHeaders {
    type Output = SecurityHeadersEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        SecurityHeadersEndpoint { inner }
    }
}

/// See [`SecurityHeaders`].
pub struct SecurityHeadersEndpoint<E> {
    inner: E,
}

fn is_docs(path: &str) -> bool {
    path == DOCS_PREFIX || path.starts_with("/docs/")
}

impl<E: Endpoint> Endpoint for SecurityHeadersEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let docs = is_docs(req.uri().path());
        let mut response = match self.inner.call(req).await {
            Ok(output) => output.into_response(),
            Err(error) => error.into_response(),
        };
        let headers = response.headers_mut();
        let extra: &[(HeaderName, &str)] = if docs { &[] } else { &API_ONLY };
        for (name, value) in ALWAYS.iter().chain(extra) {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), HeaderValue::from_static(value));
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use poem::http::StatusCode;
    use poem::test::TestClient;
    use poem::{EndpointExt, Route, handler};

    use super::*;

    #[handler]
    fn api() -> &'static str {
        "{}"
    }

    #[handler]
    fn cached() -> Response {
        Response::builder().header(header::CACHE_CONTROL, "max-age=60").body("x")
    }

    fn app() -> impl Endpoint {
        Route::new().at("/orders", api).at("/cached", cached).at("/docs", api).with(SecurityHeaders)
    }

    #[tokio::test]
    async fn api_responses_get_every_security_header() {
        let response = TestClient::new(app()).get("/orders").send().await;
        response.assert_status_is_ok();
        response.assert_header("x-content-type-options", "nosniff");
        response.assert_header("x-frame-options", "DENY");
        response.assert_header("referrer-policy", "no-referrer");
        response.assert_header("cache-control", "no-store");
        response.assert_header_exist("content-security-policy");
    }

    #[tokio::test]
    async fn errors_get_them_too() {
        let response = TestClient::new(app()).get("/nowhere").send().await;
        response.assert_status(StatusCode::NOT_FOUND);
        response.assert_header("x-content-type-options", "nosniff");
        response.assert_header("cache-control", "no-store");
    }

    #[tokio::test]
    async fn the_docs_get_no_csp_and_no_no_store() {
        let response = TestClient::new(app()).get("/docs").send().await;
        response.assert_header("x-content-type-options", "nosniff");
        response.assert_header("x-frame-options", "DENY");
        response.assert_header_is_not_exist("content-security-policy");
        response.assert_header_is_not_exist("cache-control");
    }

    #[tokio::test]
    async fn a_handlers_own_header_is_kept() {
        let response = TestClient::new(app()).get("/cached").send().await;
        response.assert_header("cache-control", "max-age=60");
        response.assert_header("x-frame-options", "DENY");
    }
}
