//! Bearer authentication for the APIs: verifies the token, applies the per-client rate limit, and demands
//! the scope the operation's document declares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orderflow_ports::auth::{AuthError, Principal, TokenVerifier};
use orderflow_ports::rate_limit::{RateDecision, RateLimiter};
use poem::http::{HeaderName, StatusCode, header};
use poem::{PathPattern, Request};
use poem_openapi::auth::Bearer;
use poem_openapi::{OAuthScopes, SecurityScheme};

use super::Problem;

/// What to do when the rate limiter cannot decide (its store is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitPolicy {
    /// Let the request through (the default: availability over strictness).
    #[default]
    Allow,
    /// Refuse with 503.
    Deny,
}

/// Shared state the bearer checker needs; attached to the route with `.data(...)`.
#[derive(Clone)]
pub struct AuthContext {
    /// Verifies tokens.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Limits requests per client; `None` when rate limiting is off.
    pub limiter: Option<Arc<dyn RateLimiter>>,
    /// Tighter limits on some kinds of request, per client, on top of `limiter`.
    pub routes: Vec<RouteLimit>,
    /// Behaviour when the limiter fails.
    pub policy: RateLimitPolicy,
}

/// A per-client limit on one kind of request — a method and a path pattern — counted on its own, on top of
/// the per-client limit (e.g. `POST /orders` at 60/min while reads get 600/min).
#[derive(Clone)]
pub struct RouteLimit {
    /// The method (`POST`), or `*` for any.
    pub method: String,
    /// The path, where `*` stands for one segment (`/orders/*/cancel`).
    pub path: String,
    /// Its own limiter, with its own counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// The limiter's burst, announced as `RateLimit-Limit` on a 429.
    pub burst: u32,
}

impl RouteLimit {
    /// Whether a request is of this kind.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let method_matches = self.method == "*" || self.method.eq_ignore_ascii_case(method);
        let mut wanted = self.path.trim_end_matches('/').split('/');
        let mut given = path.trim_end_matches('/').split('/');
        method_matches
            && loop {
                match (wanted.next(), given.next()) {
                    (None, None) => break true,
                    (Some(w), Some(g)) if w == "*" || w == g => {}
                    _ => break false,
                }
            }
    }
}

/// The limiter's burst (how many requests a client may make at once), for the `RateLimit-Limit` header of a
/// 429. Optional and separate from [`AuthContext`]: attach it with `.data(RateLimitQuota { burst })` next to
/// the context; without it a 429 still carries `Retry-After`, `RateLimit-Remaining` and `RateLimit-Reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitQuota {
    /// `RATE_LIMIT_BURST`.
    pub burst: u32,
}

/// The scopes operations need. Each operation declares its own once, in the document
/// (`#[oai(scope = "Scope::OrdersRead")]` on its `BearerAuth`); the checker demands what the document says
/// ([`OperationScopes`]), so what an operation documents is what it enforces.
#[derive(Debug, Clone, Copy, OAuthScopes)]
pub enum Scope {
    /// Read orders and the catalogue.
    #[oai(rename = "orders:read")]
    OrdersRead,
    /// Place and cancel orders.
    #[oai(rename = "orders:write")]
    OrdersWrite,
    /// Read shipments.
    #[oai(rename = "shipments:read")]
    ShipmentsRead,
    /// Ship and deliver.
    #[oai(rename = "shipments:write")]
    ShipmentsWrite,
    /// Manage the catalogue and the dead-letter queues.
    #[oai(rename = "admin")]
    Admin,
}

/// An authenticated caller: a bearer JWT from the configured issuer (its discovery document is the
/// scheme's `openIdConnectUrl`, filled in when the service starts). Every operation but health, metrics
/// and docs takes one; its checker also refuses a token without the operation's scope (403).
#[derive(SecurityScheme)]
#[oai(ty = "openid_connect", openid_connect_url = "/.well-known/openid-configuration", checker = "authenticate")]
pub struct BearerAuth(pub Principal);

/// The scopes each operation of a service's OpenAPI document demands, by method and path template: what
/// the bearer checker enforces, attached to the routes with `.data(Arc::new(...))`.
#[derive(Debug)]
pub struct OperationScopes {
    /// (`GET`, `/orders/{}`) → the alternatives of the operation's `security`, each the scopes it needs
    /// together (OpenAPI: any one requirement object satisfies it).
    operations: HashMap<(String, String), Vec<Vec<String>>>,
}

impl OperationScopes {
    /// Reads the `security` of every operation of `document` (the OpenAPI document as JSON); an operation
    /// without one demands no scope. A document that is not JSON lists no operation, so every request is
    /// then refused as reaching an unknown one.
    pub fn from_document(document: &str) -> Self {
        let document: serde_json::Value = serde_json::from_str(document).unwrap_or_default();
        let mut operations = HashMap::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let alternatives = operation["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|requirement| {
                        let scopes = requirement.as_object().into_iter().flat_map(|schemes| schemes.values());
                        scopes
                            .flat_map(|s| s.as_array().into_iter().flatten())
                            .filter_map(|s| s.as_str())
                            .map(str::to_owned)
                            .collect()
                    })
                    .collect();
                operations.insert((method.to_uppercase(), shape(path)), alternatives);
            }
        }
        Self { operations }
    }

    /// Whether `principal` may call the operation matched as `pattern` (poem's `/orders/:param0`): it may
    /// when it holds every scope of one alternative; otherwise the refusal names the first alternative's.
    fn admit(&self, method: &str, pattern: &str, principal: &Principal) -> Result<(), Refusal> {
        let Some(alternatives) = self.operations.get(&(method.to_owned(), shape(pattern))) else {
            return Err(Refusal::UnknownOperation(format!("{method} {pattern}")));
        };
        let granted = |scopes: &Vec<String>| scopes.iter().all(|s| principal.has_scope(s));
        match alternatives.first() {
            Some(first) if !alternatives.iter().any(granted) => Err(Refusal::Scope(first.join(" "))),
            _ => Ok(()),
        }
    }
}

/// A path template with its parameters unnamed, `/orders/{}/cancel`: the document names them
/// (`/orders/{id}/cancel`), the router that matched a request by position (`/orders/:param0/cancel`), and
/// two routes cannot differ by names alone.
fn shape(template: &str) -> String {
    let segments = template.split('/').map(|s| if s.starts_with(':') || s.starts_with('{') { "{}" } else { s });
    segments.collect::<Vec<_>>().join("/")
}

/// Why the checker refuses a verified token.
enum Refusal {
    /// The scopes, space-separated as a `WWW-Authenticate` challenge lists them.
    Scope(String),
    /// The request reached an operation the document does not list: a wiring fault, never the client's.
    UnknownOperation(String),
}

/// The 403 a token without the operation's scope gets.
fn insufficient_scope(scope: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "insufficient-scope",
        "Insufficient scope",
        format!("this operation needs the scope {scope}"),
    )
    .with_header(header::WWW_AUTHENTICATE, format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""))
}

/// The 401 every authentication failure gets.
pub(super) fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
        .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
}

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let Some(context) = req.data::<AuthContext>() else {
        return Err(Problem::internal(&MissingAuthContext).into());
    };
    let principal = match context.verifier.verify(&bearer.token).await {
        Ok(principal) => principal,
        Err(AuthError::InvalidToken(reason)) => {
            tracing::info!(%reason, "token refused");
            return Err(unauthorized("the bearer token is invalid or expired").into());
        }
        Err(error) => return Err(Problem::unavailable(&error).into()),
    };
    let client = context.limiter.iter().map(|l| (l, req.data::<RateLimitQuota>().map(|q| q.burst)));
    let routes = context.routes.iter().filter(|r| r.matches(req.method().as_str(), req.uri().path()));
    for (limiter, burst) in client.chain(routes.map(|r| (&r.limiter, Some(r.burst)))) {
        match limiter.check(&principal.client_id).await {
            Ok(RateDecision::Allowed { .. }) => {}
            Ok(RateDecision::Limited { retry_after }) => {
                orderflow_adapters::metrics::RATE_LIMIT.with_label_values(&["limited"]).inc();
                return Err(rate_limited(&principal.client_id, retry_after, burst).into());
            }
            Err(error) if context.policy == RateLimitPolicy::Deny => {
                orderflow_adapters::metrics::RATE_LIMIT.with_label_values(&["unavailable_denied"]).inc();
                return Err(Problem::unavailable(&error).into());
            }
            Err(error) => {
                orderflow_adapters::metrics::RATE_LIMIT.with_label_values(&["unavailable_allowed"]).inc();
                tracing::warn!(error = %error, "rate limiter unavailable; allowing the request");
            }
        }
    }
    let scopes = req.data::<Arc<OperationScopes>>().ok_or_else(|| Problem::internal(&MissingAuthContext))?;
    let pattern = req.data::<PathPattern>().map_or("", |p| &p.0);
    match scopes.admit(req.method().as_str(), pattern, &principal) {
        Ok(()) => Ok(principal),
        Err(Refusal::Scope(scope)) => Err(insufficient_scope(&scope).into()),
        Err(Refusal::UnknownOperation(operation)) => Err(Problem::internal(&UnknownOperation(operation)).into()),
    }
}

/// The 429: `Retry-After` (whole seconds, at least 1) and the `RateLimit-*` headers of the IETF draft
/// "RateLimit header fields for HTTP": no request left, and when the next one is allowed.
fn rate_limited(client_id: &str, retry_after: Duration, burst: Option<u32>) -> Problem {
    // Whole seconds, rounded up: a client that waits exactly this long is let through.
    let seconds = retry_after.as_micros().div_ceil(1_000_000).max(1);
    let mut problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("client {client_id} is over its rate limit"),
    )
    .with_header(header::RETRY_AFTER, seconds.to_string())
    .with_header(HeaderName::from_static("ratelimit-remaining"), "0")
    .with_header(HeaderName::from_static("ratelimit-reset"), seconds.to_string());
    if let Some(burst) = burst {
        problem = problem.with_header(HeaderName::from_static("ratelimit-limit"), burst.to_string());
    }
    problem
}

#[derive(Debug, thiserror::Error)]
#[error("the route has no AuthContext or OperationScopes attached")]
struct MissingAuthContext;

#[derive(Debug, thiserror::Error)]
#[error("the OpenAPI document has no operation {0}, so its scopes are unknown")]
struct UnknownOperation(String);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use async_trait::async_trait;
    use poem::error::ResponseError;
    use poem::http::Method;
    use poem::test::TestClient;
    use poem::{EndpointExt, Route};
    use poem_openapi::param::Path;
    use poem_openapi::payload::PlainText;
    use poem_openapi::{OpenApi, OpenApiService};

    use super::*;

    /// Takes the token for the comma-separated scopes it grants.
    struct ScopesAsToken;

    #[async_trait]
    impl TokenVerifier for ScopesAsToken {
        async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
            let scopes = token.split(',').map(str::to_owned).collect();
            Ok(Principal { subject: "s".into(), client_id: "c".into(), scopes })
        }
    }

    struct Things;

    #[OpenApi]
    impl Things {
        #[oai(path = "/things/:id", method = "get")]
        async fn get(
            &self,
            #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
            id: Path<String>,
        ) -> PlainText<String> {
            PlainText(id.0)
        }

        #[oai(path = "/things/:id/archive", method = "post")]
        async fn archive(
            &self,
            #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
            id: Path<String>,
        ) -> PlainText<String> {
            PlainText(id.0)
        }
    }

    fn principal(scopes: &[&str]) -> Principal {
        let scopes: BTreeSet<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        Principal { subject: "s".into(), client_id: "c".into(), scopes }
    }

    #[tokio::test]
    async fn an_operation_demands_exactly_the_scope_its_document_declares() {
        let api = OpenApiService::new(Things, "things", "1");
        let scopes = Arc::new(OperationScopes::from_document(&api.spec()));
        let context = AuthContext {
            verifier: Arc::new(ScopesAsToken),
            limiter: None,
            routes: Vec::new(),
            policy: RateLimitPolicy::Allow,
        };
        // Served as the services serve their API: nested at the root.
        let client = TestClient::new(Route::new().nest("/", api).data(context).data(scopes));

        for (method, path, token, demanded) in [
            (Method::GET, "/things/1", "orders:read", None),
            (Method::GET, "/things/1", "orders:write,admin", Some("orders:read")),
            (Method::POST, "/things/1/archive", "admin", None),
            (Method::POST, "/things/1/archive", "orders:read", Some("admin")),
        ] {
            let response =
                client.request(method.clone(), path).header("authorization", format!("Bearer {token}")).send().await;
            let case = format!("{method} {path} with {token}");
            match demanded {
                None => response.assert_status_is_ok(),
                Some(scope) => {
                    response.assert_status(StatusCode::FORBIDDEN);
                    response.assert_header(
                        "www-authenticate",
                        format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
                    );
                    let body = response.0.into_body().into_string().await.expect("a body");
                    assert!(body.contains("insufficient-scope") && body.contains(scope), "{case}: {body}");
                }
            }
        }
        client.get("/things/1").send().await.assert_status(StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn any_one_security_requirement_of_an_operation_satisfies_it_and_none_means_no_scope() {
        let document = r#"{"paths": {
            "/a/{id}": {"post": {"security": [{"BearerAuth": ["x", "y"]}, {"BearerAuth": ["z"]}]}},
            "/open": {"get": {}}
        }}"#;
        let scopes = OperationScopes::from_document(document);
        let allowed = |method: &str, pattern: &str, held: &[&str]| scopes.admit(method, pattern, &principal(held));

        assert!(allowed("POST", "/a/:id", &["x", "y"]).is_ok());
        assert!(allowed("POST", "/a/:id", &["z"]).is_ok());
        assert!(matches!(allowed("POST", "/a/:id", &["x"]), Err(Refusal::Scope(s)) if s == "x y"));
        assert!(allowed("GET", "/open", &[]).is_ok());
        assert!(matches!(allowed("GET", "/a/:id", &["x", "y", "z"]), Err(Refusal::UnknownOperation(_))));
        assert!(matches!(allowed("GET", "/nowhere", &["x"]), Err(Refusal::UnknownOperation(_))));
        assert!(matches!(
            OperationScopes::from_document("not json").admit("GET", "/open", &principal(&[])),
            Err(Refusal::UnknownOperation(_))
        ));
    }

    fn header_of(problem: &Problem, name: &str) -> Option<String> {
        problem.as_response().headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    #[test]
    fn a_429_says_when_to_retry_and_how_much_is_left() {
        let problem = rate_limited("c", Duration::from_millis(900), Some(5));
        assert_eq!(problem.status_code(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header_of(&problem, "retry-after").as_deref(), Some("1"));
        assert_eq!(header_of(&problem, "ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(header_of(&problem, "ratelimit-remaining").as_deref(), Some("0"));
        assert_eq!(header_of(&problem, "ratelimit-reset").as_deref(), Some("1"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        for (wait, expected) in
            [(Duration::ZERO, "1"), (Duration::from_millis(1000), "1"), (Duration::from_millis(1001), "2")]
        {
            let problem = rate_limited("c", wait, None);
            assert_eq!(header_of(&problem, "retry-after").as_deref(), Some(expected), "{wait:?}");
            assert_eq!(header_of(&problem, "ratelimit-reset").as_deref(), Some(expected), "{wait:?}");
        }
    }

    #[test]
    fn without_a_quota_the_limit_is_not_guessed() {
        let problem = rate_limited("c", Duration::from_millis(500), None);
        assert_eq!(header_of(&problem, "ratelimit-limit"), None);
        assert_eq!(header_of(&problem, "ratelimit-remaining").as_deref(), Some("0"));
    }

    #[test]
    fn a_route_limit_matches_its_method_and_path_pattern_only() {
        let limit = |method: &str, path: &str| RouteLimit {
            method: method.to_owned(),
            path: path.to_owned(),
            limiter: Arc::new(orderflow_adapters::memory::InMemoryRateLimiter::new(60, 1)),
            burst: 1,
        };
        let cancel = limit("POST", "/orders/*/cancel");
        assert!(cancel.matches("POST", "/orders/0191/cancel"));
        assert!(cancel.matches("post", "/orders/0191/cancel/"));
        assert!(!cancel.matches("GET", "/orders/0191/cancel"));
        assert!(!cancel.matches("POST", "/orders/0191"));
        assert!(!cancel.matches("POST", "/orders/0191/cancel/now"));
        let any_orders = limit("*", "/orders");
        assert!(any_orders.matches("GET", "/orders"));
        assert!(any_orders.matches("POST", "/orders"));
        assert!(!any_orders.matches("GET", "/orders/0191"));
    }
}
