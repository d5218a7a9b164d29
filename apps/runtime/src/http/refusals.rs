//! The failures an operation documents: every status it can answer with a problem, each with the
//! `application/problem+json` schema, so a client generated from the OpenAPI document can type its errors.

use std::marker::PhantomData;

use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;

use super::Problem;

/// The statuses one kind of operation refuses with, besides those of [`AUTHENTICATED`]. Declare sets with
/// [`refusals!`](crate::refusals).
pub trait Refusals: Send + Sync + 'static {
    /// The statuses, ascending.
    const STATUSES: &'static [u16];
}

/// What any operation behind a bearer token can answer: no valid token, the wrong scope, over the rate
/// limit, an unexpected failure, a dependency down (or Sales overloaded).
pub const AUTHENTICATED: &[u16] = &[401, 403, 429, 500, 503];

/// Declares a [`Refusals`] set: `refusals!(/** doc */ Lookup: 400, 404);`.
#[macro_export]
macro_rules! refusals {
    ($(#[$doc:meta])* $name:ident: $($status:literal),* $(,)?) => {
        $(#[$doc])*
        pub enum $name {}

        impl $crate::http::Refusals for $name {
            const STATUSES: &'static [u16] = &[$($status),*];
        }
    };
}

refusals!(
    /// Reading one resource by a key in the path: a malformed key, or none such.
    Lookup: 400, 404
);
refusals!(
    /// Reading a page of a list: a malformed filter, page size or cursor.
    Listing: 400
);
refusals!(
    /// Moving a resource on in its lifecycle: a malformed key, none such, or not allowed in its state.
    Transition: 400, 404, 409
);
refusals!(
    /// A [`Transition`] that takes a JSON body.
    TransitionWithBody: 400, 404, 409, 413, 415
);

/// A [`Problem`] from an operation whose document lists the statuses of `R` and [`AUTHENTICATED`]. Any
/// problem converts into it, so handlers keep using `?`; the test of the documents (the API fuzzing in the
/// test command) fails on a status answered but not listed.
pub struct Problems<R>(Problem, PhantomData<R>);

impl<R> From<Problem> for Problems<R> {
    fn from(problem: Problem) -> Self {
        Self(problem, PhantomData)
    }
}

impl<R> From<Problems<R>> for poem::Error {
    fn from(problems: Problems<R>) -> Self {
        problems.0.into()
    }
}

impl<R: Refusals> ApiResponse for Problems<R> {
    fn meta() -> MetaResponses {
        let mut statuses: Vec<u16> = R::STATUSES.iter().chain(AUTHENTICATED).copied().collect();
        statuses.sort_unstable();
        statuses.dedup();
        MetaResponses { responses: statuses.into_iter().map(response).collect() }
    }

    fn register(registry: &mut Registry) {
        ProblemDocument::register(registry);
    }
}

fn response(status: u16) -> MetaResponse {
    MetaResponse {
        description: description(status),
        status: Some(status),
        status_range: None,
        content: vec![MetaMediaType {
            content_type: "application/problem+json",
            schema: ProblemDocument::schema_ref(),
        }],
        headers: headers(status),
    }
}

fn description(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed or a value is invalid (`validation-error`); `field` names the field at fault.",
        401 => "No valid bearer token (`unauthorized`).",
        403 => "The token lacks the scope this operation needs (`insufficient-scope`).",
        404 => "No such resource (`not-found`).",
        409 => {
            "The resource's current state does not allow it (`transition-not-allowed`, `concurrent-change`, \
             `insufficient-stock`, `idempotency-key-in-flight`, `stock-below-reserved`)."
        }
        413 => "The request body is larger than the service accepts (`payload-too-large`).",
        415 => "The request body is not JSON (`unsupported-media-type`).",
        422 => {
            "Well-formed, but refused by a business rule (`unknown-sku`, `mixed-currencies`, \
             `total-too-large`, `idempotency-key-reused`)."
        }
        429 => "The client is over its rate limit (`rate-limited`).",
        500 => "An unexpected failure (`internal-error`); it is safe to retry.",
        503 => "A dependency is unavailable (`unavailable`) or Sales is overloaded (`overloaded`); retry later.",
        _ => "A problem.",
    }
}

fn headers(status: u16) -> Vec<MetaHeader> {
    let header = |name: &str, description: &str, ty: &'static str| MetaHeader {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        required: true,
        deprecated: false,
        schema: MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema::new(ty))),
    };
    match status {
        401 | 403 => vec![header("WWW-Authenticate", "The bearer challenge, with the error (RFC 6750).", "string")],
        429 => vec![
            header("Retry-After", "Seconds until the next request is allowed.", "integer"),
            header("RateLimit-Remaining", "Requests left now: 0.", "integer"),
            header("RateLimit-Reset", "Seconds until the limit resets.", "integer"),
        ],
        503 => vec![header("Retry-After", "Seconds to wait before retrying.", "integer")],
        _ => Vec::new(),
    }
}

/// The body of every problem (RFC 9457), as documented; [`Problem`] writes it. Problems may carry more
/// members (e.g. `skus` for stock problems).
#[derive(poem_openapi::Object)]
#[oai(rename = "Problem")]
struct ProblemDocument {
    /// A stable relative URI naming the kind of problem, e.g. `/problems/validation-error`.
    #[oai(rename = "type")]
    kind: String,
    /// A short summary of the kind.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong in this request.
    detail: String,
    /// The request field at fault, e.g. `lines[2].quantity` or `Idempotency-Key`.
    #[oai(skip_serializing_if_is_none)]
    field: Option<String>,
}
