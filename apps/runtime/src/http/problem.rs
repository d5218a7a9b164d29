//! RFC 9457 problem details: every error either API returns, with a stable `type`.

use poem::http::{HeaderName, HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use serde::Serialize;

/// An `application/problem+json` response. `type` is a stable relative URI (`/problems/<slug>`) that
/// clients can switch on; `field` names the request field at fault when there is one. Boxed, so the
/// `Result`s that carry it stay small.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", .0.title, .0.detail)]
pub struct Problem(Box<Body>);

#[derive(Debug, Clone, Serialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(flatten)]
    extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    headers: Vec<(HeaderName, String)>,
}

impl Problem {
    /// A problem of type `/problems/{slug}`.
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(Body {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            extensions: serde_json::Map::new(),
            headers: Vec::new(),
        }))
    }

    /// 400: the request is malformed or a value is invalid.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation-error", "Invalid request", detail).with_field(field)
    }

    /// 404: no such resource.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{what} does not exist"))
    }

    /// 500 with a generic body; the cause is logged, never shown to the client.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "request failed unexpectedly");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Internal error",
            "the request could not be completed; it is safe to retry",
        )
    }

    /// 503: a dependency is unavailable.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %ErrorChain(cause), "dependency unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", "try again shortly")
            .with_header(header::RETRY_AFTER, "1")
    }

    /// Names the field at fault.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.0.field = (!field.is_empty() && field != ".").then_some(field);
        self
    }

    /// Adds an extension member (e.g. `skus` for stock problems).
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.0.extensions.insert(key.to_owned(), serde_json::to_value(value).unwrap_or_default());
        self
    }

    /// Adds a response header (e.g. `WWW-Authenticate`, `Retry-After`).
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.0.headers.push((name, value.into()));
        self
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl poem::error::ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status_code()
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        let mut response = Response::builder()
            .status(self.status_code())
            .content_type("application/problem+json")
            .body(body)
            .into_response();
        for (name, value) in &self.0.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                response.headers_mut().insert(name.clone(), value);
            }
        }
        response
    }
}

/// Formats an error with its whole `source()` chain, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
