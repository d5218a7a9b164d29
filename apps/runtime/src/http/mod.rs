//! The inbound HTTP adapter pieces both APIs share: RFC 9457 problems, strict JSON bodies that name the
//! field at fault, bearer authentication with scopes and rate limiting, correlation ids, metrics, cursors,
//! and the dead-letter admin endpoints.

mod auth;
mod cursor;
mod dlq;
mod document;
mod headers;
mod json;
mod limit;
mod observe;
mod problem;
mod ready;
mod refusals;
mod text;

pub use auth::{AuthContext, BearerAuth, OperationScopes, RateLimitPolicy, RateLimitQuota, RouteLimit, Scope};
pub use cursor::{IdCursor, page_limit};
pub use dlq::{DlqApi, admin_limit};
pub use document::exact_document;
pub use headers::SecurityHeaders;
pub use json::StrictJson;
pub use limit::BodyLimit;
pub use observe::{HttpMetrics, Observe, REQUEST_ID_HEADER, counted_as, into_problem};
pub use problem::Problem;
pub use ready::readiness;
pub use refusals::{Listing, Lookup, Problems, Refusals, Transition, TransitionWithBody};
pub use text::{FreeText, PathId, Pattern, Shape, Text, UuidShape, trimmed, with_pattern};
