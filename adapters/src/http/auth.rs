//! Bearer authentication for the APIs: verifies the token, applies the per-client rate limit, and lets
//! each operation demand its scope.

use std::sync::Arc;

use orderflow_ports::auth::{AuthError, Principal, TokenVerifier};
use orderflow_ports::rate_limit::{RateDecision, RateLimiter};
use poem::Request;
use poem::http::{StatusCode, header};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

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
    /// Behaviour when the limiter fails.
    pub policy: RateLimitPolicy,
}

/// An authenticated caller. Every operation but health, metrics and docs takes one.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub Principal);

impl BearerAuth {
    /// The caller, if the token grants `scope`.
    ///
    /// # Errors
    /// 403 `insufficient_scope` otherwise.
    pub fn require(&self, scope: &str) -> Result<&Principal, Problem> {
        if self.0.has_scope(scope) {
            Ok(&self.0)
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
                format!("this operation needs the scope {scope}"),
            )
            .with_header(header::WWW_AUTHENTICATE, format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")))
        }
    }
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
    if let Some(limiter) = &context.limiter {
        match limiter.check(&principal.client_id).await {
            Ok(RateDecision::Allowed { .. }) => {}
            Ok(RateDecision::Limited { retry_after }) => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0);
                return Err(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    format!("client {} is over its rate limit", principal.client_id),
                )
                .with_header(header::RETRY_AFTER, format!("{seconds}"))
                .into());
            }
            Err(error) if context.policy == RateLimitPolicy::Deny => return Err(Problem::unavailable(&error).into()),
            Err(error) => tracing::warn!(error = %error, "rate limiter unavailable; allowing the request"),
        }
    }
    Ok(principal)
}

#[derive(Debug, thiserror::Error)]
#[error("the route has no AuthContext attached")]
struct MissingAuthContext;
