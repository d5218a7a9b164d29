//! The delivery staff's console: pages under `/console` for people, signed in with the issuer by
//! authorization code + PKCE, acting through the same use cases as the API. Its session is an encrypted
//! cookie holding who signed in and what they may do, never a token.

mod pages;
mod signin;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use orderflow_ports::auth::TokenVerifier;
use orderflow_runtime::http::counted_as;
use poem::endpoint::BoxEndpoint;
use poem::http::header;
use poem::middleware::SetHeader;
use poem::session::{CookieConfig, CookieSession};
use poem::web::cookie::{CookieKey, SameSite};
use poem::{EndpointExt, Route, RouteMethod};
use url::Url;

use crate::service::DeliveryService;
use signin::{Issuer, SignIn};

/// Where the console is served.
pub const PATH: &str = "/console";

/// The session cookie's name.
const COOKIE: &str = "orderflow_console";

/// What pages may load and where their forms may go: their own scripts and styles only, nothing inline.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the console signs people in.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// The console's `client_id` at the issuer.
    pub client_id: String,
    /// Its client secret (the console is a confidential client).
    pub client_secret: String,
    /// Where browsers reach this service (the redirect URI is `{public_url}/console/callback`); `https`
    /// makes the session cookie `Secure`. `None` is `http://` and the address the service listens on.
    pub public_url: Option<Url>,
    /// The key sessions are encrypted with; replicas behind one address need the same one. `None` draws
    /// a key at start, so sessions end when the process does.
    pub session_key: Option<SessionKey>,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("client_id", &self.client_id)
            .field("public_url", &self.public_url.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

/// The key sessions are encrypted with: at least 64 bytes.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// The key from its base64 form (`CONSOLE_SESSION_KEY`).
    ///
    /// # Errors
    /// When it is not base64 or decodes to fewer than 64 bytes.
    pub fn parse(encoded: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(encoded.trim()).map_err(|e| format!("not base64: {e}"))?;
        if bytes.len() < 64 {
            return Err(format!("{} bytes; at least 64 are needed", bytes.len()));
        }
        Ok(Self(bytes))
    }
}

/// `http://` and `addr`, loopback for an unspecified address: where a browser on this machine finds a
/// service listening on `addr`.
///
/// # Errors
/// Never for an address; the type says it could.
pub fn local_url(addr: SocketAddr) -> Result<Url, url::ParseError> {
    let ip = if addr.ip().is_unspecified() { Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
    Url::parse(&format!("http://{}", SocketAddr::new(ip, addr.port())))
}

/// The redirect URI the issuer must know for a console reached at `public_url`.
///
/// # Errors
/// When `public_url` cannot be a base.
pub fn redirect_uri(public_url: &Url) -> Result<Url, url::ParseError> {
    public_url.join(&format!("{PATH}/callback"))
}

/// The console's routes, to serve under [`PATH`].
///
/// # Errors
/// When the redirect URI cannot be made from the public URL.
pub fn routes(
    listening_on: SocketAddr,
    service: DeliveryService,
    verifier: Arc<dyn TokenVerifier>,
    issuer: &str,
    settings: ConsoleSettings,
) -> anyhow::Result<BoxEndpoint<'static>> {
    let key = match &settings.session_key {
        Some(SessionKey(bytes)) => CookieKey::from(bytes.as_slice()),
        None => {
            tracing::info!("CONSOLE_SESSION_KEY is not set: console sessions end when this process does");
            CookieKey::generate()
        }
    };
    let public_url = match settings.public_url {
        Some(url) => url,
        None => local_url(listening_on)?,
    };
    let cookie = CookieConfig::private(key)
        .name(COOKIE)
        .path(PATH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(public_url.scheme() == "https");
    let redirect = redirect_uri(&public_url)?;
    let signin = Arc::new(SignIn::new(Issuer::new(issuer)?, settings.client_id, settings.client_secret, redirect)?);
    let headers = SetHeader::new()
        .overriding(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)
        .overriding(header::CACHE_CONTROL, "no-store");
    let mut route = Route::new();
    for (path, method, name, endpoint) in pages() {
        route = route.at(path, RouteMethod::new().method(method.parse()?, counted_as(name, endpoint)));
    }
    let route = route.data(service).data(verifier).data(signin).with(CookieSession::new(cookie)).with(headers);
    Ok(route.boxed())
}

/// The console's pages: the path below [`PATH`] (`:id` a segment), the method, the name their requests are
/// counted under in the HTTP metrics, and the handler.
fn pages() -> [(&'static str, &'static str, &'static str, BoxEndpoint<'static>); 11] {
    [
        ("/", "GET", "console_lists", pages::index.map_to_response().boxed()),
        ("/events", "GET", "console_live_lists", pages::live_lists.map_to_response().boxed()),
        ("/shipments/:id", "GET", "console_shipment", pages::show_shipment.map_to_response().boxed()),
        ("/shipments/:id/ship", "POST", "console_ship", pages::ship.map_to_response().boxed()),
        ("/shipments/:id/deliver", "POST", "console_deliver", pages::deliver.map_to_response().boxed()),
        ("/login", "GET", "console_sign_in", signin::login.map_to_response().boxed()),
        ("/callback", "GET", "console_signed_in", signin::callback.map_to_response().boxed()),
        ("/logout", "POST", "console_sign_out", signin::logout.map_to_response().boxed()),
        ("/signed-out", "GET", "console_signed_out", signin::signed_out.map_to_response().boxed()),
        ("/assets/console.css", "GET", "console_assets", pages::stylesheet.map_to_response().boxed()),
        ("/assets/console.js", "GET", "console_assets", pages::script.map_to_response().boxed()),
    ]
}

/// The console's routes below [`PATH`], as templates (`/shipments/{id}`) with their methods, which name
/// the spans of its requests.
pub fn templates() -> Vec<(String, &'static str)> {
    pages().into_iter().map(|(path, method, ..)| (path.replace(":id", "{id}"), method)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_s_routes_are_named_as_templates_with_their_methods() {
        let templates = templates();
        assert!(templates.contains(&("/shipments/{id}/ship".to_owned(), "POST")));
        assert!(templates.contains(&("/".to_owned(), "GET")));
    }

    #[test]
    fn a_session_key_is_base64_of_at_least_64_bytes() {
        assert!(SessionKey::parse(&STANDARD.encode([7u8; 64])).is_ok());
        let short = SessionKey::parse(&STANDARD.encode([7u8; 63])).err().unwrap_or_default();
        assert!(short.contains("63 bytes"), "{short}");
        assert!(SessionKey::parse("not base64!").is_err());
        assert_eq!(format!("{:?}", SessionKey(vec![1; 64])), "SessionKey(<redacted>)", "never logged");
    }

    #[test]
    fn the_console_is_found_on_the_address_it_listens_on() {
        let url = local_url("0.0.0.0:8081".parse().unwrap()).unwrap();
        assert_eq!(redirect_uri(&url).unwrap().as_str(), "http://127.0.0.1:8081/console/callback");
        let behind_a_proxy = Url::parse("https://ops.example.com/").unwrap();
        assert_eq!(redirect_uri(&behind_a_proxy).unwrap().as_str(), "https://ops.example.com/console/callback");
    }
}
