//! The authorization-code grant with PKCE (RFC 6749 §4.1, RFC 7636): the `/authorize` sign-in page for
//! [`DevUser`](super::DevUser)s, the codes it hands out, and their redemption at `/token`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use askama::Template;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::http::StatusCode;
use poem::http::header::{self, HeaderValue};
use poem::web::Data;
use poem::{Request, Response, handler};
use ring::digest;
use ring::error::Unspecified;
use ring::hmac;
use ring::rand::SecureRandom;
use url::{Origin, Url};

use super::{IssuerState, OAuthError, RedirectUri, RegisteredUser, TokenResponse, is_form, parse_form};

/// The stylesheet of the sign-in page, served from the issuer so the page needs no inline style.
const STYLESHEET: &str = include_str!("../../templates/dev_issuer/authorize.css");

/// The policy of a page that may post its form only to the issuer, used when the redirect URI is unknown or its
/// policy cannot be written as a header.
const STRICT_CSP: &str =
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What an authorization code stands for until it is redeemed.
pub(super) struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    username: String,
    scope: String,
    expires_at: Instant,
}

/// An authorization request whose client and redirect URI are registered and whose other parameters are valid.
struct AuthorizationRequest<'a> {
    client_id: &'a str,
    redirect: &'a RedirectUri,
    /// The `scope` parameter as sent, for the sign-in form to send again.
    scope: Option<&'a str>,
    /// The scopes asked for (all of the client's when `scope` is absent), each one the client may have.
    requested: BTreeSet<&'a str>,
    state: Option<&'a str>,
    code_challenge: &'a str,
}

/// Why an authorization request is refused, and so how the refusal is delivered.
enum Refusal<'a> {
    /// The client or its redirect URI is not established: the person is told on a page, and nothing is sent to
    /// a URI nobody registered (RFC 6749 §4.1.2.1).
    Page(&'static str),
    /// The client is told at its registered redirect URI (RFC 6749 §4.1.2.1).
    Redirect { redirect: &'a RedirectUri, error: &'static str, description: &'static str, state: Option<&'a str> },
}

#[derive(Template)]
#[template(path = "dev_issuer/sign_in.html")]
struct SignInPage<'a> {
    client_id: &'a str,
    scopes: Vec<&'a str>,
    hidden: Vec<(&'static str, &'a str)>,
    username: &'a str,
    failed: bool,
}

#[derive(Template)]
#[template(path = "dev_issuer/refused.html")]
struct RefusedPage<'a> {
    reason: &'a str,
}

impl IssuerState {
    /// Checks an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3), client and redirect URI first since they
    /// decide where errors may go.
    fn validate<'a>(&'a self, params: &'a HashMap<String, String>) -> Result<AuthorizationRequest<'a>, Refusal<'a>> {
        let param = |name: &str| params.get(name).map(String::as_str);
        let client_id =
            param("client_id").ok_or(Refusal::Page("The request names no client (client_id is missing)."))?;
        let (client_id, client) = self
            .clients
            .get_key_value(client_id)
            .ok_or(Refusal::Page("The request names a client this issuer does not know."))?;
        if client.redirect_uris.is_empty() {
            return Err(Refusal::Page("This client is not registered to sign people in: it has no redirect URI."));
        }
        let redirect_uri = param("redirect_uri").ok_or(Refusal::Page("The request has no redirect_uri."))?;
        let redirect = client
            .redirect_uris
            .iter()
            .find(|r| r.registered == redirect_uri)
            .ok_or(Refusal::Page("The redirect_uri is not registered for this client."))?;
        let state = param("state");
        let refuse = |error, description| Refusal::Redirect { redirect, error, description, state };

        match param("response_type") {
            Some("code") => {}
            Some(_) => return Err(refuse("unsupported_response_type", "only response_type=code is supported")),
            None => return Err(refuse("invalid_request", "response_type is missing")),
        }
        let code_challenge = param("code_challenge")
            .ok_or_else(|| refuse("invalid_request", "code_challenge is missing: PKCE is required"))?;
        // Without a method RFC 7636 means `plain`, which anyone who sees the request could answer: S256 only.
        if param("code_challenge_method") != Some("S256") {
            return Err(refuse("invalid_request", "code_challenge_method must be S256"));
        }
        if !is_pkce_value(code_challenge) {
            return Err(refuse("invalid_request", "code_challenge must be 43 to 128 unreserved characters"));
        }
        let scope = param("scope").filter(|s| !s.trim().is_empty());
        let requested: BTreeSet<&str> = match scope {
            Some(scope) => scope.split_whitespace().collect(),
            None => client.scopes.iter().map(String::as_str).collect(),
        };
        if !requested.iter().all(|s| client.scopes.contains(*s)) {
            return Err(refuse("invalid_scope", "the client may not have one of the requested scopes"));
        }
        Ok(AuthorizationRequest { client_id, redirect, scope, requested, state, code_challenge })
    }

    /// The user whose password this is, doing the same HMAC work whether or not the username exists.
    fn check_password(&self, username: &str, password: &str) -> Option<&RegisteredUser> {
        match self.users.get(username) {
            Some(user) => {
                hmac::verify(&self.tag_key, password.as_bytes(), user.password_tag.as_ref()).ok().map(|()| user)
            }
            None => {
                let _ = hmac::verify(&self.tag_key, password.as_bytes(), self.unknown_user_tag.as_ref());
                None
            }
        }
    }

    /// Stores `issued` under a fresh code and returns the code.
    fn issue_code(&self, issued: IssuedCode) -> Result<String, Unspecified> {
        // 256 random bits: RFC 6749 §10.10 asks for a code nobody can guess, and 128 bits would already do.
        let mut bytes = [0_u8; 32];
        self.rng.fill(&mut bytes)?;
        let code = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        // Every change to the map is a single call, so one that panicked cannot have left it inconsistent.
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        // Purged on insert rather than by a timer: codes are made one sign-in at a time, so this keeps the map small.
        codes.retain(|_, c| c.expires_at > now);
        codes.insert(code.clone(), issued);
        Ok(code)
    }

    /// Redeems an authorization code for `client_id` (RFC 6749 §4.1.3, RFC 7636 §4.6).
    pub(super) fn redeem_code(
        &self,
        client_id: &str,
        params: &HashMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let code = params.get("code").ok_or(OAuthError::InvalidRequest("code is missing"))?;
        let redirect_uri = params.get("redirect_uri").ok_or(OAuthError::InvalidRequest("redirect_uri is missing"))?;
        let verifier = params.get("code_verifier").ok_or(OAuthError::InvalidRequest("code_verifier is missing"))?;
        if !is_pkce_value(verifier) {
            return Err(OAuthError::InvalidRequest("code_verifier must be 43 to 128 unreserved characters"));
        }
        // Taken out before any check: a code is spent by its first use whatever comes of it (RFC 6749 §4.1.2), so
        // whoever intercepted one cannot try verifiers against it.
        let issued = self.codes.lock().unwrap_or_else(PoisonError::into_inner).remove(code.as_str());
        let issued = issued.filter(|c| c.expires_at > Instant::now() && c.client_id == client_id).ok_or(
            OAuthError::InvalidGrant("the code is unknown, expired, already used or was issued to another client"),
        )?;
        if issued.redirect_uri != *redirect_uri {
            return Err(OAuthError::InvalidGrant("redirect_uri differs from the one of the authorization request"));
        }
        // The challenge travelled through the browser, so it is no secret and a plain comparison leaks nothing.
        let computed = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
        if computed != issued.code_challenge {
            return Err(OAuthError::InvalidGrant("code_verifier does not match the code_challenge"));
        }
        self.token_response(&issued.username, client_id, issued.scope)
    }
}

impl<'a> AuthorizationRequest<'a> {
    /// The sign-in page for this request; `username` fills the field again after a failed attempt.
    fn sign_in_page(&self, status: StatusCode, username: &str, failed: bool) -> Response {
        let mut hidden = vec![
            ("response_type", "code"),
            ("client_id", self.client_id),
            ("redirect_uri", self.redirect.registered.as_str()),
            ("code_challenge", self.code_challenge),
            ("code_challenge_method", "S256"),
        ];
        hidden.extend(self.scope.map(|scope| ("scope", scope)));
        hidden.extend(self.state.map(|state| ("state", state)));
        let page = SignInPage {
            client_id: self.client_id,
            scopes: self.requested.iter().copied().collect(),
            hidden,
            username,
            failed,
        };
        html(status, &page, Some(&self.redirect.url))
    }

    fn refuse(&self, error: &'static str, description: &'static str) -> Refusal<'a> {
        Refusal::Redirect { redirect: self.redirect, error, description, state: self.state }
    }
}

impl Refusal<'_> {
    fn into_response(self) -> Response {
        match self {
            Refusal::Page(reason) => html(StatusCode::BAD_REQUEST, &RefusedPage { reason }, None),
            Refusal::Redirect { redirect, error, description, state } => {
                let mut params = vec![("error", error), ("error_description", description)];
                params.extend(state.map(|state| ("state", state)));
                redirect_to(redirect, &params)
            }
        }
    }
}

/// `GET /authorize`: checks the authorization request and shows the sign-in page.
#[handler]
pub(super) fn show_sign_in(req: &Request, Data(state): Data<&Arc<IssuerState>>) -> Response {
    let Ok(params) = parse_form(req.uri().query().unwrap_or_default().as_bytes()) else {
        return malformed();
    };
    match state.validate(&params) {
        Ok(request) => request.sign_in_page(StatusCode::OK, "", false),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /authorize`: the sign-in form. Checks the request again, since the form's hidden fields come from the
/// browser, then the password; on success sends the browser back to the client with a code.
#[handler]
pub(super) fn sign_in(req: &Request, body: Vec<u8>, Data(state): Data<&Arc<IssuerState>>) -> Response {
    if !is_form(req.headers()) {
        return malformed();
    }
    let Ok(params) = parse_form(&body) else {
        return malformed();
    };
    let request = match state.validate(&params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let username = params.get("username").map(String::as_str).unwrap_or_default();
    let password = params.get("password").map(String::as_str).unwrap_or_default();
    let Some(user) = state.check_password(username, password) else {
        // One message for both cases, so the page does not tell which usernames exist.
        return request.sign_in_page(StatusCode::UNAUTHORIZED, username, true);
    };
    let granted: Vec<&str> = request.requested.iter().copied().filter(|s| user.scopes.contains(*s)).collect();
    if granted.is_empty() {
        return request.refuse("access_denied", "the user has none of the requested scopes").into_response();
    }
    let issued = IssuedCode {
        client_id: request.client_id.to_owned(),
        redirect_uri: request.redirect.registered.clone(),
        code_challenge: request.code_challenge.to_owned(),
        username: username.to_owned(),
        scope: granted.join(" "),
        expires_at: Instant::now() + state.code_lifetime,
    };
    match state.issue_code(issued) {
        Ok(code) => {
            tracing::info!(client_id = request.client_id, username, "dev issuer signed a user in");
            let mut params = vec![("code", code.as_str())];
            params.extend(request.state.map(|state| ("state", state)));
            redirect_to(request.redirect, &params)
        }
        Err(Unspecified) => {
            tracing::error!("the dev issuer could not draw a random authorization code");
            request.refuse("server_error", "could not make an authorization code").into_response()
        }
    }
}

/// `GET /authorize.css`.
#[handler]
pub(super) fn stylesheet() -> Response {
    Response::builder()
        .content_type("text/css; charset=utf-8")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(STYLESHEET)
}

/// The page for a request that cannot even be parsed: whether its client and redirect URI came through intact is
/// unknown, so nothing may be redirected.
fn malformed() -> Response {
    Refusal::Page("The request is malformed: a parameter is repeated or badly encoded.").into_response()
}

/// RFC 7636 §4.1 and §4.2: 43 to 128 characters of `A-Z a-z 0-9 - . _ ~`.
fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A 303 to `redirect` with `params` added to its query (RFC 6749 §4.1.2), so the browser comes back with a GET.
fn redirect_to(redirect: &RedirectUri, params: &[(&str, &str)]) -> Response {
    let mut url = redirect.url.clone();
    url.query_pairs_mut().extend_pairs(params);
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, url.as_str())
        // The location carries the code: keep it out of caches and of the client's Referer headers.
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .finish()
}

/// Renders a page of the sign-in flow with headers that keep it from being framed, cached, sniffed or scripted.
/// `form_target` is the redirect URI the sign-in form's response goes on to, which `form-action` must allow since
/// browsers (Chrome) check the whole redirect chain of a form submission against it.
fn html(status: StatusCode, template: &impl Template, form_target: Option<&Url>) -> Response {
    let body = match template.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(error = &error as &dyn std::error::Error, "the dev issuer could not render a page");
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header(header::CACHE_CONTROL, "no-store")
                .body("The dev issuer could not render this page.");
        }
    };
    let csp = form_target
        .and_then(|target| {
            let policy = format!(
                "default-src 'none'; style-src 'self'; form-action 'self' {}; frame-ancestors 'none'; \
                 base-uri 'none'",
                source_expression(target)
            );
            HeaderValue::from_str(&policy).ok()
        })
        .unwrap_or(HeaderValue::from_static(STRICT_CSP));
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, csp)
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
}

/// How a CSP names where `url` is: its origin, or for a custom scheme (a native app's `com.example.app:/done`),
/// which has no origin, the scheme.
fn source_expression(url: &Url) -> String {
    match url.origin() {
        origin @ Origin::Tuple(..) => origin.ascii_serialization(),
        Origin::Opaque(_) => format!("{}:", url.scheme()),
    }
}
