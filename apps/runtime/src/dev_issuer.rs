//! [`DevIssuer`]: a minimal OAuth2 authorization server for `orderflow dev` and tests: the client-credentials
//! grant for machines, the authorization-code grant with PKCE (S256 only) and a sign-in page for people
//! ([`DevUser`]s, as the delivery console signs its staff in), ES256 JWT access tokens, OIDC discovery and JWKS.
//! Keys and codes live in memory and the default secrets and passwords are public: never expose it beyond a
//! developer's machine or a test.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use poem::http::header::{self, HeaderValue};
use poem::http::{HeaderMap, StatusCode};
use poem::listener::TcpAcceptor;
use poem::web::{Data, Json};
use poem::{EndpointExt, Request, Response, Route, Server, get, handler, post};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use ring::{error::Unspecified, hmac};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use url::Url;
use uuid::Uuid;

use self::authorize::IssuedCode;

mod authorize;

/// Lifetime of tokens from `/token` unless [`DevIssuer::with_token_lifetime`] says otherwise.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How long an authorization code can be redeemed: the client redeems it as soon as the browser comes back,
/// and RFC 6749 §4.1.2 recommends at most ten minutes.
const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// The `client_id` of [`DevClient::console`], the web console delivery staff sign in to.
pub const CONSOLE_CLIENT_ID: &str = "delivery-console";

/// The secret of [`DevClient::console`]. DEV-ONLY: it is in the source code.
pub const CONSOLE_CLIENT_SECRET: &str = "dev-secret-console";

/// A client registered with the [`DevIssuer`].
#[derive(Clone, PartialEq, Eq)]
pub struct DevClient {
    /// The `client_id`.
    pub id: String,
    /// The client secret (HTTP Basic or `client_secret` form field).
    pub secret: String,
    /// The scopes the client may be granted; it gets all of them when it asks for none.
    pub scopes: Vec<String>,
    /// Where `/authorize` may send the browser back, compared exactly (RFC 6749 §3.1.2); empty means the client
    /// cannot use the authorization-code grant.
    pub redirect_uris: Vec<String>,
}

impl fmt::Debug for DevClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even dev secrets stay out of logs, so nobody learns to paste real ones into them.
        f.debug_struct("DevClient")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("redirect_uris", &self.redirect_uris)
            .finish()
    }
}

impl DevClient {
    /// A client with the given id, secret and allowed scopes, and no redirect URI: it can use the
    /// client-credentials grant only until [`DevClient::with_redirect_uris`] gives it some.
    pub fn new(
        id: impl Into<String>,
        secret: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            redirect_uris: Vec::new(),
        }
    }

    /// Lets the client use the authorization-code grant, sending the browser back to exactly one of `uris`
    /// (absolute URLs without a fragment, else [`DevIssuer::bind`] fails).
    #[must_use]
    pub fn with_redirect_uris(mut self, uris: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.redirect_uris = uris.into_iter().map(Into::into).collect();
        self
    }

    /// The delivery console ([`CONSOLE_CLIENT_ID`], [`CONSOLE_CLIENT_SECRET`]): a confidential web client that
    /// signs delivery staff in with the authorization-code grant and comes back to `redirect_uri`.
    pub fn console(redirect_uri: impl Into<String>) -> DevClient {
        DevClient::new(CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET, ["shipments:read", "shipments:write"])
            .with_redirect_uris([redirect_uri])
    }

    /// The four clients `orderflow dev` registers. DEV-ONLY secrets: they are in the source code.
    pub fn defaults() -> Vec<DevClient> {
        vec![
            DevClient::new("sales-client", "dev-secret-sales", ["orders:read", "orders:write"]),
            DevClient::new("delivery-staff", "dev-secret-delivery", ["shipments:read", "shipments:write"]),
            DevClient::new("analyst", "dev-secret-analyst", ["orders:read", "shipments:read"]),
            DevClient::new(
                "admin",
                "dev-secret-admin",
                ["admin", "orders:read", "orders:write", "shipments:read", "shipments:write"],
            ),
        ]
    }
}

/// A person who can sign in at the [`DevIssuer`]'s `/authorize` page.
#[derive(Clone, PartialEq, Eq)]
pub struct DevUser {
    /// The name typed on the sign-in page; the tokens' `sub`.
    pub username: String,
    /// The password typed on the sign-in page.
    pub password: String,
    /// The scopes the user may hold: a token gets those the client asked for, may have and the user has.
    pub scopes: Vec<String>,
}

impl fmt::Debug for DevUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As for client secrets: dev passwords stay out of logs too.
        f.debug_struct("DevUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl DevUser {
    /// A user with the given name, password and scopes.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    /// The delivery staff of `orderflow dev`: `staff`, who may read and change shipments, and `viewer`, who may
    /// only read them. DEV-ONLY passwords: they are in the source code.
    pub fn defaults() -> Vec<DevUser> {
        vec![
            DevUser::new("staff", "dev-password-staff", ["shipments:read", "shipments:write"]),
            DevUser::new("viewer", "dev-password-viewer", ["shipments:read"]),
        ]
    }
}

/// Configuration of a dev authorization server; [`DevIssuer::bind`] starts it.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    audience: String,
    clients: Vec<DevClient>,
    users: Vec<DevUser>,
    token_lifetime: Duration,
    /// Not configurable from outside: only this module's tests shorten it, to see a code expire.
    code_lifetime: Duration,
}

/// Why the dev issuer could not make a key or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevIssuerError {
    /// The system random number generator or key generation failed.
    #[error("could not generate a signing key")]
    KeyGeneration(#[source] Unspecified),
    /// Signing the token failed.
    #[error("could not sign the token")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

impl DevIssuer {
    /// An issuer whose tokens carry `aud = audience`, knowing `clients`, with 1 h tokens.
    pub fn new(audience: impl Into<String>, clients: Vec<DevClient>) -> Self {
        Self {
            audience: audience.into(),
            clients,
            users: Vec::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            code_lifetime: CODE_LIFETIME,
        }
    }

    /// Sets the people who can sign in on the `/authorize` page (none by default, so the authorization-code grant
    /// cannot succeed until some are given).
    #[must_use]
    pub fn with_users(mut self, users: Vec<DevUser>) -> Self {
        self.users = users;
        self
    }

    /// Sets the lifetime (`exp - iat`, and `expires_in`) of tokens from `/token`.
    #[must_use]
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Shorthand for `DevIssuer::new(audience, clients).bind(addr)`.
    ///
    /// # Errors
    /// As [`DevIssuer::bind`].
    pub async fn start(addr: SocketAddr, audience: &str, clients: Vec<DevClient>) -> io::Result<RunningIssuer> {
        Self::new(audience, clients).bind(addr).await
    }

    /// Generates a fresh ES256 signing key, binds `addr` (port 0 picks a free port) and serves in a background
    /// task until the returned [`RunningIssuer`] is dropped. Must be called within a tokio runtime.
    ///
    /// The issuer URL is `http://{bound address}`, with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] if a client's redirect URI is not an absolute URL or has a fragment (RFC 6749
    /// §3.1.2); otherwise if the address cannot be bound, or key generation fails (reported as
    /// [`io::ErrorKind::Other`]).
    pub async fn bind(self, addr: SocketAddr) -> io::Result<RunningIssuer> {
        // Checked before binding, so a mistyped URI fails at start and not when someone tries to sign in.
        let redirect_uris = self
            .clients
            .iter()
            .map(|c| c.redirect_uris.iter().map(|uri| RedirectUri::parse(uri)).collect::<io::Result<Vec<_>>>())
            .collect::<io::Result<Vec<_>>>()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let issuer = format!("http://{}", SocketAddr::new(reachable_ip(local_addr.ip()), local_addr.port()));
        let rng = SystemRandom::new();
        let (current, jwk) = SigningKey::generate(&rng).map_err(io::Error::other)?;
        // Secrets are compared as HMAC tags under a per-run random key, which ring checks in constant time.
        let tag_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(io::Error::other)?;
        let clients = self
            .clients
            .into_iter()
            .zip(redirect_uris)
            .map(|(c, redirect_uris)| {
                let registered = RegisteredClient {
                    secret_tag: hmac::sign(&tag_key, c.secret.as_bytes()),
                    scopes: c.scopes.into_iter().collect(),
                    redirect_uris,
                };
                (c.id, registered)
            })
            .collect();
        let users = self
            .users
            .into_iter()
            .map(|u| {
                let registered = RegisteredUser {
                    password_tag: hmac::sign(&tag_key, u.password.as_bytes()),
                    scopes: u.scopes.into_iter().collect(),
                };
                (u.username, registered)
            })
            .collect();
        let state = Arc::new(IssuerState {
            issuer,
            audience: self.audience,
            token_lifetime: self.token_lifetime,
            clients,
            unknown_client_tag: hmac::sign(&tag_key, Uuid::new_v4().as_bytes()),
            users,
            unknown_user_tag: hmac::sign(&tag_key, Uuid::new_v4().as_bytes()),
            code_lifetime: self.code_lifetime,
            codes: Mutex::new(HashMap::new()),
            tag_key,
            rng,
            keys: RwLock::new(KeyRing { current, published: vec![jwk] }),
            jwks_fetches: AtomicUsize::new(0),
        });
        let app = Route::new()
            .at("/.well-known/openid-configuration", get(metadata))
            .at("/.well-known/oauth-authorization-server", get(metadata))
            .at("/jwks", get(jwks))
            .at("/authorize", get(authorize::show_sign_in).post(authorize::sign_in))
            .at("/authorize.css", get(authorize::stylesheet))
            .at("/token", post(token))
            .data(Arc::clone(&state));
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let server = tokio::spawn(async move {
            if let Err(error) = Server::new_with_acceptor(acceptor).run(app).await {
                tracing::error!(error = &error as &dyn std::error::Error, "the dev issuer stopped");
            }
        });
        tracing::info!(issuer = %state.issuer, "dev issuer listening");
        Ok(RunningIssuer { state, local_addr, server })
    }
}

/// A started [`DevIssuer`]. Dropping it stops the server.
pub struct RunningIssuer {
    state: Arc<IssuerState>,
    local_addr: SocketAddr,
    server: JoinHandle<()>,
}

impl fmt::Debug for RunningIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningIssuer").field("issuer", &self.state.issuer).finish_non_exhaustive()
    }
}

impl Drop for RunningIssuer {
    fn drop(&mut self) {
        // Aborting the task drops the listener, which frees the port.
        self.server.abort();
    }
}

impl RunningIssuer {
    /// The issuer URL, as in the tokens' `iss` (e.g. `http://127.0.0.1:41234`, no trailing slash).
    pub fn issuer_url(&self) -> &str {
        &self.state.issuer
    }

    /// The token endpoint, `{issuer}/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.state.issuer)
    }

    /// The authorization endpoint, `{issuer}/authorize`, where people sign in.
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.state.issuer)
    }

    /// The JWKS endpoint, `{issuer}/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `aud` of the tokens it issues.
    pub fn audience(&self) -> &str {
        &self.state.audience
    }

    /// The `kid` of the key signing new tokens.
    pub fn current_kid(&self) -> String {
        self.state.read_keys().current.kid.clone()
    }

    /// How many times `/jwks` has been fetched: lets tests check that verifiers do not hammer the issuer.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Mints a token as `/token` would for `client_id` with `scopes`, valid for `lifetime`, without
    /// authenticating the client or checking that it is registered or allowed those scopes.
    ///
    /// # Errors
    /// [`DevIssuerError::Signing`] if signing fails.
    pub fn mint(&self, client_id: &str, scopes: &[&str], lifetime: Duration) -> Result<String, DevIssuerError> {
        self.state.mint(client_id, client_id, &scopes.join(" "), lifetime)
    }

    /// Signs arbitrary `claims` with the current key (header `alg: ES256`, its `kid`): for tests that need
    /// expired, premature or otherwise wrong tokens with a valid signature.
    ///
    /// # Errors
    /// [`DevIssuerError::Signing`] if the claims are not a JSON object or signing fails.
    pub fn sign(&self, claims: &Value) -> Result<String, DevIssuerError> {
        self.state.sign(claims)
    }

    /// Rotates the signing key: a new key (returned `kid`) signs from now on, and the JWKS publishes it next to
    /// all previous keys so tokens already issued stay valid.
    ///
    /// # Errors
    /// [`DevIssuerError::KeyGeneration`] if key generation fails.
    pub fn rotate_key(&self) -> Result<String, DevIssuerError> {
        let (key, jwk) = SigningKey::generate(&self.state.rng).map_err(DevIssuerError::KeyGeneration)?;
        let kid = key.kid.clone();
        let mut keys = self.state.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.published.push(jwk);
        keys.current = key;
        tracing::info!(issuer = %self.state.issuer, kid, "dev issuer rotated its signing key");
        Ok(kid)
    }

    /// Stops the server (as dropping does).
    pub fn shutdown(self) {}
}

/// What the handlers share.
struct IssuerState {
    issuer: String,
    audience: String,
    token_lifetime: Duration,
    clients: HashMap<String, RegisteredClient>,
    tag_key: hmac::Key,
    /// Checked against when the client id is unknown, so that case costs the same as a wrong secret.
    unknown_client_tag: hmac::Tag,
    users: HashMap<String, RegisteredUser>,
    /// Checked against when the username is unknown, so that case costs the same as a wrong password.
    unknown_user_tag: hmac::Tag,
    code_lifetime: Duration,
    /// The authorization codes handed out and not yet redeemed, by code.
    codes: Mutex<HashMap<String, IssuedCode>>,
    rng: SystemRandom,
    keys: RwLock<KeyRing>,
    jwks_fetches: AtomicUsize,
}

struct RegisteredClient {
    secret_tag: hmac::Tag,
    scopes: BTreeSet<String>,
    redirect_uris: Vec<RedirectUri>,
}

struct RegisteredUser {
    password_tag: hmac::Tag,
    scopes: BTreeSet<String>,
}

/// A redirect URI as registered, which requests must repeat exactly, and parsed, to add the response to.
struct RedirectUri {
    registered: String,
    url: Url,
}

impl RedirectUri {
    fn parse(registered: &str) -> io::Result<RedirectUri> {
        let invalid =
            |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("redirect URI {registered:?} {why}"));
        let url = Url::parse(registered).map_err(|error| invalid(&format!("is not an absolute URL: {error}")))?;
        if url.fragment().is_some() {
            return Err(invalid("has a fragment, which RFC 6749 §3.1.2 forbids"));
        }
        Ok(RedirectUri { registered: registered.to_owned(), url })
    }
}

/// The key that signs, and the JWKS entries of every key that ever did.
struct KeyRing {
    current: SigningKey,
    published: Vec<Value>,
}

struct SigningKey {
    kid: String,
    key: EncodingKey,
}

impl SigningKey {
    /// A fresh P-256 key and its public JWK.
    fn generate(rng: &SystemRandom) -> Result<(SigningKey, Value), Unspecified> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)?;
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng).map_err(|_| Unspecified)?;
        // ring gives the uncompressed SEC1 point: 0x04 || x || y, 32 bytes each for P-256.
        let (x, y) = match pair.public_key().as_ref() {
            [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
            _ => return Err(Unspecified),
        };
        let kid = Uuid::new_v4().simple().to_string();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
        });
        // jsonwebtoken's "EC DER" is the PKCS#8 document ring produced.
        Ok((SigningKey { kid, key: EncodingKey::from_ec_der(pkcs8.as_ref()) }, jwk))
    }
}

impl IssuerState {
    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        // The ring is replaced in one assignment, so a panic elsewhere cannot leave it half-updated.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for `subject` (the client itself, or the user who signed in) acting through `client_id`.
    fn mint(&self, subject: &str, client_id: &str, scope: &str, lifetime: Duration) -> Result<String, DevIssuerError> {
        let now = chrono::Utc::now().timestamp();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        self.sign(&json!({
            "iss": self.issuer,
            "sub": subject,
            "client_id": client_id,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(lifetime),
            "jti": Uuid::new_v4().to_string(),
            "scope": scope,
        }))
    }

    fn sign(&self, claims: &Value) -> Result<String, DevIssuerError> {
        let keys = self.read_keys();
        let mut header = Header::new(Algorithm::ES256);
        // RFC 9068's type for JWT access tokens, as oidc-provider and Keycloak send.
        header.typ = Some("at+jwt".to_owned());
        header.kid = Some(keys.current.kid.clone());
        jsonwebtoken::encode(&header, claims, &keys.current.key).map_err(DevIssuerError::Signing)
    }

    /// The token endpoint: the client-credentials grant (RFC 6749 §4.4) or the redemption of an authorization
    /// code (§4.1.3), with errors as in §5.2.
    fn grant(&self, headers: &HeaderMap, body: &[u8]) -> Result<TokenResponse, OAuthError> {
        if !is_form(headers) {
            return Err(OAuthError::InvalidRequest("the body must be application/x-www-form-urlencoded"));
        }
        let params = parse_form(body)?;
        let (client_id, client) = self.authenticate(headers, &params)?;
        match params.get("grant_type").map(String::as_str) {
            Some("client_credentials") => self.client_credentials(client_id, client, &params),
            Some("authorization_code") => self.redeem_code(client_id, &params),
            Some(_) => Err(OAuthError::UnsupportedGrantType),
            None => Err(OAuthError::InvalidRequest("grant_type is missing")),
        }
    }

    /// The client-credentials grant (RFC 6749 §4.4): the client acts for itself.
    fn client_credentials(
        &self,
        client_id: &str,
        client: &RegisteredClient,
        params: &HashMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let granted = match params.get("scope") {
            Some(requested) => {
                let requested: BTreeSet<String> = requested.split_whitespace().map(str::to_owned).collect();
                if let Some(denied) = requested.difference(&client.scopes).next() {
                    return Err(OAuthError::InvalidScope(format!("the client may not have scope {denied:?}")));
                }
                requested
            }
            None => client.scopes.clone(),
        };
        let scope = granted.into_iter().collect::<Vec<_>>().join(" ");
        self.token_response(client_id, client_id, scope)
    }

    /// Mints the access token of a successful grant.
    fn token_response(&self, subject: &str, client_id: &str, scope: String) -> Result<TokenResponse, OAuthError> {
        let access_token = self.mint(subject, client_id, &scope, self.token_lifetime).map_err(OAuthError::Server)?;
        Ok(TokenResponse { access_token, token_type: "Bearer", expires_in: self.token_lifetime.as_secs(), scope })
    }

    /// Authenticates the client by `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1).
    fn authenticate(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
    ) -> Result<(&str, &RegisteredClient), OAuthError> {
        let basic = headers.get(header::AUTHORIZATION).map(parse_basic).transpose()?;
        let (id, secret) = match (basic, params.get("client_secret")) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::InvalidRequest("use one client authentication method, not two"));
            }
            (Some((id, secret)), None) => {
                if params.get("client_id").is_some_and(|form_id| *form_id != id) {
                    return Err(OAuthError::InvalidRequest("client_id differs from the authenticated client"));
                }
                (id, secret)
            }
            (None, Some(secret)) => {
                (params.get("client_id").cloned().ok_or(OAuthError::InvalidClient)?, secret.clone())
            }
            (None, None) => return Err(OAuthError::InvalidClient),
        };
        match self.clients.get_key_value(&id) {
            Some((id, client)) => {
                hmac::verify(&self.tag_key, secret.as_bytes(), client.secret_tag.as_ref())
                    .map_err(|_| OAuthError::InvalidClient)?;
                Ok((id.as_str(), client))
            }
            None => {
                // Do the same work as for a wrong secret, so response times do not reveal which ids exist.
                let _ = hmac::verify(&self.tag_key, secret.as_bytes(), self.unknown_client_tag.as_ref());
                Err(OAuthError::InvalidClient)
            }
        }
    }
}

/// Whether the body is `application/x-www-form-urlencoded`, as both the token endpoint and the sign-in form send.
fn is_form(headers: &HeaderMap) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// Reads `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Result<(String, String), OAuthError> {
    let value = value.to_str().map_err(|_| OAuthError::InvalidClient)?;
    let (scheme, credentials) = value.split_once(' ').ok_or(OAuthError::InvalidClient)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient);
    }
    let decoded = STANDARD.decode(credentials.trim()).map_err(|_| OAuthError::InvalidClient)?;
    let decoded = String::from_utf8(decoded).map_err(|_| OAuthError::InvalidClient)?;
    let (id, secret) = decoded.split_once(':').ok_or(OAuthError::InvalidClient)?;
    // RFC 6749 §2.3.1 form-encodes both parts before joining them, so a ':' in the id cannot be ambiguous.
    Ok((form_decode(id).ok_or(OAuthError::InvalidClient)?, form_decode(secret).ok_or(OAuthError::InvalidClient)?))
}

/// Parses an `application/x-www-form-urlencoded` body. Empty values count as absent (RFC 6749 §3.1) and a
/// repeated parameter is an error (same section).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let text = std::str::from_utf8(body).map_err(|_| OAuthError::InvalidRequest("the body is not UTF-8"))?;
    let mut params = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad_encoding = || OAuthError::InvalidRequest("the body is not properly form-encoded");
        let (name, value) = (form_decode(name).ok_or_else(bad_encoding)?, form_decode(value).ok_or_else(bad_encoding)?);
        if value.is_empty() {
            continue;
        }
        if params.insert(name, value).is_some() {
            return Err(OAuthError::InvalidRequest("a parameter is repeated"));
        }
    }
    Ok(params)
}

/// Decodes one form-urlencoded component (`+` is a space, `%XX` a byte).
fn form_decode(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        match first {
            b'+' => bytes.push(b' '),
            b'%' => {
                let (hex, after) = tail.split_at_checked(2)?;
                let hex = std::str::from_utf8(hex).ok().filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = after;
                continue;
            }
            other => bytes.push(other),
        }
        rest = tail;
    }
    String::from_utf8(bytes).ok()
}

/// The success body of RFC 6749 §5.1.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// The errors of RFC 6749 §5.2, plus our own failure.
#[derive(Debug)]
enum OAuthError {
    InvalidRequest(&'static str),
    InvalidClient,
    /// The authorization code is unknown, spent, expired, someone else's, or its PKCE or redirect URI differ.
    InvalidGrant(&'static str),
    UnsupportedGrantType,
    InvalidScope(String),
    Server(DevIssuerError),
}

impl OAuthError {
    fn into_response(self) -> Response {
        let (status, code, description) = match self {
            OAuthError::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why.to_owned()),
            OAuthError::InvalidClient => {
                (StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed".to_owned())
            }
            OAuthError::InvalidGrant(why) => (StatusCode::BAD_REQUEST, "invalid_grant", why.to_owned()),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials and authorization_code are supported".to_owned(),
            ),
            OAuthError::InvalidScope(why) => (StatusCode::BAD_REQUEST, "invalid_scope", why),
            OAuthError::Server(error) => {
                tracing::error!(error = &error as &dyn std::error::Error, "the dev issuer could not issue a token");
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "could not issue a token".to_owned())
            }
        };
        let mut response = token_endpoint_response(status, &json!({ "error": code, "error_description": description }));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2 requires the challenge when the client may have used HTTP Basic.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="orderflow-dev""#));
        }
        response
    }
}

/// A JSON response with the no-caching headers RFC 6749 §5.1 requires of the token endpoint.
fn token_endpoint_response(status: StatusCode, body: &impl Serialize) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .content_type("application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::PRAGMA, "no-cache")
        .body(body)
}

/// A loopback address for an unspecified one: clients cannot connect to `0.0.0.0`.
fn reachable_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

#[handler]
fn metadata(Data(state): Data<&Arc<IssuerState>>) -> Json<Value> {
    let scopes: BTreeSet<&str> = state.clients.values().flat_map(|c| c.scopes.iter().map(String::as_str)).collect();
    Json(json!({
        "issuer": state.issuer,
        "authorization_endpoint": format!("{}/authorize", state.issuer),
        "token_endpoint": format!("{}/token", state.issuer),
        "jwks_uri": format!("{}/jwks", state.issuer),
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "response_types_supported": ["code"],
        // `plain` would let whoever sees the authorization request redeem the code: S256 only (RFC 9700 §2.1.1).
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
    }))
}

#[handler]
fn jwks(Data(state): Data<&Arc<IssuerState>>) -> Json<Value> {
    state.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "keys": state.read_keys().published }))
}

#[handler]
fn token(req: &Request, body: Vec<u8>, Data(state): Data<&Arc<IssuerState>>) -> Response {
    match state.grant(req.headers(), &body) {
        Ok(grant) => token_endpoint_response(StatusCode::OK, &grant),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests;
