//! orderflow's token verifier against the real authorization server of local runs: `oidc-provider` from
//! `infra/oauth`, started by `bash infra/scripts/oauth.sh start` before the tests run (issuer from
//! `OAUTH_ISSUER`, default `http://127.0.0.1:9000`). Tokens come from its `/token` endpoint through the `oauth2`
//! crate (`orderflow::token::fetch`), and are checked by the `JwksVerifier` the APIs use.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orderflow_adapters::auth::{JwksVerifier, VerifierSettings};
use orderflow_ports::auth::{AuthError, Principal, TokenVerifier};
use serde_json::Value;

/// The audience of the Sales and Delivery APIs, which infra/oauth puts in every token.
const AUDIENCE: &str = "orderflow";

/// The dev clients of infra/oauth/server.js: id, secret, and every scope each may have.
const CLIENTS: [(&str, &str, &[&str]); 4] = [
    ("sales-client", "dev-secret-sales", &["orders:read", "orders:write"]),
    ("delivery-staff", "dev-secret-delivery", &["shipments:read", "shipments:write"]),
    ("analyst", "dev-secret-analyst", &["orders:read", "shipments:read"]),
    ("admin", "dev-secret-admin", &["admin", "orders:read", "orders:write", "shipments:read", "shipments:write"]),
];

/// The issuer under test. Fails, never skips, when it does not answer: a silently skipped test proves nothing.
async fn issuer() -> anyhow::Result<String> {
    let issuer = std::env::var("OAUTH_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:9000".to_owned());
    let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .get(&discovery)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    if let Err(e) = answer {
        bail!(
            "the OAuth2 server {issuer} does not answer ({e}); start it with `bash infra/scripts/oauth.sh start` \
             (or point OAUTH_ISSUER at it)"
        );
    }
    Ok(issuer)
}

async fn token(issuer: &str, client_id: &str, secret: &str, scopes: &[&str]) -> anyhow::Result<String> {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    orderflow::token::fetch(issuer, client_id, secret, &scopes).await
}

fn verifier(issuer: &str, audience: &str) -> anyhow::Result<JwksVerifier> {
    Ok(JwksVerifier::new(issuer, audience, VerifierSettings::default())?)
}

fn scope_set(scopes: &[&str]) -> BTreeSet<String> {
    scopes.iter().map(|s| (*s).to_owned()).collect()
}

/// The unverified header and claims of a JWT, to look at what the server sends.
fn decode_unverified(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut part = |name: &str| -> anyhow::Result<Value> {
        let encoded = parts.next().with_context(|| format!("the token has no {name}"))?;
        let json = URL_SAFE_NO_PAD.decode(encoded).with_context(|| format!("the token's {name} is not base64url"))?;
        serde_json::from_slice(&json).with_context(|| format!("the token's {name} is not JSON"))
    };
    Ok((part("header")?, part("claims")?))
}

#[tokio::test]
async fn every_dev_client_gets_a_token_that_verifies_with_exactly_its_scopes_and_client_id() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let verifier = verifier(&issuer, AUDIENCE)?;
    for (client_id, secret, scopes) in CLIENTS {
        let token =
            token(&issuer, client_id, secret, scopes).await.with_context(|| format!("token for {client_id}"))?;
        let principal = verifier.verify(&token).await.with_context(|| format!("verifying {client_id}'s token"))?;
        let expected =
            Principal { subject: client_id.to_owned(), client_id: client_id.to_owned(), scopes: scope_set(scopes) };
        ensure!(principal == expected, "{client_id}: got {principal:?}, expected {expected:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_client_that_asks_for_no_scope_gets_every_scope_it_may_have() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let verifier = verifier(&issuer, AUDIENCE)?;
    for (client_id, secret, scopes) in CLIENTS {
        let principal = verifier.verify(&token(&issuer, client_id, secret, &[]).await?).await?;
        ensure!(principal.scopes == scope_set(scopes), "{client_id} got {:?}", principal.scopes);
    }
    Ok(())
}

#[tokio::test]
async fn a_token_asked_for_a_narrower_scope_carries_only_that_scope() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let verifier = verifier(&issuer, AUDIENCE)?;
    let principal =
        verifier.verify(&token(&issuer, "sales-client", "dev-secret-sales", &["orders:read"]).await?).await?;
    ensure!(principal.scopes == scope_set(&["orders:read"]), "got {:?}", principal.scopes);
    let principal = verifier.verify(&token(&issuer, "admin", "dev-secret-admin", &["shipments:read"]).await?).await?;
    ensure!(principal.scopes == scope_set(&["shipments:read"]), "got {:?}", principal.scopes);
    Ok(())
}

#[tokio::test]
async fn a_client_asking_for_a_scope_it_may_not_have_is_refused_by_the_server() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    for (client_id, secret, scope) in
        [("sales-client", "dev-secret-sales", "admin"), ("analyst", "dev-secret-analyst", "orders:write")]
    {
        match token(&issuer, client_id, secret, &[scope]).await {
            Ok(_) => bail!("{client_id} got a token with {scope}"),
            Err(e) => ensure!(format!("{e:#}").contains("invalid_scope"), "{client_id} asking for {scope}: {e:#}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_server() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    match token(&issuer, "sales-client", "not-the-secret", &["orders:read"]).await {
        Ok(_) => bail!("a wrong secret got a token"),
        Err(e) => ensure!(format!("{e:#}").contains("invalid_client"), "unexpected refusal: {e:#}"),
    }
    match token(&issuer, "no-such-client", "dev-secret-sales", &[]).await {
        Ok(_) => bail!("an unknown client got a token"),
        Err(e) => ensure!(format!("{e:#}").contains("invalid_client"), "unexpected refusal: {e:#}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_verifier_for_another_audience_refuses_the_token() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let token = token(&issuer, "admin", "dev-secret-admin", &[]).await?;
    match verifier(&issuer, "another-api")?.verify(&token).await {
        Err(AuthError::InvalidToken(reason)) => {
            ensure!(reason.contains("audience"), "refused, but for another reason: {reason}");
        }
        other => bail!("expected the token to be refused for its audience, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_verifier_for_another_issuer_refuses_the_token() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let token = token(&issuer, "admin", "dev-secret-admin", &[]).await?;
    // The same server under another name (localhost instead of 127.0.0.1): its discovery document names the
    // real issuer, so the verifier must not take its keys (OIDC Discovery §4.3), let alone its tokens.
    let alias = issuer.replacen("127.0.0.1", "localhost", 1);
    ensure!(alias != issuer, "this test needs an issuer on 127.0.0.1, not {issuer}");
    match verifier(&alias, AUDIENCE)?.verify(&token).await {
        Ok(principal) => bail!("a verifier for {alias} accepted a token from {issuer}: {principal:?}"),
        Err(AuthError::Unexpected(e)) => {
            ensure!(e.to_string().contains("discovery document names issuer"), "refused, but because {e}");
        }
        Err(e) => bail!("expected the issuer's keys to be distrusted, got {e:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn tokens_are_one_hour_es256_jwt_access_tokens_with_the_claims_the_apis_read() -> anyhow::Result<()> {
    let issuer = issuer().await?;
    let token = token(&issuer, "delivery-staff", "dev-secret-delivery", &["shipments:read"]).await?;
    let (header, claims) = decode_unverified(&token)?;
    // RFC 9068's type; the verifier must accept it (jsonwebtoken does not insist on `typ: JWT`).
    ensure!(header["typ"] == "at+jwt", "header {header}");
    ensure!(header["alg"] == "ES256", "header {header}");
    ensure!(header["kid"].as_str().is_some_and(|kid| !kid.is_empty()), "header {header}");
    ensure!(claims["iss"] == issuer.as_str(), "claims {claims}");
    // A single audience, as a string.
    ensure!(claims["aud"] == AUDIENCE, "claims {claims}");
    ensure!(claims["client_id"] == "delivery-staff" && claims["sub"] == "delivery-staff", "claims {claims}");
    // Space-separated, as RFC 9068 says, not an array.
    ensure!(claims["scope"] == "shipments:read", "claims {claims}");
    ensure!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()), "claims {claims}");
    let iat = claims["iat"].as_i64().context("no iat")?;
    let exp = claims["exp"].as_i64().context("no exp")?;
    ensure!(exp - iat == 3600, "the token lives {} s, expected an hour", exp - iat);
    Ok(())
}
