//! The bearer-token verifier port and the identity it yields.

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::BoxError;

/// Who is calling and what they may do, as a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token subject.
    pub subject: String,
    /// The OAuth2 client (`client_id`, else `azp`, else the subject): the unit of rate limiting and of
    /// idempotency-key scoping.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed, badly signed, expired, not yet valid, or for another issuer or audience.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The issuer's keys could not be fetched; the token may be fine.
    #[error("the token issuer is unreachable")]
    Unexpected(#[source] BoxError),
}

/// Verifies bearer tokens.
#[async_trait]
pub trait TokenVerifier: Send + Sync {
    /// Checks signature, algorithm, issuer, audience, expiry and not-before, and extracts the principal.
    ///
    /// # Errors
    /// - [`AuthError::InvalidToken`] for any token that must be refused, with a reason for the logs;
    /// - [`AuthError::Unexpected`] when the keys needed to decide could not be fetched.
    async fn verify(&self, token: &str) -> Result<Principal, AuthError>;
}
