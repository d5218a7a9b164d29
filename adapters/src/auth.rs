//! OAuth2 bearer-token verification against any standards-compliant issuer's JWKS, and a minimal
//! client-credentials authorization server for `orderflow dev` and tests.

mod dev_issuer;
mod jwks;
#[cfg(test)]
mod tests;

pub use dev_issuer::{DevClient, DevIssuer, DevIssuerError, RunningIssuer};
pub use jwks::{JwksVerifier, VerifierSettings};
