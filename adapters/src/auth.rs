//! OAuth2 bearer-token verification against any standards-compliant issuer's JWKS.

mod jwks;

pub use jwks::{JwksVerifier, VerifierSettings};
