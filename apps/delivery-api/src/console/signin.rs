//! Signing people in and out: the authorization-code grant with PKCE against the issuer, the session it
//! leaves, and the CSRF token every form of the session carries.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use orderflow_ports::ReadError;
use orderflow_ports::auth::TokenVerifier;
use poem::http::StatusCode;
use poem::session::Session;
use poem::web::{Data, Form, Query, Redirect};
use poem::{IntoResponse, Response, handler};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use url::Url;

use super::PATH;
use super::pages::notice;
use crate::service::DeliveryService;

/// What the console asks for; the issuer grants what the person may have of it.
const SCOPES: [&str; 2] = ["shipments:read", "shipments:write"];

/// How long a session lasts when the issuer does not say how long its token does.
const DEFAULT_SESSION: Duration = Duration::from_secs(3600);

/// The issuer's endpoints, read from its metadata on first use (so the console starts even while the
/// issuer is briefly away).
pub(super) struct Issuer {
    metadata: Url,
    endpoints: OnceCell<(AuthUrl, TokenUrl)>,
    http: oauth2::reqwest::Client,
}

impl Issuer {
    pub(super) fn new(issuer: &str) -> anyhow::Result<Self> {
        let metadata = Url::parse(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
            .with_context(|| format!("the issuer {issuer} is not a URL"))?;
        // The token endpoint must answer, not send the code elsewhere.
        let http = oauth2::reqwest::Client::builder()
            .redirect(oauth2::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { metadata, endpoints: OnceCell::new(), http })
    }

    async fn endpoints(&self) -> anyhow::Result<&(AuthUrl, TokenUrl)> {
        self.endpoints
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Metadata {
                    authorization_endpoint: String,
                    token_endpoint: String,
                }
                let metadata: Metadata =
                    self.http.get(self.metadata.clone()).send().await?.error_for_status()?.json().await?;
                Ok((AuthUrl::new(metadata.authorization_endpoint)?, TokenUrl::new(metadata.token_endpoint)?))
            })
            .await
    }
}

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The console as an OAuth2 client.
pub(super) struct SignIn {
    issuer: Issuer,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect: RedirectUrl,
}

impl SignIn {
    pub(super) fn new(issuer: Issuer, client_id: String, client_secret: String, redirect: Url) -> anyhow::Result<Self> {
        Ok(Self {
            issuer,
            client_id: ClientId::new(client_id),
            client_secret: ClientSecret::new(client_secret),
            redirect: RedirectUrl::from_url(redirect),
        })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let (authorize, token) = self.issuer.endpoints().await?;
        Ok(BasicClient::new(self.client_id.clone())
            .set_client_secret(self.client_secret.clone())
            .set_auth_uri(authorize.clone())
            .set_token_uri(token.clone())
            .set_redirect_uri(self.redirect.clone()))
    }
}

/// Who is signed in, as the session cookie holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SignedIn {
    /// The person (the token's subject).
    pub(super) name: String,
    /// Whether they may ship and deliver (`shipments:write`).
    pub(super) can_ship: bool,
    /// The session ends with the token it began with (Unix seconds).
    expires_at: i64,
    /// What every form of this session carries.
    pub(super) csrf: String,
}

/// A sign-in on its way through the issuer.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    verifier: String,
}

const USER: &str = "user";
const PENDING: &str = "pending";

/// Who is signed in, unless nobody is or their session has ended or was signed out (on any replica,
/// from any copy of the cookie).
///
/// # Errors
/// When the store cannot say whether the session was signed out.
pub(super) async fn signed_in(session: &Session, service: &DeliveryService) -> Result<Option<SignedIn>, ReadError> {
    let Some(user) = session.get::<SignedIn>(USER) else { return Ok(None) };
    if user.expires_at <= chrono::Utc::now().timestamp() || service.signed_out(user.session()).await? {
        session.purge();
        return Ok(None);
    }
    Ok(Some(user))
}

impl SignedIn {
    /// What names the session where it is signed out: its CSRF token, drawn for it alone at sign-in.
    pub(super) fn session(&self) -> &str {
        &self.csrf
    }
}

/// Whether a form's token is the session's, compared in constant time.
pub(super) fn csrf_matches(user: &SignedIn, given: &str) -> bool {
    let (expected, given) = (user.csrf.as_bytes(), given.as_bytes());
    expected.len() == given.len() && expected.iter().zip(given).fold(0, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Sends the browser to the issuer's sign-in page.
#[handler]
pub(super) async fn login(session: &Session, Data(signin): Data<&Arc<SignIn>>) -> Response {
    let client = match signin.client().await {
        Ok(client) => client,
        Err(error) => return issuer_unreachable(&error),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(SCOPES.map(|s| Scope::new(s.to_owned())))
        .set_pkce_challenge(challenge)
        .url();
    session.set(PENDING, Pending { state: state.secret().clone(), verifier: verifier.secret().clone() });
    Redirect::see_other(url.as_str()).into_response()
}

/// What the issuer sends back.
#[derive(Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Takes the code the issuer sent back, exchanges it for a token, and opens the session.
#[handler]
pub(super) async fn callback(
    session: &Session,
    Query(callback): Query<Callback>,
    Data(signin): Data<&Arc<SignIn>>,
    Data(verifier): Data<&Arc<dyn TokenVerifier>>,
) -> Response {
    let pending: Option<Pending> = session.get(PENDING);
    session.remove(PENDING);
    let Some(pending) = pending.filter(|p| callback.state.as_deref() == Some(p.state.as_str())) else {
        return notice(StatusCode::BAD_REQUEST, "Sign-in expired", "This sign-in is stale or was not started here.")
            .sign_in_again();
    };
    if let Some(error) = callback.error {
        let why = callback.error_description.unwrap_or(error);
        return notice(StatusCode::FORBIDDEN, "Sign-in refused", &format!("The issuer refused: {why}."))
            .sign_in_again();
    }
    let Some(code) = callback.code else {
        return notice(StatusCode::BAD_REQUEST, "Sign-in failed", "The issuer sent no code.").sign_in_again();
    };
    let client = match signin.client().await {
        Ok(client) => client,
        Err(error) => return issuer_unreachable(&error),
    };
    let token = match client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
        .request_async(&signin.issuer.http)
        .await
    {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(error = %orderflow_ports::error_chain(&error), "console sign-in: the code exchange failed");
            return notice(StatusCode::BAD_GATEWAY, "Sign-in failed", "The issuer did not accept the sign-in.")
                .sign_in_again();
        }
    };
    let principal = match verifier.verify(token.access_token().secret()).await {
        Ok(principal) => principal,
        Err(error) => {
            tracing::warn!(%error, "console sign-in: the issuer's token does not verify");
            return notice(StatusCode::BAD_GATEWAY, "Sign-in failed", "The issuer's token could not be verified.")
                .sign_in_again();
        }
    };
    if !principal.has_scope("shipments:read") {
        return notice(StatusCode::FORBIDDEN, "Not for you", "Your account may not see shipments.").sign_in_again();
    }
    let lasts = token.expires_in().unwrap_or(DEFAULT_SESSION);
    let user = SignedIn {
        can_ship: principal.has_scope("shipments:write"),
        name: principal.subject,
        expires_at: chrono::Utc::now().timestamp().saturating_add(i64::try_from(lasts.as_secs()).unwrap_or(i64::MAX)),
        csrf: CsrfToken::new_random().secret().clone(),
    };
    tracing::info!(user = %user.name, can_ship = user.can_ship, "console sign-in");
    session.set(USER, user);
    Redirect::see_other(PATH).into_response()
}

/// A form that carries only the CSRF token.
#[derive(Deserialize)]
pub(super) struct Plain {
    #[serde(default)]
    csrf: String,
}

/// Ends the session: in the store first, so every copy of the cookie stops working, then in the browser.
#[handler]
pub(super) async fn logout(
    session: &Session,
    Form(form): Form<Plain>,
    Data(service): Data<&DeliveryService>,
) -> Response {
    let user = match signed_in(session, service).await {
        Ok(user) => user,
        Err(error) => return sign_out_failed(&error),
    };
    if let Some(user) = user {
        if !csrf_matches(&user, &form.csrf) {
            return super::pages::forged();
        }
        let until =
            chrono::DateTime::from_timestamp(user.expires_at, 0).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        if let Err(error) = service.sign_out(user.session(), until).await {
            return sign_out_failed(&error);
        }
        tracing::info!(user = %user.name, "console sign-out");
    }
    session.purge();
    Redirect::see_other(format!("{PATH}/signed-out")).into_response()
}

fn sign_out_failed(error: &dyn std::error::Error) -> Response {
    tracing::warn!(%error, "console sign-out: the store cannot be reached");
    notice(StatusCode::SERVICE_UNAVAILABLE, "Not signed out", "Signing out failed; try again.").into_response()
}

/// Says the session ended.
#[handler]
pub(super) fn signed_out() -> Response {
    notice(StatusCode::OK, "Signed out", "You are signed out of the console.").sign_in_again()
}

fn issuer_unreachable(error: &anyhow::Error) -> Response {
    tracing::warn!(error = format!("{error:#}"), "console sign-in: the issuer cannot be reached");
    notice(StatusCode::SERVICE_UNAVAILABLE, "Sign-in unavailable", "The sign-in service cannot be reached; try again.")
        .sign_in_again()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(csrf: &str) -> SignedIn {
        SignedIn { name: "staff".to_owned(), can_ship: true, expires_at: i64::MAX, csrf: csrf.to_owned() }
    }

    #[test]
    fn a_form_token_must_be_the_sessions_exactly() {
        let staff = user("abcdef");
        assert!(csrf_matches(&staff, "abcdef"));
        for forged in ["", "abcde", "abcdeg", "abcdef0", "ABCDEF"] {
            assert!(!csrf_matches(&staff, forged), "{forged:?} is refused");
        }
    }
}
