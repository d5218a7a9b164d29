//! The inbound HTTP adapter pieces both APIs share: RFC 9457 problems, strict JSON bodies that name the
//! field at fault, bearer authentication with scopes and rate limiting, correlation ids, metrics, cursors,
//! and the dead-letter admin endpoints.

mod auth;
mod cursor;
mod dlq;
mod headers;
mod json;
mod limit;
mod observe;
mod problem;
mod ready;

pub use auth::{AuthContext, BearerAuth, RateLimitPolicy, RateLimitQuota, RouteLimit};
pub use cursor::{decode_cursor, encode_cursor, page_limit, parse_id};
pub use dlq::DlqApi;
pub use headers::SecurityHeaders;
pub use json::StrictJson;
pub use limit::BodyLimit;
pub use observe::{HttpMetrics, Observe, REQUEST_ID_HEADER, into_problem};
pub use problem::Problem;
pub use ready::readiness;
