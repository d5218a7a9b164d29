//! OAuth2 bearer-token verification against any standards-compliant issuer's JWKS, and (feature
//! `dev-issuer`) a minimal client-credentials authorization server for `orderflow dev` and tests.

#[cfg(feature = "dev-issuer")]
mod dev_issuer;
mod jwks;
#[cfg(all(test, feature = "dev-issuer"))]
mod tests;

#[cfg(feature = "dev-issuer")]
pub use dev_issuer::{DevClient, DevIssuer, DevIssuerError, RunningIssuer};
pub use jwks::{JwksVerifier, VerifierSettings};
