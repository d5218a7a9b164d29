//! `orderflow token`: an access token from any OAuth2 issuer, with the client-credentials grant.

use anyhow::Context;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use serde::Deserialize;

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

/// Finds the issuer's token endpoint (OIDC discovery) and asks it for a token.
///
/// # Errors
/// When discovery fails or the issuer refuses the client.
pub async fn fetch(issuer: &str, client_id: &str, client_secret: &str, scopes: &[String]) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        // The token request carries the client secret: never follow a redirect with it.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let discovery: Discovery = http
        .get(&discovery_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("fetching {discovery_url}"))?
        .json()
        .await
        .with_context(|| format!("reading {discovery_url}"))?;
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(client_secret.to_owned()))
        .set_token_uri(TokenUrl::new(discovery.token_endpoint).context("the issuer's token endpoint is not a URL")?);
    let token = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(&http)
        .await
        .context("the issuer refused the token request")?;
    Ok(token.access_token().secret().clone())
}
