//! [`JwksVerifier`]: verifies JWT access tokens with the keys the issuer publishes through OIDC discovery.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orderflow_ports::auth::{AuthError, Principal, TokenVerifier};
use orderflow_ports::error_chain;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

/// The only algorithms we accept. All are asymmetric, so nothing published in a JWKS can be used to mint tokens
/// (the HS256-with-the-public-key confusion attack), and `none` is not even representable in `jsonwebtoken`.
const ALLOWED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::PS256];

/// Tuning for [`JwksVerifier`]; [`Default`] gives the values we run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierSettings {
    /// Clock skew tolerated between us and the issuer when checking `exp` and `nbf` (default 30 s).
    pub leeway: Duration,
    /// The least time between two JWKS fetches caused by unknown `kid`s (default 10 s), so tokens with random
    /// `kid`s cannot make us hammer the issuer. A key rotated in less than this after our last fetch is
    /// refused until the interval has passed.
    pub min_refresh_interval: Duration,
    /// Timeout of each HTTP request to the issuer (default 5 s); a hung issuer must not hang our requests.
    pub http_timeout: Duration,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(10),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Verifies bearer JWTs issued by one OAuth2/OIDC issuer for one audience.
///
/// Keys come from the issuer's JWKS, found through `{issuer}/.well-known/openid-configuration`. Nothing is
/// fetched until the first token arrives; keys are then cached by `kid` and the JWKS is fetched again only when
/// a token names an unknown `kid`, at most once per [`VerifierSettings::min_refresh_interval`]. Concurrent
/// requests that miss the cache wait for a single fetch.
pub struct JwksVerifier {
    /// Compared exactly with the `iss` claim and with the discovery document's `issuer`.
    issuer: String,
    audience: String,
    settings: VerifierSettings,
    http: reqwest::Client,
    /// The usable keys by `kid`. Replaced wholesale on each fetch, so keys the issuer withdrew stop working.
    keys: RwLock<HashMap<String, Arc<VerifyingKey>>>,
    /// Held for the whole of a fetch: this is what coalesces concurrent refreshes and rate-limits them.
    refresh: Mutex<RefreshState>,
    /// Tokens verified lately: a client sends the same token with every request for its lifetime, and
    /// checking its signature again each time was the largest single cost of a request.
    verified: std::sync::Mutex<VerifiedTokens>,
}

impl fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What the refresher remembers between fetches.
#[derive(Default)]
struct RefreshState {
    /// Discovered once: issuers move keys, not their JWKS endpoint.
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, replayed during the refresh interval so a down issuer is not hammered
    /// either, while callers still learn that the keys (not the token) are the problem.
    last_failure: Option<String>,
}

/// A JWKS entry we are willing to verify with.
struct VerifyingKey {
    key: DecodingKey,
    /// The allow-listed algorithms this key may be used with: its declared `alg`, else all that fit its type.
    algorithms: Vec<Algorithm>,
}

/// Why the issuer's keys could not be obtained.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("GET {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("fetching the issuer's keys failed less than the refresh interval ago: {0}")]
    RecentFailure(String),
}

impl JwksVerifier {
    /// Prepares a verifier for tokens from `issuer` (e.g. `https://login.example.com/realms/orderflow`, exactly
    /// as in the tokens' `iss`) meant for `audience`. Does no IO.
    ///
    /// # Errors
    /// [`AuthError::Unexpected`] if the HTTP client cannot be built (no usable TLS backend).
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        settings: VerifierSettings,
    ) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(settings.http_timeout)
            .connect_timeout(settings.http_timeout)
            .build()
            .map_err(|e| AuthError::Unexpected(Box::new(e)))?;
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            settings,
            http,
            keys: RwLock::new(HashMap::new()),
            refresh: Mutex::new(RefreshState::default()),
            verified: std::sync::Mutex::new(VerifiedTokens::default()),
        })
    }

    /// The issuer this verifier trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience tokens must be meant for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Finds the key for `kid`, fetching the JWKS if it is unknown and the refresh interval allows.
    /// `Ok(None)` means the issuer does not (or, within the interval, did not) publish such a key.
    async fn key_for(&self, kid: &str) -> Result<Option<Arc<VerifyingKey>>, AuthError> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(Arc::clone(key)));
        }
        let mut state = self.refresh.lock().await;
        // Whoever held the lock before us may just have fetched the key we are looking for.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Some(Arc::clone(key)));
        }
        if let Some(at) = state.last_attempt
            && at.elapsed() < self.settings.min_refresh_interval
        {
            return match &state.last_failure {
                Some(cause) => Err(unexpected(FetchError::RecentFailure(cause.clone()))),
                None => Ok(None),
            };
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch_keys(&mut state).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                state.last_failure = None;
                let found = keys.get(kid).cloned();
                *self.keys.write().await = keys;
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = &e as &dyn std::error::Error, "fetching the issuer's signing keys failed");
                state.last_failure = Some(error_chain(&e));
                Err(unexpected(e))
            }
        }
    }

    async fn fetch_keys(&self, state: &mut RefreshState) -> Result<HashMap<String, Arc<VerifyingKey>>, FetchError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let set: RawJwkSet = self.get_json(&jwks_uri).await?;
        Ok(set.keys.into_iter().filter_map(usable_key).collect())
    }

    /// Reads the discovery document and returns the JWKS URI.
    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let doc: Discovery = self.get_json(&url).await?;
        // OIDC Discovery §4.3: a document for another issuer must not be trusted (it would hand us its keys).
        if doc.issuer != self.issuer {
            return Err(FetchError::IssuerMismatch { expected: self.issuer.clone(), found: doc.issuer });
        }
        Ok(doc.jwks_uri)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let http_error = |source| FetchError::Http { url: url.to_owned(), source };
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(http_error)?
            .json()
            .await
            .map_err(http_error)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        // Without these, jsonwebtoken skips the iss and aud checks when the claim is simply absent.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation
    }
}

#[async_trait]
impl TokenVerifier for JwksVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified.lock().unwrap_or_else(PoisonError::into_inner).get(token, Instant::now())
        {
            return Ok(principal);
        }
        // Everything up to the key lookup uses only the unverified header, and only to pick a key: nothing in it
        // is trusted beyond that.
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("malformed token: {e}")))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!("algorithm {:?} is not allowed", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| invalid("the token names no key (kid)"))?;
        let key = self.key_for(&kid).await?.ok_or_else(|| invalid(format!("unknown signing key {kid:?}")))?;
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid(format!("algorithm {:?} does not match key {kid:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &self.validation(header.alg))
            .map_err(rejection)?;
        // The signature and the claims' values are checked; now their types, all of them, so that a claim a
        // library cannot read is never mistaken for an absent one (a string `nbf` once let tokens in early).
        let claims: Claims = serde_path_to_error::deserialize(data.claims)
            .map_err(|e| invalid(format!("claim {} is malformed: {}", e.path(), e.inner())))?;
        // jsonwebtoken also accepts an array `iss` that merely contains ours; RFC 7519 allows one issuer only.
        if claims.iss != self.issuer {
            return Err(invalid("the token is from another issuer"));
        }
        let expires_in = Duration::try_from_secs_f64(claims.exp.0 - unix_now()).unwrap_or_default();
        let principal = principal(claims)?;
        let until = Instant::now() + expires_in.min(REVERIFY_AFTER);
        self.verified.lock().unwrap_or_else(PoisonError::into_inner).insert(token, principal.clone(), until);
        Ok(principal)
    }
}

/// How long a verified token is trusted without checking it again (never beyond its `exp`): also how
/// long a key the issuer withdrew keeps vouching for the tokens it signed that were already seen.
const REVERIFY_AFTER: Duration = Duration::from_secs(60);

/// At most this many tokens are remembered; a flood of distinct tokens empties the memory rather than
/// growing it.
const VERIFIED_CAPACITY: usize = 10_000;

/// Tokens that verified, with what they granted and until when that may be reused.
#[derive(Default)]
struct VerifiedTokens {
    entries: HashMap<String, (Principal, Instant)>,
}

impl VerifiedTokens {
    fn get(&self, token: &str, now: Instant) -> Option<Principal> {
        self.entries.get(token).filter(|(_, until)| now < *until).map(|(principal, _)| principal.clone())
    }

    fn insert(&mut self, token: &str, principal: Principal, until: Instant) {
        if self.entries.len() >= VERIFIED_CAPACITY {
            let now = Instant::now();
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= VERIFIED_CAPACITY {
                self.entries.clear();
            }
        }
        self.entries.insert(token.to_owned(), (principal, until));
    }
}

/// Seconds since the epoch, as `exp` counts them.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Every claim we rely on, typed as RFC 7519 and RFC 8693 define it. Present claims of another type, `null`
/// included, make the token invalid. `nbf`, `iat` and `aud` are read for their type only: their values were
/// compared with the clock and our audience by `jsonwebtoken`; `exp` also bounds how long the token is
/// remembered as verified.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    exp: NumericDate,
    #[serde(rename = "nbf", default, deserialize_with = "present")]
    _nbf: Option<NumericDate>,
    #[serde(rename = "iat", default, deserialize_with = "present")]
    _iat: Option<NumericDate>,
    #[serde(rename = "aud")]
    _aud: Audience,
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    azp: Option<String>,
    #[serde(default, deserialize_with = "present")]
    scope: Option<String>,
    #[serde(default, deserialize_with = "present")]
    scp: Option<Scp>,
}

/// RFC 7519 §2: seconds since the epoch as a JSON number, possibly fractional. Never a string.
#[derive(Deserialize)]
struct NumericDate(f64);

/// RFC 7519 §4.1.3: one audience, or an array of them.
struct Audience;

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(_) => Ok(Self),
            serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_string) => Ok(Self),
            _ => Err(serde::de::Error::custom("expected a string or an array of strings")),
        }
    }
}

/// An optional claim that, when present, must have its type: unlike a bare `Option`, refuses `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `scp` is an array in Azure AD and Okta tokens, a space-separated string in some others.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scp {
    List(Vec<String>),
    Joined(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// A JWKS with its keys left raw, so one key we cannot parse does not make us lose the others.
#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// Turns a JWKS entry into a verifying key, or skips it if we must never verify with it.
fn usable_key(raw: serde_json::Value) -> Option<(String, Arc<VerifyingKey>)> {
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    // Tokens must name their key, so a key without a kid could never be chosen.
    let kid = jwk.common.key_id.clone()?;
    // Issuers publish encryption keys in the same set; those must not vouch for signatures.
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return None;
    }
    if jwk.common.key_operations.as_ref().is_some_and(|ops| !ops.contains(&KeyOperations::Verify)) {
        return None;
    }
    let declared = jwk.common.key_algorithm;
    let (key, algorithms) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let algorithms = match declared {
                None => vec![Algorithm::RS256, Algorithm::PS256],
                Some(KeyAlgorithm::RS256) => vec![Algorithm::RS256],
                Some(KeyAlgorithm::PS256) => vec![Algorithm::PS256],
                Some(_) => return None,
            };
            (DecodingKey::from_rsa_components(&rsa.n, &rsa.e).ok()?, algorithms)
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            if !matches!(declared, None | Some(KeyAlgorithm::ES256)) {
                return None;
            }
            (DecodingKey::from_ec_components(&ec.x, &ec.y).ok()?, vec![Algorithm::ES256])
        }
        // `oct` keys are shared secrets, and other curves and EdDSA are off the allow-list.
        _ => return None,
    };
    Some((kid, Arc::new(VerifyingKey { key, algorithms })))
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let present = |value: Option<String>| value.filter(|v| !v.is_empty());
    let sub = present(claims.sub);
    let client_id = present(claims.client_id)
        .or_else(|| present(claims.azp))
        .or_else(|| sub.clone())
        .ok_or_else(|| invalid("the token names neither a subject nor a client"))?;
    // Some servers omit `sub` in client-credentials tokens; the client is then the subject.
    let subject = sub.unwrap_or_else(|| client_id.clone());
    let scopes = match (claims.scope, claims.scp) {
        (Some(joined), _) | (None, Some(Scp::Joined(joined))) => split_scopes(&joined),
        (None, Some(Scp::List(list))) => list.into_iter().filter(|s| !s.is_empty()).collect(),
        (None, None) => BTreeSet::new(),
    };
    Ok(Principal { subject, client_id, scopes })
}

fn split_scopes(joined: &str) -> BTreeSet<String> {
    joined.split_whitespace().map(str::to_owned).collect()
}

/// Gives each refusal a reason fit for the logs.
fn rejection(error: jsonwebtoken::errors::Error) -> AuthError {
    let reason = match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".to_owned(),
        ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
        ErrorKind::InvalidSignature => "the signature does not verify".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => format!("malformed token: {error}"),
    };
    invalid(reason)
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::InvalidToken(reason.into())
}

fn unexpected(error: FetchError) -> AuthError {
    AuthError::Unexpected(Box::new(error))
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn principal(client: &str) -> Principal {
        Principal { subject: client.to_owned(), client_id: client.to_owned(), scopes: BTreeSet::new() }
    }

    #[test]
    fn a_remembered_token_is_served_until_its_deadline_and_not_after() {
        let mut verified = VerifiedTokens::default();
        let now = Instant::now();
        verified.insert("t1", principal("a"), now + Duration::from_secs(5));

        assert_eq!(verified.get("t1", now), Some(principal("a")));
        assert_eq!(verified.get("t1", now + Duration::from_secs(5)), None, "not at its deadline");
        assert_eq!(verified.get("t2", now), None, "another token is not known");
    }

    #[test]
    fn a_full_memory_forgets_rather_than_grows() {
        let mut verified = VerifiedTokens::default();
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..=VERIFIED_CAPACITY {
            verified.insert(&format!("t{i}"), principal("a"), later);
        }
        assert!(verified.entries.len() <= VERIFIED_CAPACITY);
    }
}
